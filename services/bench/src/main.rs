//! `sluice-bench`: load against a Sluice endpoint, and the disk's plain fsync rate to compare.
//!
//! `run` drives N producers and M consumers on one queue for a fixed time and reports the send
//! and receive rates and send latency percentiles. `fsync` measures how many append+fdatasync
//! cycles the disk manages a second: without group commit, that would cap durable sends.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Load generator for Sluice")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Producers and consumers on one queue.
    Run(RunArgs),
    /// Append+fdatasync cycles per second on a file in DIR.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds to run.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Bytes appended per cycle.
        #[arg(long, default_value_t = 1024)]
        size: usize,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long, env = "SLUICE_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    /// Queue to use; created if missing and purged before the run unless --keep.
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per send request (1 uses SendMessage, more SendMessageBatch, at most 10).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Keep what is in the queue instead of purging it first, e.g. to consume a backlog that
    /// an earlier run with --consumers 0 left.
    #[arg(long)]
    keep: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

async fn connect(endpoint: &str) -> anyhow::Result<QueueServiceClient<Channel>> {
    let channel = Channel::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach Sluice at {endpoint}"))?;
    Ok(QueueServiceClient::new(channel))
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
    receive_errors: AtomicU64,
}

async fn producer(
    args: RunArgs,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut client = connect(&args.endpoint).await?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let body = vec![b'x'; args.size];
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = if args.batch <= 1 {
            client
                .send_message(pb::SendMessageRequest {
                    queue: args.queue.clone(),
                    body: body.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| 1)
        } else {
            let entries = (0..args.batch)
                .map(|i| pb::SendMessageBatchEntry {
                    id: i.to_string(),
                    body: body.clone(),
                    ..Default::default()
                })
                .collect();
            client
                .send_message_batch(pb::SendMessageBatchRequest {
                    queue: args.queue.clone(),
                    entries,
                })
                .await
                .map(|r| r.into_inner().successful.len() as u64)
        };
        match result {
            Ok(n) => {
                latency.saturating_record(started.elapsed().as_micros() as u64);
                counters.sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(latency)
}

async fn consumer(
    args: RunArgs,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut client = connect(&args.endpoint).await?;
    while !stop.load(Ordering::Relaxed) {
        let got = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: args.queue.clone(),
                max_messages: 10,
                wait_time_seconds: Some(1),
                visibility_timeout_seconds: Some(60),
            })
            .await;
        let messages = match got {
            Ok(r) => r.into_inner().messages,
            Err(_) => {
                counters.receive_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| pb::DeleteMessageBatchEntry {
                id: i.to_string(),
                receipt_handle: m.receipt_handle.clone(),
            })
            .collect();
        if client
            .delete_message_batch(pb::DeleteMessageBatchRequest {
                queue: args.queue.clone(),
                entries,
            })
            .await
            .is_err()
        {
            counters.receive_errors.fetch_add(1, Ordering::Relaxed);
        }
        counters
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10).contains(&args.batch), "--batch must be 1 to 10");
    let mut admin = connect(&args.endpoint).await?;
    let created = admin
        .create_queue(pb::CreateQueueRequest {
            name: args.queue.clone(),
            ..Default::default()
        })
        .await;
    if let Err(status) = created {
        anyhow::ensure!(
            status.code() == tonic::Code::AlreadyExists,
            "cannot create queue {}: {}",
            args.queue,
            status.message()
        );
    }
    if !args.keep {
        admin
            .purge_queue(pb::PurgeQueueRequest {
                name: args.queue.clone(),
            })
            .await
            .context("cannot purge the bench queue")?;
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..args.producers)
        .map(|_| tokio::spawn(producer(args.clone(), counters.clone(), stop.clone())))
        .collect();
    let consumers: Vec<_> = (0..args.consumers)
        .map(|_| tokio::spawn(consumer(args.clone(), counters.clone(), stop.clone())))
        .collect();
    let started = Instant::now();
    let duration = Duration::from_secs(args.duration);
    let mut last = (0, 0);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1).min(duration.saturating_sub(started.elapsed())))
            .await;
        let now = (
            counters.sent.load(Ordering::Relaxed),
            counters.received.load(Ordering::Relaxed),
        );
        if !args.json {
            eprintln!(
                "{:>4.0}s  sent {:>8}/s  received {:>8}/s",
                started.elapsed().as_secs_f64(),
                now.0 - last.0,
                now.1 - last.1
            );
        }
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for p in producers {
        latency.add(p.await??)?;
    }
    for c in consumers {
        c.await??;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "producers": args.producers,
        "consumers": args.consumers,
        "message_bytes": args.size,
        "batch": args.batch,
        "seconds": elapsed,
        "sent": sent,
        "received": received,
        "sent_per_second": sent as f64 / elapsed,
        "received_per_second": received as f64 / elapsed,
        "send_requests": latency.len(),
        "send_errors": counters.send_errors.load(Ordering::Relaxed),
        "receive_errors": counters.receive_errors.load(Ordering::Relaxed),
        "send_latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": latency.max() as f64 / 1000.0 },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "producers {} consumers {} size {} B batch {} for {:.1} s",
            args.producers, args.consumers, args.size, args.batch, elapsed
        );
        println!(
            "sent      {:>10.0} msgs/s ({sent} messages, {} errors)",
            sent as f64 / elapsed,
            counters.send_errors.load(Ordering::Relaxed)
        );
        println!(
            "received  {:>10.0} msgs/s ({received} messages, {} errors)",
            received as f64 / elapsed,
            counters.receive_errors.load(Ordering::Relaxed)
        );
        println!(
            "send latency per request  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            latency.max() as f64 / 1000.0
        );
    }
    Ok(())
}

fn fsync_rate(dir: PathBuf, duration: u64, size: usize) -> anyhow::Result<()> {
    let path = dir.join(format!("sluice-bench-fsync-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let chunk = vec![b'x'; size];
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < Duration::from_secs(duration) {
        file.write_all(&chunk)?;
        file.sync_data()?;
        cycles += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    println!(
        "{:.0} append+fdatasync cycles/s ({cycles} in {elapsed:.1} s, {size} B each) in {}",
        cycles as f64 / elapsed,
        dir.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Fsync {
            dir,
            duration,
            size,
        } => fsync_rate(dir, duration, size),
    }
}

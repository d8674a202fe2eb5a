//! `sluice-bench`: load against a Sluice endpoint, and the disk's plain fsync rate to compare.
//!
//! `run` drives N producers and M consumers on one queue for a fixed time and reports the send
//! and receive rates and send latency percentiles. `drain` compares the consumer rate over a
//! small backlog with the rate over a large one. `fsync` measures how many append+fdatasync
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

// The same allocator as the server, so the load generator takes as little of a shared machine's
// CPU as it can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Consumer rate over a small backlog and over a large one: receive cost must not grow
    /// with the backlog.
    Drain(DrainArgs),
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
    /// Use a FIFO queue (its name must end in `.fifo`) with this many message groups; sends
    /// spread over the groups in turn, each with a unique deduplication id.
    #[arg(long)]
    groups: Option<usize>,
    /// Keep what is in the queue instead of purging it first, e.g. to consume a backlog that
    /// an earlier run with --consumers 0 left.
    #[arg(long)]
    keep: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Clone)]
struct DrainArgs {
    #[arg(long, env = "SLUICE_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    endpoint: String,
    #[arg(long, default_value = "bench-drain")]
    queue: String,
    /// Messages received and deleted in each measured drain.
    #[arg(long, default_value_t = 50_000)]
    measure: u64,
    /// The large backlog the second drain starts from.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Producers that fill the queue (batches of 10) before each drain.
    #[arg(long, default_value_t = 16)]
    producers: usize,
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
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

/// What the producers send, and where.
#[derive(Clone)]
struct Workload {
    endpoint: String,
    queue: String,
    size: usize,
    batch: usize,
    /// FIFO message groups; 0 for a standard queue.
    groups: usize,
}

/// What every producer and consumer of a phase shares.
#[derive(Clone)]
struct Load {
    work: Workload,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

/// The group and deduplication id of a producer's `n`th message; empty on a standard queue.
fn fifo_fields(work: &Workload, producer: usize, n: u64) -> (String, String) {
    if work.groups == 0 {
        return (String::new(), String::new());
    }
    let group = format!("g{}", (n as usize + producer) % work.groups);
    (group, format!("p{producer}-{n}"))
}

async fn producer(load: Load, index: usize) -> anyhow::Result<Histogram<u64>> {
    let work = &load.work;
    let mut client = connect(&work.endpoint).await?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let body = bytes::Bytes::from(vec![b'x'; work.size]);
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = if work.batch <= 1 {
            let (group_id, deduplication_id) = fifo_fields(work, index, n);
            n += 1;
            client
                .send_message(pb::SendMessageRequest {
                    queue: work.queue.clone(),
                    body: body.clone(),
                    group_id,
                    deduplication_id,
                    ..Default::default()
                })
                .await
                .map(|_| 1)
        } else {
            let entries = (0..work.batch)
                .map(|i| {
                    let (group_id, deduplication_id) = fifo_fields(work, index, n + i as u64);
                    pb::SendMessageBatchEntry {
                        id: i.to_string(),
                        body: body.clone(),
                        group_id,
                        deduplication_id,
                        ..Default::default()
                    }
                })
                .collect();
            n += work.batch as u64;
            client
                .send_message_batch(pb::SendMessageBatchRequest {
                    queue: work.queue.clone(),
                    entries,
                })
                .await
                .map(|r| r.into_inner().successful.len() as u64)
        };
        match result {
            Ok(n) => {
                latency.saturating_record(started.elapsed().as_micros() as u64);
                load.counters.sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                load.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(latency)
}

async fn consumer(load: Load) -> anyhow::Result<()> {
    let mut client = connect(&load.work.endpoint).await?;
    while !load.stop.load(Ordering::Relaxed) {
        let got = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: load.work.queue.clone(),
                max_messages: 10,
                wait_time_seconds: Some(1),
                visibility_timeout_seconds: Some(60),
            })
            .await;
        let messages = match got {
            Ok(r) => r.into_inner().messages,
            Err(_) => {
                load.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
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
                queue: load.work.queue.clone(),
                entries,
            })
            .await
            .is_err()
        {
            load.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
        }
        load.counters
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// What one phase of load measured.
struct PhaseResult {
    seconds: f64,
    sent: u64,
    received: u64,
    send_errors: u64,
    receive_errors: u64,
    send_latency: Histogram<u64>,
}

impl PhaseResult {
    fn sent_per_second(&self) -> f64 {
        self.sent as f64 / self.seconds
    }

    fn received_per_second(&self) -> f64 {
        self.received as f64 / self.seconds
    }

    fn latency_ms(&self, quantile: f64) -> f64 {
        self.send_latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs `producers` and `consumers` until `done(elapsed, counters)` holds, printing the rates
/// of every second on stderr when `progress` is set.
async fn phase(
    work: &Workload,
    (producers, consumers): (usize, usize),
    progress: bool,
    done: impl Fn(Duration, &Counters) -> bool,
) -> anyhow::Result<PhaseResult> {
    let load = Load {
        work: work.clone(),
        counters: Arc::new(Counters::default()),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let producer_tasks: Vec<_> = (0..producers)
        .map(|index| tokio::spawn(producer(load.clone(), index)))
        .collect();
    let consumer_tasks: Vec<_> = (0..consumers)
        .map(|_| tokio::spawn(consumer(load.clone())))
        .collect();
    let counters = &load.counters;
    let started = Instant::now();
    let mut last = (0, 0);
    let mut next_report = Duration::from_secs(1);
    while !done(started.elapsed(), counters) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if progress && started.elapsed() >= next_report {
            let now = (
                counters.sent.load(Ordering::Relaxed),
                counters.received.load(Ordering::Relaxed),
            );
            eprintln!(
                "{:>4}s  sent {:>8}/s  received {:>8}/s",
                next_report.as_secs(),
                now.0 - last.0,
                now.1 - last.1
            );
            last = now;
            next_report += Duration::from_secs(1);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    load.stop.store(true, Ordering::Relaxed);

    let mut send_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for p in producer_tasks {
        send_latency.add(p.await??)?;
    }
    for c in consumer_tasks {
        c.await??;
    }
    Ok(PhaseResult {
        seconds,
        sent,
        received,
        send_errors: counters.send_errors.load(Ordering::Relaxed),
        receive_errors: counters.receive_errors.load(Ordering::Relaxed),
        send_latency,
    })
}

/// Creates the queue if it is missing (FIFO when its name ends in `.fifo`); empties it unless
/// `keep`.
async fn prepare_queue(endpoint: &str, queue: &str, keep: bool) -> anyhow::Result<()> {
    let mut admin = connect(endpoint).await?;
    let created = admin
        .create_queue(pb::CreateQueueRequest {
            name: queue.to_owned(),
            attributes: Some(pb::QueueAttributes {
                fifo: queue.ends_with(".fifo"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    if let Err(status) = created {
        anyhow::ensure!(
            status.code() == tonic::Code::AlreadyExists,
            "cannot create queue {queue}: {}",
            status.message()
        );
    }
    if !keep {
        admin
            .purge_queue(pb::PurgeQueueRequest {
                name: queue.to_owned(),
            })
            .await
            .context("cannot purge the bench queue")?;
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10).contains(&args.batch), "--batch must be 1 to 10");
    let groups = args.groups.unwrap_or(0);
    anyhow::ensure!(args.groups != Some(0), "--groups must be at least 1");
    anyhow::ensure!(
        (groups > 0) == args.queue.ends_with(".fifo"),
        "--groups goes with a FIFO queue, whose name ends in .fifo (e.g. --queue bench.fifo)"
    );
    prepare_queue(&args.endpoint, &args.queue, args.keep).await?;
    let duration = Duration::from_secs(args.duration);
    let work = Workload {
        endpoint: args.endpoint.clone(),
        queue: args.queue.clone(),
        size: args.size,
        batch: args.batch,
        groups,
    };
    let result = phase(
        &work,
        (args.producers, args.consumers),
        !args.json,
        |elapsed, _| elapsed >= duration,
    )
    .await?;
    let report = serde_json::json!({
        "producers": args.producers,
        "consumers": args.consumers,
        "message_bytes": args.size,
        "batch": args.batch,
        "groups": groups,
        "seconds": result.seconds,
        "sent": result.sent,
        "received": result.received,
        "sent_per_second": result.sent_per_second(),
        "received_per_second": result.received_per_second(),
        "send_requests": result.send_latency.len(),
        "send_errors": result.send_errors,
        "receive_errors": result.receive_errors,
        "send_latency_ms": {
            "p50": result.latency_ms(0.5),
            "p99": result.latency_ms(0.99),
            "p999": result.latency_ms(0.999),
            "max": result.send_latency.max() as f64 / 1000.0,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "producers {} consumers {} size {} B batch {} for {:.1} s",
            args.producers, args.consumers, args.size, args.batch, result.seconds
        );
        if groups > 0 {
            println!("FIFO queue {} with {groups} message groups", args.queue);
        }
        println!(
            "sent      {:>10.0} msgs/s ({} messages, {} errors)",
            result.sent_per_second(),
            result.sent,
            result.send_errors
        );
        println!(
            "received  {:>10.0} msgs/s ({} messages, {} errors)",
            result.received_per_second(),
            result.received,
            result.receive_errors
        );
        println!(
            "send latency per request  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            result.latency_ms(0.5),
            result.latency_ms(0.99),
            result.latency_ms(0.999),
            result.send_latency.max() as f64 / 1000.0
        );
    }
    Ok(())
}

/// Fills an empty queue with `backlog` messages, then times consumers over the first
/// `args.measure` of them. Returns (fill msgs/s, drain msgs/s).
async fn drain_once(args: &DrainArgs, backlog: u64) -> anyhow::Result<(f64, f64)> {
    prepare_queue(&args.endpoint, &args.queue, false).await?;
    let work = Workload {
        endpoint: args.endpoint.clone(),
        queue: args.queue.clone(),
        size: args.size,
        batch: 10,
        groups: 0,
    };
    let fill = phase(&work, (args.producers, 0), false, |_, c| {
        c.sent.load(Ordering::Relaxed) >= backlog
    })
    .await?;
    anyhow::ensure!(
        fill.send_errors == 0,
        "{} sends failed while filling",
        fill.send_errors
    );
    let measure = args.measure;
    let drain = phase(&work, (0, args.consumers), false, |_, c| {
        c.received.load(Ordering::Relaxed) >= measure
    })
    .await?;
    anyhow::ensure!(
        drain.receive_errors == 0,
        "{} receives or deletes failed while draining",
        drain.receive_errors
    );
    if !args.json {
        eprintln!(
            "backlog {:>9}: filled at {:>8.0} msgs/s, drained {} at {:>8.0} msgs/s",
            fill.sent,
            fill.sent_per_second(),
            drain.received,
            drain.received_per_second()
        );
    }
    Ok((fill.sent_per_second(), drain.received_per_second()))
}

async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.backlog >= args.measure && args.measure > 0,
        "--backlog ({}) must be at least --measure ({}), which must be positive",
        args.backlog,
        args.measure
    );
    anyhow::ensure!(
        !args.queue.ends_with(".fifo"),
        "drain measures a standard queue; --queue must not end in .fifo"
    );
    let (_, small) = drain_once(&args, args.measure).await?;
    let (fill, large) = drain_once(&args, args.backlog).await?;
    // Leave no million-message queue behind.
    prepare_queue(&args.endpoint, &args.queue, false).await?;
    let report = serde_json::json!({
        "consumers": args.consumers,
        "message_bytes": args.size,
        "measured_messages": args.measure,
        "small_backlog": args.measure,
        "large_backlog": args.backlog,
        "fill_per_second": fill,
        "drain_small_backlog_per_second": small,
        "drain_large_backlog_per_second": large,
        "large_over_small": large / small,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} consumers draining {} messages: {:.0} msgs/s over a backlog of {}, {:.0} msgs/s over {} ({:.0}%)",
            args.consumers,
            args.measure,
            small,
            args.measure,
            large,
            args.backlog,
            100.0 * large / small
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
        Command::Drain(args) => drain(args).await,
        Command::Fsync {
            dir,
            duration,
            size,
        } => fsync_rate(dir, duration, size),
    }
}

//! `sluice-bench`: the same workload against Sluice, RabbitMQ or NATS JetStream, measured the
//! same way, in the manner of the OpenMessaging Benchmark.
//!
//! `run` drives one workload (a TOML file from `services/bench/workloads/`, flags override its
//! fields) through one driver and reports rates, backlog and latency percentiles, as text or
//! JSON, with PNG charts. `report` turns a folder of JSON results into a markdown table and
//! comparison charts. `fsync` measures the disk's plain append+fdatasync rate, the ceiling for
//! durable writes without group commit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use sluice_bench::driver::nats::NatsDriver;
use sluice_bench::driver::rabbitmq::{QueueType, RabbitDriver};
use sluice_bench::driver::sluice::SluiceDriver;
use sluice_bench::driver::sqs::SqsDriver;
use sluice_bench::driver::Driver;
use sluice_bench::noisy;
use sluice_bench::runner::{self, Report};
use sluice_bench::workload::{Noisy, Workload};
use sluice_bench::{chart, table};
use sluice_proto::v1 as pb;

// The same allocator as the server, so the load generator takes as little of a shared machine's
// CPU as it can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sluice-bench", version, about = "Message queue benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one workload against one system.
    Run(Box<RunArgs>),
    /// Markdown tables and comparison charts from the JSON results in a folder.
    Report {
        /// Folder holding `run --out` results.
        dir: PathBuf,
    },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DriverKind {
    Sluice,
    /// Sluice through its SQS endpoint, with the AWS SDK for Rust.
    Sqs,
    Rabbitmq,
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Replication {
    Sync,
    Async,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Workload file; without one, the flags below (and their defaults) make the workload.
    #[arg(long, short)]
    workload: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "sluice")]
    driver: DriverKind,
    /// Server addresses, comma-separated; clients are spread over them. Defaults:
    /// http://127.0.0.1:7070 (sluice), http://127.0.0.1:9324 (sqs),
    /// amqp://guest:guest@127.0.0.1:5672/%2f (rabbitmq), nats://127.0.0.1:4222 (nats).
    #[arg(long = "url", alias = "endpoint", value_delimiter = ',')]
    urls: Vec<String>,
    /// Sluice: how queues replicate in a cluster.
    #[arg(long, value_enum, default_value = "sync")]
    replication: Replication,
    /// SQS: the region requests are signed for (the endpoint's `sqs_region`).
    #[arg(long, default_value = "us-east-1")]
    sqs_region: String,
    /// Sluice: FIFO queues with this many message groups, sends spread over them in turn.
    #[arg(long)]
    groups: Option<usize>,
    /// RabbitMQ: the queue type.
    #[arg(long, value_enum, default_value = "quorum")]
    queue_type: QueueType,
    /// NATS: stream replicas.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Name of the system in reports; defaults to the driver and its settings.
    #[arg(long)]
    system: Option<String>,

    /// Overrides the workload's name.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    queues: Option<usize>,
    /// Producers per queue.
    #[arg(long)]
    producers: Option<usize>,
    /// Consumers per queue.
    #[arg(long)]
    consumers: Option<usize>,
    /// Message size in bytes.
    #[arg(long)]
    size: Option<usize>,
    /// Messages per send request.
    #[arg(long)]
    batch: Option<usize>,
    /// Messages per second over all producers; 0 for as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// Send requests in flight per producer.
    #[arg(long)]
    in_flight: Option<usize>,
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Fill the queues with this many messages first, then measure draining them.
    #[arg(long)]
    backlog: Option<u64>,
    /// Sets the rate to --rate-fraction of the consume rate in this earlier result (a
    /// `--json` or `--out` file), e.g. half of what the same system reached at maximum rate.
    #[arg(long, conflicts_with = "rate")]
    rate_from: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5, requires = "rate_from")]
    rate_fraction: f64,
    /// Gives up on a backlog workload whose fill takes longer than this.
    #[arg(long, value_parser = humantime::parse_duration)]
    fill_timeout: Option<Duration>,

    /// Print the result as one JSON object (without the time series unless --series).
    #[arg(long)]
    json: bool,
    /// Include the per-second series in --json output.
    #[arg(long)]
    series: bool,
    /// Write the full JSON result and its charts into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TLS to Sluice: over it with a CA or client certificate given or an https:// URL.
    #[command(flatten)]
    tls: sluice_common::tls::ClientFlags,
    /// Sluice: create the queues with encryption at rest on or off [default: the server's].
    #[arg(long)]
    encrypt: Option<bool>,
    /// The access key to present to Sluice.
    #[command(flatten)]
    credentials: sluice_common::credentials::CredentialFlags,
}

impl RunArgs {
    fn workload(&self) -> anyhow::Result<Workload> {
        let mut w = match &self.workload {
            Some(path) => Workload::load(path)?,
            None => toml::from_str("name = \"custom\"").expect("a name is a workload"),
        };
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        if let Some(name) = &self.name {
            w.name = name.clone();
        }
        set(&mut w.queues, self.queues);
        set(&mut w.producers_per_queue, self.producers);
        set(&mut w.consumers_per_queue, self.consumers);
        set(&mut w.message_size, self.size);
        set(&mut w.batch_size, self.batch);
        set(&mut w.max_in_flight, self.in_flight);
        w.rate = self.rate.unwrap_or(w.rate);
        if let Some(path) = &self.rate_from {
            let earlier: Report = serde_json::from_slice(
                &std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            )
            .with_context(|| format!("{} is not a sluice-bench result", path.display()))?;
            anyhow::ensure!(self.rate_fraction > 0.0, "--rate-fraction must be positive");
            w.rate = (earlier.consume_rate * self.rate_fraction).round() as u64;
            anyhow::ensure!(
                w.rate > 0,
                "{} consumed nothing, so it gives no rate",
                path.display()
            );
        }
        w.warmup = self.warmup.unwrap_or(w.warmup);
        w.duration = self.duration.unwrap_or(w.duration);
        w.backlog = self.backlog.unwrap_or(w.backlog);
        w.validate()?;
        Ok(w)
    }

    fn urls(&self, default: &str) -> Vec<String> {
        if self.urls.is_empty() {
            vec![default.to_owned()]
        } else {
            self.urls.clone()
        }
    }

    /// The driver and the system's name in reports.
    fn driver(&self) -> anyhow::Result<(Box<dyn Driver>, String)> {
        anyhow::ensure!(
            self.groups.is_none() || self.driver == DriverKind::Sluice,
            "--groups (FIFO message groups) is for the sluice driver"
        );
        anyhow::ensure!(self.groups != Some(0), "--groups must be at least 1");
        let (driver, name): (Box<dyn Driver>, String) = match self.driver {
            DriverKind::Sluice => {
                let urls = self.urls("http://127.0.0.1:7070");
                let listed: Vec<&str> = urls.iter().map(String::as_str).collect();
                self.tls.install(&listed)?;
                self.credentials.install()?;
                let replication = match self.replication {
                    Replication::Sync => pb::Replication::Sync,
                    Replication::Async => pb::Replication::Async,
                };
                let name = match (urls.len(), self.replication) {
                    (1, _) => "Sluice".to_owned(),
                    (_, Replication::Sync) => "Sluice SYNC".to_owned(),
                    (_, Replication::Async) => "Sluice ASYNC".to_owned(),
                };
                let groups = self.groups.unwrap_or(0);
                let driver =
                    SluiceDriver::new(urls, replication, groups).with_encryption(self.encrypt);
                (Box::new(driver), name)
            }
            DriverKind::Sqs => {
                anyhow::ensure!(
                    self.replication == Replication::Sync && self.encrypt.is_none(),
                    "the sqs driver makes queues with the server's defaults: leave out \
                     --replication and --encrypt"
                );
                let urls = self.urls("http://127.0.0.1:9324");
                // An endpoint that lets callers in without credentials takes any key.
                let key = match (
                    &self.credentials.access_key_id,
                    &self.credentials.secret_access_key,
                ) {
                    (Some(id), Some(secret)) => (id.clone(), secret.clone()),
                    _ => ("sluice-bench".to_owned(), "sluice-bench".to_owned()),
                };
                let driver = SqsDriver::new(
                    &urls,
                    (&key.0, &key.1),
                    &self.sqs_region,
                    self.tls.ca_cert.clone(),
                )?;
                (Box::new(driver), "Sluice over SQS".to_owned())
            }
            DriverKind::Rabbitmq => {
                let urls = self.urls("amqp://guest:guest@127.0.0.1:5672/%2f");
                let name = format!(
                    "RabbitMQ {}",
                    self.queue_type
                        .to_possible_value()
                        .expect("no skipped variants")
                        .get_name()
                );
                (Box::new(RabbitDriver::new(urls, self.queue_type)), name)
            }
            DriverKind::Nats => {
                anyhow::ensure!(
                    (1..=5).contains(&self.replicas),
                    "--replicas must be 1 to 5 (JetStream's limit), not {}",
                    self.replicas
                );
                let urls = self.urls("nats://127.0.0.1:4222");
                let name = format!("NATS JetStream R{}", self.replicas);
                (Box::new(NatsDriver::new(urls, self.replicas)), name)
            }
        };
        Ok((driver, self.system.clone().unwrap_or(name)))
    }
}

fn print_report(report: &Report) {
    let w = &report.workload;
    println!(
        "{} on {}: {} queue(s), {} producer(s) and {} consumer(s) per queue, {} B, batches of {}, {}",
        report.system,
        w.name,
        w.queues,
        w.producers_per_queue,
        w.consumers_per_queue,
        w.message_size,
        w.batch_size,
        if w.rate == 0 {
            "maximum rate".to_owned()
        } else {
            format!("{} msgs/s", w.rate)
        }
    );
    if let Some(fill) = &report.fill {
        println!(
            "filled     {:>10.0} msgs/s ({} messages in {:.1} s)",
            fill.rate, fill.messages, fill.seconds
        );
        println!(
            "drained    {:>10.0} msgs/s ({} messages in {:.1} s, {} errors)",
            report.consume_rate, report.consumed, report.seconds, report.consume_errors
        );
    } else {
        println!(
            "published  {:>10.0} msgs/s ({} messages in {:.1} s, {} errors)",
            report.publish_rate, report.published, report.seconds, report.publish_errors
        );
        println!(
            "consumed   {:>10.0} msgs/s ({} messages, {} errors), backlog at the end {}",
            report.consume_rate, report.consumed, report.consume_errors, report.backlog
        );
        let p = &report.publish_latency_ms;
        println!(
            "publish latency     p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms",
            p.p50, p.p99, p.p999, p.max
        );
    }
    let e = &report.end_to_end_latency_ms;
    println!(
        "end-to-end latency  p50 {:>8.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms",
        e.p50, e.p99, e.p999, e.max
    );
}

/// A noisy-neighbour workload: the well-behaved caller alone, then beside the noisy one, and a
/// table of what it kept.
async fn run_noisy(args: &RunArgs, workload: &Workload, noisy: &Noisy) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.driver == DriverKind::Sluice,
        "a noisy-neighbour workload names its callers, which only the sluice driver does"
    );
    let urls = args.urls("http://127.0.0.1:7070");
    let listed: Vec<&str> = urls.iter().map(String::as_str).collect();
    args.tls.install(&listed)?;
    args.credentials.install()?;
    let replication = match args.replication {
        Replication::Sync => pb::Replication::Sync,
        Replication::Async => pb::Replication::Async,
    };
    let groups = args.groups.unwrap_or(0);
    let quiet =
        SluiceDriver::new(urls.clone(), replication, groups).with_client_id("bench-quiet")?;
    let loud = SluiceDriver::new(urls, replication, groups).with_client_id("bench-noisy")?;
    let options = runner::Options {
        progress: !args.json,
        fill_timeout: None,
    };
    let system = args.system.clone().unwrap_or_else(|| "Sluice".to_owned());
    let alone = runner::run(workload, &quiet, &format!("{system}, alone"), &options).await?;
    let load = noisy::start(workload, noisy, &loud).await?;
    let beside = runner::run(
        workload,
        &quiet,
        &format!("{system}, beside a noisy caller"),
        &options,
    )
    .await;
    let outcome = load.stop(&loud).await?;
    let beside = beside?;
    let refused = loud.throttled();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "alone": summary(&alone),
                "beside_noisy": summary(&beside),
                "noisy": outcome,
                "noisy_refused": refused,
            })
        );
        return Ok(());
    }
    println!(
        "{} ({} B, batches of {}, {} msgs/s): the well-behaved caller alone and beside a caller \
         with {} producers sending as fast as it can",
        workload.name, workload.message_size, workload.batch_size, workload.rate, noisy.producers
    );
    println!("| well-behaved caller | published msgs/s | consumed msgs/s | publish p50 ms | publish p99 ms | end-to-end p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, report) in [("alone", &alone), ("beside the noisy caller", &beside)] {
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            report.publish_rate,
            report.consume_rate,
            report.publish_latency_ms.p50,
            report.publish_latency_ms.p99,
            report.end_to_end_latency_ms.p99,
            report.publish_errors + report.consume_errors
        );
    }
    println!(
        "noisy caller: {:.0} msgs/s stored ({} messages in {:.1} s), {refused} sends refused for a \
         limit and retried, {} failed",
        outcome.rate, outcome.sent, outcome.seconds, outcome.errors
    );
    Ok(())
}

/// A report's figures without its series, for `--json`.
fn summary(report: &Report) -> serde_json::Value {
    let mut value = serde_json::to_value(report).expect("a report serializes");
    value
        .as_object_mut()
        .expect("a report is an object")
        .remove("series");
    value
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let workload = args.workload()?;
    if let Some(noisy) = workload.noisy.clone() {
        return run_noisy(&args, &workload, &noisy).await;
    }
    let (driver, system) = args.driver()?;
    let options = runner::Options {
        progress: !args.json,
        fill_timeout: args.fill_timeout,
    };
    let report = runner::run(&workload, driver.as_ref(), &system, &options).await?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let stem = chart::file_stem(&format!("{} {}", workload.name, system));
        let path = dir.join(format!("{stem}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        chart::run_charts(&report, dir)?;
    }
    if args.json {
        let value = if args.series {
            serde_json::to_value(&report)?
        } else {
            summary(&report)
        };
        println!("{value}");
    } else {
        print_report(&report);
    }
    Ok(())
}

fn report(dir: &Path) -> anyhow::Result<()> {
    let reports = table::load(dir)?;
    anyhow::ensure!(!reports.is_empty(), "no results in {}", dir.display());
    print!("{}", table::markdown(&reports));
    for (workload, bars) in table::bars(&reports) {
        let path = dir.join(format!("{}-comparison.png", chart::file_stem(&workload)));
        chart::bar_chart(&path, &format!("{workload}: msgs/s"), "messages / s", &bars)?;
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
        Command::Run(args) => run(*args).await,
        Command::Report { dir } => report(&dir),
        Command::Fsync {
            dir,
            duration,
            size,
        } => fsync_rate(dir, duration, size),
    }
}

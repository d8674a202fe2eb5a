//! `sluice-manager`: one manager instance; run two or more, one leads.

use std::process::ExitCode;

use clap::Parser;
use sluice_common::config::ServiceArgs;
use sluice_manager::ManagerOpts;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults.
#[derive(Parser)]
#[command(name = "sluice-manager", version, about = "A Sluice manager")]
struct Cli {
    #[command(flatten)]
    args: ServiceArgs<Flags>,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// High-water mark: a cluster storing more bytes takes no new queues [default: none]
    #[arg(long)]
    max_bytes_stored: Option<u64>,
    /// High-water mark: a cluster moving more messages/s (in + out) takes no new queues
    /// [default: none]
    #[arg(long)]
    max_messages_per_second: Option<f64>,
    /// Low-water mark: a cluster with less free disk takes no new queues [default: none]
    #[arg(long)]
    min_disk_free_bytes: Option<u64>,
    /// How often the leader advances queue moves, in ms [default: 1000]
    #[arg(long)]
    move_interval_ms: Option<u64>,
    /// A member whose load report is older than this makes its cluster's load unknown (no new
    /// queues there), in ms [default: 10000]
    #[arg(long)]
    stale_report_ms: Option<u64>,
    /// Score weight of the leader's CPU use [default: 1]
    #[arg(long)]
    weight_cpu: Option<f64>,
    /// Score weight of messages per second [default: 1]
    #[arg(long)]
    weight_messages: Option<f64>,
    /// Score weight of message bytes per second [default: 1]
    #[arg(long)]
    weight_bytes: Option<f64>,
    /// Score weight of bytes stored [default: 0.5]
    #[arg(long)]
    weight_storage: Option<f64>,
    /// Score weight of commit time [default: 0.5]
    #[arg(long)]
    weight_latency: Option<f64>,
    /// Messages per second (in and out) a cluster handles at full load [default: 40000]
    #[arg(long)]
    capacity_messages_per_second: Option<f64>,
    /// Message bytes per second a cluster handles at full load [default: 100000000]
    #[arg(long)]
    capacity_bytes_per_second: Option<f64>,
    /// Bytes a node stores at full load [default: 536870912000]
    #[arg(long)]
    capacity_bytes_stored: Option<u64>,
    /// Commit time counted as full load, in seconds [default: 0.05]
    #[arg(long)]
    capacity_commit_seconds: Option<f64>,
    /// How far over the fleet's mean score a cluster is hot [default: 0.1]
    #[arg(long)]
    rebalance_threshold: Option<f64>,
    /// How long a cluster stays hot before it sheds queues, in ms [default: 60000]
    #[arg(long)]
    rebalance_sustain_ms: Option<u64>,
    /// Moves the rebalancer starts in any minute, at most [default: 6]
    #[arg(long)]
    rebalance_moves_per_minute: Option<u32>,
    /// A queue that moved is not moved again for this long, in ms [default: 600000]
    #[arg(long)]
    rebalance_queue_rest_ms: Option<u64>,
    /// How often the leader's rebalancer looks, in ms [default: 5000]
    #[arg(long)]
    rebalance_interval_ms: Option<u64>,
}

async fn run(args: ServiceArgs<Flags>) -> anyhow::Result<()> {
    let opts = args.load(&ManagerOpts::default())?;
    let otlp = opts.service.otlp_endpoint.clone();
    sluice_common::service::run(
        "sluice-manager",
        args.log_json,
        otlp,
        |shutdown| async move {
            let manager = sluice_manager::start(&opts, shutdown).await?;
            // A machine-readable line on stdout: scripts and tests wait for it to know the ports.
            println!(
                "sluice-manager ready: grpc={} admin={}",
                manager.grpc_addr, manager.admin_addr
            );
            manager.wait().await
        },
    )
    .await
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

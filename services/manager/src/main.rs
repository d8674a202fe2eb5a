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
#[command(
    name = "sluice-manager",
    version,
    about = "A Sluice manager",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ServiceArgs<Flags>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Runs the manager's placement and rebalancing functions over a simulated fleet and prints
    /// how balanced it stays, hour by hour, and the moves that took (docs/placement.md)
    Simulate(SimArgs),
}

/// The simulated fleet and the rebalancer's settings for it; the score is the manager's
/// default.
#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    #[arg(long, default_value_t = 1_000_000)]
    queues: usize,
    /// Simulated hours
    #[arg(long, default_value_t = 72)]
    hours: u32,
    /// The exponent of the queues' Zipf rates
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// The mean cluster's messages part (in and out over its capacity)
    #[arg(long, default_value_t = 0.5)]
    mean_load: f64,
    /// Simulated seconds between two rebalancing rounds
    #[arg(long, default_value_t = 60)]
    round_seconds: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The largest share of a cluster's message capacity one partition of a queue carries
    #[arg(long, default_value_t = 0.1)]
    partition_share: f64,
    /// Clusters added empty, as HOUR:COUNT; repeatable
    #[arg(long, value_parser = hour_count, default_values = ["24:100"])]
    add: Vec<(u32, usize)>,
    /// Clusters lost, as HOUR:COUNT; repeatable
    #[arg(long, value_parser = hour_count, default_values = ["36:50"])]
    lose: Vec<(u32, usize)>,
    /// The share of queues deleted and replaced by new ones each hour
    #[arg(long, default_value_t = 0.002)]
    churn_per_hour: f64,
    #[arg(long, default_value_t = 0.03)]
    rebalance_threshold: f64,
    #[arg(long, default_value_t = 300_000)]
    rebalance_sustain_ms: u64,
    #[arg(long, default_value_t = 100)]
    rebalance_moves_per_minute: u32,
    #[arg(long, default_value_t = 3_600_000)]
    rebalance_queue_rest_ms: u64,
    /// Print JSON: every hour and the summary
    #[arg(long)]
    json: bool,
    /// Draw the run into PLOT-balance.png and PLOT-moves.png
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

fn hour_count(text: &str) -> Result<(u32, usize), String> {
    let (hour, count) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HOUR:COUNT"))?;
    let hour = hour
        .parse()
        .map_err(|_| format!("{hour:?} is not an hour"))?;
    let count = count
        .parse()
        .map_err(|_| format!("{count:?} is not a count"))?;
    Ok((hour, count))
}

fn simulate(args: SimArgs) -> anyhow::Result<()> {
    use sluice_manager::rebalance::RebalanceOpts;
    use sluice_manager::simulate::{self, SimOpts};
    let opts = SimOpts {
        clusters: args.clusters,
        queues: args.queues,
        hours: args.hours,
        zipf_exponent: args.zipf_exponent,
        mean_load: args.mean_load,
        round_seconds: args.round_seconds,
        seed: args.seed,
        partition_share: args.partition_share,
        add: args.add,
        lose: args.lose,
        churn_per_hour: args.churn_per_hour,
        score: Default::default(),
        rebalance: RebalanceOpts {
            rebalance_threshold: args.rebalance_threshold,
            rebalance_sustain_ms: args.rebalance_sustain_ms,
            rebalance_moves_per_minute: args.rebalance_moves_per_minute,
            rebalance_queue_rest_ms: args.rebalance_queue_rest_ms,
            rebalance_interval_ms: args.round_seconds * 1000,
        },
        limits: Default::default(),
    };
    opts.validate()?;
    if !args.json {
        println!(
            "{:>5} {:>8} {:>6} {:>8} {:>8} {:>7} {:>10} {:>7}",
            "hour", "clusters", "mean", "max/mean", "worst", "moves", "GB moved", "placed"
        );
    }
    let started = std::time::Instant::now();
    let (rows, summary) = simulate::run(&opts, |row| {
        if !args.json {
            println!(
                "{:>5} {:>8} {:>6.3} {:>8.3} {:>8.3} {:>7} {:>10.1} {:>7}",
                row.hour,
                row.clusters,
                row.mean_score,
                row.max_over_mean,
                row.worst_max_over_mean,
                row.moves,
                row.bytes_moved / 1e9,
                row.placed
            );
        }
    });
    if let Some(plot) = &args.plot {
        simulate::plot(&rows, plot)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "hours": rows, "summary": summary })
        );
    } else {
        println!(
            "{} queues in {} partitions over {} clusters; the last {} hours: max/mean median {:.3}, \
             worst {:.3}; {:.1} moves and {:.1} GB moved an hour; {} moves in all ({:.0} s)",
            opts.queues,
            summary.partitions,
            opts.clusters,
            summary.steady_hours,
            summary.steady_median_max_over_mean,
            summary.steady_worst_max_over_mean,
            summary.steady_moves_per_hour,
            summary.steady_bytes_moved_per_hour / 1e9,
            summary.total_moves,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
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
    /// A drained sealed partition is removed only this long after its seal, in ms, so it still
    /// answers a client's retry by deduplication id; match the backends' dedup window
    /// [default: 300000]
    #[arg(long)]
    sealed_keep_ms: Option<u64>,
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
    /// A queue gets another active partition on another cluster when its messages/s (in +
    /// out) per partition pass this share of capacity_messages_per_second; 0: never
    /// [default: 0.1]
    #[arg(long)]
    partition_share: Option<f64>,
    /// Active partitions one queue has at most [default: 8]
    #[arg(long)]
    max_partitions: Option<u32>,
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
    let cli = Cli::parse();
    let done = match cli.command {
        Some(Command::Simulate(args)) => simulate(args),
        None => run(cli.args).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

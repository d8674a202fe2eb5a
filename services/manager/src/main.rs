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

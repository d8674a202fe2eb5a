//! `sluice-manager`: one manager instance; run two or more, one leads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_manager::ManagerOpts;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults shown.
#[derive(Parser)]
#[command(name = "sluice-manager", version, about = "A Sluice manager")]
struct Args {
    /// TOML file with any of the settings below (snake_case names).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Address of ManagerService [default: 127.0.0.1:7090]
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:7091]
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// etcd client URL; repeatable; required
    #[arg(long = "etcd")]
    etcd_endpoints: Vec<String>,
    /// Root prefix of Sluice's keys in etcd [default: /sluice/]
    #[arg(long)]
    etcd_root: Option<String>,
    /// URL other tiers reach this manager at [default: http:// + the bound gRPC address]
    #[arg(long)]
    advertise_url: Option<String>,
    /// OTLP/gRPC trace collector [default: none]
    #[arg(long)]
    otlp_endpoint: Option<String>,
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
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts: ManagerOpts =
        sluice_common::config::load(&ManagerOpts::default(), args.config.as_deref(), &args.flags)?;
    let otlp = opts.otlp_endpoint.clone();
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
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

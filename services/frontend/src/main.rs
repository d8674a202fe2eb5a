//! `sluice-frontend`: the public API of the distributed deployment; run several behind a load
//! balancer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_frontend::node::{self, FrontendOpts};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults shown.
#[derive(Parser)]
#[command(name = "sluice-frontend", version, about = "A Sluice frontend")]
struct Args {
    /// TOML file with any of the settings below (snake_case names), and a [rate_limits] table
    /// (README, "Limits").
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
    /// Address of the public QueueService [default: 127.0.0.1:7070]
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:7071]
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// gRPC URL of a metadata node; repeatable; required
    #[arg(long = "metadata")]
    metadata_endpoints: Vec<String>,
    /// OTLP/gRPC trace collector [default: none]
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Milliseconds a queue record stays cached [default: 1000]
    #[arg(long)]
    metadata_cache_ttl_ms: Option<u64>,
    /// Calls to backends in flight at most [default: 4096]
    #[arg(long)]
    max_backend_calls: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    tls: sluice_common::config::TlsFlags,
    #[command(flatten)]
    #[serde(flatten)]
    auth: sluice_frontend::auth::AuthFlags,
    #[command(flatten)]
    #[serde(flatten)]
    sqs: sluice_frontend::sqs::SqsFlags,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts: FrontendOpts = sluice_common::config::load(
        &FrontendOpts::default(),
        args.config.as_deref(),
        &args.flags,
    )?;
    let otlp = opts.service.otlp_endpoint.clone();
    sluice_common::service::run(
        "sluice-frontend",
        args.log_json,
        otlp,
        |shutdown| async move {
            let frontend = node::start(&opts, shutdown).await?;
            // A machine-readable line on stdout: scripts and tests wait for it to know the ports.
            println!(
                "sluice-frontend ready: grpc={} admin={} sqs={}",
                frontend.grpc_addr, frontend.admin_addr, frontend.sqs_addr
            );
            frontend.wait().await
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

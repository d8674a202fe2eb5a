//! `sluice-metadata`: one node of the metadata ring.

use std::process::ExitCode;

use clap::Parser;
use sluice_common::config::ServiceArgs;
use sluice_metadata::MetadataOpts;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults.
#[derive(Parser)]
#[command(name = "sluice-metadata", version, about = "A Sluice metadata node")]
struct Cli {
    #[command(flatten)]
    args: ServiceArgs<Flags>,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// This node's name on the ring, unique among metadata nodes [default: m1]
    #[arg(long)]
    node_id: Option<String>,
    /// Queue records kept cached [default: 100000]
    #[arg(long)]
    cache_capacity: Option<u64>,
}

async fn run(args: ServiceArgs<Flags>) -> anyhow::Result<()> {
    let opts = args.load(&MetadataOpts::default())?;
    let otlp = opts.service.otlp_endpoint.clone();
    sluice_common::service::run(
        "sluice-metadata",
        args.log_json,
        otlp,
        |shutdown| async move {
            let node = sluice_metadata::start(&opts, shutdown).await?;
            // A machine-readable line on stdout: scripts and tests wait for it to know the ports.
            println!(
                "sluice-metadata ready: grpc={} admin={} node={}",
                node.grpc_addr, node.admin_addr, opts.node_id
            );
            node.wait().await
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

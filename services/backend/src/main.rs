//! `sluice-backend`: one node of a backend cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_backend::node::{self, NodeOpts};

// The same allocator as `sluice standalone`: glibc's arenas cost a tenth of the CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults shown.
#[derive(Parser)]
#[command(name = "sluice-backend", version, about = "A Sluice backend node")]
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
    /// Where messages are stored [default: ./sluice-backend-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of BackendService [default: 127.0.0.1:7080]
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:7081]
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// The cluster this node belongs to [default: a]
    #[arg(long)]
    cluster: Option<String>,
    /// This node's name in its cluster [default: a1]
    #[arg(long)]
    node_id: Option<String>,
    /// etcd client URL; repeatable [default: none, the node registers nowhere]
    #[arg(long = "etcd")]
    etcd_endpoints: Vec<String>,
    /// Root prefix of Sluice's keys in etcd [default: /sluice/]
    #[arg(long)]
    etcd_root: Option<String>,
    /// URL other tiers reach this node at [default: http:// + the bound gRPC address]
    #[arg(long)]
    advertise_url: Option<String>,
    /// OTLP/gRPC trace collector [default: none]
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Seconds a deduplication id is remembered [default: 300]
    #[arg(long)]
    dedup_window_seconds: Option<u64>,
    /// Milliseconds between load reports to etcd [default: 2000]
    #[arg(long)]
    load_report_interval_ms: Option<u64>,
}

impl Args {
    fn options(&self) -> anyhow::Result<NodeOpts> {
        sluice_common::config::load(&NodeOpts::default(), self.config.as_deref(), &self.flags)
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts = args.options()?;
    let otlp = opts.otlp_endpoint.clone();
    sluice_common::service::run(
        "sluice-backend",
        args.log_json,
        otlp,
        |shutdown| async move {
            let node = node::start(&opts, shutdown).await?;
            // A machine-readable line on stdout: scripts and tests wait for it to know the ports.
            println!(
                "sluice-backend ready: grpc={} admin={} cluster={} node={}",
                node.grpc_addr, node.admin_addr, opts.cluster, opts.node_id
            );
            node.wait().await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment's Jail fixes the closure's error type; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    fn flags_override_env_override_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "cluster = \"b\"\nnode_id = \"b1\"\netcd_endpoints = [\"http://file:2379\"]\n",
            )?;
            jail.set_env("SLUICE_NODE_ID", "b2");
            let args = Args::parse_from([
                "sluice-backend",
                "--config",
                "node.toml",
                "--grpc-addr",
                "127.0.0.1:9080",
                "--etcd",
                "http://flag:2379",
            ]);
            let opts = args.options().unwrap();
            assert_eq!(opts.cluster, "b");
            assert_eq!(opts.node_id, "b2");
            assert_eq!(opts.grpc_addr, "127.0.0.1:9080".parse().unwrap());
            assert_eq!(opts.etcd_endpoints, ["http://flag:2379"]);
            assert_eq!(opts.data_dir, NodeOpts::default().data_dir);
            Ok(())
        });
    }
}

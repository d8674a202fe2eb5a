//! The `sluice-backend` command line, shared by the two binaries: `sluice-backend` and, built
//! only with the `failpoints` feature, `sluice-backend-failpoints` for tests that crash a node
//! at a chosen step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_common::config::ServiceArgs;

use crate::node::{self, NodeOpts};

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults.
#[derive(Parser)]
#[command(name = "sluice-backend", version, about = "A Sluice backend node")]
pub struct Cli {
    #[command(flatten)]
    args: ServiceArgs<Flags>,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Where messages are stored [default: ./sluice-backend-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The cluster this node belongs to [default: a]
    #[arg(long)]
    cluster: Option<String>,
    /// This node's name in its cluster [default: a1]
    #[arg(long)]
    node_id: Option<String>,
    /// Seconds a deduplication id is remembered [default: 300]
    #[arg(long)]
    dedup_window_seconds: Option<u64>,
    /// Milliseconds between load reports to etcd [default: 2000]
    #[arg(long)]
    load_report_interval_ms: Option<u64>,
    /// Log entries applied between two snapshots of the engine, after each of which the log is
    /// purged [default: 10000]
    #[arg(long)]
    raft_snapshot_logs: Option<u64>,
    /// How many log entries (group commits) the leader may hold that a majority does not,
    /// before ASYNC sends wait for the followers: what a leader's crash can lose of them; 0 for
    /// no bound [default: 256]
    #[arg(long)]
    async_max_lag_entries: Option<u64>,
    /// Bytes kept free on the data directory's disk: below it sends are refused with
    /// RESOURCE_EXHAUSTED while receives and deletes go on; 0 for none [default: 268435456]
    #[arg(long)]
    min_free_disk_bytes: Option<u64>,
    /// The members of a new replicated cluster, as name=url, the same list on each member
    /// (comma-separated); without it a node forms a cluster of its own
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Start without forming a cluster, to be added to a running one with
    /// `sluice admin cluster add-node`
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    join: bool,
}

async fn run(args: ServiceArgs<Flags>) -> anyhow::Result<()> {
    let opts = args.load(&NodeOpts::default())?;
    let otlp = opts.service.otlp_endpoint.clone();
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

/// Parses the command line and runs the node until it has stopped.
#[tokio::main]
pub async fn main() -> ExitCode {
    match run(Cli::parse().args).await {
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
            let args = Cli::parse_from([
                "sluice-backend",
                "--config",
                "node.toml",
                "--grpc-addr",
                "127.0.0.1:9080",
                "--etcd",
                "http://flag:2379",
            ]);
            let opts = args.args.load(&NodeOpts::default()).unwrap();
            assert_eq!(opts.cluster, "b");
            assert_eq!(opts.node_id, "b2");
            assert_eq!(opts.service.grpc_addr, "127.0.0.1:9080".parse().unwrap());
            assert_eq!(opts.etcd.etcd_endpoints, ["http://flag:2379"]);
            assert_eq!(opts.data_dir, NodeOpts::default().data_dir);
            Ok(())
        });
    }
}

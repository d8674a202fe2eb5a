//! The `sluice` command: runs the standalone server and talks to any Sluice endpoint.

mod certs;
mod chaos;
mod client;
mod dev;
mod monitoring;
mod standalone;
mod top;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{AdminCommand, ClientCommand};
use crate::standalone::StandaloneOpts;

// glibc's allocator spent a tenth of the server's CPU under load (arena locks, consolidation);
// mimalloc's thread-local free lists avoid both.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a durable SQS-style message queue"
)]
struct Cli {
    /// The Sluice gRPC endpoint of the client commands.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    endpoint: String,
    /// Print results as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    tls: sluice_common::tls::ClientFlags,
    #[command(flatten)]
    credentials: sluice_common::credentials::CredentialFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run frontend, queue engine and metadata store in one process.
    // Boxed: its many settings would make every other command as large.
    Standalone(Box<StandaloneArgs>),
    /// Operate the distributed deployment.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Run the distributed deployment on this machine, for development.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// A live terminal view of a deployment: services, cluster leaders, lag, rates, backlog.
    Top(top::TopArgs),
    /// The Grafana dashboards and Prometheus alert rules.
    #[command(subcommand)]
    Monitoring(monitoring::MonitoringCommand),
    /// Run the local cluster under load, SIGKILL its parts on a schedule, and check that no
    /// acknowledged message was lost. Exits with 1 if one was.
    Chaos(chaos::ChaosArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// Settings come from flags, over `SLUICE_<SETTING>` environment variables, over the config
/// file, over the defaults shown.
#[derive(clap::Args)]
struct StandaloneArgs {
    /// TOML file with data_dir, grpc_addr, admin_addr, otlp_endpoint, dedup_window_seconds,
    /// min_free_disk_bytes, drain_seconds and a [rate_limits] table (README, "Limits").
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    flags: StandaloneFlags,
}

#[derive(clap::Args, serde::Serialize, Default)]
struct StandaloneFlags {
    /// Where messages and metadata are stored [default: ./sluice-data; env: SLUICE_DATA_DIR]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the gRPC API [default: 127.0.0.1:7070; env: SLUICE_GRPC_ADDR]
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:7071; env: SLUICE_ADMIN_ADDR]
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// OTLP/gRPC collector that receives traces, e.g. http://127.0.0.1:4317 [default: none;
    /// env: SLUICE_OTLP_ENDPOINT]
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How long a send's deduplication id is remembered, seconds [default: 300;
    /// env: SLUICE_DEDUP_WINDOW_SECONDS]
    #[arg(long)]
    dedup_window_seconds: Option<u64>,
    /// Bytes kept free on the data directory's disk: below it sends are refused with
    /// RESOURCE_EXHAUSTED while receives and deletes go on; 0 for none [default: 268435456;
    /// env: SLUICE_MIN_FREE_DISK_BYTES]
    #[arg(long)]
    min_free_disk_bytes: Option<u64>,
    /// Seconds to go on serving after SIGTERM while /readyz reports not ready [default: 0;
    /// env: SLUICE_DRAIN_SECONDS]
    #[arg(long)]
    drain_seconds: Option<u64>,
    /// Queues that get a `queue` label of their own on /metrics; the rest share
    /// `queue="_other"` [default: 100; env: SLUICE_METRICS_QUEUE_LABELS]
    #[arg(long)]
    metrics_queue_labels: Option<usize>,
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

impl StandaloneArgs {
    fn options(&self) -> anyhow::Result<StandaloneOpts> {
        sluice_common::config::load(
            &StandaloneOpts::default(),
            self.config.as_deref(),
            &self.flags,
        )
    }
}

async fn run_standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let opts = args.options()?;
    let otlp = opts.service.otlp_endpoint.clone();
    sluice_common::service::run(
        "sluice-standalone",
        args.log_json,
        otlp,
        |shutdown| async move {
            let server = standalone::start(&opts, shutdown).await?;
            // A machine-readable line on stdout: scripts and tests wait for it to know the ports.
            println!(
                "sluice standalone ready: grpc={} admin={} sqs={} data_dir={}",
                server.grpc_addr,
                server.admin_addr,
                server.sqs_addr,
                opts.data_dir.display()
            );
            server.wait().await
        },
    )
    .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let installed = cli
        .tls
        .install(&[&cli.endpoint])
        .and_then(|()| cli.credentials.install());
    if let Err(err) = installed {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Standalone(args) => run_standalone(*args).await,
        Command::Admin(command) => client::run_admin(&cli.endpoint, cli.json, command).await,
        Command::Dev(command) => dev::run(command).await,
        Command::Monitoring(command) => monitoring::run(command),
        Command::Top(args) => tokio::task::spawn_blocking(move || top::run(args))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|result| result),
        Command::Chaos(args) => match chaos::run(args, cli.json, &cli.endpoint).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                eprintln!("chaos: acknowledged messages were lost, or unknown ones received");
                return ExitCode::FAILURE;
            }
            Err(err) => Err(err),
        },
        Command::Client(command) => client::run(cli.endpoint, cli.json, command).await,
    };
    match result {
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
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\ngrpc_addr = \"127.0.0.1:9000\"\nadmin_addr = \"127.0.0.1:9001\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_GRPC_ADDR", "127.0.0.1:9100");
            jail.set_env("SLUICE_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            jail.set_env("SLUICE_DEDUP_WINDOW_SECONDS", "2");
            let args = StandaloneArgs {
                config: Some(file.clone()),
                log_json: false,
                flags: StandaloneFlags {
                    admin_addr: Some("127.0.0.1:9201".parse().unwrap()),
                    ..Default::default()
                },
            };
            let opts = args.options().unwrap();
            assert_eq!(opts.data_dir, PathBuf::from("/from/file"));
            assert_eq!(opts.service.grpc_addr, "127.0.0.1:9100".parse().unwrap());
            assert_eq!(opts.service.admin_addr, "127.0.0.1:9201".parse().unwrap());
            assert_eq!(
                opts.service.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4317")
            );
            assert_eq!(opts.dedup_window_seconds, 2);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn defaults_without_file_or_env() {
        // Inside a Jail, so no other test's environment variables are set meanwhile.
        figment::Jail::expect_with(|_| {
            let args = StandaloneArgs {
                config: None,
                log_json: false,
                flags: StandaloneFlags::default(),
            };
            assert_eq!(args.options().unwrap(), StandaloneOpts::default());
            Ok(())
        });
    }
}

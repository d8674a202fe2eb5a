//! The test harness: runs the real `sluice` binary as a child process on free ports, talks to
//! it over gRPC and HTTP, and kills it with SIGKILL or stops it with SIGTERM. A server is killed
//! when its handle drops, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod auth;
pub mod dev;
pub mod disk;
pub mod front;
pub mod hostile;
pub mod prometheus;
pub mod sqs;
pub mod trio;

use anyhow::{anyhow, bail, Context};
pub use auth::*;
use sluice_client::QueueClient;
use sluice_common::credentials::Credentials;
pub use sluice_common::tls::{ClientTls, Kind};
use tonic::transport::Channel;

/// The `sluice` binary: `SLUICE_BIN`, or the one cargo built next to this test executable.
pub fn sluice_bin() -> PathBuf {
    built_bin("SLUICE_BIN", "sluice")
}

/// The `sluice-backend` binary: `SLUICE_BACKEND_BIN`, or the one cargo built.
pub fn backend_bin() -> PathBuf {
    built_bin("SLUICE_BACKEND_BIN", "sluice-backend")
}

/// `sluice-backend` with fail points (`SLUICE_BACKEND_FAILPOINTS_BIN`, or the one cargo built):
/// the plain build ignores `FAILPOINTS`, so tests that crash a node at a fail point run this one.
pub fn backend_failpoints_bin() -> PathBuf {
    built_bin_with(
        "SLUICE_BACKEND_FAILPOINTS_BIN",
        "sluice-backend-failpoints",
        "cargo build -p sluice-backend --features failpoints --bin sluice-backend-failpoints",
    )
}

/// The `sluice-frontend` binary: `SLUICE_FRONTEND_BIN`, or the one cargo built.
pub fn frontend_bin() -> PathBuf {
    built_bin("SLUICE_FRONTEND_BIN", "sluice-frontend")
}

/// The `sluice-metadata` binary: `SLUICE_METADATA_BIN`, or the one cargo built.
pub fn metadata_bin() -> PathBuf {
    built_bin("SLUICE_METADATA_BIN", "sluice-metadata")
}

/// The `sluice-manager` binary: `SLUICE_MANAGER_BIN`, or the one cargo built.
pub fn manager_bin() -> PathBuf {
    built_bin("SLUICE_MANAGER_BIN", "sluice-manager")
}

fn built_bin(env: &str, name: &str) -> PathBuf {
    built_bin_with(env, name, "cargo build --workspace --bins")
}

/// The binary `name` (`env` if set) next to this test executable; `build` says how to make it.
fn built_bin_with(env: &str, name: &str, build: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `{build}`",
        bin.display()
    );
    bin
}

/// Environment variables every server started from now on gets (after the defaults), so a test
/// can configure processes that helpers start for it without touching its own environment.
static CHILD_ENV: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Sets the environment variables of the servers started from now on; replaces earlier ones.
pub fn set_child_env(vars: &[(&str, &str)]) {
    *CHILD_ENV.lock().expect("not poisoned") = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
}

/// A server command on free ports with its data in `data_dir` (if it keeps any), quiet logs and
/// no stdin, and the TLS of a process of `kind` (none for standalone); callers may change any of
/// it before it starts.
fn server_command(
    bin: PathBuf,
    args: &[&str],
    data_dir: Option<&Path>,
    kind: Option<Kind>,
) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]);
    // Standalone and frontends serve SQS too, on a port of its own.
    if matches!(kind, None | Some(Kind::Frontend)) {
        command.args(["--sqs-addr", "127.0.0.1:0"]);
    }
    if let Some(kind) = kind {
        command.envs(tls_env(kind));
        if kind == Kind::Frontend {
            command.envs(auth_env());
        }
    }
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir);
    }
    command.env("RUST_LOG", "warn");
    for (key, value) in CHILD_ENV.lock().expect("not poisoned").iter() {
        command.env(key, value);
    }
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    command
}

/// A `sluice standalone` process.
pub type StandaloneProcess = ServerProcess;

/// A Sluice server process (`sluice standalone`, `sluice-backend`) on free ports, killed when
/// dropped.
pub struct ServerProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Its SQS endpoint, where it serves one.
    pub sqs_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Whether its gRPC port serves TLS.
    pub tls: bool,
    /// What its clients present: the root key to a frontend that authenticates, nothing to
    /// standalone on loopback, which lets callers in without credentials.
    pub credentials: Credentials,
}

impl ServerProcess {
    /// Starts `sluice standalone` on free ports and waits until it says it is ready.
    pub fn start(data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(data_dir, |_| {})
    }

    /// Like [`start`](Self::start), with `configure` adding flags, environment or redirections
    /// to the command first.
    pub fn start_with(
        data_dir: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Self> {
        let mut command = server_command(sluice_bin(), &["standalone"], Some(data_dir), None);
        configure(&mut command);
        Self::spawn(command, data_dir, "sluice standalone ready:")
    }

    /// Starts node `node` of backend cluster `cluster`, registered in the etcd at `etcd`.
    pub fn start_backend(
        data_dir: &Path,
        etcd: &str,
        cluster: &str,
        node: &str,
    ) -> anyhow::Result<Self> {
        Self::start_backend_from(&backend_bin(), data_dir, etcd, cluster, node, &[])
    }

    /// [`start_backend`](Self::start_backend) from binary `bin` (`backend_bin()` or
    /// `backend_failpoints_bin()`) with environment `env`.
    pub fn start_backend_from(
        bin: &Path,
        data_dir: &Path,
        etcd: &str,
        cluster: &str,
        node: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // Frequent load reports, so the managers see a node's load soon after it changes.
        let args = [
            "--etcd",
            etcd,
            "--cluster",
            cluster,
            "--node-id",
            node,
            "--load-report-interval-ms",
            "200",
        ];
        let mut command =
            server_command(bin.to_owned(), &args, Some(data_dir), Some(Kind::Backend));
        command.envs(env.iter().copied());
        Self::spawn(command, data_dir, "sluice-backend ready:")
    }

    /// Starts node `node` of replicated backend cluster `a` from binary `bin` (`backend_bin()`
    /// or `backend_failpoints_bin()`) on `grpc_port` (its admin port is the next one), with
    /// `extra` flags (`--peers ...` or `--join`) and environment `env`, not registered in etcd.
    /// Returns once it serves its ports, not once it is ready.
    pub fn start_replica(
        bin: &Path,
        data_dir: &Path,
        node: &str,
        grpc_port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let grpc = format!("127.0.0.1:{grpc_port}");
        let admin = format!("127.0.0.1:{}", grpc_port + 1);
        let mut command = Command::new(bin);
        command
            .args(["--cluster", "a", "--node-id", node])
            .args(["--grpc-addr", &grpc, "--admin-addr", &admin])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            // openraft logs every unreachable peer as an error; these tests make many.
            .env("RUST_LOG", "warn,openraft=off")
            .envs(tls_env(Kind::Backend))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        Self::spawn(command, data_dir, "sluice-backend ready:")
    }

    /// Starts the `nodes` nodes of replicated backend cluster `cluster`, registered in the etcd
    /// at `etcd`, each with its data in `dir/<cluster><n>`; returns once each serves its ports.
    pub fn start_replicated_cluster(
        dir: &Path,
        etcd: &str,
        cluster: &str,
        nodes: u16,
    ) -> anyhow::Result<Vec<Self>> {
        let base = free_port_range(2 * nodes)?;
        let name = |n: u16| format!("{cluster}{}", n + 1);
        let peers: Vec<String> = (0..nodes)
            .map(|n| format!("{}=https://127.0.0.1:{}", name(n), base + 2 * n))
            .collect();
        let peers = peers.join(",");
        (0..nodes)
            .map(|n| {
                let data = dir.join(name(n));
                let mut command = Command::new(backend_bin());
                command
                    .args(["--etcd", etcd, "--cluster", cluster, "--node-id", &name(n)])
                    .args(["--peers", &peers])
                    .arg("--grpc-addr")
                    .arg(format!("127.0.0.1:{}", base + 2 * n))
                    .arg("--admin-addr")
                    .arg(format!("127.0.0.1:{}", base + 2 * n + 1))
                    .arg("--data-dir")
                    .arg(&data)
                    .env("RUST_LOG", "warn,openraft=off")
                    .envs(tls_env(Kind::Backend))
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit());
                Self::spawn(command, &data, "sluice-backend ready:")
            })
            .collect()
    }

    /// Starts a `sluice-frontend` over the metadata nodes at `metadata` (gRPC URLs), with
    /// records cached for `cache_ttl_ms`.
    pub fn start_frontend(metadata: &[String], cache_ttl_ms: u64) -> anyhow::Result<Self> {
        Self::start_frontend_with(metadata, cache_ttl_ms, &[])
    }

    /// [`start_frontend`](Self::start_frontend) with `extra` flags (e.g. `--config FILE`).
    pub fn start_frontend_with(
        metadata: &[String],
        cache_ttl_ms: u64,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let ttl = cache_ttl_ms.to_string();
        let mut args = vec!["--metadata-cache-ttl-ms", ttl.as_str()];
        for url in metadata {
            args.extend(["--metadata", url.as_str()]);
        }
        args.extend_from_slice(extra);
        let command = server_command(frontend_bin(), &args, None, Some(Kind::Frontend));
        Self::spawn(command, Path::new(""), "sluice-frontend ready:")
    }

    /// The sum of a metric's samples over all their labels, 0 if it has none yet.
    pub fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let (_, body) = self.admin_get("/metrics")?;
        let mut sum = 0.0;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if rest.starts_with('{') || rest.starts_with(' ') {
                let value = rest.rsplit(' ').next().unwrap_or_default();
                sum += value.parse::<f64>().context("metric value")?;
            }
        }
        Ok(sum)
    }

    /// Starts metadata node `node` on the etcd at `etcd`.
    pub fn start_metadata(etcd: &str, node: &str) -> anyhow::Result<Self> {
        let command = server_command(
            metadata_bin(),
            &["--etcd", etcd, "--node-id", node],
            None,
            Some(Kind::Metadata),
        );
        Self::spawn(command, Path::new(""), "sluice-metadata ready:")
    }

    /// Starts a `sluice-manager` on the etcd at `etcd`, with `extra` flags.
    pub fn start_manager(etcd: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["--etcd", etcd];
        args.extend_from_slice(extra);
        let command = server_command(manager_bin(), &args, None, Some(Kind::Manager));
        Self::spawn(command, Path::new(""), "sluice-manager ready:")
    }

    /// Runs `command` and waits for the line that starts with `ready`, which carries
    /// `grpc=ADDR admin=ADDR`.
    fn spawn(mut command: Command, data_dir: &Path, ready: &str) -> anyhow::Result<Self> {
        let tls = command
            .get_envs()
            .any(|(key, value)| key == "SLUICE_TLS_CERT" && value.is_some())
            || command.get_args().any(|arg| arg == "--tls-cert");
        let authenticates = command
            .get_envs()
            .any(|(key, value)| key == "SLUICE_ROOT_CREDENTIALS_FILE" && value.is_some());
        let credentials = if authenticates {
            root_credentials()
        } else {
            Credentials::none()
        };
        // The ready line is read from stdout, whatever the caller did with the command.
        command.stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready) => break line,
                Some(Ok(_)) => continue,
                Some(Err(err)) => bail!("reading server output: {err}"),
                None => {
                    let status = child.wait()?;
                    bail!(
                        "{:?} exited before it was ready: {status}",
                        command.get_program()
                    );
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let field = |name: &str| -> anyhow::Result<SocketAddr> {
            let value = ready
                .split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .ok_or_else(|| anyhow!("no {name}= in {ready:?}"))?;
            Ok(value.parse()?)
        };
        Ok(ServerProcess {
            grpc_addr: field("grpc")?,
            admin_addr: field("admin")?,
            sqs_addr: field("sqs").ok(),
            child,
            data_dir: data_dir.to_owned(),
            tls,
            credentials,
        })
    }

    /// The URL of its gRPC port: `https://` when it serves TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// The URL of its SQS endpoint: `https://` when it serves TLS.
    pub fn sqs_endpoint(&self) -> anyhow::Result<String> {
        let scheme = if self.tls { "https" } else { "http" };
        let addr = self
            .sqs_addr
            .ok_or_else(|| anyhow!("this process serves no SQS endpoint"))?;
        Ok(format!("{scheme}://{addr}"))
    }

    /// A channel to its gRPC port, over TLS as an operator when it serves TLS.
    pub fn channel(&self) -> Channel {
        channel(&self.endpoint())
    }

    /// A channel to its gRPC port presenting the certificate of `kind`.
    pub fn channel_as(&self, kind: Kind) -> Channel {
        channel_as(&self.endpoint(), kind)
    }

    /// A client of its public API, presenting [`credentials`](Self::credentials).
    pub async fn client(&self) -> anyhow::Result<QueueClient> {
        Ok(queue_client(self.channel(), self.credentials.clone()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to exit on its own. Waits asynchronously, so this
    /// test's own gRPC connections keep being served and can close when the server says so.
    pub async fn terminate(self) -> anyhow::Result<ExitStatus> {
        self.sigterm()?;
        self.wait_exit().await
    }

    /// Sends SIGTERM and returns at once.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(())
    }

    /// Waits (asynchronously) for the process to exit on its own.
    pub async fn wait_exit(mut self) -> anyhow::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin port; returns the status code and body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.admin_addr, path)
    }

    /// The value of one sample named with its labels, e.g.
    /// `sluice_frontend_in_flight{bulkhead="sends"}`; 0 if it is not exported yet.
    pub fn metric_sample(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, body) = self.admin_get("/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(Ok(0.0), |value| {
                value.trim().parse().context("metric value")
            })
    }

    /// The value of a metric sample without labels, e.g. `sluice_storage_waiting_receives`.
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (_, body) = self.admin_get("/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| anyhow!("metric {name} not exported"))?
            .trim()
            .parse()
            .context("metric value")
    }

    /// Runs the `sluice` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = if self.tls {
            admin_cli()
        } else {
            Command::new(sluice_bin())
        };
        if self.credentials.is_some() {
            let (id, secret) = root_key();
            command
                .env("SLUICE_ACCESS_KEY_ID", id)
                .env("SLUICE_SECRET_ACCESS_KEY", secret);
        }
        command.args(args).env("SLUICE_ENDPOINT", self.endpoint());
        command.output().expect("sluice CLI runs")
    }

    /// Runs the CLI, panics with its error output if it fails, and returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sluice {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("CLI output is UTF-8")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback. The port is released before it is returned, so another process
/// may take it first; starting a server on it is retried by the callers that can.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The first of `count` consecutive loopback ports that are free now.
pub fn free_port_range(count: u16) -> anyhow::Result<u16> {
    use rand::Rng;
    for _ in 0..100 {
        // Below Linux's ephemeral range (32768 and up), where the outgoing connections of the
        // servers a test runs would take ports of the range between the check and the bind.
        let base: u16 = rand::thread_rng().gen_range(20_000..32_000 - count);
        let all_free = (base..base + count)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no {count} consecutive free ports found")
}

/// The `etcd` binary: `SLUICE_ETCD_BIN`, or `etcd` on the PATH (Debian's `etcd-server`).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("SLUICE_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// A single-member etcd on free loopback ports with its data in a temporary directory, killed
/// when dropped. Its clients reach it over TLS with certificates of the tests' CA
/// ([`certs`]), as a deployment's do; its `/health` answers in plain text on a port of its
/// own.
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers `/health`.
    pub fn start() -> anyhow::Result<Self> {
        let mut last_error = None;
        // A port picked as free can be taken before etcd binds it; try a few times.
        for _ in 0..3 {
            match Self::try_start() {
                Ok(etcd) => return Ok(etcd),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn try_start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let client = format!("https://127.0.0.1:{}", free_port()?);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let health: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let certs = certs();
        let mut child = Command::new(etcd_bin())
            .arg("--name=sluice-test")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=sluice-test={peer}"))
            .arg(format!("--listen-metrics-urls=http://{health}"))
            .arg(format!("--cert-file={}", certs.join("etcd.pem").display()))
            .arg(format!("--key-file={}", certs.join("etcd.key").display()))
            .arg(format!(
                "--trusted-ca-file={}",
                certs.join("ca.pem").display()
            ))
            .arg("--client-cert-auth")
            .args(["--logger=zap", "--log-outputs=stderr", "--log-level=error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install Debian's etcd-server)",
                    etcd_bin().display()
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("etcd exited before it was ready: {status}");
            }
            if matches!(http_get(health, "/health"), Ok((200, body)) if body.contains("true")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("etcd did not become healthy on {client}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(EtcdProcess {
            child,
            endpoint: client,
            _dir: dir,
        })
    }

    /// SIGKILL.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// A test's own client of this etcd, over TLS as an operator.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([&self.endpoint], Some(etcd_options()))
            .await
            .expect("etcd accepts the tests' client")
    }

    /// A store on this etcd keeping its keys under `root`, over TLS as an operator.
    pub async fn store(&self, root: &str) -> sluice_metastore::EtcdStore {
        sluice_metastore::EtcdStore::connect_with(
            std::slice::from_ref(&self.endpoint),
            root,
            Some(etcd_tls()),
        )
        .await
        .expect("etcd accepts the tests' store")
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A queue as `GetQueue` shows it; panics if the call fails.
pub async fn get_queue(client: &mut QueueClient, name: &str) -> sluice_proto::v1::Queue {
    client
        .get_queue(sluice_proto::v1::GetQueueRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .queue
        .expect("GetQueue answers with the queue")
}

/// A queue's approximate counts; panics if the call fails.
pub async fn queue_counts(client: &mut QueueClient, name: &str) -> sluice_proto::v1::QueueCounts {
    get_queue(client, name)
        .await
        .counts
        .expect("a queue has counts")
}

/// A minimal HTTP/1.0 GET, enough for the admin endpoints.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no status"))?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// Polls `check` until it returns true, failing after `limit`.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if check()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! `sluice dev cluster up|down`: the whole distributed deployment on loopback, each part its own
//! process: etcd (3 members), 2 frontends, 3 metadata nodes, 2 backend clusters of 3 replicated
//! nodes (or `--nodes`), 2 managers.
//! `up` prints the endpoints and runs until Ctrl-C or SIGTERM, then stops everything; `down`
//! stops a cluster whose `up` was killed, from the pids it left in its directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use sluice_common::tls::Kind;

mod netns;
mod observe;
mod parts;

pub(crate) use netns::Netns;
pub(crate) use parts::Parts;
use parts::{in_namespace, sibling, spawn_silent, start, start_silent, terminate, wait_for_port};

/// The backend clusters a dev cluster runs, by name.
const CLUSTER_NAMES: [&str; 2] = ["a", "b"];

#[derive(Subcommand)]
pub enum DevCommand {
    /// Start or stop a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Make a CA and a certificate for each kind of Sluice process (frontend, metadata,
    /// backend, manager, admin) and for etcd in DIR: `ca.pem`, `<kind>.pem`, `<kind>.key`. Run
    /// again, it keeps the CA and issues new certificates, which running services pick up. It
    /// also makes, once, the frontends' `master.key` and the root access key,
    /// `root.credentials` (KEY_ID:SECRET).
    Certs {
        #[arg(long, default_value = "./sluice-certs")]
        dir: PathBuf,
        /// Another DNS name or IP address the certificates are valid for, besides localhost,
        /// 127.0.0.1 and ::1; repeatable.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start every part on loopback and run until Ctrl-C.
    Up {
        /// Where data, logs and pids go.
        #[arg(long, default_value = "./sluice-dev-cluster")]
        dir: PathBuf,
        /// The first of the 60 consecutive ports the cluster uses (etcd takes the first two).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
        /// Nodes in each backend cluster, 1 to 5; they replicate through Raft.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=5))]
        nodes: u16,
        /// Run every part (etcd too) in plain text with `--insecure`, e.g. to measure what TLS
        /// costs.
        #[arg(long)]
        insecure: bool,
        /// Also run Debian's Prometheus on the fourth port, scraping every part each second
        /// with Sluice's alert rules loaded. The scrape targets are written to
        /// DIR/prometheus/targets.json either way.
        #[arg(long)]
        prometheus: bool,
        /// Start a part that died (was killed) again this long after, as Kubernetes restarts
        /// a pod, e.g. 3s; without it a dead part stays dead. For `sluice chaos
        /// --kill-command` against this cluster.
        #[arg(long, value_parser = humantime::parse_duration)]
        restart_after: Option<Duration>,
    },
    /// Stop the processes of a cluster whose `up` did not stop them, and remove its directory.
    Down {
        #[arg(long, default_value = "./sluice-dev-cluster")]
        dir: PathBuf,
    },
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The gRPC port of node `node` (0-based) of backend cluster `cluster` (0-based): the first
/// nodes where a cluster of one node had them, the others from `base + 50`.
pub(crate) fn backend_port(base: u16, nodes: u16, cluster: u16, node: u16) -> u16 {
    if node == 0 {
        base + 30 + 2 * cluster
    } else {
        base + 50 + 2 * (cluster * (nodes - 1) + node - 1)
    }
}

/// The frontends a dev cluster runs.
pub(crate) const FRONTENDS: u16 = 2;

/// The gRPC port of frontend `f` (0-based).
pub(crate) fn frontend_port(base: u16, f: u16) -> u16 {
    base + 10 + 2 * f
}

/// The SQS port of frontend `f` (0-based).
pub(crate) fn frontend_sqs_port(base: u16, f: u16) -> u16 {
    base + 14 + f
}

/// Where frontend `f` serves: loopback, or its namespace's address.
pub(crate) fn frontend_host(netns: Option<&Netns>, f: u16) -> String {
    match netns {
        Some(netns) => netns.frontend_ip(f.into()),
        None => "127.0.0.1".to_owned(),
    }
}

/// The members of the dev cluster's etcd.
pub(crate) const ETCD_MEMBERS: usize = 3;

pub(crate) fn etcd_name(member: usize) -> String {
    format!("etcd-{}", member + 1)
}

#[derive(Clone, Copy)]
pub(crate) enum EtcdPort {
    Client,
    Peer,
    Metrics,
}

/// The ports of etcd member `member` (0-based): the first takes the first three ports, the
/// others `base + 4` to `base + 9` (`base + 3` is Prometheus's).
pub(crate) fn etcd_port(base: u16, member: usize, port: EtcdPort) -> u16 {
    let first = if member == 0 {
        base
    } else {
        base + 1 + 3 * member as u16
    };
    first + port as u16
}

/// Starts the deployment; with `netns`, the backend nodes of the first cluster and the
/// frontends run in network namespaces of their own, and the metadata nodes serve on the
/// bridge for the frontends to reach them.
pub(crate) fn up(
    dir: &Path,
    base: u16,
    clusters: u16,
    nodes: u16,
    netns: bool,
    insecure: bool,
    prometheus: bool,
) -> anyhow::Result<Parts> {
    anyhow::ensure!(
        base.checked_add(60).is_some(),
        "--base-port {base} leaves no room for the cluster's 60 ports"
    );
    std::fs::create_dir_all(dir.join("logs"))?;
    let pids = dir.join("pids");
    if pids.exists() {
        bail!(
            "{} holds a running cluster's pids; stop it with `sluice dev cluster down --dir {}`",
            pids.display(),
            dir.display()
        );
    }
    let mut parts = Parts {
        parts: Vec::new(),
        pids,
        dir: dir.to_owned(),
        netns: None,
    };
    if netns {
        anyhow::ensure!(
            clusters == 1,
            "network namespaces are for one backend cluster"
        );
        parts.netns = Some(Netns::setup(base, nodes.into(), FRONTENDS.into())?);
    }
    // Every part runs with mutual TLS, as a deployment does, on certificates of a CA of the
    // cluster's own (unless `insecure`); nodes in namespaces are reached at their own addresses.
    let certs = dir.join("certs");
    let mut hosts = Vec::new();
    if let Some(netns) = &parts.netns {
        hosts.push(netns.host_ip());
        hosts.extend((0..nodes.into()).map(|i| netns.node_ip(i)));
        hosts.extend((0..FRONTENDS.into()).map(|f| netns.frontend_ip(f)));
    }
    if !insecure {
        crate::certs::make(&certs, &hosts)?;
        crate::certs::make_secrets(&certs)?;
    }
    let scheme = if insecure { "http" } else { "https" };
    let tls = |kind: Kind| -> Vec<String> {
        let file = |name: String| certs.join(name).to_string_lossy().into_owned();
        if insecure {
            return vec!["--insecure".into()];
        }
        vec![
            "--tls-cert".into(),
            file(format!("{kind}.pem")),
            "--tls-key".into(),
            file(format!("{kind}.key")),
            "--tls-ca".into(),
            file("ca.pem".into()),
        ]
    };
    // etcd's clients, each with its own certificate, reach it over TLS too; every member is
    // given, so a client goes on through the others when one is down. Nodes in namespaces
    // reach etcd on the bridge.
    let etcd_host = match &parts.netns {
        Some(netns) => netns.host_ip(),
        None => "127.0.0.1".to_owned(),
    };
    let etcd_endpoints = |host: &str| -> Vec<String> {
        (0..ETCD_MEMBERS)
            .flat_map(|m| {
                [
                    "--etcd".to_owned(),
                    format!("{scheme}://{host}:{}", etcd_port(base, m, EtcdPort::Client)),
                ]
            })
            .collect()
    };
    let backend_etcd = etcd_endpoints(&etcd_host);
    // Three members, so that losing one loses nothing: etcd's majority goes on.
    let members: Vec<(String, String)> = (0..ETCD_MEMBERS)
        .map(|m| {
            let (name, peer) = (etcd_name(m), etcd_port(base, m, EtcdPort::Peer));
            (name, format!("http://{}", addr(peer)))
        })
        .collect();
    let initial_cluster = members
        .iter()
        .map(|(name, peer)| format!("{name}={peer}"))
        .collect::<Vec<_>>()
        .join(",");
    for (m, (name, peer_url)) in members.iter().enumerate() {
        let client = etcd_port(base, m, EtcdPort::Client);
        let local = format!("{scheme}://{}", addr(client));
        let listen = match &parts.netns {
            Some(netns) => format!("{local},{scheme}://{}:{client}", netns.host_ip()),
            None => local.clone(),
        };
        let mut etcd = Command::new("etcd");
        etcd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", dir.join(name).display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={local}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            // Plain HTTP, as every part's admin port: what Prometheus scrapes.
            .arg(format!(
                "--listen-metrics-urls=http://{}",
                addr(etcd_port(base, m, EtcdPort::Metrics))
            ))
            .args(["--logger=zap", "--log-outputs=stderr"]);
        if !insecure {
            etcd.arg(format!("--cert-file={}", certs.join("etcd.pem").display()))
                .arg(format!("--key-file={}", certs.join("etcd.key").display()))
                .arg(format!(
                    "--trusted-ca-file={}",
                    certs.join("ca.pem").display()
                ))
                .arg("--client-cert-auth");
        }
        spawn_silent(&mut parts, "etcd", name, etcd, client)
            .context("cannot start etcd (install Debian's etcd-server)")?;
    }
    // A member serves once a majority has met, so all are started before any is waited for;
    // its client port answering is the sign, as etcd prints no ready line on stdout.
    for m in 0..ETCD_MEMBERS {
        wait_for_port(etcd_port(base, m, EtcdPort::Client))?;
    }

    // A service with its gRPC port on `host` and its admin port on `admin_host`.
    let service =
        |bin: &str, kind: Kind, (host, admin_host): (&str, &str), grpc: u16, extra: &[String]| {
            let mut command = Command::new(sibling(bin));
            let (grpc, admin) = (
                format!("{host}:{grpc}"),
                format!("{admin_host}:{}", grpc + 1),
            );
            command
                .args(["--grpc-addr", &grpc, "--admin-addr", &admin])
                .args(tls(kind))
                .args(extra);
            command
        };
    let local = ("127.0.0.1", "127.0.0.1");
    // In namespaces the frontends reach the metadata nodes on the bridge.
    let metadata_host = match &parts.netns {
        Some(netns) => netns.host_ip(),
        None => "127.0.0.1".to_owned(),
    };
    let with_etcd = |rest: &[&str]| -> Vec<String> {
        let mut args = etcd_endpoints("127.0.0.1");
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    for (c, cluster) in CLUSTER_NAMES.iter().take(clusters.into()).enumerate() {
        let c = c as u16;
        let name = |n: u16| format!("{cluster}{}", n + 1);
        // Each node's address and namespace, if it runs in one.
        let spaces: Option<Vec<(String, String)>> = parts.netns.as_ref().map(|netns| {
            (0..nodes.into())
                .map(|i| (netns.node_ip(i), netns.name(i)))
                .collect()
        });
        let host = |n: u16| match &spaces {
            Some(spaces) => format!(
                "{}:{}",
                spaces[n as usize].0,
                backend_port(base, nodes, c, n)
            ),
            None => addr(backend_port(base, nodes, c, n)),
        };
        let peers: Vec<String> = (0..nodes)
            .map(|n| format!("{}={scheme}://{}", name(n), host(n)))
            .collect();
        for n in 0..nodes {
            let node = name(n);
            let data = dir.join(&node);
            let data = data.to_string_lossy();
            let grpc = host(n);
            let port = backend_port(base, nodes, c, n);
            let admin = grpc.replace(&format!(":{port}"), &format!(":{}", port + 1));
            let peers = peers.join(",");
            let mut args = vec![
                "--cluster",
                cluster,
                "--node-id",
                &node,
                "--data-dir",
                &data,
                "--grpc-addr",
                &grpc,
                "--admin-addr",
                &admin,
            ];
            args.extend(backend_etcd.iter().map(String::as_str));
            if nodes > 1 {
                args.extend(["--peers", &peers]);
            }
            let tls = tls(Kind::Backend);
            args.extend(tls.iter().map(String::as_str));
            let mut command = Command::new(sibling("sluice-backend"));
            command.args(&args);
            if let Some(spaces) = &spaces {
                command = in_namespace(&spaces[n as usize].1, command);
            }
            start(
                &mut parts,
                "backend",
                &format!("backend-{node}"),
                command,
                "sluice-backend ready:",
            )?;
        }
    }
    for i in 0..3u16 {
        let id = format!("m{}", i + 1);
        let command = service(
            "sluice-metadata",
            Kind::Metadata,
            (&metadata_host, "127.0.0.1"),
            base + 20 + 2 * i,
            &with_etcd(&["--node-id", &id]),
        );
        start(
            &mut parts,
            "metadata",
            &format!("metadata-{id}"),
            command,
            "sluice-metadata ready:",
        )?;
    }
    for i in 0..2u16 {
        let command = service(
            "sluice-manager",
            Kind::Manager,
            local,
            base + 40 + 2 * i,
            &with_etcd(&[]),
        );
        start(
            &mut parts,
            "manager",
            &format!("manager-{}", i + 1),
            command,
            "sluice-manager ready:",
        )?;
    }
    let metadata: Vec<String> = (0..3u16)
        .flat_map(|i| {
            [
                "--metadata".to_owned(),
                format!("{scheme}://{metadata_host}:{}", base + 20 + 2 * i),
            ]
        })
        .collect();
    // The frontends authenticate callers: the root key is how the first principals are made.
    let mut frontend_args = metadata;
    if !insecure {
        for (flag, file) in [
            ("--master-key-file", "master.key"),
            ("--root-credentials-file", "root.credentials"),
        ] {
            frontend_args.push(flag.into());
            frontend_args.push(certs.join(file).to_string_lossy().into_owned());
        }
    }
    for i in 0..FRONTENDS {
        let host = frontend_host(parts.netns.as_ref(), i);
        let mut args = frontend_args.clone();
        args.push("--sqs-addr".into());
        args.push(format!("{host}:{}", frontend_sqs_port(base, i)));
        let service = service(
            "sluice-frontend",
            Kind::Frontend,
            (&host, &host),
            frontend_port(base, i),
            &args,
        );
        let command = match &parts.netns {
            Some(netns) => in_namespace(&netns.frontend_name(i.into()), service),
            None => service,
        };
        start(
            &mut parts,
            "frontend",
            &format!("frontend-{}", i + 1),
            command,
            "sluice-frontend ready:",
        )?;
    }
    observe::write_targets(dir, base, clusters, nodes, parts.netns.as_ref())?;
    if prometheus {
        observe::start_prometheus(&mut parts, base)?;
    }
    Ok(parts)
}

fn print_endpoints(base: u16, nodes: u16, dir: &Path, insecure: bool, prometheus: bool) {
    let s = if insecure { "http" } else { "https" };
    println!(
        "sluice dev cluster up: frontends={s}://{},{s}://{}",
        addr(base + 10),
        addr(base + 12)
    );
    let etcd: Vec<String> = (0..ETCD_MEMBERS)
        .map(|m| format!("{s}://{}", addr(etcd_port(base, m, EtcdPort::Client))))
        .collect();
    println!("  etcd        {}", etcd.join("  "));
    println!(
        "  frontends   {s}://{}  {s}://{}   (admin +1)",
        addr(base + 10),
        addr(base + 12)
    );
    println!(
        "  sqs         {s}://{}  {s}://{}   (the frontends' SQS endpoints)",
        addr(frontend_sqs_port(base, 0)),
        addr(frontend_sqs_port(base, 1))
    );
    println!(
        "  metadata    {s}://{}  {s}://{}  {s}://{}",
        addr(base + 20),
        addr(base + 22),
        addr(base + 24)
    );
    for (c, cluster) in CLUSTER_NAMES.iter().enumerate() {
        let listed: Vec<String> = (0..nodes)
            .map(|n| {
                format!(
                    "{cluster}{} {s}://{}",
                    n + 1,
                    addr(backend_port(base, nodes, c as u16, n))
                )
            })
            .collect();
        println!("  cluster {cluster}   {}", listed.join("  "));
    }
    println!(
        "  managers    {s}://{}  {s}://{}",
        addr(base + 40),
        addr(base + 42)
    );
    println!(
        "  metrics     admin ports (gRPC port +1), etcd's on its client port +2; targets {}",
        dir.join("prometheus").join("targets.json").display()
    );
    if prometheus {
        println!(
            "  prometheus  http://{}",
            addr(observe::prometheus_port(base))
        );
    }
    println!("  logs        {}", dir.join("logs").display());
    let certs = dir.join("certs");
    if insecure {
        println!("  INSECURE: every part runs in plain text (--insecure)");
    } else {
        println!(
            "  certificates {} (mutual TLS between every part)",
            certs.display()
        );
        println!(
            "try: export SLUICE_CA_CERT={ca} SLUICE_CLIENT_CERT={admin}.pem SLUICE_CLIENT_KEY={admin}.key",
            ca = certs.join("ca.pem").display(),
            admin = certs.join("admin").display(),
        );
        println!(
            "     export SLUICE_ACCESS_KEY_ID=\"$(cut -d: -f1 {root})\" SLUICE_SECRET_ACCESS_KEY=\"$(cut -d: -f2 {root})\"",
            root = certs.join("root.credentials").display(),
        );
    }
    let lead = if insecure { "try:" } else { "    " };
    println!(
        "{lead} SLUICE_ENDPOINT={s}://{} sluice queue create orders; sluice admin clusters --manager {s}://{}",
        addr(base + 10),
        addr(base + 40)
    );
    println!("Ctrl-C stops everything.");
}

/// Until `shutdown`: starts each part that died again `after` it was first seen dead.
async fn supervise(
    parts: Arc<Mutex<Parts>>,
    after: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut dead_since: HashMap<usize, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let dead = {
            let parts = parts.clone();
            tokio::task::spawn_blocking(move || parts.lock().expect("not poisoned").dead()).await?
        };
        dead_since.retain(|i, _| dead.contains(i));
        for i in dead {
            let since = *dead_since.entry(i).or_insert_with(Instant::now);
            if since.elapsed() < after || shutdown.is_cancelled() {
                continue;
            }
            let parts = parts.clone();
            let name = tokio::task::spawn_blocking(move || {
                let mut parts = parts.lock().expect("not poisoned");
                let name = parts.parts[i].name.clone();
                parts.restart(i).map(|()| name)
            })
            .await?;
            match name {
                Ok(name) => println!("restarted {name}, which had died"),
                // Tried again on the next round, as Kubernetes retries a crashing pod.
                Err(err) => eprintln!("cannot restart a dead part: {err:#}"),
            }
            dead_since.remove(&i);
        }
    }
}

pub async fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Cluster(ClusterCommand::Up {
            dir,
            base_port,
            nodes,
            insecure,
            prometheus,
            restart_after,
        }) => {
            let parts = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    up(&dir, base_port, 2, nodes, false, insecure, prometheus)
                })
                .await??
            };
            print_endpoints(base_port, nodes, &dir, insecure, prometheus);
            let shutdown = tokio_util::sync::CancellationToken::new();
            sluice_common::shutdown::cancel_on_signal(shutdown.clone());
            let parts = Arc::new(Mutex::new(parts));
            match restart_after {
                Some(after) => supervise(parts.clone(), after, &shutdown).await?,
                None => shutdown.cancelled().await,
            }
            println!("stopping the cluster");
            tokio::task::spawn_blocking(move || drop(parts)).await?;
            println!("stopped");
            Ok(())
        }
        DevCommand::Certs { dir, hosts } => {
            crate::certs::make(&dir, &hosts)?;
            crate::certs::make_secrets(&dir)?;
            println!("certificates in {}", dir.display());
            Ok(())
        }
        DevCommand::Cluster(ClusterCommand::Down { dir }) => {
            let pids = dir.join("pids");
            if let Ok(listed) = std::fs::read_to_string(&pids) {
                for line in listed.lines().rev() {
                    let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse().ok())
                    else {
                        continue;
                    };
                    terminate(pid);
                    // Each part drains before the next (and etcd, last) is told to stop.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
            println!("down: {}", dir.display());
            Ok(())
        }
    }
}

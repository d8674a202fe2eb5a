//! `sluice dev cluster up|down`: the whole distributed deployment on loopback, each part its own
//! process: etcd, 2 frontends, 3 metadata nodes, 2 backend clusters of one node, 2 managers.
//! `up` prints the endpoints and runs until Ctrl-C or SIGTERM, then stops everything; `down`
//! stops a cluster whose `up` was killed, from the pids it left in its directory.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DevCommand {
    /// Start or stop a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Start every part on loopback and run until Ctrl-C.
    Up {
        /// Where data, logs and pids go.
        #[arg(long, default_value = "./sluice-dev-cluster")]
        dir: PathBuf,
        /// The first of the 44 consecutive ports the cluster uses (etcd takes the first two).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
    },
    /// Stop the processes of a cluster whose `up` did not stop them, and remove its directory.
    Down {
        #[arg(long, default_value = "./sluice-dev-cluster")]
        dir: PathBuf,
    },
}

/// One started part.
struct Part {
    name: String,
    child: Child,
}

/// The cluster's processes; dropping it stops them, newest first.
struct Parts {
    parts: Vec<Part>,
    pids: PathBuf,
}

impl Parts {
    fn record(&mut self, part: Part) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pids)?;
        writeln!(file, "{} {}", part.child.id(), part.name)?;
        self.parts.push(part);
        Ok(())
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        // Front to back: frontends first, etcd last, so nothing loses its store before it stops.
        for part in self.parts.iter_mut().rev() {
            terminate(part.child.id());
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(part.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = part.child.kill();
            let _ = part.child.wait();
        }
        let _ = std::fs::remove_file(&self.pids);
    }
}

fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// A binary next to this one (cargo puts them together), else from the PATH.
fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts `command`, sends its output to `logs/<name>.log`, and waits until it prints a line
/// starting with `ready` (or, with `ready` empty, until `addr` accepts connections).
fn start(
    parts: &mut Parts,
    dir: &Path,
    name: &str,
    mut command: Command,
    ready: &str,
) -> anyhow::Result<()> {
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
    let stdout = child.stdout.take().expect("piped");
    parts.record(Part {
        name: name.to_owned(),
        child,
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_owned();
    std::thread::spawn(move || {
        let mut log = log;
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if !sent && line.starts_with(&ready) {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        bail!("{name} did not become ready; see {}", log_path.display());
    }
    Ok(())
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn up(dir: &Path, base: u16) -> anyhow::Result<Parts> {
    anyhow::ensure!(
        base.checked_add(44).is_some(),
        "--base-port {base} leaves no room for the cluster's 44 ports"
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
    };
    let etcd_url = format!("http://{}", addr(base));
    let peer_url = format!("http://{}", addr(base + 1));
    let mut etcd = Command::new("etcd");
    etcd.arg("--name=sluice-dev")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=sluice-dev={peer_url}"))
        .args(["--logger=zap", "--log-outputs=stderr"]);
    // etcd prints no ready line on stdout; its client port answering is the sign.
    let log = std::fs::File::create(dir.join("logs").join("etcd.log"))?;
    let child = etcd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start etcd (install Debian's etcd-server)")?;
    parts.record(Part {
        name: "etcd".into(),
        child,
    })?;
    wait_for_port(base)?;

    let service = |bin: &str, grpc: u16, extra: &[String]| {
        let mut command = Command::new(sibling(bin));
        command
            .args(["--grpc-addr", &addr(grpc), "--admin-addr", &addr(grpc + 1)])
            .args(extra);
        command
    };
    let with_etcd = |rest: &[&str]| -> Vec<String> {
        let mut args = vec!["--etcd".to_owned(), etcd_url.clone()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    for (i, (cluster, node)) in [("a", "a1"), ("b", "b1")].iter().enumerate() {
        let data = dir.join(node);
        let data = data.to_string_lossy();
        let command = service(
            "sluice-backend",
            base + 30 + 2 * i as u16,
            &with_etcd(&["--cluster", cluster, "--node-id", node, "--data-dir", &data]),
        );
        start(
            &mut parts,
            dir,
            &format!("backend-{node}"),
            command,
            "sluice-backend ready:",
        )?;
    }
    for i in 0..3u16 {
        let id = format!("m{}", i + 1);
        let command = service(
            "sluice-metadata",
            base + 20 + 2 * i,
            &with_etcd(&["--node-id", &id]),
        );
        start(
            &mut parts,
            dir,
            &format!("metadata-{id}"),
            command,
            "sluice-metadata ready:",
        )?;
    }
    for i in 0..2u16 {
        let command = service("sluice-manager", base + 40 + 2 * i, &with_etcd(&[]));
        start(
            &mut parts,
            dir,
            &format!("manager-{}", i + 1),
            command,
            "sluice-manager ready:",
        )?;
    }
    let metadata: Vec<String> = (0..3u16)
        .flat_map(|i| {
            [
                "--metadata".to_owned(),
                format!("http://{}", addr(base + 20 + 2 * i)),
            ]
        })
        .collect();
    for i in 0..2u16 {
        let command = service("sluice-frontend", base + 10 + 2 * i, &metadata);
        start(
            &mut parts,
            dir,
            &format!("frontend-{}", i + 1),
            command,
            "sluice-frontend ready:",
        )?;
    }
    Ok(parts)
}

fn print_endpoints(base: u16, dir: &Path) {
    println!(
        "sluice dev cluster up: frontends=http://{},http://{}",
        addr(base + 10),
        addr(base + 12)
    );
    println!("  etcd        http://{}", addr(base));
    println!(
        "  frontends   http://{}  http://{}   (admin +1)",
        addr(base + 10),
        addr(base + 12)
    );
    println!(
        "  metadata    http://{}  http://{}  http://{}",
        addr(base + 20),
        addr(base + 22),
        addr(base + 24)
    );
    println!(
        "  backends    a1 http://{}  b1 http://{}",
        addr(base + 30),
        addr(base + 32)
    );
    println!(
        "  managers    http://{}  http://{}",
        addr(base + 40),
        addr(base + 42)
    );
    println!("  logs        {}", dir.join("logs").display());
    println!(
        "try: SLUICE_ENDPOINT=http://{} sluice queue create orders; sluice admin clusters --manager http://{}",
        addr(base + 10),
        addr(base + 40)
    );
    println!("Ctrl-C stops everything.");
}

pub async fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Cluster(ClusterCommand::Up { dir, base_port }) => {
            let parts = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || up(&dir, base_port)).await??
            };
            print_endpoints(base_port, &dir);
            let shutdown = tokio_util::sync::CancellationToken::new();
            sluice_common::shutdown::cancel_on_signal(shutdown.clone());
            shutdown.cancelled().await;
            println!("stopping the cluster");
            tokio::task::spawn_blocking(move || drop(parts)).await?;
            println!("stopped");
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

//! `sluice dev cluster up` as a test's deployment: started as a child process on free ports,
//! reached with the CA and root key it made for itself, and stopped with SIGINT (so it stops
//! its parts) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use sluice_client::QueueClient;
use sluice_common::credentials::Credentials;
use sluice_common::tls::ClientTls;

use crate::{free_port_range, sluice_bin};

pub struct DevCluster {
    child: Option<Child>,
    pub dir: PathBuf,
    pub base: u16,
    /// The frontends' gRPC URLs.
    pub frontends: Vec<String>,
}

impl DevCluster {
    /// Starts the cluster in `dir` with `extra` flags (e.g. `--prometheus`) and `env` (which its
    /// parts inherit, e.g. `SLUICE_*` settings), and waits until it is up.
    pub fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<DevCluster> {
        let base = free_port_range(60)?;
        let mut child = Command::new(sluice_bin())
            .args([
                "dev",
                "cluster",
                "up",
                "--base-port",
                &base.to_string(),
                "--dir",
            ])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut cluster = DevCluster {
            child: Some(child),
            dir: dir.to_owned(),
            base,
            frontends: Vec::new(),
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.starts_with("sluice dev cluster up:"))
            .context("the cluster did not come up")?;
        std::thread::spawn(move || for _ in lines {});
        cluster.frontends = ready
            .split("frontends=")
            .nth(1)
            .context("no frontends in the ready line")?
            .split(',')
            .map(str::to_owned)
            .collect();
        Ok(cluster)
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The root access key the cluster made.
    pub fn root(&self) -> anyhow::Result<Credentials> {
        let (id, secret) = self.root_key()?;
        Credentials::new(&id, &secret)
    }

    /// The root access key the cluster made: its id and secret.
    pub fn root_key(&self) -> anyhow::Result<(String, String)> {
        let text = std::fs::read_to_string(self.certs().join("root.credentials"))?;
        let (id, secret) = text
            .trim()
            .split_once(':')
            .context("malformed root.credentials")?;
        Ok((id.to_owned(), secret.to_owned()))
    }

    /// The SQS endpoint of frontend `i` (each serves one on the port after the two frontends'
    /// admin ports, `base + 14 + i`).
    pub fn sqs_endpoint(&self, i: u16) -> String {
        format!("https://127.0.0.1:{}", self.base + 14 + i)
    }

    /// A client of frontend `i`, trusting the cluster's CA, as its root key.
    pub fn client(&self, i: usize) -> anyhow::Result<QueueClient> {
        let tls = Arc::new(ClientTls::new(Some(&self.certs().join("ca.pem")), None)?);
        let channel = sluice_common::tls::channel(&self.frontends[i], Some(tls), |e| e)?;
        Ok(sluice_client::queue_client(channel, self.root()?))
    }

    /// The gRPC URL of manager `i` (0 or 1).
    pub fn manager(&self, i: u16) -> String {
        format!("https://127.0.0.1:{}", self.base + 40 + 2 * i)
    }

    /// Runs `sluice --json admin ARGS --manager <manager 1>` as the cluster's admin and parses
    /// what it prints; panics with its error output if it fails.
    pub fn admin(&self, args: &[&str]) -> serde_json::Value {
        let certs = self.certs();
        let out = Command::new(sluice_bin())
            .args(["--json", "admin"])
            .args(args)
            .args(["--manager", &self.manager(1)])
            .env("SLUICE_CA_CERT", certs.join("ca.pem"))
            .env("SLUICE_CLIENT_CERT", certs.join("admin.pem"))
            .env("SLUICE_CLIENT_KEY", certs.join("admin.key"))
            .output()
            .expect("sluice CLI runs");
        assert!(
            out.status.success(),
            "sluice admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the CLI prints JSON")
    }

    /// The pid of part `name` (e.g. `backend-a1`), from the pids file the cluster keeps.
    pub fn pid(&self, name: &str) -> anyhow::Result<i32> {
        let pids = std::fs::read_to_string(self.dir.join("pids"))?;
        pids.lines()
            .find_map(|line| {
                let (pid, part) = line.split_once(' ')?;
                (part == name).then(|| pid.parse().ok())?
            })
            .with_context(|| format!("no part {name} in the pids file"))
    }

    /// Sends SIGINT and waits for the cluster to stop everything; true if it exited cleanly.
    pub fn stop(mut self) -> anyhow::Result<bool> {
        let mut child = self.child.take().context("already stopped")?;
        interrupt(&child);
        Ok(child.wait()?.success())
    }
}

fn interrupt(child: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            interrupt(&child);
            let _ = child.wait();
        }
    }
}

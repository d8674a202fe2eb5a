//! The processes of a dev cluster: how each is started, told ready, stopped, killed, paused
//! and started again.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::Netns;

/// One started part, and how to start it again.
pub(crate) struct Part {
    pub(crate) name: String,
    child: Child,
    program: PathBuf,
    args: Vec<String>,
    /// How to tell it is ready.
    ready: Ready,
    /// What kind of part it is: `backend`, `frontend`, ...
    pub(crate) kind: &'static str,
}

/// How a started part shows it is ready.
#[derive(Clone)]
enum Ready {
    /// It prints a line starting with this.
    Line(String),
    /// It prints no such line (etcd, Prometheus): this port answers.
    Port(u16),
}

/// The cluster's processes; dropping it stops them, newest first, then removes the network
/// namespaces.
pub(crate) struct Parts {
    pub(crate) parts: Vec<Part>,
    pub(super) pids: PathBuf,
    pub(super) dir: PathBuf,
    pub(crate) netns: Option<Netns>,
}

impl Parts {
    fn record(&mut self, part: Part) -> anyhow::Result<()> {
        self.parts.push(part);
        self.write_pids()
    }

    fn write_pids(&self) -> anyhow::Result<()> {
        let mut file = std::fs::File::create(&self.pids)?;
        for part in &self.parts {
            writeln!(file, "{} {}", part.child.id(), part.name)?;
        }
        Ok(())
    }

    /// SIGKILLs part `index` and waits for it to be gone.
    pub(crate) fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let part = &mut self.parts[index];
        part.child.kill()?;
        part.child.wait()?;
        Ok(())
    }

    /// Freezes part `index` (SIGSTOP) or lets it go on (SIGCONT): a stop-the-world pause, as a
    /// long garbage collection or a VM frozen by its host makes one.
    pub(crate) fn pause(&self, index: usize, paused: bool) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.parts[index].child.id() as i32);
        kill(
            pid,
            if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            },
        )?;
        Ok(())
    }

    /// The parts that have exited, by index.
    pub(super) fn dead(&mut self) -> Vec<usize> {
        (0..self.parts.len())
            .filter(|&i| !matches!(self.parts[i].child.try_wait(), Ok(None)))
            .collect()
    }

    /// Starts part `index` again, as it was started first, and waits until it is ready.
    pub(crate) fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let part = &self.parts[index];
        let mut command = Command::new(&part.program);
        command.args(&part.args);
        let (name, ready) = (part.name.clone(), part.ready.clone());
        let child = match ready {
            Ready::Line(line) => spawn(&self.dir, &name, command, &line, true)?,
            Ready::Port(port) => {
                let child = spawn_logged(&self.dir, &name, command, true)?;
                self.parts[index].child = child;
                self.write_pids()?;
                return wait_for_port(port);
            }
        };
        self.parts[index].child = child;
        self.write_pids()
    }

    /// Stops part `index` as an operator or Kubernetes would (SIGTERM, then SIGKILL after 30
    /// s) and waits for it to be gone.
    pub(crate) fn stop(&mut self, index: usize) {
        stop_child(&mut self.parts[index].child);
    }

    /// The index of the part named `name`.
    pub(crate) fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.parts
            .iter()
            .position(|part| part.name == name)
            .with_context(|| format!("no part named {name}"))
    }
}

impl Parts {
    /// Stops every part and removes the network namespaces; once done, doing it again does
    /// nothing. Front to back: frontends first, etcd last, so nothing loses its store before
    /// it stops.
    pub(crate) fn shut_down(&mut self) {
        for part in self.parts.iter_mut().rev() {
            stop_child(&mut part.child);
        }
        let _ = std::fs::remove_file(&self.pids);
        self.netns.take();
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// SIGTERM, and SIGKILL if it has not exited 30 s later. Nothing for a child already reaped:
/// its pid may be another process's by now.
fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    terminate(child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(super) fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// A binary next to this one (cargo puts them together), else from the PATH.
pub(super) fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts `command` as part `name` of kind `kind`, and waits until it is ready.
pub(super) fn start(
    parts: &mut Parts,
    kind: &'static str,
    name: &str,
    command: Command,
    ready: &str,
) -> anyhow::Result<()> {
    let program = PathBuf::from(command.get_program());
    let args = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let child = spawn(&parts.dir, name, command, ready, false)?;
    parts.record(Part {
        name: name.to_owned(),
        child,
        program,
        args,
        ready: Ready::Line(ready.to_owned()),
        kind,
    })
}

/// Spawns `command` with its output in `logs/<name>.log` (appended to with `append`), and
/// waits until it prints a line starting with `ready`.
fn spawn(
    dir: &Path,
    name: &str,
    mut command: Command,
    ready: &str,
    append: bool,
) -> anyhow::Result<Child> {
    let log_path = dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(&log_path)?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
    let stdout = child.stdout.take().expect("piped");
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
        let _ = child.kill();
        let _ = child.wait();
        bail!("{name} did not become ready; see {}", log_path.display());
    }
    Ok(child)
}

/// Starts `command` as part `kind` (also its name), which prints no ready line: it is ready when
/// `port` answers.
pub(super) fn start_silent(
    parts: &mut Parts,
    kind: &'static str,
    command: Command,
    port: u16,
) -> anyhow::Result<()> {
    spawn_silent(parts, kind, kind, command, port)?;
    wait_for_port(port)
}

/// Starts `command` as part `name` of kind `kind`, which is ready when `port` answers, and does
/// not wait for that.
pub(super) fn spawn_silent(
    parts: &mut Parts,
    kind: &'static str,
    name: &str,
    command: Command,
    port: u16,
) -> anyhow::Result<()> {
    let program = PathBuf::from(command.get_program());
    let args = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let child = spawn_logged(&parts.dir, name, command, false)?;
    parts.record(Part {
        name: name.into(),
        child,
        program,
        args,
        ready: Ready::Port(port),
        kind,
    })
}

/// Spawns `command` with all its output in `logs/<name>.log` (appended to with `append`).
fn spawn_logged(
    dir: &Path,
    name: &str,
    mut command: Command,
    append: bool,
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(dir.join("logs").join(format!("{name}.log")))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))
}

pub(super) fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `command`, run in the network namespace `namespace` (`ip netns exec` execs it, so the
/// process started is the command's own: signals reach it).
pub(super) fn in_namespace(namespace: &str, command: Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", namespace])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

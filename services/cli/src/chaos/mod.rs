//! `sluice chaos`: runs a deployment under a steady load of producers and consumers (a standard
//! queue and a FIFO queue), makes a fault on a schedule, and at the end checks the ledger the
//! producers and consumers kept: every acknowledged message must have been received, and no
//! FIFO group delivered out of order.
//!
//! By default it starts the local cluster itself (`sluice dev cluster`, with one backend
//! cluster of 3 replicated nodes, so that every backend fault hits the queues' cluster), and
//! makes every kind of fault in `faults` on its processes and network namespaces. With
//! `--kill-command` or `--chaos-mesh` it runs against a deployment that is already running (the
//! frontends of `--endpoint`), kills parts of it, and leaves restarting them to that
//! deployment, as Kubernetes does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sluice_client::QueueClient;
use sluice_common::tls::ClientTls;
use sluice_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

mod faults;
mod load;
mod probe;
mod report;

use faults::{pick_part, Fault, Schedule, Target};
use probe::sample_lag;
use report::{print_report, Ledger, Report};

use crate::client::ReplicationArg;
use crate::dev::{self, Parts};

#[derive(clap::Args)]
pub struct ChaosArgs {
    /// Where the cluster's data, logs and pids go; emptied first.
    #[arg(long, default_value = "./sluice-chaos")]
    dir: PathBuf,
    /// The first of the cluster's 60 consecutive ports.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// How long the load and the faults go on, e.g. 2m or 30m.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between faults, from the start of one to the start of the next (a fault that
    /// takes longer delays the next).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// How long a killed part stays down before it is started again.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    down_for: Duration,
    /// The replication of the queues under load.
    #[arg(long, value_enum, default_value = "sync")]
    replication: ReplicationArg,
    /// The replication of the FIFO queue, when it differs from --replication. A deposed
    /// leader sends again the ASYNC sends no majority took, but not a FIFO queue's (they could
    /// overtake later messages of their group): an ASYNC FIFO queue may lose what its leader
    /// acknowledged last before a crash or a partition.
    #[arg(long, value_enum)]
    fifo_replication: Option<ReplicationArg>,
    /// Producers of the standard queue.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Message groups of the FIFO queue, each with a producer of its own.
    #[arg(long, default_value_t = 8)]
    fifo_groups: usize,
    /// Sends per second of each FIFO group's producer. A group's messages are delivered one at
    /// a time, each once the one before is deleted, so a group drains at a few dozen a second
    /// at most: more would build a backlog that a long run cannot drain.
    #[arg(long, default_value_t = 10)]
    fifo_rate: u32,
    /// Consumers of each queue.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Sends per second of each producer.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seeds the choice of victims, to repeat a run.
    #[arg(long)]
    seed: Option<u64>,
    /// What happens on the schedule: every kind in turn (`mix`), or one kind. The partitions
    /// (and so the mix) run each backend node in a network namespace of its own, which needs
    /// root and iproute2. A pause freezes the leader for longer than an election takes, then
    /// lets it go on as a deposed leader. Against a running deployment (--kill-command,
    /// --chaos-mesh) the faults are kills.
    #[arg(long, value_enum, default_value = "mix")]
    fault: Fault,
    /// How long a partition lasts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    partition_for: Duration,
    /// How long a paused leader stays frozen.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pause_for: Duration,
    /// After the load stops, how long consumers may take to receive what is left.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Runs against the deployment whose frontends `--endpoint` lists (comma-separated)
    /// instead of starting one, and kills with this shell command: each fault runs it with
    /// SLUICE_CHAOS_PART set to the part to kill (backend, frontend, metadata, etcd or
    /// manager), e.g.
    /// `kubectl -n sluice delete pod --wait=false $(kubectl -n sluice get pod -o name -l
    /// app.kubernetes.io/component=$SLUICE_CHAOS_PART | shuf -n1)`. The deployment starts
    /// what was killed again.
    #[arg(long, value_name = "CMD", conflicts_with = "chaos_mesh")]
    kill_command: Option<String>,
    /// Like --kill-command, with the Chaos Mesh experiments in DIR (k8s/chaos): each fault
    /// applies DIR/pod-kill-<part>.yaml with kubectl, after deleting what an earlier fault
    /// left of it.
    #[arg(long, value_name = "DIR")]
    chaos_mesh: Option<PathBuf>,
}

impl ChaosArgs {
    /// The shell command that kills a part of a running deployment, if the run is against one.
    fn kill_command(&self) -> Option<String> {
        if let Some(command) = &self.kill_command {
            return Some(command.clone());
        }
        let dir = self.chaos_mesh.as_ref()?;
        let experiment = format!("{}/pod-kill-$SLUICE_CHAOS_PART.yaml", dir.display());
        Some(format!(
            "kubectl delete --ignore-not-found --wait=true -f \"{experiment}\" && kubectl apply -f \"{experiment}\""
        ))
    }
}

/// Runs the chaos test; `endpoint` is the CLI's `--endpoint`, the frontends of a running
/// deployment when the run is against one. Returns whether the ledger balanced.
pub async fn run(args: ChaosArgs, json_out: bool, endpoint: &str) -> anyhow::Result<bool> {
    if let Some(command) = args.kill_command() {
        let mut frontends = Vec::new();
        for url in endpoint.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            frontends.push(connect_to(url)?);
        }
        anyhow::ensure!(
            !frontends.is_empty(),
            "--endpoint names no frontend to load"
        );
        let faults = Faults::Command(command);
        return drive(&args, frontends, faults, json_out).await;
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot empty {}", args.dir.display()))?;
    }
    let (dir, base) = (args.dir.clone(), args.base_port);
    let netns = args.fault.needs_netns();
    let parts = tokio::task::spawn_blocking(move || dev::up(&dir, base, 1, 3, netns, false, false))
        .await??;
    let parts = Arc::new(Mutex::new(parts));
    // Interrupted (Ctrl-C, SIGTERM), the run stops its deployment before it exits: the
    // processes it started and the network namespaces it made would outlive it otherwise.
    let interrupted = CancellationToken::new();
    sluice_common::shutdown::cancel_on_signal(interrupted.clone());
    let run = async {
        let urls: Vec<String> = {
            let parts = parts.lock().expect("not poisoned");
            (0..dev::FRONTENDS)
                .map(|f| {
                    let host = dev::frontend_host(parts.netns.as_ref(), f);
                    format!("https://{host}:{}", dev::frontend_port(args.base_port, f))
                })
                .collect()
        };
        let mut frontends = Vec::new();
        for url in urls {
            frontends.push(connect(&args.dir, &url).await?);
        }
        drive(&args, frontends, Faults::Local(parts.clone()), json_out).await
    };
    let result = tokio::select! {
        result = run => result,
        () = interrupted.cancelled() => {
            // Fault tasks still hold the parts: stop them here, then leave without waiting for
            // those tasks.
            eprintln!("chaos: interrupted; stopping the deployment it started (each part gets 30 s to stop)");
            tokio::task::spawn_blocking(move || parts.lock().expect("not poisoned").shut_down())
                .await?;
            eprintln!("chaos: the deployment is stopped");
            std::process::exit(130);
        }
    };
    tokio::task::spawn_blocking(move || drop(parts)).await?;
    result
}

/// How faults are made: on the processes this run started, or by a command against a running
/// deployment.
enum Faults {
    Local(Arc<Mutex<Parts>>),
    Command(String),
}

/// A client of a running deployment's frontend, with the CLI's TLS and credentials.
fn connect_to(url: &str) -> anyhow::Result<QueueClient> {
    let channel = sluice_common::tls::channel(url, None, |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
    })
    .with_context(|| format!("endpoint {url:?}"))?;
    Ok(sluice_client::queue_client(
        channel,
        sluice_common::credentials::installed(),
    ))
}

/// Runs `command` through the shell with SLUICE_CHAOS_PART set to `part`.
async fn run_kill_command(command: &str, part: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SLUICE_CHAOS_PART", part)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .context("cannot run the kill command")?;
    anyhow::ensure!(
        status.success(),
        "the kill command failed ({status}) for part {part}"
    );
    Ok(())
}

/// A client of a frontend of the cluster in `dir`, over TLS trusting the cluster's CA, with the
/// cluster's root key.
async fn connect(dir: &Path, url: &str) -> anyhow::Result<QueueClient> {
    let certs = dir.join("certs");
    let tls = ClientTls::new(Some(&certs.join("ca.pem")), None)?;
    let channel = sluice_common::tls::channel(url, Some(Arc::new(tls)), |endpoint| {
        endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
    })?;
    let credentials = crate::certs::root_credentials(&certs)?;
    Ok(sluice_client::queue_client(channel, credentials))
}

/// The visibility timeout of the queues under load.
const VISIBILITY: Duration = Duration::from_secs(10);

async fn drive(
    args: &ChaosArgs,
    frontends: Vec<QueueClient>,
    faults: Faults,
    json_out: bool,
) -> anyhow::Result<bool> {
    // Queues of their own for each run, so a run against a long-lived deployment starts empty:
    // a standard queue, and a FIFO queue whose groups' order is checked.
    let name = format!("chaos-{:08x}", rand::random::<u32>());
    let fifo_queue = format!("{name}.fifo");
    let replication = |arg: ReplicationArg| match arg {
        ReplicationArg::Sync => pb::Replication::Sync,
        ReplicationArg::Async => pb::Replication::Async,
    };
    for (queue, fifo) in [(&name, false), (&fifo_queue, true)] {
        let replication = replication(match args.fifo_replication {
            Some(arg) if fifo => arg,
            _ => args.replication,
        });
        frontends[0]
            .clone()
            .create_queue(pb::CreateQueueRequest {
                name: queue.clone(),
                attributes: Some(pb::QueueAttributes {
                    visibility_timeout_seconds: Some(VISIBILITY.as_secs() as u32),
                    replication: replication as i32,
                    fifo,
                    ..Default::default()
                }),
                tags: Default::default(),
            })
            .await
            .with_context(|| format!("cannot create the chaos queue {queue}"))?;
    }
    let started = Instant::now();
    // The backend nodes' and managers' admin ports, to aim at leaders and sample the lag:
    // known only for the processes this run started.
    let target = match &faults {
        Faults::Command(_) => None,
        Faults::Local(parts) => {
            let backends = {
                let parts = parts.lock().expect("not poisoned");
                (0..3)
                    .map(|n| {
                        let ip = match &parts.netns {
                            Some(netns) => netns.node_ip(n.into()),
                            None => "127.0.0.1".to_owned(),
                        };
                        format!("{ip}:{}", dev::backend_port(args.base_port, 3, 0, n) + 1)
                    })
                    .collect()
            };
            let managers = (0..2)
                .map(|i| format!("127.0.0.1:{}", args.base_port + 41 + 2 * i))
                .collect();
            Some(Target {
                parts: parts.clone(),
                backends,
                managers,
                started,
            })
        }
    };

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producing = CancellationToken::new();
    let consuming = CancellationToken::new();
    let mut producers = Vec::new();
    let load = [
        (&name, false, args.producers, args.rate),
        (&fifo_queue, true, args.fifo_groups, args.fifo_rate),
    ];
    for (queue, fifo, n, rate) in load {
        for p in 0..n {
            producers.push(tokio::spawn(load::produce(
                p,
                fifo,
                frontends.clone(),
                queue.clone(),
                rate,
                ledger.clone(),
                producing.clone(),
            )));
        }
    }
    let mut consumers = Vec::new();
    for (queue, fifo, _, _) in load {
        for c in 0..args.consumers {
            consumers.push(tokio::spawn(load::consume(
                c,
                fifo,
                frontends.clone(),
                queue.clone(),
                ledger.clone(),
                consuming.clone(),
            )));
        }
    }
    let lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_lag(
        target
            .as_ref()
            .map(|t| t.backends.clone())
            .unwrap_or_default(),
        lag.clone(),
        sampling.clone(),
    ));

    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_entropy(),
    };
    let mut kills: HashMap<&'static str, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut schedule = Schedule::new(args.fault);
    // Faults come every --kill-every from the start, whatever each one took.
    let mut next = tokio::time::Instant::now();
    loop {
        next = (next + args.kill_every).max(tokio::time::Instant::now());
        let (Faults::Local(_), Some(target)) = (&faults, &target) else {
            if next + args.down_for > deadline {
                break;
            }
            tokio::time::sleep_until(next).await;
            if let Faults::Command(command) = &faults {
                let kind = pick_part(&mut rng, true);
                eprintln!(
                    "chaos: {:>5.1}s killing a {kind} with the kill command",
                    started.elapsed().as_secs_f64()
                );
                let began = Instant::now();
                run_kill_command(command, kind).await?;
                *kills.entry(kind).or_default() += 1;
                ledger
                    .lock()
                    .expect("not poisoned")
                    .faults
                    .push((began, kind));
                // The deployment starts it again meanwhile.
                tokio::time::sleep(args.down_for).await;
            }
            continue;
        };
        let fault = schedule.next(&mut rng);
        if next + fault.outage(args) > deadline {
            break;
        }
        tokio::time::sleep_until(next).await;
        target
            .inject(fault, args, &mut rng, &mut kills, &ledger)
            .await?;
    }
    tokio::time::sleep_until(deadline).await;
    producing.cancel();
    for producer in producers {
        producer.await?;
    }
    eprintln!(
        "chaos: {:>5.1}s load stopped; draining",
        started.elapsed().as_secs_f64()
    );
    let drain_deadline = Instant::now() + args.drain_timeout;
    loop {
        let missing = {
            let ledger = ledger.lock().expect("not poisoned");
            ledger
                .acknowledged
                .iter()
                .filter(|body| !ledger.received.contains_key(*body))
                .count()
        };
        if missing == 0 || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever else is in the queue (retried sends stored twice) is received too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    consuming.cancel();
    for consumer in consumers {
        consumer.await?;
    }
    sampling.cancel();
    sampler.await?;

    let report = Report::of(
        &ledger.lock().expect("not poisoned"),
        match args.replication {
            ReplicationArg::Sync => "sync",
            ReplicationArg::Async => "async",
        },
        started.elapsed(),
        kills,
        lag.load(std::sync::atomic::Ordering::Relaxed),
        VISIBILITY,
    );
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report.lost == 0 && report.unexpected == 0 && report.fifo_order_violations == 0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ChaosArgs,
    }

    #[tokio::test]
    async fn chaos_mesh_deletes_then_applies_the_experiment_of_the_part_picked() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let experiments = repo.join("k8s/chaos");
        let cli = Cli::parse_from([
            "chaos".as_ref(),
            "--chaos-mesh".as_ref(),
            experiments.as_os_str(),
        ]);
        let command = cli.args.kill_command().expect("a kill command");
        // A kubectl that records what it is asked to do.
        let bin = tempfile::tempdir().unwrap();
        let log = bin.path().join("calls");
        let kubectl = bin.path().join("kubectl");
        std::fs::write(
            &kubectl,
            format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            &kubectl,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap()
        );
        let with_path = format!("PATH='{path}'; {command}");
        let parts = ["backend", "frontend", "metadata", "etcd", "manager"];
        for part in parts {
            run_kill_command(&with_path, part).await.unwrap();
            let experiment = experiments.join(format!("pod-kill-{part}.yaml"));
            assert!(experiment.exists(), "{} is missing", experiment.display());
        }
        let calls = std::fs::read_to_string(&log).unwrap();
        let calls: Vec<&str> = calls.lines().collect();
        let file = |part: &str| format!("{}/pod-kill-{part}.yaml", experiments.display());
        assert_eq!(
            calls,
            parts
                .iter()
                .flat_map(|part| [
                    format!("delete --ignore-not-found --wait=true -f {}", file(part)),
                    format!("apply -f {}", file(part)),
                ])
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_kill_command_and_chaos_mesh_exclude_each_other() {
        let parsed = Cli::try_parse_from([
            "chaos",
            "--kill-command",
            "true",
            "--chaos-mesh",
            "k8s/chaos",
        ]);
        assert!(parsed.is_err());
    }

    #[tokio::test]
    async fn a_failing_kill_command_fails_the_run_and_names_the_part() {
        let err = run_kill_command("exit 3", "frontend").await.unwrap_err();
        assert!(format!("{err:#}").contains("part frontend"), "{err:#}");
    }
}

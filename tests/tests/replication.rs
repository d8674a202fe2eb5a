//! Replicated backend clusters as real processes: three `sluice-backend` nodes of one cluster
//! on real RocksDB directories, killed with SIGKILL or crashed at fail points, and the chaos
//! suite (`sluice chaos`) over the whole local deployment.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_api::IdempotencyKey;
use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::trio::{bodies, Trio, ONE_AT_A_TIME, QUEUE};
use sluice_tests::{
    backend_failpoints_bin, free_port_range, queue_counts, sluice_bin, wait_for, EtcdProcess,
    ServerProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_before_it_reports_ready() -> anyhow::Result<()> {
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    let follower = (leader + 1) % 3;
    trio.nodes[follower].take().expect("running").kill9()?;
    for batch in 0..20 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    let leader_applied = trio.nodes[leader]
        .as_ref()
        .expect("running")
        .metric("sluice_backend_raft_applied_index")?;

    let restarted = trio.launch(follower, &[])?;
    let mut was_ready_early = false;
    wait_for(
        "the restarted node to be ready",
        Duration::from_secs(30),
        || {
            let (code, _) = restarted.admin_get("/readyz")?;
            let applied = restarted.metric("sluice_backend_raft_applied_index")?;
            if code == 200 {
                was_ready_early |= applied < leader_applied;
                return Ok(true);
            }
            Ok(false)
        },
    )
    .await?;
    let applied = restarted.metric("sluice_backend_raft_applied_index")?;
    eprintln!("leader applied {leader_applied}, restarted node applied {applied} when ready");
    assert!(!was_ready_early, "ready before it had caught up");
    assert!(applied >= leader_applied, "{applied} < {leader_applied}");
    trio.nodes[follower] = Some(restarted);

    // What the node missed is on it: it serves all of it once it leads.
    let old_leader = trio.nodes[leader].take().expect("running");
    old_leader.kill9()?;
    let seen = trio.drain().await?;
    assert_eq!(seen.len(), 200, "every acknowledged message survives");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_handle_deletes_after_its_leader_dies() -> anyhow::Result<()> {
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    trio.send(&bodies("held-", 2)).await?;
    let mut client = trio.client(leader).await?;
    let received = client
        .receive(pb::ReceiveRequest {
            queue_id: QUEUE,
            max_messages: 10,
            visibility_ms: 600_000,
            wait_ms: 0,
        })
        .await?
        .into_inner()
        .messages;
    assert_eq!(received.len(), 2);
    trio.nodes[leader].take().expect("running").kill9()?;

    // The new leader knows the handle: it deletes the first message.
    let handle = received[0].receipt_handle.clone();
    let (deleted, _) = trio
        .until_ok("Delete", |mut c| {
            let handle = handle.clone();
            async move {
                c.delete(pb::DeleteRequest {
                    queue_id: QUEUE,
                    receipt_handles: vec![handle],
                })
                .await
            }
        })
        .await?;
    assert!(
        deleted.results.iter().all(|r| r.code == 0),
        "the handle still deletes: {deleted:?}"
    );
    // The second one was in flight on the dead leader: it is visible again at once, although
    // its visibility timeout was 10 minutes.
    let seen = trio.drain().await?;
    let body = String::from_utf8_lossy(&received[1].body).into_owned();
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec![&body], "{seen:?}");
    Ok(())
}

/// A FIFO queue's delivery is committed before it goes out, so the next leader keeps it in
/// flight: the group waits for the consumer that holds it, whose receipt deletes it there, and
/// only then is the group's next message delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_message_in_flight_stays_in_flight_after_its_leader_dies() -> anyhow::Result<()> {
    const FIFO: u64 = 7;
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    let fifo = pb::EngineQueueConfig {
        name: "orders.fifo".into(),
        retention_seconds: 3600,
        fifo: true,
        ..Default::default()
    };
    trio.put_queue_as(FIFO, fifo).await?;
    let messages: Vec<pb::NewMessage> = ["first", "second"]
        .iter()
        .map(|body| pb::NewMessage {
            body: body.as_bytes().to_vec().into(),
            group_id: "g".into(),
            deduplication_id: (*body).into(),
            ..Default::default()
        })
        .collect();
    trio.until_ok("Send", |mut c| {
        let messages = messages.clone();
        async move {
            c.send(pb::SendRequest {
                queue_id: FIFO,
                messages,
                idempotency_key: bytes::Bytes::copy_from_slice(
                    &IdempotencyKey::random().to_bytes(),
                ),
            })
            .await
        }
    })
    .await?;
    let receive = |wait_ms: u64| pb::ReceiveRequest {
        queue_id: FIFO,
        max_messages: 10,
        visibility_ms: 600_000,
        wait_ms,
    };
    let held = trio
        .client(leader)
        .await?
        .receive(receive(0))
        .await?
        .into_inner()
        .messages;
    assert_eq!(bodies_of(&held), ["first"], "the group's head only");
    trio.nodes[leader].take().expect("running").kill9()?;

    // The new leader serves, and still has the head in flight: nothing of the group comes.
    let (waiting, _) = trio
        .until_ok(
            "Receive",
            |mut c| async move { c.receive(receive(1_000)).await },
        )
        .await?;
    assert_eq!(
        bodies_of(&waiting.messages),
        Vec::<String>::new(),
        "the head held by a consumer of the dead leader was delivered again, or the next one \
         before it"
    );
    let handle = held[0].receipt_handle.clone();
    let (deleted, _) = trio
        .until_ok("Delete", |mut c| {
            let handle = handle.clone();
            async move {
                c.delete(pb::DeleteRequest {
                    queue_id: FIFO,
                    receipt_handles: vec![handle],
                })
                .await
            }
        })
        .await?;
    assert!(
        deleted.results.iter().all(|r| r.code == 0),
        "the holder's receipt deletes on the new leader: {deleted:?}"
    );
    let (next, _) = trio
        .until_ok(
            "Receive",
            |mut c| async move { c.receive(receive(1_000)).await },
        )
        .await?;
    assert_eq!(bodies_of(&next.messages), ["second"]);
    Ok(())
}

fn bodies_of(messages: &[pb::ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

/// Runs the `sluice` CLI, failing with its error output if it fails.
fn cli(args: &[&str]) -> anyhow::Result<String> {
    let out = sluice_tests::admin_cli().args(args).output()?;
    if !out.status.success() {
        bail!("sluice {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_replaces_another_with_the_cli_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    for batch in 0..5 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    // a4 starts empty and outside the cluster.
    let a4 = ServerProcess::start_replica(
        &trio.bin,
        &trio.dir.path().join("a4"),
        "a4",
        trio.port(3),
        &["--join"],
        &[],
    )?;
    trio.nodes.push(Some(a4));
    let follower = (leader + 1) % 3;
    let any = trio.url(follower);
    let added = cli(&[
        "--json",
        "admin",
        "cluster",
        "add-node",
        "a4",
        "--url",
        &trio.url(3),
        "--node",
        &any,
    ])?;
    let added: serde_json::Value = serde_json::from_str(&added)?;
    let a4_voter = added["members"]
        .as_array()
        .context("members")?
        .iter()
        .any(|m| m["name"] == "a4" && m["voter"] == true);
    assert!(a4_voter, "a4 votes after add-node: {added}");

    // Replaced: a follower leaves, and the old leader dies; a4 and the third node carry on.
    let removed = cli(&[
        "--json",
        "admin",
        "cluster",
        "remove-node",
        &Trio::name(follower),
        "--node",
        &any,
    ])?;
    let removed: serde_json::Value = serde_json::from_str(&removed)?;
    assert_eq!(
        removed["members"].as_array().map(Vec::len),
        Some(3),
        "{removed}"
    );
    trio.nodes[follower]
        .take()
        .expect("running")
        .terminate()
        .await?;
    trio.nodes[leader].take().expect("running").kill9()?;
    let seen = trio.drain().await?;
    assert_eq!(
        seen.len(),
        50,
        "every message survives on the new membership"
    );
    let status = cli(&["admin", "cluster", "status", "--node", &trio.url(3)])?;
    println!("{status}");
    assert!(status.contains("a4"), "{status}");
    Ok(())
}

/// A snapshot every 50 entries, so that a few hundred sends purge the log several times.
const SNAPSHOTS: (&str, &str) = ("SLUICE_RAFT_SNAPSHOT_LOGS", "50");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_after_its_log_was_purged_loses_nothing() -> anyhow::Result<()> {
    // The log is purged again and again while the engines' memtables are far from full: what a
    // purge removed survives only in what the snapshot persisted.
    let mut trio = Trio::start(|_| vec![SNAPSHOTS]).await?;
    trio.leader().await?;
    trio.put_queue().await?;
    let sent = bodies("m", 200);
    for body in &sent {
        trio.send(std::slice::from_ref(body)).await?;
    }
    for i in 0..3 {
        let node = trio.nodes[i].as_ref().expect("running");
        wait_for("the node to purge its log", Duration::from_secs(30), || {
            Ok(node.metric("sluice_backend_raft_purged_index")? >= 100.0)
        })
        .await?;
    }

    for i in 0..3 {
        trio.nodes[i].take().expect("running").kill9()?;
    }
    for i in 0..3 {
        trio.nodes[i] = Some(trio.launch(i, &[SNAPSHOTS])?);
    }
    trio.leader().await?;
    let seen = trio.drain().await?;
    for body in &sent {
        assert!(seen.contains_key(body), "{body} was acknowledged and lost");
    }
    assert_eq!(seen.len(), sent.len(), "nothing unexpected");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_from_a_snapshot() -> anyhow::Result<()> {
    // The leader purges what the stopped follower misses, so it can only catch up from a
    // snapshot the leader reads out of its engine.
    let mut trio = Trio::start(|_| vec![SNAPSHOTS]).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    let behind = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    trio.nodes[behind].take().expect("running").kill9()?;
    let first = bodies("m", 200);
    for body in &first {
        trio.send(std::slice::from_ref(body)).await?;
    }
    let leading = trio.nodes[leader].as_ref().expect("running");
    wait_for(
        "the leader to purge its log",
        Duration::from_secs(30),
        || Ok(leading.metric("sluice_backend_raft_purged_index")? >= 100.0),
    )
    .await?;
    let leader_applied = leading.metric("sluice_backend_raft_applied_index")?;

    let restarted = trio.launch(behind, &[SNAPSHOTS])?;
    wait_for(
        "the restarted node to install a snapshot and catch up",
        Duration::from_secs(30),
        || {
            Ok(
                restarted.metric("sluice_backend_raft_snapshots_installed_total")? >= 1.0
                    && restarted.metric("sluice_backend_raft_applied_index")? >= leader_applied,
            )
        },
    )
    .await?;
    let dumped = leading.metric("sluice_backend_raft_snapshots_dumped_total")?;
    assert!(dumped >= 1.0, "the leader dumped no snapshot");
    trio.nodes[behind] = Some(restarted);

    // With the other follower down, what comes next is on the leader and the restarted node
    // only. Then the leader dies and the other follower comes back without it: only the
    // restarted node can win the election, and it must serve the first sends from the
    // snapshot it installed.
    trio.nodes[other].take().expect("running").kill9()?;
    let second = bodies("n", 20);
    for body in &second {
        trio.send(std::slice::from_ref(body)).await?;
    }
    trio.nodes[leader].take().expect("running").kill9()?;
    trio.nodes[other] = Some(trio.launch(other, &[SNAPSHOTS])?);
    assert_eq!(
        trio.leader().await?,
        behind,
        "only the restarted node has every entry"
    );
    let seen = trio.drain().await?;
    for body in first.iter().chain(&second) {
        assert!(seen.contains_key(body), "{body} was acknowledged and lost");
    }
    assert_eq!(seen.len(), first.len() + second.len(), "nothing unexpected");
    Ok(())
}

/// Crashes the first leader at `fail_point` on its first send, and checks that the cluster
/// serves on, that every acknowledged message comes back, and that none comes twice: the send
/// tried again on the next leader carries the key of the attempt that crashed.
async fn crash_at(fail_point: &'static str) -> anyhow::Result<()> {
    // The leader's first two proposals (the cluster's receipt key, the queue) pass; the third,
    // the first send, crashes it.
    let spec: &'static str = Box::leak(format!("{fail_point}=2*off->1*return").into_boxed_str());
    let mut trio = Trio::start_of(backend_failpoints_bin(), |_| vec![("FAILPOINTS", spec)]).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;

    let first = bodies("first-", 5);
    let failures = trio.send(&first).await?;
    let crashed = trio.nodes[leader].as_mut().expect("running");
    wait_for("the leader to crash", Duration::from_secs(10), || {
        Ok(crashed.exited()?.is_some())
    })
    .await?;
    trio.nodes[leader] = None;
    eprintln!("{fail_point}: the send was acknowledged after {failures} failed attempts");
    assert!(failures > 0, "the crash happened on the first attempt");

    // Every node comes back without the fail point, one at a time so that two stay up: the
    // crashed one first, then the others after a clean stop.
    for i in (0..3).map(|k| (leader + k) % 3) {
        if let Some(node) = trio.nodes[i].take() {
            node.terminate().await?;
        }
        let node = trio.launch(i, &[])?;
        wait_for("the node to be ready", Duration::from_secs(30), || {
            Ok(node.admin_get("/readyz")?.0 == 200)
        })
        .await?;
        trio.nodes[i] = Some(node);
    }
    let second = bodies("second-", 5);
    trio.send(&second).await?;
    let seen = trio.drain().await?;
    eprintln!("{fail_point}: received {seen:?}");
    for body in first.iter().chain(&second) {
        assert!(seen.contains_key(body), "{body} was acknowledged and lost");
    }
    assert_eq!(seen.len(), 10, "nothing unexpected");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    Ok(())
}

/// The same crash under the whole stack: a frontend sends, the cluster's leader dies between
/// commit and reply, and the frontend tries the send again on the next leader with the key of
/// the attempt that died, which answers with what was stored: the message is in the queue once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_through_a_frontend_whose_leader_died_between_commit_and_reply_is_stored_once(
) -> anyhow::Result<()> {
    let etcd = EtcdProcess::start()?;
    // The leader's first two proposals (the cluster's receipt key, the queue) pass; the third,
    // the send, crashes it. The next leader's retry stores nothing, and counting proposes
    // nothing, so no second node crashes.
    let spec = "backend::after_commit_before_reply=2*off->1*return";
    let registered = vec![
        "--etcd".to_owned(),
        etcd.endpoint.clone(),
        "--load-report-interval-ms".to_owned(),
        "200".to_owned(),
    ];
    let mut trio = Trio::start_with(backend_failpoints_bin(), registered, |_| {
        vec![("FAILPOINTS", spec)]
    })
    .await?;
    let leader = trio.leader().await?;
    let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1")?;
    let _manager = ServerProcess::start_manager(&etcd.endpoint, &[])?;
    let frontend = ServerProcess::start_frontend(&[metadata.endpoint()], 500)?;
    let mut client = frontend.client().await?;
    // The manager places the queue once it has seen the cluster's nodes register.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = client
            .create_queue(pb::CreateQueueRequest {
                name: "q".into(),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                eprintln!("create: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => bail!("the queue was never created: {status}"),
        }
    }

    let sent = client
        .send_message(pb::SendMessageRequest {
            queue: "q".into(),
            body: "once".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // It crashed before answering, so the answer came from another node.
    let crashed = trio.nodes[leader].as_mut().expect("running");
    wait_for("the leader to crash", Duration::from_secs(10), || {
        Ok(crashed.exited()?.is_some())
    })
    .await?;
    let counts = queue_counts(&mut client, "q").await;
    assert_eq!(counts.visible, 1, "stored once: {counts:?}");
    let got = client
        .receive_message(pb::ReceiveMessageRequest {
            queue: "q".into(),
            max_messages: 10,
            wait_time_seconds: Some(5),
            visibility_timeout_seconds: Some(60),
        })
        .await?
        .into_inner()
        .messages;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message_id, sent.message_id, "the first attempt's id");
    Ok(())
}

/// The binary a plain `cargo build` makes has no fail points: the spec that would crash the
/// fail-point build's leader at its first proposal leaves every node of it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_build_ignores_fail_points() -> anyhow::Result<()> {
    let spec = "backend::after_local_append=return;backend::after_commit_before_reply=return";
    let mut trio = Trio::start(|_| vec![("FAILPOINTS", spec)]).await?;
    trio.leader().await?;
    trio.put_queue().await?;
    let sent = bodies("plain-", 5);
    trio.send(&sent).await?;
    let seen = trio.drain().await?;
    for (i, node) in trio.nodes.iter_mut().enumerate() {
        let node = node.as_mut().expect("no node was killed");
        let exited = node.exited()?;
        assert!(exited.is_none(), "a{} stopped: {exited:?}", i + 1);
    }
    assert_eq!(seen.len(), sent.len(), "every message came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_crashing_after_its_local_write_loses_nothing_and_stores_the_retry_once(
) -> anyhow::Result<()> {
    crash_at("backend::after_local_append").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_its_leader_died_between_commit_and_reply_is_stored_once(
) -> anyhow::Result<()> {
    crash_at("backend::after_commit_before_reply").await
}

/// A chaos run with `extra` arguments (the fault and the schedule), its report.
async fn chaos_with(
    replication: &'static str,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let base = free_port_range(60)?.to_string();
    let mut command = Command::new(sluice_bin());
    command
        .args(["--json", "chaos"])
        .args(["--replication", replication, "--base-port", &base])
        .args(extra)
        .arg("--dir")
        .arg(dir.path().join("chaos"));
    chaos_report(command).await
}

/// How long every chaos run of the suite goes on, and how often a fault comes.
const CHAOS_SCHEDULE: [&str; 4] = ["--duration", "100s", "--kill-every", "15s"];

/// Runs `sluice chaos` as `command` says and returns its report, once it is plausible: enough
/// kills, enough load, nothing received that was never sent.
async fn chaos_report(mut command: Command) -> anyhow::Result<serde_json::Value> {
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("no report: {}", String::from_utf8_lossy(&output.stdout)))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let kills: u64 = report["kills"]
        .as_object()
        .context("kills")?
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(kills >= 5, "only {kills} kills");
    assert!(report["acknowledged"].as_u64() > Some(1000), "the load ran");
    assert_eq!(report["unexpected"], 0);
    Ok(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_a_kill_command_against_a_running_dev_cluster_loses_no_acknowledged_message(
) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let cluster_dir = dir.path().join("cluster");
    // Started on its own, restarting what dies, as Kubernetes would.
    let cluster = tokio::task::spawn_blocking(move || {
        DevCluster::start(&cluster_dir, &["--restart-after", "3s"], &[])
    })
    .await??;
    let pids = cluster.dir.join("pids");
    let backends = |cluster: &DevCluster| -> anyhow::Result<Vec<i32>> {
        ["a1", "a2", "a3", "b1", "b2", "b3"]
            .iter()
            .map(|node| cluster.pid(&format!("backend-{node}")))
            .collect()
    };
    let before = backends(&cluster)?;
    // SIGKILLs a random process of the part chaos names, found in the cluster's pids file.
    let kill = format!(
        "pid=$(grep \" $SLUICE_CHAOS_PART-\" '{}' | shuf -n 1 | cut -d' ' -f1) && kill -9 \"$pid\"",
        pids.display()
    );
    let root = std::fs::read_to_string(cluster.certs().join("root.credentials"))?;
    let (id, secret) = root.trim().split_once(':').context("KEY_ID:SECRET")?;
    let mut command = Command::new(sluice_bin());
    command
        .args(["--json", "--endpoint", &cluster.frontends.join(",")])
        .arg("--ca-cert")
        .arg(cluster.certs().join("ca.pem"))
        .args(["chaos", "--kill-command", &kill])
        .args(CHAOS_SCHEDULE)
        .env("SLUICE_ACCESS_KEY_ID", id)
        .env("SLUICE_SECRET_ACCESS_KEY", secret);
    let report = chaos_report(command).await?;
    assert_eq!(report["lost"], 0, "acknowledged messages were lost");
    // The kills were real: the backends the command killed run as new processes.
    assert!(
        report["kills"]["backend"].as_u64() > Some(0),
        "no backend was killed: {report}"
    );
    let after = backends(&cluster)?;
    assert_ne!(before, after, "no backend process was replaced");
    assert!(cluster.stop()?, "the cluster stopped cleanly");
    Ok(())
}

/// Every kind of fault `sluice chaos` makes, in one run: kills of each tier, the leader and
/// a follower cut off the network, the leader cut off its peers only, a frontend cut off the
/// backends, the leader frozen, etcd members and the leading manager killed, and graceful
/// restarts.
const EVERY_FAULT: [&str; 9] = [
    "kill",
    "partition",
    "partition_follower",
    "partition_peers",
    "partition_frontend",
    "pause",
    "etcd",
    "manager_leader",
    "restart",
];

/// A SYNC run of every fault in turn loses no acknowledged message, no FIFO group is ever
/// delivered out of order, and no FIFO message is with two consumers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_chaos_run_of_every_fault_loses_nothing_and_keeps_fifo_order() -> anyhow::Result<()> {
    let report = chaos_with(
        "sync",
        &[
            "--fault",
            "mix",
            // Room for 11 faults, 9 of which make each kind once.
            "--duration",
            "140s",
            "--kill-every",
            "12s",
            "--down-for",
            "3s",
            "--partition-for",
            "6s",
            "--pause-for",
            "4s",
        ],
    )
    .await?;
    let kinds = report["kills"].as_object().context("kills")?;
    for kind in EVERY_FAULT {
        // A kill is counted by what it hit.
        let made = match kind {
            "kill" => ["leader", "backend", "frontend", "metadata"]
                .iter()
                .any(|hit| kinds.contains_key(*hit)),
            _ => kinds.contains_key(kind),
        };
        assert!(made, "no {kind} fault in {report}");
    }
    assert_eq!(report["lost"], 0, "acknowledged messages were lost");
    assert_eq!(report["fifo_order_violations"], 0, "{report}");
    // A FIFO message's delivery is committed before it goes out, so no failover hands it to a
    // second consumer while the first holds it. A standard queue's may (at-least-once).
    assert_eq!(report["fifo_double_deliveries"], 0, "{report}");
    assert!(
        report["fifo_acknowledged"].as_u64() > Some(1000),
        "the FIFO load ran: {report}"
    );
    println!(
        "longest send {} ms; delivered again within the visibility timeout: {} standard",
        report["send_max_ms"], report["double_deliveries"]
    );
    Ok(())
}

/// The leader cut off its peers under load while the frontends still reach it, with the
/// standard queue ASYNC: what the cut-off leader acknowledged within its lease is sent again
/// once the partition heals, so every acknowledged message is received. The FIFO queue is SYNC (a deposed leader does
/// not send a FIFO queue's messages again: docs/replication.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_chaos_run_of_leaders_cut_off_their_peers_loses_no_acknowledged_message(
) -> anyhow::Result<()> {
    let report = chaos_with(
        "async",
        &[
            "--fifo-replication",
            "sync",
            "--fault",
            "partition-peers",
            "--duration",
            "100s",
            "--kill-every",
            "15s",
            "--partition-for",
            "6s",
        ],
    )
    .await?;
    assert!(
        report["kills"]["partition_peers"].as_u64() >= Some(5),
        "the leader was cut off 5 times: {report}"
    );
    assert_eq!(report["lost"], 0, "acknowledged messages were lost");
    assert_eq!(report["fifo_order_violations"], 0, "{report}");
    assert_eq!(report["fifo_double_deliveries"], 0, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_chaos_run_loses_at_most_what_was_not_yet_replicated() -> anyhow::Result<()> {
    let mut extra = vec!["--fault", "kill"];
    extra.extend(CHAOS_SCHEDULE);
    let report = chaos_with("async", &extra).await?;
    let lost = report["lost"].as_u64().context("lost")?;
    // A leader's crash loses at most the entries it held that no majority had, which the lag
    // metric counts; each of the 12 producers (4 of the standard queue, one for each of the
    // FIFO queue's 8 groups) has one send in flight, so such an entry holds at most 12.
    let lag = report["max_replication_lag_entries"]
        .as_u64()
        .context("lag")?;
    let leader_kills = report["kills"]["leader"].as_u64().unwrap_or(0);
    let bound = lag * 12 * leader_kills;
    println!("{lost} lost; at most {lag} entries x 12 messages x {leader_kills} leader kills");
    assert!(
        lost <= bound,
        "{lost} lost, more than the lag allows ({bound})"
    );
    Ok(())
}

//! A backend cluster's membership without an operator, as Kubernetes needs it: a node that
//! comes back with its name and address on an empty volume replaces its old self, a node added
//! to the members joins, and a rolling restart (SIGTERM, start, wait for readiness, next)
//! loses nothing. Real `sluice-backend` processes on real RocksDB directories.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sluice_api::IdempotencyKey;
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_tests::trio::{bodies, Trio, QUEUE};
use sluice_tests::{channel_as, Kind, ServerProcess};

/// Kills node `i` with SIGKILL, deletes its data directory and starts it again with the same
/// name, address and members: a pod rescheduled onto a new volume.
async fn wipe(trio: &mut Trio, i: usize) -> anyhow::Result<u64> {
    let old = trio.status(i).await?.raft_id;
    trio.nodes[i].take().context("running")?.kill9()?;
    std::fs::remove_dir_all(trio.dir.path().join(Trio::name(i)))?;
    trio.nodes[i] = Some(trio.launch(i, &[])?);
    Ok(old)
}

/// Waits until node `i` is a voter of its cluster under a new Raft id, the member it replaces
/// (`old`) is gone, the cluster has three voters, and the node reports ready (caught up).
async fn rejoined(trio: &Trio, i: usize, old: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(status) = trio.status(i).await {
            let voters: Vec<u64> = status
                .members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.raft_id)
                .collect();
            let ready = trio.nodes[i]
                .as_ref()
                .context("running")?
                .admin_get("/readyz")
                .is_ok_and(|(code, _)| code == 200);
            if status.raft_id != old
                && voters.contains(&status.raft_id)
                && !status.members.iter().any(|m| m.raft_id == old)
                && voters.len() == 3
                && ready
            {
                return Ok(());
            }
            last = format!("{status:?}, ready {ready}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} never rejoined: {last}", Trio::name(i))
}

/// Each body came exactly once, and they are the `n` batches of ten of `sent`.
fn assert_once(seen: &HashMap<String, u32>, batches: usize) {
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        seen.len(),
        batches * 10,
        "every acknowledged message survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_back_on_empty_volumes_replace_themselves_and_nothing_is_lost() -> anyhow::Result<()>
{
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    for batch in 0..5 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    let follower = (leader + 1) % 3;
    let old = wipe(&mut trio, follower).await?;
    rejoined(&trio, follower, old).await?;
    for batch in 5..8 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    // The leader's volume is lost too: the others elect a leader, and it comes back a follower.
    let old = wipe(&mut trio, leader).await?;
    rejoined(&trio, leader, old).await?;
    for batch in 8..10 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    // The two replacements are real voters: without the one node never wiped, they are the
    // majority that elects, commits and keeps every message.
    let third = 3 - leader - follower;
    trio.nodes[third].take().context("running")?.kill9()?;
    for batch in 10..12 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    assert_once(&trio.drain().await?, 12);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_to_the_members_joins_the_running_cluster_as_a_voter() -> anyhow::Result<()> {
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let leader = trio.leader().await?;
    trio.put_queue().await?;
    for batch in 0..3 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    // As a StatefulSet scaled from three to four starts its fourth pod.
    let members = format!("{},a4={}", trio.peers(), trio.url(3));
    let a4 = ServerProcess::start_replica(
        &trio.bin,
        &trio.dir.path().join("a4"),
        "a4",
        trio.port(3),
        &["--peers", &members],
        &[],
    )?;
    trio.nodes.push(Some(a4));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = trio.status(3).await?;
        let voters = status.members.iter().filter(|m| m.voter).count();
        let ready = trio.nodes[3]
            .as_ref()
            .context("running")?
            .admin_get("/readyz")?
            .0
            == 200;
        if voters == 4 && status.members.iter().any(|m| m.name == "a4" && m.voter) && ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "a4 never joined: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Four voters need three for a majority: with the leader gone, a4 is one of them.
    trio.nodes[leader].take().context("running")?.kill9()?;
    for batch in 3..5 {
        trio.send(&bodies(&format!("m{batch}-"), 10)).await?;
    }
    assert_once(&trio.drain().await?, 5);
    Ok(())
}

/// What the load of the rolling-restart test saw.
#[derive(Default)]
struct Load {
    acknowledged: Vec<String>,
    /// The longest time one batch took from its first failed try to its acknowledgement.
    longest_outage: Duration,
}

/// Sends batches of ten until `stop`, as a frontend does: each batch to the node that took the
/// last one first, then to each node in turn, with one idempotency key, until acknowledged.
async fn load(urls: Vec<String>, stop: Arc<AtomicBool>, batches: Arc<AtomicUsize>) -> Load {
    let clients: Vec<_> = urls
        .iter()
        .map(|url| BackendServiceClient::new(channel_as(url, Kind::Frontend)))
        .collect();
    let mut load = Load::default();
    let mut node = 0;
    for batch in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = bodies(&format!("r{batch}-"), 10);
        let key = bytes::Bytes::copy_from_slice(&IdempotencyKey::random().to_bytes());
        let mut failed_since = None;
        loop {
            let mut request = tonic::Request::new(pb::SendRequest {
                queue_id: QUEUE,
                messages: sent
                    .iter()
                    .map(|b| pb::NewMessage {
                        body: b.clone().into_bytes().into(),
                        ..Default::default()
                    })
                    .collect(),
                idempotency_key: key.clone(),
            });
            request.set_timeout(Duration::from_secs(5));
            match clients[node].clone().send(request).await {
                Ok(_) => break,
                Err(_) => {
                    failed_since.get_or_insert_with(Instant::now);
                    node = (node + 1) % clients.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if let Some(since) = failed_since {
            load.longest_outage = load.longest_outage.max(since.elapsed());
        }
        load.acknowledged.extend(sent);
        batches.fetch_add(1, Ordering::SeqCst);
    }
    load
}

/// How long sends may fail while a rolling restart stops a leader: its hand-over waits out the
/// leader's lease (one second) and an election; the rest is margin for a loaded machine.
const OUTAGE_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_sends_resume_within_the_bound(
) -> anyhow::Result<()> {
    let mut trio = Trio::start(|_| Vec::new()).await?;
    let first_leader = trio.leader().await?;
    trio.put_queue().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicUsize::new(0));
    let urls = (0..3).map(|i| trio.url(i)).collect();
    let sender = tokio::spawn(load(urls, stop.clone(), batches.clone()));
    let progress = |at_least: usize| {
        let batches = batches.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while batches.load(Ordering::SeqCst) < at_least {
                anyhow::ensure!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    };
    progress(20).await?;
    // A StatefulSet's rolling update: the highest ordinal first, each pod stopped with SIGTERM
    // and the next one only once the restarted pod is ready. The first leader is among them.
    let mut handed_over = 0;
    for i in (0..3).rev() {
        let before = trio.status(i).await?;
        let exit = trio.nodes[i].take().context("running")?.terminate().await?;
        assert!(exit.success(), "a{} stopped cleanly: {exit}", i + 1);
        if before.serving {
            // A leader that stops hands over first: by the time it has exited, another node
            // leads in a later term (a killed leader's followers elect only after it is gone).
            let mut leaders = Vec::new();
            for other in trio.live() {
                let status = trio.status(other).await?;
                if status.term > before.term && !status.leader.is_empty() {
                    leaders.push(status.leader);
                }
            }
            assert!(
                leaders.iter().any(|l| *l != before.node),
                "a{} exited before another node led: {leaders:?}",
                i + 1
            );
            handed_over += 1;
        }
        let restarted = trio.launch(i, &[])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while restarted.admin_get("/readyz")?.0 != 200 {
            anyhow::ensure!(Instant::now() < deadline, "a{} never ready", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trio.nodes[i] = Some(restarted);
        let done = batches.load(Ordering::SeqCst);
        progress(done + 20).await?;
    }
    assert!(handed_over >= 1, "the restarts stopped no leader");
    stop.store(true, Ordering::SeqCst);
    let load = sender.await?;
    eprintln!(
        "{} batches acknowledged; the first leader was a{}; {handed_over} hand-overs; the longest outage of one send was {:?}",
        load.acknowledged.len() / 10,
        first_leader + 1,
        load.longest_outage
    );
    let seen = trio.drain().await?;
    let missing: Vec<_> = load
        .acknowledged
        .iter()
        .filter(|b| !seen.contains_key(*b))
        .collect();
    assert!(missing.is_empty(), "acknowledged, then lost: {missing:?}");
    assert_once(&seen, load.acknowledged.len() / 10);
    assert!(
        load.longest_outage < OUTAGE_BOUND,
        "sends failed for {:?}",
        load.longest_outage
    );
    Ok(())
}

//! A leader cut off from its followers while its clients still reach it, with real processes:
//! the `sluice-backend-failpoints` build drops all Raft traffic of a node on SIGUSR1 and lets it
//! flow again on SIGUSR2. The old leader must stop acknowledging (asynchronous sends, receives)
//! once its lease runs out, before the majority elects another leader, and say why; and what
//! it acknowledged within its lease that no follower took is sent again through the new leader
//! once it rejoins. And bounded ASYNC: sends wait once the leader's log runs the bound ahead of
//! a majority, so a leader's crash loses at most that many acknowledged entries until it comes
//! back.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sluice_proto::v1 as pb;
use sluice_tests::trio::{bodies, Trio};
use tonic::Code;

const ASYNC: u64 = 1;
const SYNC: u64 = 2;

async fn put_queue(trio: &Trio, id: u64, asynchronous: bool) -> anyhow::Result<()> {
    trio.until_ok("PutQueue", |mut c| async move {
        c.put_queue(pb::PutQueueRequest {
            queue_id: id,
            config: Some(pb::EngineQueueConfig {
                name: format!("q{id}"),
                retention_seconds: 3600,
                async_replication: asynchronous,
                ..Default::default()
            }),
            first_sequence: 0,
        })
        .await
    })
    .await?;
    Ok(())
}

fn send(id: u64, body: &str) -> tonic::Request<pb::SendRequest> {
    send_keyed(id, body, false)
}

/// A send with an idempotency key, as frontends make them, when `keyed`.
fn send_keyed(id: u64, body: &str, keyed: bool) -> tonic::Request<pb::SendRequest> {
    let key = if keyed {
        rand::random::<[u8; 16]>().to_vec()
    } else {
        Vec::new()
    };
    let mut request = tonic::Request::new(pb::SendRequest {
        queue_id: id,
        messages: vec![pb::NewMessage {
            body: body.to_owned().into_bytes().into(),
            ..Default::default()
        }],
        idempotency_key: key.into(),
    });
    // A SYNC send to a leader without a majority waits for a commit that cannot come.
    request.set_timeout(Duration::from_secs(2));
    request
}

/// Every body queue `id` holds, received through whichever node leads.
async fn drain(trio: &Trio, id: u64) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    loop {
        let (received, _) = trio
            .until_ok("Receive", |mut c| async move {
                c.receive(pb::ReceiveRequest {
                    queue_id: id,
                    max_messages: 100,
                    visibility_ms: 600_000,
                    wait_ms: 0,
                })
                .await
            })
            .await?;
        if received.messages.is_empty() {
            return Ok(found);
        }
        found.extend(
            received
                .messages
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_followers_stops_acknowledging_before_they_elect_another(
) -> anyhow::Result<()> {
    let mut trio = Trio::start_of(sluice_tests::backend_failpoints_bin(), |_| Vec::new()).await?;
    let old = trio.leader().await?;
    put_queue(&trio, ASYNC, true).await?;
    put_queue(&trio, SYNC, false).await?;
    for body in bodies("before-", 20) {
        trio.until_ok("Send", |mut c| {
            let body = body.clone();
            async move { c.send(send(ASYNC, &body).into_inner()).await }
        })
        .await?;
    }
    for body in bodies("sync-before-", 5) {
        trio.until_ok("Send", |mut c| {
            let body = body.clone();
            async move { c.send(send(SYNC, &body).into_inner()).await }
        })
        .await?;
    }
    // Everything sent so far is on every node, so only what comes after the cut is at stake.
    let last = trio.status(old).await?.last_log_index;
    for i in 0..3 {
        until_status(&trio, i, "to hold the log", |s| s.applied_index >= last).await?;
    }

    let pid = Pid::from_raw(trio.nodes[old].as_ref().expect("running").pid() as i32);
    kill(pid, Signal::SIGUSR1)?;
    let cut = Instant::now();
    let mut old_client = trio.client(old).await?;
    let mut acked_after_cut = Vec::new();
    let mut sync_acked_after_cut = 0;
    let mut first_refusal: Option<(Duration, tonic::Status)> = None;
    let mut new_leader: Option<(usize, Duration)> = None;
    let mut receive_refused = None;
    for n in 0.. {
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "after 30 s: refusal {first_refusal:?}, new leader {new_leader:?}"
        );
        let body = format!("after-{n}");
        match old_client.send(send_keyed(ASYNC, &body, n % 2 == 0)).await {
            Ok(_) => {
                assert!(
                    first_refusal.is_none(),
                    "the old leader acknowledged {body} after it had refused a send"
                );
                acked_after_cut.push((body, cut.elapsed()));
            }
            Err(status) if first_refusal.is_none() => {
                first_refusal = Some((cut.elapsed(), status));
            }
            Err(_) => {}
        }
        if first_refusal.is_some() && receive_refused.is_none() {
            let refused = old_client
                .receive(pb::ReceiveRequest {
                    queue_id: ASYNC,
                    max_messages: 10,
                    visibility_ms: 30_000,
                    wait_ms: 0,
                })
                .await
                .expect_err("a leader past its lease hands out no messages");
            receive_refused = Some(refused);
            if old_client
                .send(send(SYNC, &format!("sync-after-{n}")))
                .await
                .is_ok()
            {
                sync_acked_after_cut += 1;
            }
        }
        if new_leader.is_none() {
            for i in (0..3).filter(|&i| i != old) {
                if trio.status(i).await.is_ok_and(|s| s.serving) {
                    new_leader = Some((i, cut.elapsed()));
                }
            }
        }
        if first_refusal.is_some() && new_leader.is_some() && receive_refused.is_some() {
            break;
        }
    }
    let (refused_at, refusal) = first_refusal.expect("set before the loop ends");
    let (leader, elected_seen_at) = new_leader.expect("set before the loop ends");
    let last_ack_at = acked_after_cut.last().map(|(_, at)| *at);
    println!(
        "after the cut: {} ASYNC sends acknowledged by the old leader, the last at {last_ack_at:?}; \
         its first refusal at {refused_at:?}; a{} seen leading at {elected_seen_at:?}",
        acked_after_cut.len(),
        leader + 1
    );
    for status in [&refusal, receive_refused.as_ref().expect("set")] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("lease"), "{status:?}");
    }
    assert_eq!(
        sync_acked_after_cut, 0,
        "a SYNC send was acknowledged without a majority"
    );
    if let Some(last_ack_at) = last_ack_at {
        assert!(
            last_ack_at < elected_seen_at,
            "the old leader acknowledged at {last_ack_at:?}, after the other side led at {elected_seen_at:?}"
        );
    }
    assert!(
        refused_at < elected_seen_at,
        "the old leader still acknowledged when the other side already led"
    );

    kill(pid, Signal::SIGUSR2)?;
    until_status(&trio, old, "to follow", |s| {
        !s.serving && !s.leader.is_empty()
    })
    .await?;
    // The old leader truncates what it appended alone when it follows the new one, and sends
    // again the ASYNC sends it had acknowledged.
    let mut expected = bodies("before-", 20);
    expected.extend(acked_after_cut.iter().map(|(body, _)| body.clone()));
    let found = receive_all(&trio, ASYNC, &expected).await?;
    let resent = trio.nodes[old]
        .as_ref()
        .expect("running")
        .metric("sluice_backend_resent_messages_total{outcome=\"stored\"}")?;
    println!(
        "every one of the {} ASYNC sends acknowledged after the cut was received; the old leader sent {resent} again",
        acked_after_cut.len()
    );
    // Refused sends the old leader had in its log are sent again too: a refusal (UNAVAILABLE)
    // leaves a send's fate open, as for SYNC. None is stored twice.
    let distinct: std::collections::HashSet<_> = found.iter().collect();
    assert_eq!(distinct.len(), found.len(), "a message was received twice");
    let sync = drain(&trio, SYNC).await?;
    for body in bodies("sync-before-", 5) {
        assert!(sync.contains(&body), "{body}, a SYNC send, is lost");
    }
    trio.nodes.iter_mut().for_each(|n| drop(n.take()));
    Ok(())
}

/// Receives from queue `id` through whichever node leads, hiding what it gets, until every body
/// of `expected` has come; fails after 30 s. Returns every body received.
async fn receive_all(trio: &Trio, id: u64, expected: &[String]) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = Vec::new();
    loop {
        found.extend(drain(trio, id).await?);
        let missing: Vec<_> = expected.iter().filter(|b| !found.contains(b)).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after 30 s, {} acknowledged messages were never received: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls node `i`'s status until `check` holds, for up to 20 s.
async fn until_status(
    trio: &Trio,
    i: usize,
    what: &str,
    check: impl Fn(&pb::ClusterStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !trio.status(i).await.is_ok_and(|s| check(&s)) {
        anyhow::ensure!(Instant::now() < deadline, "a{} never came {what}", i + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Bounded ASYNC: followers whose appends arrive 40 ms late (within openraft's deadline for an
/// append) let the leader's log run ahead,
/// and past `--async-max-lag-entries` ASYNC sends wait for them instead of piling up entries a
/// crash would lose; a SIGKILL of the leader then loses no more acknowledged sends than the
/// bound (one sender, one message per entry), and those come back when it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_sends_wait_at_the_lag_bound_and_a_leader_kill_loses_at_most_the_bound_until_it_restarts(
) -> anyhow::Result<()> {
    const BOUND: usize = 4;
    let mut trio = Trio::start_with(
        sluice_tests::backend_failpoints_bin(),
        vec!["--async-max-lag-entries".into(), BOUND.to_string()],
        |_| vec![("FAILPOINTS", "backend::follower_append_delay_ms=return(40)")],
    )
    .await?;
    let leader = trio.leader().await?;
    put_queue(&trio, ASYNC, true).await?;
    let node = trio.nodes[leader].as_ref().expect("running");
    assert_eq!(
        node.metric("sluice_backend_replication_async_max_lag_entries")?,
        BOUND as f64
    );
    let mut client = trio.client(leader).await?;
    let mut acked = Vec::new();
    let mut n = 0;
    // Until the bound has held sends back a good many times; every send still goes through.
    while node.metric("sluice_backend_replication_async_waits_total")? < 20.0 {
        let body = format!("m{n}");
        client.send(send(ASYNC, &body)).await?;
        acked.push(body);
        n += 1;
        assert!(n < 5_000, "the bound never held a send back");
    }
    println!(
        "{} sends acknowledged before the bound held one back 20 times",
        acked.len()
    );

    // Now a crash mid-stream: a second task keeps sending while the leader is killed.
    let sender = {
        let mut client = trio.client(leader).await?;
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0.. {
                let body = format!("k{n}");
                match client.send(send(ASYNC, &body)).await {
                    Ok(_) => acked.push(body),
                    Err(_) => return acked,
                }
            }
            acked
        })
    };
    // Enough sends under way that the log has run up to the bound ahead.
    sluice_tests::wait_for(
        "the leader to hold sends back again",
        Duration::from_secs(30),
        || Ok(node.metric("sluice_backend_replication_async_waits_total")? >= 40.0),
    )
    .await?;
    trio.nodes[leader].take().expect("running").kill9()?;
    let killed_acked = sender.await?;
    acked.extend(killed_acked.iter().cloned());
    trio.leader().await?;
    let found = drain(&trio, ASYNC).await?;
    let lost: Vec<_> = acked.iter().filter(|b| !found.contains(b)).collect();
    println!(
        "{} acknowledged in all, {} of them around the kill; lost: {lost:?}",
        acked.len(),
        killed_acked.len()
    );
    assert!(
        lost.len() <= BOUND,
        "{} acknowledged ASYNC sends lost, more than the bound of {BOUND} entries",
        lost.len()
    );
    // Back, the killed leader drops what it alone held and sends it again.
    trio.nodes[leader] = Some(trio.launch(leader, &[])?);
    let lost: Vec<String> = lost.into_iter().cloned().collect();
    receive_all(&trio, ASYNC, &lost).await?;
    println!("the restarted node sent again the {} lost", lost.len());
    trio.nodes.iter_mut().for_each(|n| drop(n.take()));
    Ok(())
}

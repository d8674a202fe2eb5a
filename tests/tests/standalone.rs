//! `sluice standalone` as a real process: durability across SIGKILL, long polling, graceful
//! shutdown, the admin port and the CLI.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_api::cluster::{self, Placement};
use sluice_api::Stored;
use sluice_metastore::{EmbeddedStore, MetaStore};
use sluice_proto::v1 as pb;
use sluice_tests::front::delete_entries;
use sluice_tests::{wait_for, StandaloneProcess};

async fn create_queue(server: &StandaloneProcess, name: &str) {
    server
        .client()
        .await
        .unwrap()
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Receives and deletes until the queue is empty; returns the bodies seen.
async fn drain(server: &StandaloneProcess, queue: &str) -> Vec<String> {
    let mut client = server.client().await.unwrap();
    let mut bodies = Vec::new();
    loop {
        let got = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: queue.into(),
                max_messages: 10,
                wait_time_seconds: Some(0),
                visibility_timeout_seconds: Some(300),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if got.is_empty() {
            let counts = sluice_tests::queue_counts(&mut client, queue).await;
            // Nothing visible and nothing left that could become visible.
            assert_eq!(counts.visible + counts.delayed, 0);
            return bodies;
        }
        let entries = delete_entries(&got);
        bodies.extend(
            got.iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
        let deleted = client
            .delete_message_batch(pb::DeleteMessageBatchRequest {
                queue: queue.into(),
                entries,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(deleted.failed.is_empty(), "{:?}", deleted.failed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    create_queue(&server, "durable").await;

    // Eight producers send batches of 10 without pause; the server is killed as soon as 1,000
    // messages are acknowledged, while more sends are in flight.
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for producer in 0..8 {
        let mut client = server.client().await.unwrap();
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            for batch in 0.. {
                let entries = (0..10)
                    .map(|i| pb::SendMessageBatchEntry {
                        id: i.to_string(),
                        body: format!("p{producer}-b{batch}-m{i}").into(),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>();
                let bodies: Vec<_> = entries
                    .iter()
                    .map(|e| String::from_utf8(e.body.to_vec()).unwrap())
                    .collect();
                let Ok(resp) = client
                    .send_message_batch(pb::SendMessageBatchRequest {
                        queue: "durable".into(),
                        entries,
                    })
                    .await
                else {
                    return; // The server is gone.
                };
                let resp = resp.into_inner();
                assert!(resp.failed.is_empty(), "{:?}", resp.failed);
                let mut acked = acked.lock().unwrap();
                for ok in resp.successful {
                    acked.insert(bodies[ok.id.parse::<usize>().unwrap()].clone());
                }
            }
        }));
    }
    wait_for(
        "1,000 acknowledged messages",
        Duration::from_secs(120),
        || Ok(acked.lock().unwrap().len() >= 1000),
    )
    .await
    .unwrap();
    server.kill9().unwrap();
    for producer in producers {
        producer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000);

    let server = StandaloneProcess::start(dir.path()).unwrap();
    let received: HashSet<String> = drain(&server, "durable").await.into_iter().collect();
    let lost: Vec<_> = acked.difference(&received).collect();
    println!(
        "acknowledged {}, received after restart {}, lost {}",
        acked.len(),
        received.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");
}

#[tokio::test]
async fn long_poll_returns_soon_after_a_send() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    create_queue(&server, "poll").await;

    let mut receiver = server.client().await.unwrap();
    let waiting = tokio::spawn(async move {
        let got = receiver
            .receive_message(pb::ReceiveMessageRequest {
                queue: "poll".into(),
                max_messages: 1,
                wait_time_seconds: Some(5),
                visibility_timeout_seconds: None,
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        (got, Instant::now())
    });
    wait_for("the receive to be waiting", Duration::from_secs(10), || {
        Ok(server.metric("sluice_storage_waiting_receives")? >= 1.0)
    })
    .await
    .unwrap();

    let sent_at = Instant::now();
    server
        .client()
        .await
        .unwrap()
        .send_message(pb::SendMessageRequest {
            queue: "poll".into(),
            body: "wake up".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (got, returned_at) = waiting.await.unwrap();
    let latency = returned_at.saturating_duration_since(sent_at);
    println!("long poll returned {latency:?} after the send began");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "wake up");
    // Woken by the send, not by the 5 s wait running out.
    assert!(latency < Duration::from_secs(3), "took {latency:?}");
}

#[tokio::test]
async fn sigterm_drains_and_keeps_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    assert_eq!(server.admin_get("/healthz").unwrap().0, 200);
    assert_eq!(server.admin_get("/readyz").unwrap().0, 200);
    create_queue(&server, "graceful").await;
    let mut client = server.client().await.unwrap();
    for i in 0..5 {
        client
            .send_message(pb::SendMessageRequest {
                queue: "graceful".into(),
                body: format!("m{i}").into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let (_, metrics) = server.admin_get("/metrics").unwrap();
    for name in [
        "sluice_messages_sent_total{queue=\"graceful\"} 5",
        "sluice_rpc_duration_seconds_bucket{method=\"SendMessage\"",
        "sluice_rpc_requests_total{code=\"OK\",method=\"CreateQueue\"} 1",
        "sluice_storage_commit_batch_requests_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let status = server.terminate().await.unwrap();
    assert!(status.success(), "exit status {status}");

    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut bodies = drain(&server, "graceful").await;
    bodies.sort();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
}

async fn queue_id(store: &EmbeddedStore, name: &str) -> u64 {
    let key = cluster::queue_record_key("", name);
    let record = store.get(&key).await.unwrap().expect("the queue's record");
    Stored::decode(&key, record).unwrap().record.id
}

/// The placement of queue `name` in a stopped standalone's data directory, and its revision.
async fn placement_of(dir: &std::path::Path, name: &str) -> Option<(Placement, u64)> {
    let store = EmbeddedStore::open(&dir.join("meta")).unwrap();
    let placement = store
        .get(&cluster::placement_key("", queue_id(&store, name).await))
        .await
        .unwrap()?;
    Some((
        serde_json::from_slice(&placement.value).unwrap(),
        placement.revision,
    ))
}

/// Standalone places each queue as the managers do, on its one cluster, and at start places
/// every queue that has none: a data directory from before standalone placed queues.
#[tokio::test]
async fn queues_are_placed_on_the_standalone_cluster_and_unplaced_ones_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    create_queue(&server, "placed").await;
    let mut client = server.client().await.unwrap();
    client
        .send_message(pb::SendMessageRequest {
            queue: "placed".into(),
            body: "kept".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, metrics) = server.admin_get("/metrics").unwrap();
    let placed = "sluice_manager_placements_total{cluster=\"standalone\"} 1";
    assert!(metrics.contains(placed), "/metrics lacks {placed}");
    assert!(server.terminate().await.unwrap().success());

    let (placement, revision) = placement_of(dir.path(), "placed")
        .await
        .expect("placed at creation");
    assert_eq!(placement.cluster, "standalone");
    assert_eq!(placement.queue, "placed");
    // What a data directory written before standalone placed its queues holds.
    {
        let store = EmbeddedStore::open(&dir.path().join("meta")).unwrap();
        let key = cluster::placement_key("", queue_id(&store, "placed").await);
        assert!(store.delete(&key, revision).await.unwrap());
    }
    assert!(placement_of(dir.path(), "placed").await.is_none());

    let server = StandaloneProcess::start(dir.path()).unwrap();
    assert_eq!(drain(&server, "placed").await, ["kept"]);
    assert!(server.terminate().await.unwrap().success());
    let (placement, _) = placement_of(dir.path(), "placed")
        .await
        .expect("placed again at start");
    assert_eq!(placement.cluster, "standalone");
}

/// With a drain period, SIGTERM first takes the server out of rotation (/readyz answers 503)
/// while it goes on serving requests, and only then stops, keeping what it acknowledged.
#[tokio::test]
async fn sigterm_reports_not_ready_and_serves_through_the_drain_period() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the requests below fall inside it on a slow machine.
    let server = StandaloneProcess::start_with(dir.path(), |command| {
        command.args(["--drain-seconds", "10"]);
    })
    .unwrap();
    create_queue(&server, "draining").await;
    let mut client = server.client().await.unwrap();
    server.sigterm().unwrap();
    wait_for(
        "/readyz to report not ready",
        Duration::from_secs(5),
        || Ok(server.admin_get("/readyz")?.0 == 503),
    )
    .await
    .unwrap();
    let draining = Instant::now();
    // A connection opened during the drain is served too, as one from a load balancer that has
    // not yet seen the readiness change would be.
    let mut late = server.client().await.unwrap();
    for (i, client) in [&mut client, &mut late].into_iter().enumerate() {
        client
            .send_message(pb::SendMessageRequest {
                queue: "draining".into(),
                body: format!("during-drain-{i}").into(),
                ..Default::default()
            })
            .await
            .expect("served while draining");
    }
    let served_within = draining.elapsed();
    let status = server.wait_exit().await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        served_within < Duration::from_secs(10),
        "the requests came after the drain period ({served_within:?}); the test proved nothing"
    );

    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut bodies = drain(&server, "draining").await;
    bodies.sort();
    assert_eq!(bodies, ["during-drain-0", "during-drain-1"]);
}

#[tokio::test]
async fn cli_tour() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let ok = |args: &[&str]| server.cli_ok(args);
    ok(&[
        "queue",
        "create",
        "tour",
        "--visibility-timeout",
        "60",
        "--tag",
        "team=pay",
    ]);
    assert_eq!(ok(&["queue", "list"]).trim(), "tour");
    let id = ok(&["send", "tour", "hello", "--attr", "kind=String:greeting"]);
    assert_eq!(id.trim().len(), 36, "a message id: {id:?}");

    let received = ok(&["receive", "tour", "--json", "--delete"]);
    let message: serde_json::Value = serde_json::from_str(&received).unwrap();
    assert_eq!(message["body"], "hello");
    assert_eq!(message["attributes"]["kind"]["string_value"], "greeting");
    assert_eq!(message["approximate_receive_count"], 1);

    let queue: serde_json::Value =
        serde_json::from_str(&ok(&["queue", "get", "tour", "--json"])).unwrap();
    assert_eq!(queue["counts"]["visible"], 0);
    assert_eq!(queue["counts"]["in_flight"], 0, "--delete deleted it");
    assert_eq!(queue["attributes"]["visibility_timeout_seconds"], 60);
    assert_eq!(queue["tags"]["team"], "pay");

    // consume prints what the server pushes and deletes it; with --count it stops there and
    // the message it did not print goes back to the queue.
    for body in ["one", "two", "three"] {
        ok(&["send", "tour", body]);
    }
    let consumed = ok(&[
        "consume",
        "tour",
        "--count",
        "2",
        "--prefetch",
        "3",
        "--json",
    ]);
    let bodies: Vec<String> = consumed
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["body"].to_string())
        .collect();
    assert_eq!(bodies.len(), 2, "{consumed}");
    let queue: serde_json::Value =
        serde_json::from_str(&ok(&["queue", "get", "tour", "--json"])).unwrap();
    assert_eq!(queue["counts"]["visible"], 1, "two consumed and deleted");
    assert_eq!(queue["counts"]["in_flight"], 0, "the third was given back");
    let refused = server.cli(&["consume", "tour", "--prefetch", "5000"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("start.prefetch"), "{stderr}");

    let bad = server.cli(&["queue", "create", "tour", "--retention", "5"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("message_retention_seconds"),
        "{stderr}"
    );
    let missing = server.cli(&["send", "nope", "x"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
    ok(&["queue", "delete", "tour"]);
    assert_eq!(ok(&["queue", "list"]).trim(), "");
}

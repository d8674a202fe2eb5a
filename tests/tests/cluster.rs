//! The three tiers end to end, every part a real process: etcd, two backend clusters, three
//! metadata nodes, two managers and two frontends. Clients talk to the frontends only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_api::{IdempotencyKey, NewMessage, QueueBackend};
use sluice_client::{BackendClient, BackendClientOptions, QueueClient};
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_tests::{get_queue, queue_counts, EtcdProcess, ServerProcess};
use tonic::transport::Channel;

/// Fields drop in order: the processes stop before the etcd they use.
struct Cluster {
    frontends: Vec<ServerProcess>,
    managers: Vec<ServerProcess>,
    metadata: Vec<ServerProcess>,
    backends: Vec<ServerProcess>,
    etcd: EtcdProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let etcd = EtcdProcess::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backends = [("a", "a1"), ("b", "b1")]
            .iter()
            .map(|(cluster, node)| {
                ServerProcess::start_backend(&dir.path().join(node), &etcd.endpoint, cluster, node)
                    .unwrap()
            })
            .collect();
        let metadata: Vec<ServerProcess> = ["m1", "m2", "m3"]
            .iter()
            .map(|id| ServerProcess::start_metadata(&etcd.endpoint, id).unwrap())
            .collect();
        // Idle clusters score the same without the CPU and commit-time parts, which two idle
        // processes on a shared machine differ in by noise.
        // Drained partitions go at once: the tests here see a move through to its end. (Kept,
        // they would answer retries by deduplication id for five minutes.)
        let even = [
            "--weight-cpu",
            "0",
            "--weight-latency",
            "0",
            "--sealed-keep-ms",
            "0",
        ];
        let managers = (0..2)
            .map(|_| ServerProcess::start_manager(&etcd.endpoint, &even).unwrap())
            .collect();
        let urls: Vec<String> = metadata.iter().map(ServerProcess::endpoint).collect();
        let frontends = (0..2)
            .map(|_| ServerProcess::start_frontend(&urls, 500).unwrap())
            .collect();
        Cluster {
            etcd,
            backends,
            metadata,
            managers,
            frontends,
            _dir: dir,
        }
    }

    async fn frontend(&self, i: usize) -> QueueClient {
        self.frontends[i % 2].client().await.unwrap()
    }

    /// A client of the first manager, once both clusters are registered and a manager leads.
    async fn settled(&self) -> ManagerServiceClient<Channel> {
        let mut manager = ManagerServiceClient::new(self.managers[0].channel());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = manager
                .list_clusters(pb::ListClustersRequest {})
                .await
                .unwrap()
                .into_inner();
            if listed.clusters.len() == 2 && !listed.leader.is_empty() {
                return manager;
            }
            assert!(Instant::now() < deadline, "{listed:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `sluice admin ARGS --json` against the second manager (not necessarily the
    /// leader, which is the point) and parses its output.
    fn admin(&self, args: &[&str]) -> serde_json::Value {
        let manager = &self.managers[1];
        let url = manager.endpoint();
        let mut all = vec!["--json", "admin"];
        all.extend_from_slice(args);
        all.extend(["--manager", &url]);
        let out = manager.cli(&all);
        assert!(
            out.status.success(),
            "sluice admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn backend_requests(&self) -> f64 {
        self.backends
            .iter()
            .map(|b| b.metric_sum("sluice_backend_requests_total").unwrap())
            .sum()
    }
}

fn send(queue: &str, body: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        queue: queue.into(),
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn receive_one(client: &mut QueueClient, queue: &str) -> pb::Message {
    let got = client
        .receive_message(pb::ReceiveMessageRequest {
            queue: queue.into(),
            max_messages: 1,
            wait_time_seconds: Some(5),
            visibility_timeout_seconds: Some(60),
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(got.len(), 1, "nothing received from {queue}");
    got.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_queues_spread_over_two_clusters_and_work_through_either_frontend() {
    let cluster = Cluster::start().await;
    let mut manager = cluster.settled().await;

    for i in 0..50 {
        let mut client = cluster.frontend(i).await;
        client
            .create_queue(pb::CreateQueueRequest {
                name: format!("q{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let listed = manager
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let per_cluster: HashMap<String, u64> = listed
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.queue_count))
        .collect();
    assert_eq!(per_cluster.get("a"), Some(&25), "{per_cluster:?}");
    assert_eq!(per_cluster.get("b"), Some(&25), "{per_cluster:?}");

    // Send through one frontend, receive and delete through the other.
    for i in 0..50 {
        let queue = format!("q{i}");
        let sent = cluster
            .frontend(i)
            .await
            .send_message(send(&queue, &format!("hello {i}")))
            .await
            .unwrap()
            .into_inner();
        let mut other = cluster.frontend(i + 1).await;
        let got = receive_one(&mut other, &queue).await;
        assert_eq!(got.message_id, sent.message_id);
        assert_eq!(got.body.as_ref(), format!("hello {i}").as_bytes());
        other
            .delete_message(pb::DeleteMessageRequest {
                queue: queue.clone(),
                receipt_handle: got.receipt_handle,
            })
            .await
            .unwrap();
        let counts = queue_counts(&mut other, &queue).await;
        assert_eq!(counts.visible + counts.in_flight, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frontends_agree_refuse_bad_input_alone_and_keep_dead_letters_with_their_queue() {
    let cluster = Cluster::start().await;
    let mut f1 = cluster.frontend(0).await;
    let mut f2 = cluster.frontend(1).await;
    f1.create_queue(pb::CreateQueueRequest {
        name: "orders-dead".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    f1.create_queue(pb::CreateQueueRequest {
        name: "orders".into(),
        attributes: Some(pb::QueueAttributes {
            redrive_policy: Some(pb::RedrivePolicy {
                dead_letter_queue: "orders-dead".into(),
                max_receive_count: 1,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();

    // A change through one frontend is seen by the other within its cache bound (500 ms).
    f1.set_queue_attributes(pb::SetQueueAttributesRequest {
        name: "orders".into(),
        attributes: Some(pb::QueueAttributes {
            visibility_timeout_seconds: Some(99),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let changed = Instant::now();
    loop {
        let seen = get_queue(&mut f2, "orders")
            .await
            .attributes
            .unwrap()
            .visibility_timeout_seconds;
        if seen == Some(99) {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the other frontend still sees {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the other frontend saw the change after {:?}",
        changed.elapsed()
    );

    // Refused input never reaches a backend.
    let before = cluster.backend_requests();
    let refusals = [
        f1.send_message(send("orders", "")).await.unwrap_err(),
        f1.send_message(send("bad name!", "x")).await.unwrap_err(),
        f2.send_message(pb::SendMessageRequest {
            delay_seconds: Some(901),
            ..send("orders", "x")
        })
        .await
        .unwrap_err(),
        f2.send_message(send("missing", "x")).await.unwrap_err(),
    ];
    let codes: Vec<_> = refusals.iter().map(|s| s.code()).collect();
    assert_eq!(
        codes,
        [
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound
        ]
    );
    assert_eq!(
        cluster.backend_requests(),
        before,
        "a refused request reached a backend"
    );

    // The queue and its dead-letter queue share a cluster, so the poison message moves.
    f1.send_message(send("orders", "poison")).await.unwrap();
    let first = f1
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 1,
            wait_time_seconds: Some(5),
            visibility_timeout_seconds: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(first.len(), 1);
    let again = f2
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 1,
            wait_time_seconds: Some(0),
            visibility_timeout_seconds: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert!(again.is_empty(), "received past max_receive_count");
    let dead = receive_one(&mut f2, "orders-dead").await;
    assert_eq!(dead.body.as_ref(), b"poison");
    assert_eq!(dead.dead_letter_source_queue, "orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_metadata_tier_does_not_stall_sends_to_known_queues() {
    let cluster = Cluster::start().await;
    let mut f1 = cluster.frontend(0).await;
    f1.create_queue(pb::CreateQueueRequest {
        name: "orders".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // One send teaches the frontend the queue's record, placement and cluster.
    f1.send_message(send("orders", "warm")).await.unwrap();

    // Freeze every metadata node: connections stay open, nothing answers.
    let signal = |sig| {
        for node in &cluster.metadata {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(node.pid() as i32), sig).unwrap();
        }
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    // Keep sending past every cache's time bound (records 500 ms, cluster nodes 2 s); each send
    // must still be answered promptly from what the frontend knew.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let mut request = tonic::Request::new(send("orders", &format!("m{sent}")));
        request.set_timeout(Duration::from_secs(2));
        let result = f1.send_message(request).await;
        if let Err(status) = &result {
            signal(nix::sys::signal::Signal::SIGCONT);
            panic!("send {sent} failed while the metadata tier was stalled: {status:?}");
        }
        sent += 1;
    }
    signal(nix::sys::signal::Signal::SIGCONT);
    assert!(sent > 3, "only {sent} sends in 3 s");
    let counts = queue_counts(&mut f1, "orders").await;
    assert_eq!(counts.visible, sent + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_keep_working_through_the_frontends_when_a_metadata_node_is_killed() {
    let mut cluster = Cluster::start().await;
    let mut f1 = cluster.frontend(0).await;
    for i in 0..10 {
        f1.create_queue(pb::CreateQueueRequest {
            name: format!("q{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    cluster.metadata.remove(1).kill9().unwrap();
    let killed = Instant::now();
    // Old queues, through both frontends, and new queues, whose records the dead node may
    // have owned: every request succeeds, before and after the ring settles.
    for i in 0..20 {
        let queue = format!("q{i}");
        let mut client = cluster.frontend(i).await;
        if i >= 10 {
            client
                .create_queue(pb::CreateQueueRequest {
                    name: queue.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        client
            .send_message(send(&queue, "after the kill"))
            .await
            .unwrap();
        let mut other = cluster.frontend(i + 1).await;
        let got = receive_one(&mut other, &queue).await;
        assert_eq!(got.body.as_ref(), b"after the kill");
    }
    println!(
        "20 queues served through the frontends in the {:?} after SIGKILL of a metadata node",
        killed.elapsed()
    );
}

/// Receives and deletes through both frontends until `want` distinct bodies have come, and
/// returns how many deliveries that took.
async fn drain_bodies(
    cluster: &Cluster,
    queue: &str,
    want: usize,
    seen: &mut std::collections::HashSet<String>,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut deliveries = 0;
    let mut turn = 0;
    while seen.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} messages came back",
            seen.len()
        );
        let mut client = cluster.frontend(turn).await;
        turn += 1;
        let got = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: queue.into(),
                max_messages: 10,
                wait_time_seconds: Some(1),
                visibility_timeout_seconds: Some(60),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        for m in got {
            deliveries += 1;
            seen.insert(String::from_utf8(m.body.to_vec()).unwrap());
            client
                .delete_message(pb::DeleteMessageRequest {
                    queue: queue.into(),
                    receipt_handle: m.receipt_handle,
                })
                .await
                .unwrap();
        }
    }
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_moves_to_the_other_cluster_under_traffic_and_loses_nothing() {
    let cluster = Cluster::start().await;
    cluster.settled().await;
    let mut f1 = cluster.frontend(0).await;
    let mut f2 = cluster.frontend(1).await;
    for name in ["moving", "moving.fifo"] {
        f1.create_queue(pb::CreateQueueRequest {
            name: name.into(),
            attributes: Some(pb::QueueAttributes {
                fifo: name.ends_with(".fifo"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let before = cluster.admin(&["placement", "moving"]);
    let from = before["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = if from == "a" { "b" } else { "a" };
    for i in 0..50 {
        f1.send_message(send("moving", &format!("m{i}")))
            .await
            .unwrap();
    }
    // Ten messages in flight across the move, their handles issued by the old partition.
    let mut held = Vec::new();
    while held.len() < 10 {
        let got = f2
            .receive_message(pb::ReceiveMessageRequest {
                queue: "moving".into(),
                max_messages: (10 - held.len()) as u32,
                wait_time_seconds: Some(5),
                visibility_timeout_seconds: Some(300),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        held.extend(got);
    }

    // Producers keep sending through both frontends while the queue moves; every send must
    // be acknowledged.
    let producer = {
        let (mut p1, mut p2) = (cluster.frontend(0).await, cluster.frontend(1).await);
        tokio::spawn(async move {
            for i in 50..250 {
                let client = if i % 2 == 0 { &mut p1 } else { &mut p2 };
                client
                    .send_message(send("moving", &format!("m{i}")))
                    .await
                    .unwrap_or_else(|status| panic!("send m{i} failed during the move: {status}"));
            }
        })
    };
    let moved = Instant::now();
    let placed = cluster.admin(&["place", "moving", "--cluster", to]);
    println!("moved in {:?}: {placed}", moved.elapsed());
    let partitions = placed["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{placed}");
    assert_eq!(partitions[0]["cluster"], to);
    assert_eq!(partitions[0]["sealed"], false);
    assert_eq!(partitions[1]["cluster"], from.as_str());
    assert_eq!(partitions[1]["sealed"], true);
    producer.await.unwrap();

    // Handles from before the move still delete, through either frontend.
    for (i, m) in held.iter().enumerate() {
        let client = if i % 2 == 0 { &mut f1 } else { &mut f2 };
        client
            .delete_message(pb::DeleteMessageRequest {
                queue: "moving".into(),
                receipt_handle: m.receipt_handle.clone(),
            })
            .await
            .unwrap();
    }
    let mut seen: std::collections::HashSet<String> = held
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    let deliveries = drain_bodies(&cluster, "moving", 250, &mut seen).await;
    assert_eq!(deliveries, 240, "a message came twice");
    assert_eq!(
        seen,
        (0..250).map(|i| format!("m{i}")).collect(),
        "not every message sent came back"
    );

    // Drained, the sealed partition is removed and the old cluster no longer holds the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.admin(&["placement", "moving"])["partitions"]
        .as_array()
        .unwrap()
        .len()
        > 1
    {
        assert!(
            Instant::now() < deadline,
            "the drained partition was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = cluster.admin(&["place", "moving", "--cluster", to, "--wait"]);
    assert_eq!(after["partitions"].as_array().unwrap().len(), 1, "{after}");
    let old_node = if from == "a" {
        &cluster.backends[0]
    } else {
        &cluster.backends[1]
    };
    let mut old = BackendServiceClient::new(old_node.channel_as(sluice_tests::Kind::Frontend));
    let gone = old
        .counts(pb::CountsRequest {
            queue_id: after["queue_id"].as_u64().unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let listed = cluster
        .settled()
        .await
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    println!("clusters after the move: {listed:?}");

    // A FIFO queue keeps each group in order and its sequence numbers increasing across a move.
    let fifo = |body: &str| pb::SendMessageRequest {
        group_id: "g".into(),
        deduplication_id: body.into(),
        ..send("moving.fifo", body)
    };
    let first = f1.send_message(fifo("f0")).await.unwrap().into_inner();
    f1.send_message(fifo("f1")).await.unwrap();
    let fifo_from = cluster.admin(&["placement", "moving.fifo"])["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let fifo_to = if fifo_from == "a" { "b" } else { "a" };
    cluster.admin(&["place", "moving.fifo", "--cluster", fifo_to]);
    let last = f2.send_message(fifo("f2")).await.unwrap().into_inner();
    assert!(
        last.sequence_number.parse::<u64>().unwrap()
            > first.sequence_number.parse::<u64>().unwrap(),
        "sequence numbers went back: {first:?} then {last:?}"
    );
    let mut order = Vec::new();
    while order.len() < 3 {
        let m = receive_one(&mut f2, "moving.fifo").await;
        order.push(String::from_utf8(m.body.to_vec()).unwrap());
        f2.delete_message(pb::DeleteMessageRequest {
            queue: "moving.fifo".into(),
            receipt_handle: m.receipt_handle,
        })
        .await
        .unwrap();
    }
    assert_eq!(order, ["f0", "f1", "f2"]);

    // A queue linked to its dead-letter queue is refused, and keeps working where it is.
    f1.create_queue(pb::CreateQueueRequest {
        name: "linked-dead".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    f1.create_queue(pb::CreateQueueRequest {
        name: "linked".into(),
        attributes: Some(pb::QueueAttributes {
            redrive_policy: Some(pb::RedrivePolicy {
                dead_letter_queue: "linked-dead".into(),
                max_receive_count: 3,
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let linked_on = cluster.admin(&["placement", "linked"])["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let elsewhere = if linked_on == "a" { "b" } else { "a" };
    let refused = sluice_tests::admin_cli()
        .args(["admin", "place", "linked", "--cluster", elsewhere])
        .env("SLUICE_MANAGER", cluster.managers[0].endpoint())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("dead-letter queue linked-dead"), "{stderr}");
    let kept = cluster.admin(&["placement", "linked"]);
    assert_eq!(kept["partitions"].as_array().unwrap().len(), 1, "{kept}");
    assert_eq!(kept["moving_to"], "");
    f2.send_message(send("linked", "still here")).await.unwrap();
    let unknown = sluice_tests::admin_cli()
        .args(["admin", "place", "linked", "--cluster", "nowhere"])
        .env("SLUICE_MANAGER", cluster.managers[0].endpoint())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("backend cluster \"nowhere\" not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_retried_across_a_move_by_key_or_by_deduplication_id_is_answered_by_the_old_partition_and_stored_once(
) {
    let cluster = Cluster::start().await;
    cluster.settled().await;
    let mut f1 = cluster.frontend(0).await;
    f1.create_queue(pb::CreateQueueRequest {
        name: "retried".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = cluster.admin(&["placement", "retried"]);
    let id = before["queue_id"].as_u64().unwrap();
    let from = before["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = if from == "a" { "b" } else { "a" };
    let old_node = &cluster.backends[usize::from(from == "b")];

    // A frontend's send to the old partition, whose answer it never got.
    sluice_tests::install_client_tls(sluice_tests::Kind::Frontend);
    let old = BackendClient::new(&old_node.endpoint(), BackendClientOptions::default()).unwrap();
    let key = IdempotencyKey::random();
    let message = || {
        vec![NewMessage {
            body: "sent once".into(),
            ..Default::default()
        }]
    };
    let first = old.send_idempotent(id, key, message()).await.unwrap();
    // A client's send with a deduplication id, which it will send again as a new request.
    let deduplicated = || pb::SendMessageRequest {
        deduplication_id: "order-1".into(),
        ..send("retried", "deduplicated")
    };
    let by_client = f1.send_message(deduplicated()).await.unwrap().into_inner();
    cluster.admin(&["place", "retried", "--cluster", to]);

    // Its retry after the move: the sealed partition answers it from its record of the key.
    let retry = old.send_idempotent(id, key, message()).await.unwrap();
    assert_eq!(retry[0].message_id, first[0].message_id);
    assert!(retry[0].duplicate, "the retry stored nothing");
    // A send the old partition never saw is refused there, and goes to the new one.
    let refused = old
        .send_idempotent(id, IdempotencyKey::random(), message())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, sluice_api::Error::Aborted(_)),
        "{refused:?}"
    );
    f1.send_message(send("retried", "after the move"))
        .await
        .unwrap();
    // The client's retry, through the other frontend, after the move: the sealed partition
    // answers it by its deduplication id.
    let mut f2 = cluster.frontend(1).await;
    let again = f2.send_message(deduplicated()).await.unwrap().into_inner();
    assert_eq!(again.message_id, by_client.message_id);
    assert_eq!(again.sequence_number, by_client.sequence_number);

    let mut seen = std::collections::HashSet::new();
    let deliveries = drain_bodies(&cluster, "retried", 3, &mut seen).await;
    assert_eq!(deliveries, 3, "{seen:?}");
    assert_eq!(
        seen,
        ["sent once", "deduplicated", "after the move"]
            .map(String::from)
            .into()
    );
    // Nothing else in either partition: the retry was not stored again anywhere.
    let placement = cluster.admin(&["placement", "retried"]);
    for partition in placement["partitions"].as_array().unwrap() {
        let counts = &partition["counts"];
        if counts.is_null() {
            continue; // drained and removed meanwhile
        }
        for state in ["visible", "in_flight", "delayed"] {
            assert_eq!(counts[state], 0, "{placement}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_its_leader_left_halfway_is_finished_by_the_leader_loop() {
    let cluster = Cluster::start().await;
    cluster.settled().await;
    let mut f1 = cluster.frontend(0).await;
    f1.create_queue(pb::CreateQueueRequest {
        name: "halfway".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for i in 0..20 {
        f1.send_message(send("halfway", &format!("h{i}")))
            .await
            .unwrap();
    }
    let before = cluster.admin(&["placement", "halfway"]);
    let from = before["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = if from == "a" { "b" } else { "a" };

    // What a leader writes first and then died after: the intent, nothing sealed or opened.
    let mut etcd = cluster.etcd.client().await;
    let id = before["queue_id"].as_u64().unwrap();
    let key = format!("/sluice/placements/{id:020}");
    let got = etcd.get(key.as_str(), None).await.unwrap();
    let mut placement: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    placement["moving_to"] = to.into();
    etcd.put(key.as_str(), placement.to_string(), None)
        .await
        .unwrap();
    etcd.put(format!("/sluice/moves/{id:020}"), "", None)
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let now = cluster.admin(&["placement", "halfway"]);
        if now["moving_to"] == "" {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the move was never finished: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["partitions"][0]["cluster"], to, "{finished}");
    assert_eq!(
        finished["partitions"][1]["cluster"],
        from.as_str(),
        "{finished}"
    );
    assert_eq!(finished["partitions"][1]["sealed"], true, "{finished}");

    // Sends go to the new partition; everything comes back once.
    let mut f2 = cluster.frontend(1).await;
    for i in 20..30 {
        f2.send_message(send("halfway", &format!("h{i}")))
            .await
            .unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let deliveries = drain_bodies(&cluster, "halfway", 30, &mut seen).await;
    assert_eq!(deliveries, 30, "a message came twice");
    let placed = cluster.admin(&["placement", "halfway"]);
    assert_eq!(placed["partitions"][0]["counts"]["visible"], 0, "{placed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_queue_s_change_of_partitions_its_leader_left_halfway_is_finished_in_order_and_counts_and_purge_cover_both(
) {
    let cluster = Cluster::start().await;
    cluster.settled().await;
    let mut f1 = cluster.frontend(0).await;
    f1.create_queue(pb::CreateQueueRequest {
        name: "halfway.fifo".into(),
        attributes: Some(pb::QueueAttributes {
            fifo: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let in_group = |i: usize| pb::SendMessageRequest {
        group_id: "g".into(),
        deduplication_id: format!("h{i}"),
        ..send("halfway.fifo", &format!("h{i}"))
    };
    for i in 0..20 {
        f1.send_message(in_group(i)).await.unwrap();
    }
    let before = cluster.admin(&["placement", "halfway.fifo"]);
    let from = before["partitions"][0]["cluster"]
        .as_str()
        .unwrap()
        .to_owned();
    let to = if from == "a" { "b" } else { "a" };
    let id = before["queue_id"].as_u64().unwrap();

    // What a leader did before it died: it wrote its decision to spread the queue to the other
    // cluster, and sealed the active partition, but opened nothing new.
    let mut etcd = cluster.etcd.client().await;
    let key = format!("/sluice/placements/{id:020}");
    let got = etcd.get(key.as_str(), None).await.unwrap();
    let mut placement: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    placement["resize"] = serde_json::json!({ "Add": to });
    etcd.put(key.as_str(), placement.to_string(), None)
        .await
        .unwrap();
    etcd.put(format!("/sluice/moves/{id:020}"), "", None)
        .await
        .unwrap();
    let old_node = &cluster.backends[usize::from(from == "b")];
    let mut old = BackendServiceClient::new(old_node.channel_as(sluice_tests::Kind::Manager));
    old.seal_queue(pb::SealQueueRequest { queue_id: id })
        .await
        .unwrap();

    // The leader's next pass finishes it: the sealed partition and a new set on both clusters.
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let now = cluster.admin(&["placement", "halfway.fifo"]);
        let active: Vec<&str> = now["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["sealed"] == false)
            .map(|p| p["cluster"].as_str().unwrap())
            .collect();
        if active.len() == 2 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the change was never finished: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("finished: {finished}");
    let sealed: Vec<&serde_json::Value> = finished["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["sealed"] == true)
        .collect();
    assert_eq!(sealed.len(), 1, "{finished}");
    assert_eq!(sealed[0]["cluster"], from.as_str(), "{finished}");

    // Sends go on; the group comes back once, in order across the change.
    let mut f2 = cluster.frontend(1).await;
    for i in 20..30 {
        f2.send_message(in_group(i)).await.unwrap();
    }
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while order.len() < 30 {
        assert!(Instant::now() < deadline, "only {order:?} came back");
        let got = f1
            .receive_message(pb::ReceiveMessageRequest {
                queue: "halfway.fifo".into(),
                max_messages: 10,
                wait_time_seconds: Some(1),
                visibility_timeout_seconds: Some(60),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        for m in got {
            order.push(String::from_utf8(m.body.to_vec()).unwrap());
            f1.delete_message(pb::DeleteMessageRequest {
                queue: "halfway.fifo".into(),
                receipt_handle: m.receipt_handle,
            })
            .await
            .unwrap();
        }
    }
    let sent: Vec<String> = (0..30).map(|i| format!("h{i}")).collect();
    assert_eq!(order, sent);

    // Counts and purge cover both active partitions: twenty groups fall on both.
    for g in 0..20 {
        f2.send_message(pb::SendMessageRequest {
            group_id: format!("p{g}"),
            deduplication_id: format!("p{g}"),
            ..send("halfway.fifo", "to purge")
        })
        .await
        .unwrap();
    }
    let placed = cluster.admin(&["placement", "halfway.fifo"]);
    let holding = placed["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["counts"]["visible"].as_u64().unwrap_or(0) > 0)
        .count();
    assert_eq!(holding, 2, "{placed}");
    assert_eq!(queue_counts(&mut f1, "halfway.fifo").await.visible, 20);
    f1.purge_queue(pb::PurgeQueueRequest {
        name: "halfway.fifo".into(),
    })
    .await
    .unwrap();
    let counts = queue_counts(&mut f2, "halfway.fifo").await;
    assert_eq!((counts.visible, counts.in_flight), (0, 0), "{counts:?}");
}

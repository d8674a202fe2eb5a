//! The three tiers end to end, every part a real process: etcd, two backend clusters, three
//! metadata nodes, two managers and two frontends. Clients talk to the frontends only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use sluice_tests::{get_queue, queue_counts, EtcdProcess, ServerProcess};
use tonic::transport::Channel;

/// Fields drop in order: the processes stop before the etcd they use.
struct Cluster {
    frontends: Vec<ServerProcess>,
    managers: Vec<ServerProcess>,
    metadata: Vec<ServerProcess>,
    backends: Vec<ServerProcess>,
    _etcd: EtcdProcess,
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
        let managers = (0..2)
            .map(|_| ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap())
            .collect();
        let urls: Vec<String> = metadata
            .iter()
            .map(|m| format!("http://{}", m.grpc_addr))
            .collect();
        let frontends = (0..2)
            .map(|_| ServerProcess::start_frontend(&urls, 500).unwrap())
            .collect();
        Cluster {
            _etcd: etcd,
            backends,
            metadata,
            managers,
            frontends,
            _dir: dir,
        }
    }

    async fn frontend(&self, i: usize) -> QueueServiceClient<Channel> {
        self.frontends[i % 2].client().await.unwrap()
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

async fn receive_one(client: &mut QueueServiceClient<Channel>, queue: &str) -> pb::Message {
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
    let mut manager =
        ManagerServiceClient::connect(format!("http://{}", cluster.managers[0].grpc_addr))
            .await
            .unwrap();
    // Both clusters registered and a leader elected before the first placement.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = manager
            .list_clusters(pb::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner();
        if listed.clusters.len() == 2 && !listed.leader.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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

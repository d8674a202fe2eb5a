//! The managers as real processes over a real etcd, with real backend nodes reporting load:
//! placement by utilization, failover of the leader under SIGKILL, and high-water marks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_api::{NewMessage, QueueBackend, QueueConfig};
use sluice_client::{BackendClient, BackendClientOptions, ManagerClient, ManagerClientOptions};
use sluice_proto::v1 as pb;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_tests::{EtcdProcess, ServerProcess};

async fn clusters(manager: &ServerProcess) -> pb::ListClustersResponse {
    ManagerServiceClient::new(manager.channel())
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `check` holds for the clusters `manager` lists.
async fn wait_for_clusters(
    manager: &ServerProcess,
    what: &str,
    check: impl Fn(&pb::ListClustersResponse) -> bool,
) -> pb::ListClustersResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = clusters(manager).await;
        if check(&listed) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of `node` calling as a manager does (moving queues).
fn backend_of(node: &ServerProcess) -> BackendClient {
    sluice_tests::install_client_tls(sluice_tests::Kind::Manager);
    BackendClient::new(&node.endpoint(), BackendClientOptions::default()).unwrap()
}

/// A client of the leading manager, calling as another manager does.
async fn placement_client(etcd: &EtcdProcess) -> ManagerClient {
    sluice_tests::install_client_tls(sluice_tests::Kind::Manager);
    ManagerClient::connect(
        std::slice::from_ref(&etcd.endpoint),
        "/sluice/",
        ManagerClientOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_spread_by_utilization_and_a_standby_takes_over_from_a_killed_leader() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _a1 =
        ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1").unwrap();
    let _b1 =
        ServerProcess::start_backend(&dir.path().join("b1"), &etcd.endpoint, "b", "b1").unwrap();
    // Idle clusters score the same without the CPU and commit-time parts, which two idle
    // processes on a shared machine differ in by noise.
    let even = ["--weight-cpu", "0", "--weight-latency", "0"];
    let mut managers = [
        Some(ServerProcess::start_manager(&etcd.endpoint, &even).unwrap()),
        Some(ServerProcess::start_manager(&etcd.endpoint, &even).unwrap()),
    ];
    let first = managers[0].as_ref().unwrap();
    let listed = wait_for_clusters(first, "both clusters and a leader", |l| {
        l.clusters.len() == 2 && !l.leader.is_empty()
    })
    .await;
    assert!(listed
        .clusters
        .iter()
        .all(|c| c.accepting && c.nodes.len() == 1));

    let client = placement_client(&etcd).await;
    let mut per_cluster: HashMap<String, usize> = HashMap::new();
    for id in 1..=20u64 {
        let cluster = client.place(id, &format!("q{id}"), None).await.unwrap();
        *per_cluster.entry(cluster).or_default() += 1;
    }
    // Idle clusters: the one with fewer queues wins each time.
    assert_eq!(per_cluster.get("a"), Some(&10), "{per_cluster:?}");
    assert_eq!(per_cluster.get("b"), Some(&10), "{per_cluster:?}");
    let again = client.place(1, "q1", None).await.unwrap();
    assert_eq!(
        client.place(1, "q1", None).await.unwrap(),
        again,
        "placement is stable"
    );
    let listed = clusters(first).await;
    assert!(
        listed.clusters.iter().all(|c| c.queue_count == 10),
        "{listed:?}"
    );

    // The operator's view through the CLI.
    let out = first.cli(&[
        "admin",
        "clusters",
        "--json",
        "--manager",
        &first.endpoint(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["leader"], listed.leader);
    assert_eq!(shown["clusters"][0]["name"], "a");
    assert_eq!(shown["clusters"][0]["queue_count"], 10);
    assert_eq!(shown["clusters"][1]["nodes"][0]["node"], "b1");
    assert_eq!(shown["clusters"][1]["accepting"], true);

    // SIGKILL the leader; the standby takes over once the leader's lease lapses.
    let leader_url = listed.leader.clone();
    let leader = managers
        .iter()
        .position(|m| m.as_ref().unwrap().endpoint() == leader_url)
        .expect("the leader is one of ours");
    managers[leader].take().unwrap().kill9().unwrap();
    let killed = Instant::now();
    let cluster = client.place(21, "q21", None).await.unwrap();
    let took = killed.elapsed();
    println!("placements succeeded again {took:?} after SIGKILL of the leader manager");
    assert!(cluster == "a" || cluster == "b");
    let standby = managers[1 - leader].as_ref().unwrap();
    let listed = clusters(standby).await;
    assert_ne!(listed.leader, leader_url);
    assert_eq!(listed.leader, standby.endpoint());
    let total: u64 = listed.clusters.iter().map(|c| c.queue_count).sum();
    assert_eq!(
        total, 21,
        "no placement lost or doubled across the failover"
    );

    // A manager that is not the leader refuses to place and names the leader.
    let follower = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let refused = ManagerServiceClient::new(follower.channel())
        .place_queue(pb::PlaceQueueRequest {
            queue_id: 99,
            queue: "q99".into(),
            colocate_with: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains(&listed.leader), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_its_high_water_mark_gets_no_new_queues() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a1 =
        ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1").unwrap();
    let _b1 =
        ServerProcess::start_backend(&dir.path().join("b1"), &etcd.endpoint, "b", "b1").unwrap();
    let manager =
        ServerProcess::start_manager(&etcd.endpoint, &["--max-bytes-stored", "1000000"]).unwrap();

    // About 2 MB into cluster a.
    let backend = backend_of(&a1);
    backend
        .create_queue(1, QueueConfig::standard("big", Duration::from_secs(3600)))
        .await
        .unwrap();
    for _ in 0..20 {
        let messages = (0..10)
            .map(|_| NewMessage {
                body: vec![7u8; 10_000].into(),
                ..Default::default()
            })
            .collect();
        backend.send(1, messages).await.unwrap();
    }
    let listed = wait_for_clusters(&manager, "cluster a over its mark", |l| {
        l.clusters
            .iter()
            .any(|c| c.name == "a" && !c.accepting && c.reason.contains("high-water"))
    })
    .await;
    let b = listed.clusters.iter().find(|c| c.name == "b").unwrap();
    assert!(b.accepting, "{listed:?}");

    let client = placement_client(&etcd).await;
    for id in 1..=10u64 {
        assert_eq!(
            client.place(id, &format!("q{id}"), None).await.unwrap(),
            "b"
        );
    }
}

/// A node reports the messages it stores and the messages it delivers, so a cluster whose
/// consumers keep up does not look half as busy as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_reports_the_messages_it_delivers_as_well_as_those_it_stores() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a1 =
        ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1").unwrap();
    let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let backend = backend_of(&a1);
    backend
        .create_queue(1, QueueConfig::standard("work", Duration::from_secs(3600)))
        .await
        .unwrap();
    // Rates cover one report interval, so traffic goes on until a report shows both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let messages = (0..10)
            .map(|_| NewMessage {
                body: b"work".to_vec().into(),
                ..Default::default()
            })
            .collect();
        backend.send(1, messages).await.unwrap();
        let received = backend
            .receive(1, 10, Duration::from_secs(60), Duration::ZERO)
            .await
            .unwrap();
        let handles = received.into_iter().map(|m| m.receipt_handle).collect();
        backend.delete(1, handles).await.unwrap();
        let listed = clusters(&manager).await;
        let load = listed
            .clusters
            .iter()
            .find(|c| c.name == "a")
            .and_then(|c| c.load);
        if load.is_some_and(|l| l.messages_in_per_second > 0.0 && l.messages_out_per_second > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report of both stored and delivered messages: {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_hands_the_leadership_over_at_once() {
    let etcd = EtcdProcess::start().unwrap();
    let first = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let leader = wait_for_clusters(&first, "a leader", |l| !l.leader.is_empty())
        .await
        .leader;
    assert_eq!(leader, first.endpoint());
    let second = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let status = first.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    // The leader resigned on its way out; the standby needs no lease expiry to take over.
    let started = Instant::now();
    let listed = wait_for_clusters(&second, "the standby to lead", |l| {
        l.leader == second.endpoint()
    })
    .await;
    println!(
        "standby led {:?} after the leader's SIGTERM",
        started.elapsed()
    );
    assert!(listed.clusters.is_empty());
}

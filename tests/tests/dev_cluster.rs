//! `sluice dev cluster up` starts the whole distributed deployment as separate processes, serves
//! queues through its frontends, and stops everything on SIGINT.

use std::time::Duration;

use sluice_proto::v1 as pb;
use sluice_tests::dev::DevCluster;
use sluice_tests::front::create_queue;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dev_cluster_serves_queues_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &[]).unwrap();
    let frontends = cluster.frontends.clone();
    assert_eq!(frontends.len(), 2);
    assert!(
        frontends.iter().all(|url| url.starts_with("https://")),
        "the dev cluster serves TLS: {frontends:?}"
    );

    // Clients trust the CA the cluster made for itself, and authenticate with its root key.
    let mut first = cluster.client(0).unwrap();
    let mut second = cluster.client(1).unwrap();
    create_queue(&mut first, "orders").await;
    first
        .send_message(pb::SendMessageRequest {
            queue: "orders".into(),
            body: b"hello".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = second
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 1,
            wait_time_seconds: Some(5),
            visibility_timeout_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.as_ref(), b"hello");
    drop((first, second));

    let pids = cluster.dir.join("pids");
    let stopped = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped, "the cluster did not exit cleanly");
    assert!(!pids.exists());
    let frontend_port: u16 = frontends[0].rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], frontend_port).into(),
            Duration::from_millis(200)
        )
        .is_err(),
        "a frontend still listens after the cluster stopped"
    );
}

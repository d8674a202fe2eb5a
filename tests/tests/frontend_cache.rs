//! The frontend's caches stay correct, with real processes: a queue re-created elsewhere is never
//! served from its old record, and a missing queue is looked up once a second, not per request.

use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_tests::front::*;
use sluice_tests::queue_counts;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_deleted_and_created_again_elsewhere_is_never_served_from_the_old_record() {
    let cluster = TwoFrontends::start();
    let (mut first, mut second) = (
        cluster.frontends[0].client().await.unwrap(),
        cluster.frontends[1].client().await.unwrap(),
    );
    create_queue(&mut first, "orders").await;
    // The second frontend reads the record and keeps it.
    send_one(&mut second, "orders", "before").await.unwrap();
    first
        .delete_queue(pb::DeleteQueueRequest {
            name: "orders".into(),
        })
        .await
        .unwrap();
    create_queue(&mut first, "orders").await;

    // At once, through the frontend holding the old queue's record.
    send_one(&mut second, "orders", "after").await.unwrap();
    let counts = queue_counts(&mut second, "orders").await;
    assert_eq!(counts.visible, 1, "{counts:?}");
    let received = first
        .receive_message(pb::ReceiveMessageRequest {
            queue: "orders".into(),
            max_messages: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let bodies: Vec<_> = received.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec![bytes::Bytes::from("after")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_of_a_queue_that_does_not_exist_are_cached_briefly() {
    const READS: &str = "sluice_metadata_requests_total{code=\"OK\",method=\"GetQueueRecord\"}";
    let cluster = TwoFrontends::start();
    let (mut first, mut second) = (
        cluster.frontends[0].client().await.unwrap(),
        cluster.frontends[1].client().await.unwrap(),
    );
    let before = cluster.metadata.metric_sample(READS).unwrap();
    let start = Instant::now();
    for _ in 0..100 {
        let status = send_one(&mut second, "ghost", "x").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("queue \"ghost\""), "{status:?}");
    }
    let elapsed = start.elapsed();
    let reads = cluster.metadata.metric_sample(READS).unwrap() - before;
    println!("100 sends to a missing queue in {elapsed:?} read its record {reads} times");
    // Once per second (the negative TTL) at most, not once per request.
    assert!(
        reads <= elapsed.as_secs_f64().ceil() + 1.0,
        "{reads} reads in {elapsed:?}"
    );

    // Created through the other frontend, it is found here within about a second.
    create_queue(&mut first, "ghost").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(status) = send_one(&mut second, "ghost", "x").await {
        assert_eq!(status.code(), Code::NotFound);
        assert!(Instant::now() < deadline, "the new queue was never found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

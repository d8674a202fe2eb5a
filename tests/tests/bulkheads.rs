//! Bulkheads, backend pressure and connection limits, with real processes: waiting work does not
//! stall quick work, a slow backend cluster is refused early, connections are capped and idle
//! ones closed.

use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_tests::front::*;
use sluice_tests::{EtcdProcess, ServerProcess};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_holding_thousands_of_long_polls_and_streams_does_not_stall_another_callers_sends()
{
    const LONG_POLLS: usize = 3000;
    const STREAMS: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    create_queue(&mut client, "idle").await;
    create_queue(&mut client, "work").await;

    // The noisy caller, over eight connections: long polls on an empty queue, each asked
    // again as soon as it ends, and Consume streams held open.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(server.client().await.unwrap());
    }
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut noisy = Vec::new();
    for i in 0..LONG_POLLS {
        let mut client = channels[i % channels.len()].clone();
        let (stop, refused) = (stop.clone(), refused.clone());
        noisy.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let poll = client.receive_message(as_caller(
                    "noisy",
                    pb::ReceiveMessageRequest {
                        queue: "idle".into(),
                        max_messages: 1,
                        wait_time_seconds: Some(20),
                        ..Default::default()
                    },
                ));
                let result = tokio::select! {
                    result = poll => result,
                    () = stop.cancelled() => return,
                };
                if let Err(status) = result {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::select! {
                        () = tokio::time::sleep(retry_after(&status)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }));
    }
    let mut streams = Vec::new();
    let mut streams_refused = 0;
    for i in 0..STREAMS {
        let mut client = channels[i % channels.len()].clone();
        let (requests, stream) = consume_start("idle");
        match client.consume(as_caller("noisy", stream)).await {
            Ok(responses) => streams.push((requests, responses)),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                streams_refused += 1;
            }
        }
    }
    // Its per-caller caps (1,000 long polls, 1,000 streams by default) are full.
    sluice_tests::wait_for(
        "the noisy caller's long polls",
        Duration::from_secs(60),
        || {
            Ok(
                server.metric_sample("sluice_frontend_in_flight{bulkhead=\"long_polls\"}")?
                    >= 1000.0,
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(streams.len(), 1000, "streams open");
    assert_eq!(streams_refused, STREAMS - 1000);

    // Another caller sends and receives as usual meanwhile.
    let mut latencies = Vec::new();
    for i in 0..300 {
        let start = Instant::now();
        client
            .send_message(as_caller(
                "quiet",
                pb::SendMessageRequest {
                    queue: "work".into(),
                    body: format!("m{i}").into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        latencies.push(start.elapsed());
    }
    let mut received = 0;
    while received < 300 {
        let messages = client
            .receive_message(as_caller(
                "quiet",
                pb::ReceiveMessageRequest {
                    queue: "work".into(),
                    max_messages: 10,
                    wait_time_seconds: Some(1),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .messages;
        assert!(
            !messages.is_empty(),
            "the quiet caller's messages are there"
        );
        received += messages.len();
    }
    let (p50, p99) = (
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
    );
    let polls_refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "quiet caller's send latency with {} long polls and {} streams of a noisy caller open \
         ({polls_refused} long polls and {streams_refused} streams refused): p50 {p50:?}, \
         p99 {p99:?}",
        server
            .metric_sample("sluice_frontend_in_flight{bulkhead=\"long_polls\"}")
            .unwrap(),
        streams.len(),
    );
    assert!(
        polls_refused > 0,
        "the noisy caller was never refused a long poll"
    );
    // Loosely: a send is a local fsync; 2 s would mean it waited behind the noisy caller.
    assert!(p99 < Duration::from_secs(2), "send p99 {p99:?}");
    stop.cancel();
    drop(streams);
    for task in noisy {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_backend_cluster_is_refused_early_while_a_queue_on_another_is_served() {
    use sluice_proto::v1::manager_service_client::ManagerServiceClient;
    const SLOW_SENDERS: usize = 64;
    const RUN: Duration = Duration::from_secs(6);
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _slow = slow_cluster_a(&etcd, &dir);
    let _fast =
        ServerProcess::start_backend(&dir.path().join("b1"), &etcd.endpoint, "b", "b1").unwrap();
    let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let frontend = ServerProcess::start_frontend(&[metadata.endpoint()], 500).unwrap();
    let mut managers = ManagerServiceClient::new(manager.channel());
    clusters_registered(&manager, 2).await;

    // Queues go to the clusters in turn: find one on each.
    let mut client = frontend.client().await.unwrap();
    let (mut slow_queue, mut fast_queue) = (None, None);
    for i in 0..10 {
        let name = format!("q{i}");
        create_queue(&mut client, &name).await;
        let placement = managers
            .get_placement(pb::GetPlacementRequest {
                queue: name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        match placement.partitions[0].cluster.as_str() {
            "a" => slow_queue = slow_queue.or(Some(name)),
            _ => fast_queue = fast_queue.or(Some(name)),
        }
        if slow_queue.is_some() && fast_queue.is_some() {
            break;
        }
    }
    let (slow_queue, fast_queue) = (slow_queue.unwrap(), fast_queue.unwrap());

    // Many senders on the slow cluster's queue; one on the other's, timing each send.
    let start = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..SLOW_SENDERS {
        let mut client = client.clone();
        let queue = slow_queue.clone();
        slow.push(tokio::spawn(async move {
            let (mut stored, mut refused) = (0, Vec::new());
            while start.elapsed() < RUN {
                let asked = Instant::now();
                let sent = client
                    .send_message(pb::SendMessageRequest {
                        queue: queue.clone(),
                        body: "x".into(),
                        ..Default::default()
                    })
                    .await;
                match sent {
                    Ok(_) => stored += 1,
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        assert!(
                            status
                                .message()
                                .contains("backend cluster a is answering slowly"),
                            "{}",
                            status.message()
                        );
                        refused.push(asked.elapsed());
                        tokio::time::sleep(retry_after(&status)).await;
                    }
                }
            }
            (stored, refused)
        }));
    }
    let mut fast_latencies = Vec::new();
    while start.elapsed() < RUN {
        let asked = Instant::now();
        client
            .send_message(pb::SendMessageRequest {
                queue: fast_queue.clone(),
                body: "y".into(),
                ..Default::default()
            })
            .await
            .expect("the queue on the other cluster is served");
        fast_latencies.push(asked.elapsed());
    }
    let (mut stored, mut refused) = (0, Vec::new());
    for task in slow {
        let (s, r) = task.await.unwrap();
        stored += s;
        refused.extend(r);
    }
    let fast_sent = fast_latencies.len();
    let fast_p99 = percentile(&mut fast_latencies, 99.0);
    let refused_count = refused.len();
    let refused_p99 = if refused.is_empty() {
        Duration::ZERO
    } else {
        percentile(&mut refused, 99.0)
    };
    println!(
        "slow cluster: {stored} sends stored, {refused_count} refused (answered in p99 \
         {refused_p99:?}); other cluster: {fast_sent} sends, p99 {fast_p99:?}; cap on cluster a \
         now {}",
        frontend
            .metric_sample("sluice_frontend_backend_limit{cluster=\"a\"}")
            .unwrap()
    );
    assert!(
        refused_count > 0,
        "the slow cluster's sends were never refused"
    );
    // Refused early: at once, not after waiting behind the slow writes (a second each).
    assert!(refused_p99 < Duration::from_millis(500), "{refused_p99:?}");
    assert!(fast_p99 < Duration::from_secs(1), "{fast_p99:?}");
    let cap = frontend
        .metric_sample("sluice_frontend_backend_limit{cluster=\"a\"}")
        .unwrap();
    assert!(cap < SLOW_SENDERS as f64, "cap on the slow cluster {cap}");
    let other = frontend
        .metric_sample("sluice_frontend_backend_limit{cluster=\"b\"}")
        .unwrap();
    // The other cluster keeps a cap far above the slow one's (4,096 while it answers in time).
    assert!(
        other > SLOW_SENDERS as f64,
        "cap on the other cluster {other}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consume_stream_waits_out_a_slow_clusters_refusals_and_every_ack_is_answered() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    /// Messages the consumer receives and acks one by one.
    const ACKS: usize = 10;
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Every write (a send, a delete) takes a second: past the 500 ms target, so the frontend's
    // cap on calls to the cluster falls to its floor of two and stays there.
    let _slow = slow_cluster_a(&etcd, &dir);
    let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let config = dir.path().join("frontend.toml");
    std::fs::write(&config, "[backend_pressure]\nmin_calls = 2\n").unwrap();
    let frontend = ServerProcess::start_frontend_with(
        &[metadata.endpoint()],
        500,
        &["--config", config.to_str().unwrap()],
    )
    .unwrap();
    clusters_registered(&manager, 1).await;
    let mut client = frontend.client().await.unwrap();
    create_queue(&mut client, "orders").await;

    // Three senders keep the cluster's two places busy most of the time: a send holds one for a
    // second, then its sender pauses a little, and a refused sender waits as it is told.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (mut client, stop, refused) = (client.clone(), stop.clone(), refused.clone());
        senders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match send_one(&mut client, "orders", "busy").await {
                    Ok(()) => tokio::time::sleep(Duration::from_millis(300)).await,
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(retry_after(&status)).await;
                    }
                }
            }
        }));
    }

    sluice_tests::wait_for(
        "the cap on cluster a to fall to its floor",
        Duration::from_secs(60),
        || Ok(frontend.metric_sample("sluice_frontend_backend_limit{cluster=\"a\"}")? <= 2.0),
    )
    .await
    .unwrap();

    // A consumer with room for one message acks each as it comes: every ack is a
    // delete on the busy cluster, refused by the cap when it finds both places taken.
    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
    requests
        .send(pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
                queue: "orders".into(),
                prefetch: 1,
                ..Default::default()
            })),
        })
        .unwrap();
    let mut stream = client
        .consume(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut acked, mut deleted) = (0, 0);
    while deleted < ACKS {
        let response = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("the stream answers within a minute")
            .expect("the stream goes on instead of failing on a refusal")
            .expect("the stream stays open");
        match response.response {
            Some(pb::consume_response::Response::Messages(batch)) => {
                // An ack waiting on the cluster keeps its place in the window.
                assert!(
                    acked - deleted + batch.messages.len() <= 1,
                    "{acked} acked, {deleted} deleted, {} more pushed",
                    batch.messages.len()
                );
                for message in batch.messages {
                    // Acked while both places are taken, so the ack is refused at first.
                    sluice_tests::wait_for(
                        "the senders to take both places",
                        Duration::from_secs(30),
                        || {
                            Ok(frontend.metric_sample(
                                "sluice_frontend_backend_in_flight{cluster=\"a\"}",
                            )? >= 2.0)
                        },
                    )
                    .await
                    .unwrap();
                    requests
                        .send(pb::ConsumeRequest {
                            request: Some(pb::consume_request::Request::Ack(pb::ConsumeAck {
                                receipt_handles: vec![message.receipt_handle],
                            })),
                        })
                        .unwrap();
                    acked += 1;
                }
            }
            Some(pb::consume_response::Response::Acked(answer)) => {
                assert!(answer.failed.is_empty(), "{:?}", answer.failed);
                deleted += answer.deleted as usize;
            }
            None => panic!("an empty consume response"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(acked >= ACKS);
    // The cap refused more calls than the senders saw: the rest were the stream's own, which
    // it waited out instead of failing.
    let senders_refused = refused.load(Ordering::Relaxed) as f64;
    let all_refused = frontend
        .metric_sample("sluice_frontend_throttled_total{queue=\"\",reason=\"backend_pressure\"}")
        .unwrap();
    println!("the cap refused {all_refused} calls, {senders_refused} of them the senders'");
    assert!(
        senders_refused > 0.0,
        "the senders never found the cap full"
    );
    assert!(
        all_refused > senders_refused,
        "no call of the stream was refused: {all_refused} refusals, all the senders'"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_refused_and_idle_ones_closed_while_streams_stay() {
    let dir = tempfile::tempdir().unwrap();
    let server = standalone_with_config(
        &dir,
        "[connections]\nmax_connections = 3\nidle_timeout_seconds = 1\n",
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await.unwrap();
        client
            .list_queues(pb::ListQueuesRequest::default())
            .await
            .unwrap();
        clients.push(client);
    }
    create_queue(&mut clients[0], "events").await;
    // A fourth connection is closed as it is accepted.
    match server.client().await {
        Err(_) => {}
        Ok(mut fourth) => {
            let status = fourth
                .list_queues(pb::ListQueuesRequest::default())
                .await
                .unwrap_err();
            assert_ne!(status.code(), Code::Ok);
        }
    }
    assert!(
        server
            .metric("sluice_grpc_connections_refused_total")
            .unwrap()
            >= 1.0
    );

    // A Consume stream keeps its connection; the others, with nothing open, are closed.
    let (requests, start) = consume_start("events");
    let mut stream = clients[2].consume(start).await.unwrap().into_inner();
    sluice_tests::wait_for("idle connections to close", Duration::from_secs(30), || {
        Ok(server.metric("sluice_grpc_connections_idle_closed_total")? >= 2.0)
    })
    .await
    .unwrap();
    assert_eq!(server.metric("sluice_grpc_connections").unwrap(), 1.0);
    // The stream, open past the idle timeout, still delivers; a closed client reconnects.
    send_one(&mut clients[0], "events", "still here")
        .await
        .unwrap();
    let delivered = loop {
        match stream.message().await.unwrap().unwrap().response {
            Some(pb::consume_response::Response::Messages(batch)) => break batch.messages,
            _ => continue,
        }
    };
    assert_eq!(delivered[0].body.as_ref(), b"still here");
    drop(requests);
}

/// Waits until `count` backend clusters have registered with `manager`.
async fn clusters_registered(manager: &ServerProcess, count: usize) {
    use sluice_proto::v1::manager_service_client::ManagerServiceClient;
    let mut managers = ManagerServiceClient::new(manager.channel());
    let deadline = Instant::now() + Duration::from_secs(30);
    while managers
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters
        .len()
        < count
    {
        assert!(Instant::now() < deadline, "the clusters never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cluster a's one node, which answers every write a second late, as a failing disk would
/// make it.
fn slow_cluster_a(etcd: &EtcdProcess, dir: &tempfile::TempDir) -> ServerProcess {
    ServerProcess::start_backend_from(
        &sluice_tests::backend_failpoints_bin(),
        &dir.path().join("a1"),
        &etcd.endpoint,
        "a",
        "a1",
        &[("FAILPOINTS", "backend::commit_delay_ms=return(1000)")],
    )
    .unwrap()
}

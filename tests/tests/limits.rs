//! The frontend as the front door, with real processes: rate limits per caller and per queue,
//! refused with RESOURCE_EXHAUSTED and a `retry-after-ms`, set with the CLI and held across
//! frontends.

use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use sluice_tests::{queue_counts, EtcdProcess, ServerProcess};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// `message` as sent by the caller with client id `caller`.
fn as_caller<T>(caller: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("sluice-client-id", caller.parse().expect("valid id"));
    request
}

/// Sends a batch of `n` messages as `caller`; the number stored, or the refusal.
async fn send_batch(
    client: &mut QueueServiceClient<Channel>,
    queue: &str,
    caller: &str,
    n: usize,
) -> Result<u64, Status> {
    let entries = (0..n)
        .map(|i| pb::SendMessageBatchEntry {
            id: i.to_string(),
            body: format!("m{i}").into(),
            ..Default::default()
        })
        .collect();
    let response = client
        .send_message_batch(as_caller(
            caller,
            pb::SendMessageBatchRequest {
                queue: queue.into(),
                entries,
            },
        ))
        .await?
        .into_inner();
    assert!(response.failed.is_empty(), "{:?}", response.failed);
    Ok(response.successful.len() as u64)
}

/// What a refusal asks the caller to wait.
fn retry_after(status: &Status) -> Duration {
    let millis = status
        .metadata()
        .get("retry-after-ms")
        .unwrap_or_else(|| panic!("no retry-after-ms in {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    Duration::from_millis(millis)
}

/// `sluice standalone` in `dir` with the config file `toml`.
fn standalone_with_config(dir: &tempfile::TempDir, toml: &str) -> ServerProcess {
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    ServerProcess::start_with(&dir.path().join("data"), |command| {
        command.arg("--config").arg(&config);
    })
    .unwrap()
}

async fn create_queue(client: &mut QueueServiceClient<Channel>, name: &str) {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_is_refused_with_retry_after_and_only_what_was_acknowledged_is_stored(
) {
    let dir = tempfile::tempdir().unwrap();
    let server = standalone_with_config(
        &dir,
        "[rate_limits.callers.noisy]\nsend_messages_per_second = 10\n",
    );
    let mut client = server.client().await.unwrap();
    create_queue(&mut client, "orders").await;

    // Batches of ten at ten a second: the first passes on the burst, and the caller cannot
    // send another within the second it takes to earn one.
    let mut acked = 0;
    let mut refusals = Vec::new();
    for _ in 0..200 {
        match send_batch(&mut client, "orders", "noisy", 10).await {
            Ok(stored) => acked += stored,
            Err(status) => {
                refusals.push(status);
                if refusals.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(refusals.len(), 3, "the noisy caller was never refused");
    for status in &refusals {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("caller \"noisy\" on queue \"orders\"")
                && message.contains("limit of 10 messages sent per second"),
            "the refusal names the limit and the queue: {message}"
        );
        let wait = retry_after(status);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(1001),
            "ten messages at ten a second are back within a second: {wait:?}"
        );
    }

    // Another caller is held to its own limit, not the noisy one's.
    acked += send_batch(&mut client, "orders", "quiet", 10)
        .await
        .unwrap();
    // After the wait it was told, the noisy caller gets through again.
    tokio::time::sleep(retry_after(refusals.last().unwrap())).await;
    acked += sluice_client::retry_throttled(|| {
        let mut client = client.clone();
        async move { send_batch(&mut client, "orders", "noisy", 10).await }
    })
    .await
    .unwrap();

    // Every message acknowledged is stored, and not one of the refused batches' messages.
    let counts = queue_counts(&mut client, "orders").await;
    assert_eq!(
        counts.visible, acked,
        "stored {counts:?}, acknowledged {acked}"
    );
    let throttled = server
        .metric_sum("sluice_frontend_throttled_total")
        .unwrap();
    assert!(throttled >= 3.0, "throttled_total {throttled}");
}

/// etcd, a backend node, a metadata node, a manager and two frontends.
struct Cluster {
    frontends: Vec<ServerProcess>,
    _manager: ServerProcess,
    metadata: ServerProcess,
    _backend: ServerProcess,
    _etcd: EtcdProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let etcd = EtcdProcess::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backend =
            ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1")
                .unwrap();
        let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
        let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
        let urls = [metadata.endpoint()];
        let frontends = (0..2)
            .map(|_| ServerProcess::start_frontend(&urls, 500).unwrap())
            .collect();
        Cluster {
            frontends,
            _manager: manager,
            metadata,
            _backend: backend,
            _etcd: etcd,
            _dir: dir,
        }
    }

    /// Waits until every frontend counts them all, so each admits its share.
    async fn registered(&self) {
        sluice_tests::wait_for(
            "both frontends to count two",
            Duration::from_secs(30),
            || {
                Ok(self.frontends.iter().all(|f| {
                    f.metric("sluice_frontend_registered_frontends")
                        .is_ok_and(|n| n == 2.0)
                }))
            },
        )
        .await
        .unwrap();
    }
}

/// Sends batches of ten through `client` until one is refused; the refusal.
async fn until_refused(client: &mut QueueServiceClient<Channel>, queue: &str) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Err(status) = send_batch(client, queue, "app", 10).await {
            return status;
        }
        assert!(Instant::now() < deadline, "never refused");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_limit_set_with_the_cli_takes_effect_on_every_frontend_without_restart() {
    let cluster = Cluster::start();
    cluster.registered().await;
    let (first, second) = (&cluster.frontends[0], &cluster.frontends[1]);
    let mut through_second = second.client().await.unwrap();
    create_queue(&mut first.client().await.unwrap(), "shared").await;
    // No limit of its own and none by default: a hundred messages pass at once.
    for _ in 0..10 {
        send_batch(&mut through_second, "shared", "app", 10)
            .await
            .unwrap();
    }
    let shown = first.cli_ok(&["queue", "get", "shared"]);
    assert!(
        shown.contains("send rate           unlimited (default)"),
        "{shown}"
    );

    first.cli_ok(&["queue", "set", "shared", "--send-rate", "20"]);
    let shown = first.cli_ok(&["queue", "get", "shared"]);
    assert!(
        shown.contains("send rate           20 messages/s\n"),
        "{shown}"
    );
    // Both frontends refuse once over it, the one the change did not go through included.
    for frontend in [second, first] {
        let refusal = until_refused(&mut frontend.client().await.unwrap(), "shared").await;
        assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
        assert!(
            refusal.message().contains(
                "queue \"shared\" is over its limit of 20 messages sent per second (10 on each of 2 frontends)"
            ),
            "{}",
            refusal.message()
        );
    }

    // 0 gives the queue back to the default: unlimited again.
    second.cli_ok(&["queue", "set", "shared", "--send-rate", "0"]);
    let shown = second.cli_ok(&["queue", "get", "shared", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert!(
        json["rate_limits"]["send_messages_per_second"].is_null(),
        "{json}"
    );
    // Lifted once fifty messages in a row pass on each frontend.
    let deadline = Instant::now() + Duration::from_secs(30);
    for frontend in [first, second] {
        let mut client = frontend.client().await.unwrap();
        let mut passed = 0;
        while passed < 50 {
            match send_batch(&mut client, "shared", "app", 10).await {
                Ok(stored) => passed += stored,
                Err(_) => {
                    assert!(Instant::now() < deadline, "the limit was never lifted");
                    passed = 0;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_frontends_together_admit_a_queue_limit_within_its_documented_error() {
    const LIMIT: u64 = 100;
    const SENDERS_PER_FRONTEND: usize = 4;
    const RUN: Duration = Duration::from_secs(3);
    let cluster = Cluster::start();
    cluster.registered().await;
    let mut admin = cluster.frontends[0].client().await.unwrap();
    create_queue(&mut admin, "metered").await;
    admin
        .set_queue_attributes(pb::SetQueueAttributesRequest {
            name: "metered".into(),
            attributes: Some(pb::QueueAttributes {
                rate_limits: Some(pb::RateLimits {
                    send_messages_per_second: Some(LIMIT as u32),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // Each frontend caches the record for 500 ms: wait until both hold the queue to its limit.
    for frontend in &cluster.frontends {
        until_refused(&mut frontend.client().await.unwrap(), "metered").await;
    }

    // Both frontends, evenly loaded, as fast as their senders go; single sends.
    let start = Instant::now();
    let mut senders = Vec::new();
    for frontend in &cluster.frontends {
        for _ in 0..SENDERS_PER_FRONTEND {
            let mut client = frontend.client().await.unwrap();
            senders.push(tokio::spawn(async move {
                let (mut admitted, mut refused) = (0u64, 0u64);
                while start.elapsed() < RUN {
                    let sent = client
                        .send_message(as_caller(
                            "app",
                            pb::SendMessageRequest {
                                queue: "metered".into(),
                                body: "x".into(),
                                ..Default::default()
                            },
                        ))
                        .await;
                    match sent {
                        Ok(_) => admitted += 1,
                        Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
                        Err(status) => panic!("{status:?}"),
                    }
                }
                (admitted, refused)
            }));
        }
    }
    let (mut admitted, mut refused) = (0, 0);
    for sender in senders {
        let (a, r) = sender.await.unwrap();
        admitted += a;
        refused += r;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The documented error with the load spread evenly: the limit over the run, plus each
    // frontend's burst (its share, 50) at the start.
    let most = LIMIT as f64 * elapsed + 2.0 * (LIMIT / 2) as f64;
    println!(
        "admitted {admitted} ({:.0}/s) and refused {refused} in {elapsed:.2} s; limit {LIMIT}/s, \
         at most {most:.0} allowed",
        admitted as f64 / elapsed
    );
    assert!(refused > 0, "the senders never reached the limit");
    assert!(admitted as f64 <= most, "admitted {admitted} > {most:.0}");
    // Loosely: each frontend admits its share while its senders keep asking.
    assert!(
        admitted as f64 >= 0.5 * LIMIT as f64 * RUN.as_secs_f64(),
        "admitted only {admitted}"
    );
}

/// Percentile `p` (0 to 100) of `samples`, sorted in place.
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

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
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        requests
            .send(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
                    queue: "idle".into(),
                    ..Default::default()
                })),
            })
            .unwrap();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
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
    // Cluster a answers every write a second late, as a failing disk would make it.
    let _slow = ServerProcess::start_backend_from(
        &sluice_tests::backend_failpoints_bin(),
        &dir.path().join("a1"),
        &etcd.endpoint,
        "a",
        "a1",
        &[("FAILPOINTS", "backend::commit_delay_ms=return(1000)")],
    )
    .unwrap();
    let _fast =
        ServerProcess::start_backend(&dir.path().join("b1"), &etcd.endpoint, "b", "b1").unwrap();
    let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
    let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
    let frontend = ServerProcess::start_frontend(&[metadata.endpoint()], 500).unwrap();
    let mut managers = ManagerServiceClient::connect(manager.endpoint())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while managers
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters
        .len()
        < 2
    {
        assert!(Instant::now() < deadline, "the clusters never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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

async fn send_one(
    client: &mut QueueServiceClient<Channel>,
    queue: &str,
    body: &str,
) -> Result<(), Status> {
    client
        .send_message(pb::SendMessageRequest {
            queue: queue.into(),
            body: body.to_owned().into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_deleted_and_created_again_elsewhere_is_never_served_from_the_old_record() {
    let cluster = Cluster::start();
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
    let cluster = Cluster::start();
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
    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
    requests
        .send(pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
                queue: "events".into(),
                ..Default::default()
            })),
        })
        .unwrap();
    let mut stream = clients[2]
        .consume(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
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

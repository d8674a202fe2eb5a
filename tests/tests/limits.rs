//! Rate limits per caller and per queue, with real processes: refused with RESOURCE_EXHAUSTED
//! and a `retry-after-ms`, set with the CLI and held across frontends.

use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_tests::front::*;
use sluice_tests::queue_counts;
use tonic::Code;

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

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_limit_set_with_the_cli_takes_effect_on_every_frontend_without_restart() {
    let cluster = TwoFrontends::start();
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
    let cluster = TwoFrontends::start();
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

//! The queue engine's rules, each checked on a real RocksDB directory.

use std::time::{Duration, Instant};

use sluice_api::{NewMessage, QueueConfig, QueueCounts};
use sluice_storage::{Engine, EngineOptions, Error};

const Q: u64 = 1;

fn config(retention: Duration) -> QueueConfig {
    QueueConfig::standard("q", retention)
}

async fn engine_with_queue(dir: &tempfile::TempDir) -> Engine {
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    engine
        .create_queue(Q, config(Duration::from_secs(3600)))
        .await
        .unwrap();
    engine
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn delayed(body: &str, delay: Duration) -> NewMessage {
    NewMessage { delay, ..msg(body) }
}

/// Polls `check` until it holds; for state that background work changes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn expired_visibility_redelivers_with_receive_count_two() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    let sent = engine.send(Q, vec![msg("a")]).await.unwrap();

    let first = engine
        .receive(Q, 10, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message_id, sent[0].message_id);
    assert_eq!(first[0].receive_count, 1);
    // Hidden while in flight.
    let hidden = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert!(hidden.is_empty());

    // A long poll wakes when the visibility timeout runs out.
    let second = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message_id, sent[0].message_id);
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(
        second[0].first_receive_timestamp_ms,
        first[0].first_receive_timestamp_ms
    );
    assert_eq!(second[0].body, first[0].body);
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
}

#[tokio::test]
async fn stale_receipt_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine.send(Q, vec![msg("a")]).await.unwrap();
    let first = engine
        .receive(Q, 1, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    let second = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(second[0].receive_count, 2);

    let stale = engine
        .delete(Q, &[first[0].receipt_handle.as_str()])
        .await
        .unwrap();
    assert!(matches!(stale[0], Err(Error::StaleReceipt)));
    let stale_change = engine
        .change_visibility(Q, &[(first[0].receipt_handle.as_str(), Duration::ZERO)])
        .await
        .unwrap();
    assert!(matches!(stale_change[0], Err(Error::StaleReceipt)));
    assert_eq!(
        engine.counts(Q).unwrap(),
        QueueCounts {
            visible: 0,
            in_flight: 1,
            delayed: 0
        }
    );

    // The current handle still works.
    let ok = engine
        .delete(Q, &[second[0].receipt_handle.as_str()])
        .await
        .unwrap();
    assert!(ok[0].is_ok());
    assert_eq!(engine.counts(Q).unwrap(), QueueCounts::default());
}

#[tokio::test]
async fn forged_and_foreign_receipts_are_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine
        .create_queue(2, config(Duration::from_secs(3600)))
        .await
        .unwrap();
    engine.send(Q, vec![msg("a")]).await.unwrap();
    let got = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let handle = &got[0].receipt_handle;

    let foreign = engine.delete(2, &[handle.as_str()]).await.unwrap();
    assert!(matches!(foreign[0], Err(Error::ReceiptForOtherQueue)));

    // Alter one character inside the signed body (not the last one, whose low bits are base64
    // padding), so the handle still decodes but its signature no longer matches.
    let mut forged = handle.clone().into_bytes();
    forged[12] = if forged[12] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let results = engine
        .delete(Q, &[forged.as_str(), "garbage"])
        .await
        .unwrap();
    assert!(matches!(
        results[0],
        Err(Error::InvalidReceipt("signature does not match"))
    ));
    assert!(matches!(results[1], Err(Error::InvalidReceipt(_))));
    assert_eq!(engine.counts(Q).unwrap().in_flight, 1);
}

#[tokio::test]
async fn delete_is_final_even_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine.send(Q, vec![msg("a"), msg("b")]).await.unwrap();
    let got = engine
        .receive(Q, 1, Duration::ZERO, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got[0].body, "a".as_bytes());
    let handle = got[0].receipt_handle.as_str();
    assert!(engine.delete(Q, &[handle]).await.unwrap()[0].is_ok());
    // Deleting again is a no-op success; changing its visibility finds nothing.
    assert!(engine.delete(Q, &[handle]).await.unwrap()[0].is_ok());
    let change = engine
        .change_visibility(Q, &[(handle, Duration::ZERO)])
        .await
        .unwrap();
    assert!(matches!(change[0], Err(Error::MessageGone)));
    engine.close().await;
    drop(engine);

    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let all = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let bodies: Vec<_> = all.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec![bytes_of("b")]);
    // Sequence numbers are never reused, even for deleted messages.
    let next = engine.send(Q, vec![msg("c")]).await.unwrap();
    assert!(next[0].sequence > all[0].sequence);
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn delayed_messages_stay_hidden_until_due() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    let started = Instant::now();
    engine
        .send(
            Q,
            vec![delayed("late", Duration::from_millis(500)), msg("now")],
        )
        .await
        .unwrap();
    assert_eq!(
        engine.counts(Q).unwrap(),
        QueueCounts {
            visible: 1,
            in_flight: 0,
            delayed: 1
        }
    );
    let first = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].body, bytes_of("now"));

    let late = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].body, bytes_of("late"));
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn retention_deletes_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    engine
        .create_queue(Q, config(Duration::from_millis(200)))
        .await
        .unwrap();
    engine.send(Q, vec![msg("a"), msg("b")]).await.unwrap();
    let got = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    eventually("retention to expire both messages", || {
        engine.counts(Q).unwrap() == QueueCounts::default()
    })
    .await;
    let gone = engine
        .change_visibility(Q, &[(got[0].receipt_handle.as_str(), Duration::ZERO)])
        .await
        .unwrap();
    assert!(matches!(gone[0], Err(Error::MessageGone)));
    engine.close().await;
    drop(engine);
    let reopened = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert_eq!(reopened.counts(Q).unwrap(), QueueCounts::default());
}

#[tokio::test]
async fn purge_removes_visible_in_flight_and_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine
        .send(
            Q,
            vec![msg("a"), msg("b"), delayed("c", Duration::from_secs(60))],
        )
        .await
        .unwrap();
    let got = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        engine.counts(Q).unwrap(),
        QueueCounts {
            visible: 1,
            in_flight: 1,
            delayed: 1
        }
    );
    assert_eq!(engine.purge_queue(Q).await.unwrap(), 3);
    assert_eq!(engine.counts(Q).unwrap(), QueueCounts::default());
    let gone = engine
        .change_visibility(Q, &[(got[0].receipt_handle.as_str(), Duration::ZERO)])
        .await
        .unwrap();
    assert!(matches!(gone[0], Err(Error::MessageGone)));
    engine.send(Q, vec![msg("d")]).await.unwrap();
    engine.close().await;
    drop(engine);
    let reopened = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert_eq!(reopened.counts(Q).unwrap().visible, 1);
}

#[tokio::test]
async fn change_visibility_hides_longer_or_releases_now() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine.send(Q, vec![msg("a")]).await.unwrap();
    let got = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let handle = got[0].receipt_handle.as_str();
    let released = engine
        .change_visibility(Q, &[(handle, Duration::ZERO)])
        .await
        .unwrap();
    assert!(released[0].is_ok());
    // Visible again but not redelivered yet: the message is not in flight.
    let again = engine
        .change_visibility(Q, &[(handle, Duration::from_secs(5))])
        .await
        .unwrap();
    assert!(matches!(again[0], Err(Error::NotInFlight)));
    let redelivered = engine
        .receive(Q, 1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(redelivered[0].receive_count, 2);
}

#[tokio::test]
async fn restart_keeps_messages_and_in_flight_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine
        .send(Q, vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    let got = engine
        .receive(Q, 1, Duration::from_millis(400), Duration::ZERO)
        .await
        .unwrap();
    engine.close().await;
    drop(engine);

    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let counts = engine.counts(Q).unwrap();
    assert_eq!(counts.visible + counts.in_flight, 3);
    let rest = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rest.len() as u64, counts.visible);
    // The in-flight message comes back no later than its timeout.
    let back = engine
        .receive(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, got[0].message_id);
    assert_eq!(back[0].receive_count, 2);
}

#[tokio::test]
async fn long_poll_wakes_on_send() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    let receiver = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = engine
                .receive(Q, 1, Duration::from_secs(30), Duration::from_secs(20))
                .await
                .unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.send(Q, vec![msg("wake")]).await.unwrap();
    let (got, waited) = receiver.await.unwrap();
    assert_eq!(got.len(), 1);
    // Woken by the send, long before the 20 s wait ran out.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test]
async fn deleted_queue_refuses_work_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    engine.send(Q, vec![msg("a")]).await.unwrap();
    engine.delete_queue(Q).await.unwrap();
    assert!(matches!(
        engine.send(Q, vec![msg("b")]).await,
        Err(Error::QueueNotFound(Q))
    ));
    engine.close().await;
    drop(engine);
    let reopened = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert!(matches!(reopened.counts(Q), Err(Error::QueueNotFound(Q))));
}

/// A caller that gives up on a send once it is submitted (a cancelled RPC drops its future)
/// does not take the send back: it is stored, and it must be receivable too, and a FIFO group
/// must not stay held for it.
#[tokio::test]
async fn a_send_whose_caller_gives_up_mid_commit_is_receivable_and_frees_its_fifo_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queue(&dir).await;
    const FIFO: u64 = 2;
    engine
        .create_queue(
            FIFO,
            QueueConfig {
                fifo: true,
                ..QueueConfig::standard("q.fifo", Duration::from_secs(3600))
            },
        )
        .await
        .unwrap();
    let grouped = |body: &str| NewMessage {
        group_id: "g".into(),
        deduplication_id: body.into(),
        ..msg(body)
    };
    // Each polled once, up to its wait for the commit (no fsync is that quick), then dropped.
    let _ = tokio::time::timeout(Duration::ZERO, engine.send(Q, vec![msg("a")])).await;
    let _ = tokio::time::timeout(Duration::ZERO, engine.send(FIFO, vec![grouped("f1")])).await;
    engine.send(FIFO, vec![grouped("f2")]).await.unwrap();

    let wait = Duration::from_secs(5);
    let got = engine
        .receive(Q, 10, Duration::from_secs(60), wait)
        .await
        .unwrap();
    assert_eq!(bodies(&got), ["a"]);
    // A group's messages go out one at a time, each once the one before is deleted.
    for expected in ["f1", "f2"] {
        let got = engine
            .receive(FIFO, 10, Duration::from_secs(60), wait)
            .await
            .unwrap();
        assert_eq!(bodies(&got), [expected], "the group goes on, in order");
        for deleted in engine
            .delete(FIFO, &[got[0].receipt_handle.as_str()])
            .await
            .unwrap()
        {
            deleted.unwrap();
        }
    }
}

fn bodies(messages: &[sluice_api::ReceivedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

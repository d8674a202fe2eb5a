//! Reading the sends back out of a replicated engine's log entries, as a node does with the
//! entries it had to drop: a replicated engine on a real RocksDB directory, whose replicator
//! applies each entry at once and keeps its bytes.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice_api::{DeadLetter, IdempotencyKey, NewMessage, QueueConfig, Replication};
use sluice_storage::{Completion, DroppedSend, Engine, EngineOptions, Lease, Replicator};
use tracing::Span;

const ASYNC: u64 = 1;
const SYNC: u64 = 2;
const ASYNC_FIFO: u64 = 3;
const ASYNC_DLQ: u64 = 4;
const HOUR: Duration = Duration::from_secs(3600);

/// A log of one node that commits everything: each batch is applied to the engine and kept.
#[derive(Default)]
struct Capture {
    engine: OnceLock<Engine>,
    entries: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl Replicator for Capture {
    fn propose(&self, batch: Vec<u8>, durable: Completion, applied: Completion, _span: Span) {
        durable(Ok(()));
        let engine = self.engine.get().expect("set after open");
        let outcome = engine
            .apply(Some(&batch), b"")
            .map_err(|err| err.to_string());
        self.entries.lock().push(batch);
        applied(outcome);
    }
}

fn config(name: &str, fifo: bool, replication: Replication) -> QueueConfig {
    QueueConfig {
        fifo,
        replication,
        ..QueueConfig::standard(name, HOUR)
    }
}

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn finds_the_sends_to_async_standard_queues_in_a_batch_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Arc::new(Capture::default());
    let lease = Arc::new(Lease::default());
    lease.renew(Instant::now(), HOUR);
    let engine =
        Engine::open_replicated(EngineOptions::new(dir.path()), capture.clone(), lease).unwrap();
    assert!(capture.engine.set(engine.clone()).is_ok());
    engine.activate().await.unwrap();
    engine
        .create_queue(ASYNC_DLQ, config("dlq", false, Replication::Async))
        .await
        .unwrap();
    let redrive = DeadLetter {
        queue: ASYNC_DLQ,
        max_receive_count: 1,
    };
    engine
        .create_queue(
            ASYNC,
            QueueConfig {
                dead_letter: Some(redrive),
                ..config("async", false, Replication::Async)
            },
        )
        .await
        .unwrap();
    engine
        .create_queue(SYNC, config("sync", false, Replication::Sync))
        .await
        .unwrap();
    engine
        .create_queue(ASYNC_FIFO, config("async.fifo", true, Replication::Async))
        .await
        .unwrap();
    capture.entries.lock().clear();

    let key = IdempotencyKey::random();
    let keyed = engine
        .send_idempotent(
            ASYNC,
            key,
            vec![
                NewMessage {
                    deduplication_id: "d1".into(),
                    delay: Duration::from_secs(600),
                    ..msg("one")
                },
                msg("two"),
            ],
        )
        .await
        .unwrap();
    let unkeyed = engine.send(ASYNC, vec![msg("three")]).await.unwrap();
    engine.send(SYNC, vec![msg("sync")]).await.unwrap();
    engine
        .send(
            ASYNC_FIFO,
            vec![NewMessage {
                group_id: "g".into(),
                deduplication_id: "f1".into(),
                ..msg("fifo")
            }],
        )
        .await
        .unwrap();
    let sends = dropped(&engine, &capture);
    assert_eq!(sends.len(), 2, "{sends:?}");
    let (first, second) = (&sends[0], &sends[1]);
    assert_eq!((first.queue, first.key), (ASYNC, Some(key)));
    let bodies: Vec<_> = first.messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [&b"one"[..], b"two"]);
    let ids: Vec<_> = first.messages.iter().map(|m| &m.message_id).collect();
    let sent_ids: Vec<_> = keyed.iter().map(|m| &m.message_id).collect();
    assert_eq!(
        ids, sent_ids,
        "each message keeps the id it was acknowledged with"
    );
    assert_eq!(first.messages[0].deduplication_id, "d1");
    assert_eq!(first.messages[0].md5_of_body, keyed[0].md5_of_body);
    assert!(
        (Duration::from_secs(590)..=Duration::from_secs(600)).contains(&first.messages[0].delay),
        "what is left of the delay: {:?}",
        first.messages[0].delay
    );
    assert_eq!(first.messages[1].delay, Duration::ZERO);
    assert_eq!((second.queue, second.key), (ASYNC, None));
    assert_eq!(second.messages[0].message_id, unkeyed[0].message_id);
    assert_eq!(&second.messages[0].body[..], b"three");

    // A receive that moves a message to the dead-letter queue writes it there again: no send.
    capture.entries.lock().clear();
    for _ in 0..2 {
        engine
            .receive(ASYNC, 10, Duration::ZERO, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(
        !capture.entries.lock().is_empty(),
        "the receives wrote their deliveries"
    );
    let moved = engine
        .receive(ASYNC_DLQ, 10, HOUR, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        moved.len(),
        2,
        "\"two\" and \"three\" went to the dead-letter queue"
    );
    let sends = dropped(&engine, &capture);
    assert!(sends.is_empty(), "{sends:?}");
}

/// The sends of every entry captured since the last clear.
fn dropped(engine: &Engine, capture: &Capture) -> Vec<DroppedSend> {
    capture
        .entries
        .lock()
        .iter()
        .flat_map(|entry| engine.dropped_sends(entry).unwrap())
        .collect()
}

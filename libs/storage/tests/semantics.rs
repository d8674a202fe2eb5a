//! Dead-letter queues, move tasks, FIFO groups and deduplication, each on a real RocksDB
//! directory.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sluice_api::{
    AttributeValue, DeadLetter, IdempotencyKey, MoveTask, MoveTaskStatus, NewMessage, QueueConfig,
    ReceivedMessage,
};
use sluice_storage::{Engine, EngineOptions, Error};

const SOURCE: u64 = 1;
const DLQ: u64 = 2;
const OTHER: u64 = 3;
const HOUR: Duration = Duration::from_secs(3600);

fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn grouped(body: &str, group: &str) -> NewMessage {
    NewMessage {
        group_id: group.into(),
        ..msg(body)
    }
}

fn deduplicated(body: &str, dedup_id: &str) -> NewMessage {
    NewMessage {
        deduplication_id: dedup_id.into(),
        ..msg(body)
    }
}

fn queue(name: &str, fifo: bool, dead_letter: Option<DeadLetter>) -> QueueConfig {
    QueueConfig {
        fifo,
        dead_letter,
        ..QueueConfig::standard(name, HOUR)
    }
}

/// A source queue whose messages move to the DLQ after `max` receives, plus a third queue.
async fn with_dead_letter(dir: &tempfile::TempDir, max: u32, fifo: bool) -> Engine {
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let suffix = if fifo { ".fifo" } else { "" };
    engine
        .create_queue(DLQ, queue(&format!("dlq{suffix}"), fifo, None))
        .await
        .unwrap();
    engine
        .create_queue(OTHER, queue(&format!("other{suffix}"), fifo, None))
        .await
        .unwrap();
    let dead_letter = DeadLetter {
        queue: DLQ,
        max_receive_count: max,
    };
    engine
        .create_queue(
            SOURCE,
            queue(&format!("source{suffix}"), fifo, Some(dead_letter)),
        )
        .await
        .unwrap();
    engine
}

/// An engine in `dir` with one standard queue, SOURCE, named "q".
async fn with_standard_queue(dir: &tempfile::TempDir) -> Engine {
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    engine
        .create_queue(SOURCE, QueueConfig::standard("q", HOUR))
        .await
        .unwrap();
    engine
}

async fn receive_now(
    engine: &Engine,
    id: u64,
    max: usize,
    visibility: Duration,
) -> Vec<ReceivedMessage> {
    engine
        .receive(id, max, visibility, Duration::ZERO)
        .await
        .unwrap()
}

/// Receives and deletes everything visible in the queue.
async fn drain(engine: &Engine, id: u64) -> Vec<ReceivedMessage> {
    let mut all = Vec::new();
    loop {
        let got = receive_now(engine, id, 10, HOUR).await;
        if got.is_empty() {
            return all;
        }
        let handles: Vec<&str> = got.iter().map(|m| m.receipt_handle.as_str()).collect();
        for result in engine.delete(id, &handles).await.unwrap() {
            result.unwrap();
        }
        all.extend(got);
    }
}

/// Polls the source's task list until `check` holds for the newest task.
async fn task_until(
    engine: &Engine,
    source: u64,
    what: &str,
    check: impl Fn(&MoveTask) -> bool,
) -> MoveTask {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = engine.list_move_tasks(source).unwrap();
        if let Some(task) = tasks.first().filter(|t| check(t)) {
            return task.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn poison_message_moves_after_exactly_max_receives_with_attributes_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 3, false).await;
    let attributes = BTreeMap::from([(
        "kind".to_owned(),
        AttributeValue {
            data_type: "String.kind".into(),
            string_value: "poison".into(),
            binary_value: Default::default(),
        },
    )]);
    let poison = NewMessage {
        attributes: attributes.clone(),
        ..msg("poison")
    };
    let sent = engine.send(SOURCE, vec![poison]).await.unwrap();

    for count in 1..=3 {
        // A zero visibility timeout makes it visible again at once, as a failing consumer would.
        let got = receive_now(&engine, SOURCE, 10, Duration::ZERO).await;
        assert_eq!(got.len(), 1, "receive {count}");
        assert_eq!(got[0].receive_count, count);
    }
    assert!(receive_now(&engine, SOURCE, 10, Duration::ZERO)
        .await
        .is_empty());
    let source_counts = engine.counts(SOURCE).unwrap();
    assert_eq!(source_counts.visible + source_counts.in_flight, 0);

    // Zero visibility leaves it visible, so it can be received again after the restart below.
    let dead = receive_now(&engine, DLQ, 10, Duration::ZERO).await;
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.message_id, sent[0].message_id);
    assert_eq!(dead.body.as_ref(), b"poison");
    assert_eq!(dead.attributes, attributes);
    assert_eq!(dead.dead_letter_source, "source");
    assert_eq!(
        dead.receive_count, 1,
        "the count starts again in the dead-letter queue"
    );

    // The move is durable: after a restart the message is in the DLQ and not in the source.
    engine.close().await;
    drop(engine);
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert!(receive_now(&engine, SOURCE, 10, HOUR).await.is_empty());
    let back = engine
        .receive(DLQ, 10, HOUR, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, sent[0].message_id);
    assert_eq!(back[0].sent_timestamp_ms, dead.sent_timestamp_ms);
}

#[tokio::test]
async fn healthy_messages_are_delivered_alongside_moves() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    engine.send(SOURCE, vec![msg("bad")]).await.unwrap();
    receive_now(&engine, SOURCE, 10, Duration::ZERO).await;
    engine.send(SOURCE, vec![msg("good")]).await.unwrap();
    // One receive moves the poison message and still returns the good one.
    let got = receive_now(&engine, SOURCE, 10, HOUR).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.as_ref(), b"good");
    assert_eq!(drain(&engine, DLQ).await.len(), 1);
}

async fn dead_letter_three(engine: &Engine) -> HashSet<String> {
    engine
        .send(SOURCE, vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    receive_now(engine, SOURCE, 10, Duration::ZERO).await;
    assert!(receive_now(engine, SOURCE, 10, HOUR).await.is_empty());
    let counts = engine.counts(DLQ).unwrap();
    assert_eq!(counts.visible, 3);
    ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
}

fn bodies(messages: &[ReceivedMessage]) -> HashSet<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn move_task_returns_messages_to_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    let expected = dead_letter_three(&engine).await;

    let id = engine.start_move_task(DLQ, None, None).await.unwrap();
    let task = task_until(&engine, DLQ, "the task to complete", |t| {
        t.status == MoveTaskStatus::Completed
    })
    .await;
    assert_eq!(task.id, id);
    assert_eq!((task.moved, task.total), (3, 3));
    assert_eq!(task.destination, None);

    let back = drain(&engine, SOURCE).await;
    assert_eq!(bodies(&back), expected);
    assert!(back.iter().all(|m| m.dead_letter_source.is_empty()));
    assert!(back.iter().all(|m| m.receive_count == 1));
    assert!(drain(&engine, DLQ).await.is_empty());
}

#[tokio::test]
async fn move_task_to_a_named_queue_and_one_task_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    let expected = dead_letter_three(&engine).await;

    engine
        .start_move_task(DLQ, Some(OTHER), NonZeroU32::new(1))
        .await
        .unwrap();
    let second = engine.start_move_task(DLQ, None, None).await.unwrap_err();
    assert!(matches!(second, Error::TaskConflict(_)), "{second}");
    let itself = engine
        .start_move_task(DLQ, Some(DLQ), None)
        .await
        .unwrap_err();
    assert!(matches!(itself, Error::MoveFailed(_)), "{itself}");
    task_until(&engine, DLQ, "the task to complete", |t| {
        t.status == MoveTaskStatus::Completed
    })
    .await;
    assert_eq!(bodies(&drain(&engine, OTHER).await), expected);
    assert!(drain(&engine, SOURCE).await.is_empty());
}

#[tokio::test]
async fn cancelled_task_keeps_what_it_moved_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    let expected = dead_letter_three(&engine).await;

    let id = engine
        .start_move_task(DLQ, Some(OTHER), NonZeroU32::new(1))
        .await
        .unwrap();
    task_until(&engine, DLQ, "a first move", |t| t.moved >= 1).await;
    let cancelled = engine.cancel_move_task(DLQ, &id).await.unwrap();
    assert_eq!(cancelled.status, MoveTaskStatus::Cancelled);
    assert!(
        cancelled.moved < 3,
        "rate 1/s cannot have moved all: {cancelled:?}"
    );
    let again = engine.cancel_move_task(DLQ, &id).await.unwrap_err();
    assert!(matches!(again, Error::TaskConflict(_)), "{again}");
    let unknown = engine.cancel_move_task(DLQ, "nope").await.unwrap_err();
    assert!(matches!(unknown, Error::TaskNotFound(_)), "{unknown}");

    let moved = drain(&engine, OTHER).await;
    let left = drain(&engine, DLQ).await;
    assert_eq!(moved.len() as u64, cancelled.moved);
    let mut all = bodies(&moved);
    all.extend(bodies(&left));
    assert_eq!(all, expected);
    assert_eq!(moved.len() + left.len(), 3);
}

#[tokio::test]
async fn task_resumes_after_restart_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    let expected = dead_letter_three(&engine).await;
    engine
        .start_move_task(DLQ, None, NonZeroU32::new(1))
        .await
        .unwrap();
    task_until(&engine, DLQ, "a first move", |t| t.moved >= 1).await;
    engine.close().await;
    drop(engine);

    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let task = task_until(&engine, DLQ, "the resumed task to complete", |t| {
        t.status == MoveTaskStatus::Completed
    })
    .await;
    assert_eq!(task.moved, 3);
    let back = drain(&engine, SOURCE).await;
    assert_eq!(back.len(), 3);
    assert_eq!(bodies(&back), expected);
    assert!(drain(&engine, DLQ).await.is_empty());
}

#[tokio::test]
async fn task_fails_on_messages_that_have_no_source() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, false).await;
    // Sent straight to the DLQ: there is no queue to return it to.
    engine.send(DLQ, vec![msg("orphan")]).await.unwrap();
    engine.start_move_task(DLQ, None, None).await.unwrap();
    let task = task_until(&engine, DLQ, "the task to fail", |t| {
        t.status == MoveTaskStatus::Failed
    })
    .await;
    assert!(task.failure.contains("no source"), "{}", task.failure);
    assert_eq!(task.moved, 0);
    assert_eq!(
        bodies(&drain(&engine, DLQ).await),
        HashSet::from(["orphan".to_owned()])
    );
}

#[tokio::test]
async fn fifo_delivers_a_group_in_order_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 5, true).await;
    engine
        .send(
            SOURCE,
            vec![grouped("a1", "a"), grouped("b1", "b"), grouped("a2", "a")],
        )
        .await
        .unwrap();
    engine.send(SOURCE, vec![grouped("a3", "a")]).await.unwrap();

    // Only the head of each group is handed out.
    let first = receive_now(&engine, SOURCE, 10, HOUR).await;
    assert_eq!(bodies(&first), HashSet::from(["a1".into(), "b1".into()]));
    assert!(receive_now(&engine, SOURCE, 10, HOUR).await.is_empty());
    let counts = engine.counts(SOURCE).unwrap();
    assert_eq!((counts.visible, counts.in_flight), (2, 2));

    // Deleting a1 releases a2, and only a2.
    let a1 = first.iter().find(|m| m.body.as_ref() == b"a1").unwrap();
    engine.delete(SOURCE, &[&a1.receipt_handle]).await.unwrap();
    let next = receive_now(&engine, SOURCE, 10, HOUR).await;
    assert_eq!(bodies(&next), HashSet::from(["a2".into()]));
    assert!(next[0].sequence > a1.sequence);
    assert_eq!(next[0].group_id, "a");

    // A group survives a restart in order, with its in-flight head still blocking it.
    engine.close().await;
    drop(engine);
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert!(receive_now(&engine, SOURCE, 10, HOUR).await.is_empty());
    engine
        .change_visibility(SOURCE, &[(&next[0].receipt_handle, Duration::ZERO)])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let again = receive_now(&engine, SOURCE, 10, HOUR).await;
    assert_eq!(bodies(&again), HashSet::from(["a2".into()]));
}

#[tokio::test]
async fn fifo_dead_letter_move_unblocks_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 1, true).await;
    engine
        .send(SOURCE, vec![grouped("a1", "a"), grouped("a2", "a")])
        .await
        .unwrap();
    let first = receive_now(&engine, SOURCE, 10, Duration::ZERO).await;
    assert_eq!(bodies(&first), HashSet::from(["a1".into()]));
    // a1 was received once, its limit: the next receive moves it and hands out a2.
    let next = receive_now(&engine, SOURCE, 10, HOUR).await;
    assert_eq!(bodies(&next), HashSet::from(["a2".into()]));
    let dead = drain(&engine, DLQ).await;
    assert_eq!(bodies(&dead), HashSet::from(["a1".into()]));
    assert_eq!(dead[0].group_id, "a");
}

#[tokio::test]
async fn deduplication_returns_the_first_send_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        dedup_window: Duration::from_millis(500),
        ..EngineOptions::new(dir.path())
    };
    let engine = Engine::open(options).unwrap();
    engine
        .create_queue(SOURCE, QueueConfig::standard("q", HOUR))
        .await
        .unwrap();

    let first = engine
        .send(
            SOURCE,
            vec![deduplicated("x", "id-1"), deduplicated("x again", "id-1")],
        )
        .await
        .unwrap();
    assert!(!first[0].duplicate);
    assert!(
        first[1].duplicate,
        "the same id twice in one batch is one message"
    );
    assert_eq!(first[1].message_id, first[0].message_id);
    let retry = engine
        .send(SOURCE, vec![deduplicated("x", "id-1")])
        .await
        .unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(retry[0].message_id, first[0].message_id);
    assert_eq!(retry[0].sequence, first[0].sequence);
    assert_eq!(drain(&engine, SOURCE).await.len(), 1);

    // Once the window has passed the id is new again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        let sent = engine
            .send(SOURCE, vec![deduplicated("x", "id-1")])
            .await
            .unwrap();
        if !sent[0].duplicate {
            break sent;
        }
        assert!(Instant::now() < deadline, "the id was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(fresh[0].message_id, first[0].message_id);
    assert_eq!(drain(&engine, SOURCE).await.len(), 1);
}

#[tokio::test]
async fn deduplication_ids_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    let first = engine
        .send(SOURCE, vec![deduplicated("x", "order-7")])
        .await
        .unwrap();
    engine.close().await;
    drop(engine);

    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let retry = engine
        .send(SOURCE, vec![deduplicated("x", "order-7")])
        .await
        .unwrap();
    assert!(retry[0].duplicate);
    assert_eq!(retry[0].message_id, first[0].message_id);
    assert_eq!(drain(&engine, SOURCE).await.len(), 1);
}

/// The answer a client sees of a send: ids and sequences, not whether it was a retry.
fn answers(sent: &[sluice_api::SentMessage]) -> Vec<(String, u64)> {
    sent.iter()
        .map(|s| (s.message_id.clone(), s.sequence))
        .collect()
}

#[tokio::test]
async fn a_send_repeated_with_its_idempotency_key_stores_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    // An earlier send's deduplication id inside the batch: its message is a duplicate the first
    // time and must stay one, without taking a sequence, on every retry.
    let earlier = engine
        .send(SOURCE, vec![deduplicated("e", "order-1")])
        .await
        .unwrap();
    let key = IdempotencyKey::random();
    let batch = || {
        vec![
            msg("a"),
            deduplicated("e", "order-1"),
            deduplicated("b", "order-2"),
            msg("c"),
        ]
    };
    let first = engine.send_idempotent(SOURCE, key, batch()).await.unwrap();
    assert_eq!(
        first.iter().map(|s| s.duplicate).collect::<Vec<_>>(),
        [false, true, false, false]
    );
    assert_eq!(answers(&first[1..2]), answers(&earlier));
    let retry = engine.send_idempotent(SOURCE, key, batch()).await.unwrap();
    assert_eq!(answers(&retry), answers(&first), "the first answer again");
    assert!(retry.iter().all(|s| s.duplicate), "nothing stored again");

    engine.close().await;
    drop(engine);
    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    let after_restart = engine.send_idempotent(SOURCE, key, batch()).await.unwrap();
    assert_eq!(answers(&after_restart), answers(&first));
    // Another key is another send.
    let other = engine
        .send_idempotent(SOURCE, IdempotencyKey::random(), vec![msg("a")])
        .await
        .unwrap();
    assert!(!other[0].duplicate);
    let drained = drain(&engine, SOURCE).await;
    assert_eq!(
        drained.len(),
        5,
        "e, the first send's a, b, c, and the other a"
    );
    let want: HashSet<String> = ["e", "a", "b", "c"].map(String::from).into();
    assert_eq!(bodies(&drained), want);
}

#[tokio::test]
async fn an_idempotency_key_with_other_messages_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    let key = IdempotencyKey::random();
    engine
        .send_idempotent(SOURCE, key, vec![msg("a"), msg("b")])
        .await
        .unwrap();
    let err = engine
        .send_idempotent(SOURCE, key, vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyKeyReused), "{err}");
    let refused = sluice_api::Error::from(err);
    assert!(
        matches!(&refused, sluice_api::Error::InvalidArgument { field, .. } if field == "idempotency_key"),
        "{refused}"
    );
    assert_eq!(drain(&engine, SOURCE).await.len(), 2);
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_window() {
    let dir = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        idempotency_window: Duration::from_millis(300),
        ..EngineOptions::new(dir.path())
    };
    let engine = Engine::open(options).unwrap();
    engine
        .create_queue(SOURCE, QueueConfig::standard("q", HOUR))
        .await
        .unwrap();
    let key = IdempotencyKey::random();
    engine
        .send_idempotent(SOURCE, key, vec![msg("a")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = engine
            .send_idempotent(SOURCE, key, vec![msg("a")])
            .await
            .unwrap();
        if !sent[0].duplicate {
            break;
        }
        assert!(Instant::now() < deadline, "the key was never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drain(&engine, SOURCE).await.len(), 2);
}

#[tokio::test]
async fn a_sealed_queue_refuses_sends_drains_and_stays_sealed_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    let sent = engine
        .send(SOURCE, vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    let in_flight = receive_now(&engine, SOURCE, 1, HOUR).await;

    let (config, next_sequence) = engine.seal_queue(SOURCE).await.unwrap();
    assert_eq!(config.name, "q");
    assert_eq!(next_sequence, sent[2].sequence + 1);
    assert!(matches!(
        engine.send(SOURCE, vec![msg("late")]).await,
        Err(Error::Sealed(SOURCE))
    ));
    // Sealing again answers the same, and a config update does not unseal.
    assert_eq!(
        engine.seal_queue(SOURCE).await.unwrap().1,
        next_sequence,
        "sealing is idempotent"
    );
    engine
        .create_queue(SOURCE, QueueConfig::standard("q", HOUR * 2))
        .await
        .unwrap();
    engine.close().await;
    drop(engine);

    let engine = Engine::open(EngineOptions::new(dir.path())).unwrap();
    assert!(matches!(
        engine.send(SOURCE, vec![msg("after restart")]).await,
        Err(Error::Sealed(SOURCE))
    ));
    // The in-flight message's handle still deletes it; the rest drain.
    for result in engine
        .delete(SOURCE, &[in_flight[0].receipt_handle.as_str()])
        .await
        .unwrap()
    {
        result.unwrap();
    }
    assert_eq!(drain(&engine, SOURCE).await.len(), 2);
    let counts = engine.counts(SOURCE).unwrap();
    assert_eq!(
        (counts.visible, counts.in_flight, counts.delayed),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_send_retried_after_the_seal_is_answered_by_the_sealed_partition_not_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    let key = IdempotencyKey::random();
    let first = engine
        .send_idempotent(SOURCE, key, vec![msg("a"), msg("b")])
        .await
        .unwrap();
    engine.seal_queue(SOURCE).await.unwrap();

    // The frontend lost the first answer and retries on the partition it sent to.
    let retry = engine
        .send_idempotent(SOURCE, key, vec![msg("a"), msg("b")])
        .await
        .unwrap();
    assert_eq!(answers(&retry), answers(&first), "the first answer again");
    assert!(retry.iter().all(|s| s.duplicate), "nothing stored again");
    // A send this partition never stored goes to the queue's new partition.
    assert!(matches!(
        engine
            .send_idempotent(SOURCE, IdempotencyKey::random(), vec![msg("c")])
            .await,
        Err(Error::Sealed(SOURCE))
    ));
    assert!(matches!(
        engine.send(SOURCE, vec![msg("d")]).await,
        Err(Error::Sealed(SOURCE))
    ));
    assert_eq!(drain(&engine, SOURCE).await.len(), 2);
}

#[tokio::test]
async fn a_sealed_partition_tells_which_deduplication_ids_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_standard_queue(&dir).await;
    let deduped = |body: &str| NewMessage {
        deduplication_id: format!("d-{body}"),
        ..msg(body)
    };
    let first = engine
        .send(SOURCE, vec![deduped("a"), deduped("b")])
        .await
        .unwrap();
    engine.seal_queue(SOURCE).await.unwrap();

    // A frontend asks before a client's retry (a new request, the same deduplication ids)
    // goes to the queue's new partition.
    let ids = ["d-a", "d-new", "d-b"].map(String::from);
    let found = engine.deduplicated(SOURCE, &ids).await.unwrap();
    assert_eq!(
        found,
        vec![
            Some((first[0].message_id.clone(), first[0].sequence)),
            None,
            Some((first[1].message_id.clone(), first[1].sequence)),
        ]
    );
    // Sends are still refused: the lookup stores nothing.
    assert!(matches!(
        engine.send(SOURCE, vec![deduped("a")]).await,
        Err(Error::Sealed(SOURCE))
    ));
    assert_eq!(drain(&engine, SOURCE).await.len(), 2);
    assert!(matches!(
        engine.deduplicated(7_777, &ids).await,
        Err(Error::QueueNotFound(7_777))
    ));
}

#[tokio::test]
async fn a_partition_continues_the_sealed_one_s_sequence() {
    let old = tempfile::tempdir().unwrap();
    let new = tempfile::tempdir().unwrap();
    let old_cluster = Engine::open(EngineOptions::new(old.path())).unwrap();
    let new_cluster = Engine::open(EngineOptions::new(new.path())).unwrap();
    let config = queue("q.fifo", true, None);
    old_cluster.create_queue(SOURCE, config).await.unwrap();
    let before = old_cluster
        .send(SOURCE, vec![grouped("1", "g"), grouped("2", "g")])
        .await
        .unwrap();
    let (config, next_sequence) = old_cluster.seal_queue(SOURCE).await.unwrap();
    new_cluster
        .create_partition(SOURCE, config, next_sequence)
        .await
        .unwrap();
    let after = new_cluster
        .send(SOURCE, vec![grouped("3", "g")])
        .await
        .unwrap();
    assert!(after[0].sequence > before[1].sequence);
    new_cluster.close().await;
    drop(new_cluster);
    let new_cluster = Engine::open(EngineOptions::new(new.path())).unwrap();
    let later = new_cluster
        .send(SOURCE, vec![grouped("4", "g")])
        .await
        .unwrap();
    assert_eq!(later[0].sequence, after[0].sequence + 1);
}

#[tokio::test]
async fn queues_linked_by_a_dead_letter_policy_cannot_be_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = with_dead_letter(&dir, 3, false).await;
    let refused = engine.seal_queue(SOURCE).await.unwrap_err().to_string();
    assert!(refused.contains("dead-letter queue dlq"), "{refused}");
    let refused = engine.seal_queue(DLQ).await.unwrap_err().to_string();
    assert!(
        refused.contains("is the dead-letter queue of source"),
        "{refused}"
    );
    // Nothing was sealed: both still take sends.
    engine.send(SOURCE, vec![msg("x")]).await.unwrap();
    engine.send(DLQ, vec![msg("y")]).await.unwrap();
    // An unlinked queue seals, and a redrive into it then fails instead of landing there.
    engine.seal_queue(OTHER).await.unwrap();
    engine.send(DLQ, vec![msg("z")]).await.unwrap();
    engine
        .start_move_task(DLQ, Some(OTHER), None)
        .await
        .unwrap();
    let task = task_until(&engine, DLQ, "the task to fail", |t| {
        t.status == MoveTaskStatus::Failed
    })
    .await;
    assert!(
        task.failure.contains("moved to another backend cluster"),
        "{task:?}"
    );
}

//! Queue semantics over the real `sluice standalone` process: dead-letter queues and redrive
//! (including a redrive task that survives SIGKILL), FIFO ordering under concurrent consumers,
//! deduplication windows, and the system attributes a message carries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use sluice_tests::StandaloneProcess;

type Client = QueueClient;

async fn create(client: &mut Client, name: &str, attributes: pb::QueueAttributes) {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            attributes: Some(attributes),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn receive(client: &mut Client, queue: &str, max: u32, visibility: u32) -> Vec<pb::Message> {
    client
        .receive_message(pb::ReceiveMessageRequest {
            queue: queue.into(),
            max_messages: max,
            wait_time_seconds: Some(0),
            visibility_timeout_seconds: Some(visibility),
        })
        .await
        .unwrap()
        .into_inner()
        .messages
}

async fn counts(client: &mut Client, queue: &str) -> pb::QueueCounts {
    sluice_tests::queue_counts(client, queue).await
}

async fn delete(client: &mut Client, queue: &str, message: &pb::Message) {
    client
        .delete_message(pb::DeleteMessageRequest {
            queue: queue.into(),
            receipt_handle: message.receipt_handle.clone(),
        })
        .await
        .unwrap();
}

/// The task `handle` of `source` as listed, once `done` holds for it.
async fn wait_for_task(
    client: &mut Client,
    source: &str,
    handle: &str,
    what: &str,
    done: impl Fn(&pb::MessageMoveTask) -> bool,
) -> pb::MessageMoveTask {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = client
            .list_message_move_tasks(pb::ListMessageMoveTasksRequest {
                source: source.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        let task = tasks.iter().find(|t| t.task_handle == handle);
        if let Some(task) = task.filter(|t| done(t)) {
            return task.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives and deletes everything in `queue`; returns the bodies.
async fn drain(client: &mut Client, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let got = receive(client, queue, 10, 300).await;
        if got.is_empty() {
            let c = counts(client, queue).await;
            assert_eq!(c.visible + c.delayed + c.in_flight, 0);
            return bodies;
        }
        for m in &got {
            bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
            delete(client, queue, m).await;
        }
    }
}

#[tokio::test]
async fn poison_message_is_dead_lettered_after_max_receives_and_redriven_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();

    // Through the CLI, as a user would set it up.
    server.cli_ok(&["queue", "create", "jobs-dead"]);
    let missing = server.cli(&[
        "queue",
        "create",
        "jobs",
        "--dlq",
        "nope",
        "--max-receives",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("nope"),
        "{stderr}"
    );
    server.cli_ok(&[
        "queue",
        "create",
        "jobs",
        "--dlq",
        "jobs-dead",
        "--max-receives",
        "3",
    ]);
    let queue: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["queue", "get", "jobs", "--json"])).unwrap();
    assert_eq!(
        queue["attributes"]["redrive_policy"]["dead_letter_queue"],
        "jobs-dead"
    );
    let sent: serde_json::Value = serde_json::from_str(&server.cli_ok(&[
        "send",
        "jobs",
        "poison",
        "--json",
        "--attr",
        "kind=String:poison",
        "--attr",
        "blob=Binary:00ff",
    ]))
    .unwrap();
    let message_id = sent["message_id"].as_str().unwrap().to_owned();
    let attributes_md5 = sent["md5_of_message_attributes"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(attributes_md5.len(), 32);

    // A consumer that always fails: a zero visibility timeout makes the message visible again
    // at once.
    for count in 1..=3 {
        let got = receive(&mut client, "jobs", 10, 0).await;
        assert_eq!(got.len(), 1, "receive {count}");
        assert_eq!(got[0].approximate_receive_count, count);
        assert_eq!(got[0].md5_of_message_attributes, attributes_md5);
    }
    assert!(receive(&mut client, "jobs", 10, 0).await.is_empty());
    let source = counts(&mut client, "jobs").await;
    assert_eq!(source.visible + source.in_flight + source.delayed, 0);

    let dead = receive(&mut client, "jobs-dead", 10, 0).await;
    assert_eq!(dead.len(), 1);
    let dead = &dead[0];
    assert_eq!(dead.message_id, message_id);
    assert_eq!(dead.body.as_ref(), b"poison");
    assert_eq!(dead.dead_letter_source_queue, "jobs");
    assert_eq!(dead.attributes["kind"].string_value, "poison");
    assert_eq!(dead.attributes["blob"].binary_value.as_ref(), [0, 255]);
    assert_eq!(dead.md5_of_message_attributes, attributes_md5);

    // Redrive to where it came from, through the CLI, waiting for the task to end.
    let done = server.cli_ok(&["dlq", "redrive", "jobs-dead", "--wait", "--json"]);
    let task: serde_json::Value = serde_json::from_str(done.lines().last().unwrap()).unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["moved"], 1);
    let back = receive(&mut client, "jobs", 10, 60).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, message_id);
    assert_eq!(
        back[0].approximate_receive_count, 1,
        "a redriven message starts again"
    );
    assert_eq!(back[0].dead_letter_source_queue, "");
    let tasks = server.cli_ok(&["dlq", "tasks", "jobs-dead"]);
    assert!(tasks.contains("completed  moved 1 of 1"), "{tasks}");

    // An empty dead-letter queue name removes the policy.
    server.cli_ok(&["queue", "set", "jobs", "--dlq", ""]);
    let queue: serde_json::Value =
        serde_json::from_str(&server.cli_ok(&["queue", "get", "jobs", "--json"])).unwrap();
    assert!(queue["attributes"]["redrive_policy"].is_null(), "{queue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_task_survives_sigkill_and_loses_nothing() {
    const MESSAGES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    create(&mut client, "work-dead", Default::default()).await;
    create(
        &mut client,
        "work",
        pb::QueueAttributes {
            redrive_policy: Some(pb::RedrivePolicy {
                dead_letter_queue: "work-dead".into(),
                max_receive_count: 1,
            }),
            ..Default::default()
        },
    )
    .await;
    for chunk in 0..MESSAGES / 10 {
        let entries = (0..10)
            .map(|i| pb::SendMessageBatchEntry {
                id: i.to_string(),
                body: format!("m{}", chunk * 10 + i).into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let sent = client
            .send_message_batch(pb::SendMessageBatchRequest {
                queue: "work".into(),
                entries,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(sent.failed.is_empty(), "{:?}", sent.failed);
    }
    // Every message fails once; the next receives move them all to the dead-letter queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&mut client, "work-dead").await.visible < MESSAGES as u64 {
        receive(&mut client, "work", 10, 0).await;
        assert!(Instant::now() < deadline, "messages never dead-lettered");
    }

    let handle = client
        .start_message_move_task(pb::StartMessageMoveTaskRequest {
            source: "work-dead".into(),
            destination: String::new(),
            max_messages_per_second: Some(50),
        })
        .await
        .unwrap()
        .into_inner()
        .task_handle;
    let before = wait_for_task(&mut client, "work-dead", &handle, "some moves", |t| {
        t.moved >= 40
    })
    .await;
    assert_eq!(before.status(), pb::MessageMoveTaskStatus::Running);
    assert_eq!(before.total, MESSAGES as u64);
    server.kill9().unwrap();

    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    let after = wait_for_task(&mut client, "work-dead", &handle, "the task to end", |t| {
        t.status() != pb::MessageMoveTaskStatus::Running
    })
    .await;
    assert_eq!(
        after.status(),
        pb::MessageMoveTaskStatus::Completed,
        "{after:?}"
    );
    assert_eq!(after.moved, MESSAGES as u64);
    assert_eq!(after.max_messages_per_second, Some(50), "the rate survives");

    let c = counts(&mut client, "work-dead").await;
    assert_eq!(c.visible + c.in_flight + c.delayed, 0);
    let bodies = drain(&mut client, "work").await;
    let unique: HashSet<&String> = bodies.iter().collect();
    assert_eq!(unique.len(), bodies.len(), "a message moved twice");
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(
        unique,
        expected.iter().collect::<HashSet<_>>(),
        "lost or unexpected messages"
    );
}

/// What consumers saw: the groups with a message in flight, and the order each group was
/// processed in.
#[derive(Default)]
struct Ledger {
    in_flight: HashSet<String>,
    processed: HashMap<String, Vec<usize>>,
    violations: Vec<String>,
    deleted: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifo_groups_stay_ordered_with_one_message_in_flight_under_concurrent_consumers() {
    const GROUPS: usize = 8;
    const PER_GROUP: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    let queue = "orders.fifo";
    let mismatch = client
        .create_queue(pb::CreateQueueRequest {
            name: "orders".into(),
            attributes: Some(pb::QueueAttributes {
                fifo: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), tonic::Code::InvalidArgument);
    create(
        &mut client,
        queue,
        pb::QueueAttributes {
            fifo: true,
            ..Default::default()
        },
    )
    .await;

    // Interleave the groups so each batch holds several; send order within a group is i.
    let mut last_sequence = 0u128;
    for i in 0..PER_GROUP {
        let entries = (0..GROUPS)
            .map(|g| pb::SendMessageBatchEntry {
                id: g.to_string(),
                body: format!("g{g}:{i}").into_bytes().into(),
                group_id: format!("g{g}"),
                deduplication_id: format!("g{g}:{i}"),
                ..Default::default()
            })
            .collect();
        let sent = client
            .send_message_batch(pb::SendMessageBatchRequest {
                queue: queue.into(),
                entries,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(sent.failed.is_empty(), "{:?}", sent.failed);
        for entry in &sent.successful {
            let sequence: u128 = entry.sequence_number.parse().unwrap();
            assert!(sequence > last_sequence, "sequence numbers increase");
            last_sequence = sequence;
        }
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let ledger = ledger.clone();
        let mut client = server.client().await.unwrap();
        consumers.push(tokio::spawn(async move {
            // Every consumer keeps going until all messages have been processed by someone.
            while ledger.lock().unwrap().deleted < GROUPS * PER_GROUP {
                let got = receive(&mut client, queue, 10, 60).await;
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                for m in &got {
                    let body = String::from_utf8(m.body.to_vec()).unwrap();
                    let (group, index) = body.split_once(':').unwrap();
                    assert_eq!(group, m.group_id);
                    let mut l = ledger.lock().unwrap();
                    if !l.in_flight.insert(group.to_owned()) {
                        l.violations
                            .push(format!("{body} delivered while {group} had one in flight"));
                    }
                    l.processed
                        .entry(group.to_owned())
                        .or_default()
                        .push(index.parse().unwrap());
                }
                // Hold the messages a while, as a slow consumer would.
                let pause = rand::thread_rng().gen_range(0..15);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                for m in &got {
                    // Released before the delete: the next message of the group can only be
                    // delivered once the delete has committed, which is after this.
                    ledger.lock().unwrap().in_flight.remove(&m.group_id);
                    delete(&mut client, queue, m).await;
                    ledger.lock().unwrap().deleted += 1;
                }
            }
        }));
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    {
        let ledger = ledger.lock().unwrap();
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        assert_eq!(ledger.processed.len(), GROUPS);
        for (group, order) in &ledger.processed {
            let expected: Vec<usize> = (0..PER_GROUP).collect();
            assert_eq!(order, &expected, "group {group} out of send order");
        }
    }
    let c = counts(&mut client, queue).await;
    assert_eq!(c.visible + c.in_flight + c.delayed, 0);
}

#[tokio::test]
async fn retried_send_is_deduplicated_within_the_window_and_accepted_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start_with(dir.path(), |cmd| {
        cmd.args(["--dedup-window-seconds", "2"]);
    })
    .unwrap();
    let mut client = server.client().await.unwrap();
    create(&mut client, "payments", Default::default()).await;
    let send = |body: &'static str| pb::SendMessageRequest {
        queue: "payments".into(),
        body: body.as_bytes().to_vec().into(),
        deduplication_id: "payment-42".into(),
        ..Default::default()
    };
    let first = client
        .send_message(send("pay 42"))
        .await
        .unwrap()
        .into_inner();
    // The producer lost the response and retries.
    let retry = client
        .send_message(send("pay 42"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.message_id, first.message_id);
    assert_eq!(retry.sequence_number, first.sequence_number);
    let got = receive(&mut client, "payments", 10, 60).await;
    assert_eq!(got.len(), 1, "the consumer sees the message once");
    delete(&mut client, "payments", &got[0]).await;
    assert!(receive(&mut client, "payments", 10, 60).await.is_empty());

    // Once the window has passed, the same id is a new message.
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let sent = client
            .send_message(send("pay 42"))
            .await
            .unwrap()
            .into_inner();
        if sent.message_id != first.message_id {
            break sent;
        }
        assert!(Instant::now() < deadline, "never accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got = receive(&mut client, "payments", 10, 60).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, again.message_id);

    // FIFO with content-based deduplication: the same body is the same message.
    create(
        &mut client,
        "events.fifo",
        pb::QueueAttributes {
            fifo: true,
            content_based_deduplication: true,
            ..Default::default()
        },
    )
    .await;
    let event = || pb::SendMessageRequest {
        queue: "events.fifo".into(),
        body: b"created 7".to_vec().into(),
        group_id: "account-7".into(),
        ..Default::default()
    };
    let first = client.send_message(event()).await.unwrap().into_inner();
    let retry = client.send_message(event()).await.unwrap().into_inner();
    assert_eq!(retry.message_id, first.message_id);
    let c = counts(&mut client, "events.fifo").await;
    assert_eq!(c.visible, 1);
}

#[tokio::test]
async fn system_attributes_name_sender_deduplication_id_and_trace_and_follow_a_dead_letter_move() {
    let dir = tempfile::tempdir().unwrap();
    let server = StandaloneProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    create(&mut client, "traced-dead", Default::default()).await;
    create(
        &mut client,
        "traced",
        pb::QueueAttributes {
            redrive_policy: Some(pb::RedrivePolicy {
                dead_letter_queue: "traced-dead".into(),
                max_receive_count: 1,
            }),
            ..Default::default()
        },
    )
    .await;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let note = HashMap::from([(
        "note".to_owned(),
        pb::MessageAttributeValue {
            data_type: "String".into(),
            string_value: "kept".into(),
            ..Default::default()
        },
    )]);
    let sent = client
        .send_message(pb::SendMessageRequest {
            queue: "traced".into(),
            body: b"traced 1".to_vec().into(),
            attributes: note.clone(),
            deduplication_id: "order-1".into(),
            trace_header: trace.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // The first receive, then the second one moves it: in the dead-letter queue it still
    // carries what the send gave, and the reserved attribute never shows.
    let first = receive(&mut client, "traced", 1, 0).await;
    assert_eq!(first.len(), 1);
    assert!(receive(&mut client, "traced", 1, 0).await.is_empty());
    let moved = receive(&mut client, "traced-dead", 1, 60).await;
    assert_eq!(moved.len(), 1);
    for m in [&first[0], &moved[0]] {
        assert_eq!(m.message_id, sent.message_id);
        assert_eq!(m.trace_header, trace);
        assert_eq!(m.deduplication_id, "order-1");
        // Standalone on loopback lets callers in without credentials: the sender is the
        // caller's address.
        assert_eq!(m.sender_id, "127.0.0.1");
        assert_eq!(m.attributes, note, "only the client's attributes");
        assert_eq!(m.md5_of_message_attributes, sent.md5_of_message_attributes);
    }
    assert_eq!(moved[0].dead_letter_source_queue, "traced");

    // A FIFO queue's content-based id is the body's SHA-256, as SQS shows it.
    create(
        &mut client,
        "traced.fifo",
        pb::QueueAttributes {
            fifo: true,
            content_based_deduplication: true,
            ..Default::default()
        },
    )
    .await;
    let fifo = |trace_header: String| pb::SendMessageRequest {
        queue: "traced.fifo".into(),
        body: b"traced 1".to_vec().into(),
        group_id: "g".into(),
        trace_header,
        ..Default::default()
    };
    client.send_message(fifo(String::new())).await.unwrap();
    let got = receive(&mut client, "traced.fifo", 1, 60).await;
    assert_eq!(
        got[0].deduplication_id,
        "2d619cf69e623dbd1a9215f773e2d2ef5f64188afcc8bae61e7c918b7af7876f"
    );
    assert_eq!(got[0].trace_header, "");

    // A trace header past its limit or outside printable ASCII is refused, naming the field,
    // and nothing is stored.
    for bad in [
        "t".repeat(1025),
        "tr\u{e4}ce".to_owned(),
        "line\nbreak".to_owned(),
    ] {
        let refused = client.send_message(fifo(bad)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("trace_header"), "{refused:?}");
    }
    let c = counts(&mut client, "traced.fifo").await;
    assert_eq!((c.visible, c.in_flight), (0, 1));
}

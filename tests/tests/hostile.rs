//! Hostile input against real processes: thousands of generated requests, valid and invalid,
//! through `sluice standalone`, each checked against the documented limits (the code an invalid
//! one gets, and that it changed nothing); and the internal `BackendService` of a backend node
//! refusing what no frontend would send.
//!
//! `SLUICE_FUZZ_REQUESTS` sets how many requests the randomized test makes (10,000 by default)
//! and `SLUICE_FUZZ_SEED` replays a run. The byte-level fuzz is in `protobuf_fuzz.rs`.

use std::collections::HashMap;
use std::time::Duration;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use sluice_tests::hostile::*;
use sluice_tests::{queue_counts, ServerProcess};
use tonic::Code;

/// What the run believes each queue holds: message id to body.
#[derive(Default)]
struct Model {
    stored: HashMap<&'static str, HashMap<String, Vec<u8>>>,
    /// The newest receipt handle of each message received, and its queue.
    handles: Vec<(Target, String, String)>,
    codes: HashMap<String, usize>,
}

impl Model {
    fn queue(&mut self, target: Target) -> &mut HashMap<String, Vec<u8>> {
        self.stored.entry(target.name()).or_default()
    }

    /// The handle `handle` stands for, and the queue it must be used on; `target` otherwise.
    fn handle(&self, target: Target, handle: Handle) -> (Target, String, Option<String>) {
        match handle {
            Handle::Empty => (target, String::new(), None),
            Handle::Known(i) if !self.handles.is_empty() => {
                let (queue, id, handle) = &self.handles[i % self.handles.len()];
                let target = if matches!(target, Target::Standard | Target::Fifo) {
                    *queue
                } else {
                    target
                };
                (target, handle.clone(), Some(id.clone()))
            }
            _ => (target, "bm90IGEgcmVjZWlwdA".to_owned(), None),
        }
    }

    fn remember(&mut self, target: Target, message: &pb::Message) {
        self.handles.retain(|(_, id, _)| *id != message.message_id);
        self.handles.push((
            target,
            message.message_id.clone(),
            message.receipt_handle.clone(),
        ));
    }
}

fn count(model: &mut Model, op: &str, code: Code) {
    *model.codes.entry(format!("{op} {code:?}")).or_default() += 1;
}

/// The code a request on `target` gets when the queue itself is wrong, if it is.
fn queue_error(target: Target) -> Option<Code> {
    match target {
        Target::Unknown => Some(Code::NotFound),
        Target::BadName => Some(Code::InvalidArgument),
        Target::Standard | Target::Fifo => None,
    }
}

fn expect_code<T>(what: &str, result: &Result<T, tonic::Status>, expected: Code) {
    let code = match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    assert_eq!(code, expected, "{what}: {:?}", result.as_ref().err());
    if let Err(status) = result {
        assert!(
            !status.message().is_empty(),
            "{what}: an error names no cause"
        );
    }
}

async fn total(client: &mut QueueClient, target: Target) -> u64 {
    let c = queue_counts(client, target.name()).await;
    c.visible + c.in_flight + c.delayed
}

struct Run {
    client: QueueClient,
    model: Model,
    counter: u64,
}

impl Run {
    fn message(&mut self, target: Target, m: &Message) -> (pb::SendMessageBatchEntry, bool) {
        self.counter += 1;
        let body = body_bytes(m.body, &format!("m{}:", self.counter));
        let attributes = attributes_pb(&m.attributes);
        let group = id_string(m.group, self.counter, true);
        let dedup = id_string(m.dedup, self.counter, false);
        let trace = trace_string(m.trace, self.counter);
        let valid = message_valid(target, &body, &attributes, m, &group, &dedup, &trace);
        let entry = pb::SendMessageBatchEntry {
            id: String::new(),
            body: body.into(),
            attributes,
            delay_seconds: m.delay,
            deduplication_id: dedup,
            group_id: group,
            trace_header: trace,
        };
        (entry, valid)
    }

    async fn apply(&mut self, step: usize, op: Op) {
        let what = format!("request {step}: {op:?}");
        // Abbreviated: bodies of a megabyte would drown the report.
        let what: String = what.chars().take(600).collect();
        let what = what.as_str();
        match op {
            Op::Send(target, m) => {
                let (entry, valid) = self.message(target, &m);
                let request = pb::SendMessageRequest {
                    queue: target.name().into(),
                    body: entry.body.clone(),
                    attributes: entry.attributes,
                    delay_seconds: entry.delay_seconds,
                    deduplication_id: entry.deduplication_id,
                    group_id: entry.group_id,
                    trace_header: entry.trace_header,
                };
                let result = self.client.send_message(request).await;
                let expected = queue_error(target).unwrap_or(if valid {
                    Code::Ok
                } else {
                    Code::InvalidArgument
                });
                expect_code(what, &result, expected);
                count(&mut self.model, "SendMessage", expected);
                if let Ok(sent) = result {
                    let id = sent.into_inner().message_id;
                    self.model.queue(target).insert(id, entry.body.to_vec());
                }
            }
            Op::SendBatch(target, entries) => {
                let mut request = pb::SendMessageBatchRequest {
                    queue: target.name().into(),
                    entries: Vec::new(),
                };
                let mut valid = HashMap::new();
                for (id, m) in &entries {
                    let (mut entry, ok) = self.message(target, m);
                    entry.id = id.clone();
                    valid.insert(id.clone(), ok);
                    request.entries.push(entry);
                }
                let bytes: usize = request
                    .entries
                    .iter()
                    .map(|e| e.body.len() + attributes_size(&e.attributes))
                    .sum();
                let whole = (1..=10).contains(&request.entries.len())
                    && entry_ids_valid(request.entries.iter().map(|e| e.id.as_str()))
                    && bytes <= MAX_MESSAGE_BYTES;
                let expected = queue_error(target).unwrap_or(if whole {
                    Code::Ok
                } else {
                    Code::InvalidArgument
                });
                let bodies: HashMap<String, Vec<u8>> = request
                    .entries
                    .iter()
                    .map(|e| (e.id.clone(), e.body.to_vec()))
                    .collect();
                let result = self.client.send_message_batch(request).await;
                expect_code(what, &result, expected);
                count(&mut self.model, "SendMessageBatch", expected);
                if let Ok(response) = result {
                    let response = response.into_inner();
                    for ok in &response.successful {
                        assert!(valid[&ok.id], "{what}: invalid entry {} was stored", ok.id);
                        let body = bodies[&ok.id].clone();
                        self.model.queue(target).insert(ok.message_id.clone(), body);
                    }
                    for failed in &response.failed {
                        assert!(!valid[&failed.id], "{what}: valid entry failed: {failed:?}");
                        assert_eq!(failed.code, "INVALID_ARGUMENT", "{what}: {failed:?}");
                    }
                    assert_eq!(
                        response.successful.len() + response.failed.len(),
                        entries.len(),
                        "{what}: an entry has no result"
                    );
                }
            }
            Op::Receive {
                target,
                max,
                wait,
                visibility,
            } => {
                let request = pb::ReceiveMessageRequest {
                    queue: target.name().into(),
                    max_messages: max,
                    wait_time_seconds: wait,
                    visibility_timeout_seconds: visibility,
                };
                let valid =
                    max <= 10 && wait.unwrap_or(0) <= 20 && visibility.unwrap_or(0) <= 43_200;
                let expected = queue_error(target).unwrap_or(if valid {
                    Code::Ok
                } else {
                    Code::InvalidArgument
                });
                let result = self.client.receive_message(request).await;
                expect_code(what, &result, expected);
                count(&mut self.model, "ReceiveMessage", expected);
                if let Ok(response) = result {
                    let messages = response.into_inner().messages;
                    assert!(messages.len() <= max.max(1) as usize, "{what}: too many");
                    for message in &messages {
                        let stored = self.model.queue(target).get(&message.message_id);
                        assert_eq!(
                            stored.map(Vec::as_slice),
                            Some(&message.body[..]),
                            "{what}: received a message the run did not store: {}",
                            message.message_id
                        );
                        self.model.remember(target, message);
                    }
                }
            }
            Op::Delete(target, handle) => {
                let (target, receipt_handle, id) = self.model.handle(target, handle);
                let request = pb::DeleteMessageRequest {
                    queue: target.name().into(),
                    receipt_handle,
                };
                let result = self.client.delete_message(request).await;
                self.settle(what, "DeleteMessage", target, id, result);
            }
            Op::DeleteBatch(target, entries) => {
                let mut request = pb::DeleteMessageBatchRequest {
                    queue: target.name().into(),
                    entries: Vec::new(),
                };
                let mut known = HashMap::new();
                let mut queue = target;
                for (id, handle) in entries {
                    // One queue per batch: the first known handle's.
                    let (own, receipt_handle, message) = self.model.handle(queue, handle);
                    queue = own;
                    if let Some(message) = message {
                        known.insert(id.clone(), (message, receipt_handle.clone()));
                    }
                    request
                        .entries
                        .push(pb::DeleteMessageBatchEntry { id, receipt_handle });
                }
                request.queue = queue.name().into();
                let whole = (1..=10).contains(&request.entries.len())
                    && entry_ids_valid(request.entries.iter().map(|e| e.id.as_str()));
                let expected = queue_error(queue).unwrap_or(if whole {
                    Code::Ok
                } else {
                    Code::InvalidArgument
                });
                let result = self.client.delete_message_batch(request).await;
                expect_code(what, &result, expected);
                count(&mut self.model, "DeleteMessageBatch", expected);
                if let Ok(response) = result {
                    let response = response.into_inner();
                    for ok in &response.successful {
                        let (message, _) = known
                            .get(ok)
                            .unwrap_or_else(|| panic!("{what}: entry {ok} with a bad handle"));
                        self.model.queue(queue).remove(message);
                    }
                    for failed in &response.failed {
                        let allowed: &[&str] = if known.contains_key(&failed.id) {
                            &["FAILED_PRECONDITION", "INVALID_ARGUMENT", "NOT_FOUND"]
                        } else {
                            &["INVALID_ARGUMENT"]
                        };
                        assert!(
                            allowed.contains(&failed.code.as_str()),
                            "{what}: {failed:?}"
                        );
                    }
                }
            }
            Op::ChangeVisibility(target, handle, visibility) => {
                let (target, receipt_handle, id) = self.model.handle(target, handle);
                let request = pb::ChangeMessageVisibilityRequest {
                    queue: target.name().into(),
                    receipt_handle,
                    visibility_timeout_seconds: visibility,
                };
                let result = self.client.change_message_visibility(request).await;
                if visibility > 43_200 {
                    let expected = queue_error(target).unwrap_or(Code::InvalidArgument);
                    expect_code(what, &result, expected);
                    count(&mut self.model, "ChangeMessageVisibility", expected);
                } else {
                    // Changes nothing stored: the model only checks the code.
                    self.settle(what, "ChangeMessageVisibility", target, id, result);
                }
            }
        }
    }

    /// The outcome of a request on one receipt handle: a known handle may be stale or its
    /// message gone (a documented answer, not a bug); any other handle is invalid.
    fn settle<T>(
        &mut self,
        what: &str,
        op: &str,
        target: Target,
        message: Option<String>,
        result: Result<T, tonic::Status>,
    ) {
        if let Some(code) = queue_error(target) {
            expect_code(what, &result, code);
            count(&mut self.model, op, code);
            return;
        }
        let code = result.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
        count(&mut self.model, op, code);
        match &message {
            Some(_) => assert!(
                matches!(
                    code,
                    Code::Ok | Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument
                ),
                "{what}: {result:?}",
                result = result.as_ref().err()
            ),
            None => expect_code(what, &result, Code::InvalidArgument),
        }
        if let (Ok(_), Some(message), "DeleteMessage") = (&result, message, op) {
            self.model.queue(target).remove(&message);
        }
    }
}

/// Receives and deletes everything `target` holds once nothing is delayed or in flight.
async fn drain(client: &mut QueueClient, target: Target) -> HashMap<String, Vec<u8>> {
    let name = target.name();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = queue_counts(client, name).await;
        if c.delayed == 0 && c.in_flight == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue {name} still has messages delayed or in flight: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut found = HashMap::new();
    loop {
        let messages = client
            .receive_message(pb::ReceiveMessageRequest {
                queue: name.into(),
                max_messages: 10,
                wait_time_seconds: Some(0),
                visibility_timeout_seconds: Some(600),
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        if messages.is_empty() {
            break;
        }
        for m in messages {
            client
                .delete_message(pb::DeleteMessageRequest {
                    queue: name.into(),
                    receipt_handle: m.receipt_handle,
                })
                .await
                .unwrap();
            assert!(
                found
                    .insert(m.message_id.clone(), m.body.to_vec())
                    .is_none(),
                "{} delivered twice in the drain",
                m.message_id
            );
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_generated_requests_get_their_documented_codes_and_invalid_ones_change_nothing(
) {
    let requests: usize = std::env::var("SLUICE_FUZZ_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(rand::random);
    println!("SLUICE_FUZZ_SEED={seed} SLUICE_FUZZ_REQUESTS={requests}");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = op();

    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path()).unwrap();
    let mut client = server.client().await.unwrap();
    create(&mut client, Target::Standard.name(), false).await;
    create(&mut client, Target::Fifo.name(), true).await;
    let mut run = Run {
        client: client.clone(),
        model: Model::default(),
        counter: 0,
    };
    for step in 0..requests {
        let op = strategy.new_tree(&mut runner).unwrap().current();
        // No request may hang: the longest a valid one waits is a receive's 20 s long poll,
        // which the generator never asks for.
        tokio::time::timeout(Duration::from_secs(30), run.apply(step, op))
            .await
            .unwrap_or_else(|_| panic!("request {step} did not return within 30 s"));
        // What the queue holds is what the run stored minus what it deleted: an invalid
        // request stored or deleted nothing.
        for target in [Target::Standard, Target::Fifo] {
            let expected = run.model.queue(target).len() as u64;
            assert_eq!(
                total(&mut client, target).await,
                expected,
                "after request {step}, queue {} holds what the run does not expect",
                target.name()
            );
        }
    }
    assert!(
        server.exited().unwrap().is_none(),
        "the server died during the run"
    );
    let mut codes: Vec<_> = run.model.codes.clone().into_iter().collect();
    codes.sort();
    println!("outcomes: {codes:?}");
    for target in [Target::Standard, Target::Fifo] {
        let expected = run.model.queue(target).clone();
        let found = drain(&mut client, target).await;
        assert_eq!(
            found.len(),
            expected.len(),
            "queue {} holds a different number of messages than acknowledged",
            target.name()
        );
        assert!(
            found == expected,
            "queue {} holds other bodies",
            target.name()
        );
    }
    // Both kinds of outcome were exercised in numbers.
    let ok: usize = codes
        .iter()
        .filter(|(k, _)| k.ends_with(" Ok"))
        .map(|(_, n)| n)
        .sum();
    let invalid: usize = codes
        .iter()
        .filter(|(k, _)| k.ends_with(" InvalidArgument"))
        .map(|(_, n)| n)
        .sum();
    if requests >= 1000 {
        assert!(ok > requests / 5 && invalid > requests / 10, "{codes:?}");
    }
}

/// A backend node's `BackendService` as any caller that holds a frontend's certificate reaches
/// it: each request no frontend would send is refused with INVALID_ARGUMENT naming the field,
/// and the queue is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_backend_api_refuses_what_no_frontend_sends_and_changes_nothing() {
    use pb::backend_service_client::BackendServiceClient;

    let etcd = sluice_tests::EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = ServerProcess::start_backend(dir.path(), &etcd.endpoint, "a", "a1").unwrap();
    let mut backend = BackendServiceClient::new(node.channel_as(sluice_tests::Kind::Frontend));
    let config = |retention_seconds: u64, dead_letter_queue_id: u64| pb::EngineQueueConfig {
        name: "orders".into(),
        retention_seconds,
        dead_letter_queue_id,
        max_receive_count: 3,
        ..Default::default()
    };
    backend
        .put_queue(pb::PutQueueRequest {
            queue_id: 1,
            config: Some(config(3600, 0)),
            first_sequence: 0,
        })
        .await
        .unwrap();
    let message = |body: Vec<u8>| pb::NewMessage {
        body: body.into(),
        ..Default::default()
    };
    let send = |messages: Vec<pb::NewMessage>| pb::SendRequest {
        queue_id: 1,
        messages,
        idempotency_key: Default::default(),
    };
    backend
        .send(send((0..3).map(|i| message(vec![b'0' + i])).collect()))
        .await
        .unwrap();
    let counts = |mut backend: BackendServiceClient<tonic::transport::Channel>| async move {
        backend
            .counts(pb::CountsRequest { queue_id: 1 })
            .await
            .unwrap()
            .into_inner()
    };
    let before = counts(backend.clone()).await;
    assert_eq!(before.visible, 3);

    let receive = |max_messages, visibility_ms, wait_ms| pb::ReceiveRequest {
        queue_id: 1,
        max_messages,
        visibility_ms,
        wait_ms,
    };
    let nan = pb::NewMessage {
        attributes: [(
            "price".to_owned(),
            pb::MessageAttributeValue {
                data_type: "Number".into(),
                string_value: "NaN".into(),
                binary_value: Default::default(),
            },
        )]
        .into(),
        ..message(b"x".to_vec())
    };
    let late = pb::NewMessage {
        delay_ms: u64::MAX,
        ..message(b"x".to_vec())
    };
    let mut refused = Vec::new();
    let mut check = |what: &str, result: Result<(), tonic::Status>, field: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(field),
            "{what}: {:?} does not name {field}",
            status.message()
        );
        refused.push(what.to_owned());
    };
    let mut b = backend.clone();
    check(
        "a visibility timeout past the clock's end",
        b.receive(receive(1, u64::MAX, 0)).await.map(drop),
        "visibility_ms",
    );
    check(
        "a long poll of 584 million years",
        b.receive(receive(1, 1000, u64::MAX)).await.map(drop),
        "wait_ms",
    );
    check(
        "no messages asked for",
        b.receive(receive(0, 1000, 0)).await.map(drop),
        "max_messages",
    );
    check(
        "a million messages asked for",
        b.receive(receive(1_000_000, 1000, 0)).await.map(drop),
        "max_messages",
    );
    check(
        "a NaN Number attribute",
        b.send(send(vec![nan])).await.map(drop),
        "messages[0].attributes",
    );
    check(
        "ten messages of 1 MiB in one send",
        b.send(send(vec![message(vec![b'x'; 1024 * 1024]); 10]))
            .await
            .map(drop),
        "messages",
    );
    check(
        "an empty send",
        b.send(send(Vec::new())).await.map(drop),
        "messages",
    );
    check(
        "an empty body",
        b.send(send(vec![message(Vec::new())])).await.map(drop),
        "messages[0].body",
    );
    check(
        "a delay past the clock's end",
        b.send(send(vec![late])).await.map(drop),
        "messages[0].delay_ms",
    );
    check(
        "a visibility change past the clock's end",
        b.change_visibility(pb::ChangeVisibilityRequest {
            queue_id: 1,
            changes: vec![pb::VisibilityChange {
                receipt_handle: "x".into(),
                visibility_ms: u64::MAX,
            }],
        })
        .await
        .map(drop),
        "changes[0].visibility_ms",
    );
    check(
        "a delete of 1,001 handles",
        b.delete(pb::DeleteRequest {
            queue_id: 1,
            receipt_handles: vec!["x".into(); 1001],
        })
        .await
        .map(drop),
        "receipt_handles",
    );
    check(
        "a queue kept for no time",
        b.put_queue(pb::PutQueueRequest {
            queue_id: 1,
            config: Some(config(0, 0)),
            first_sequence: 0,
        })
        .await
        .map(drop),
        "config.retention_seconds",
    );
    check(
        "a queue that is its own dead-letter queue",
        b.put_queue(pb::PutQueueRequest {
            queue_id: 1,
            config: Some(config(3600, 1)),
            first_sequence: 0,
        })
        .await
        .map(drop),
        "config.dead_letter_queue_id",
    );
    assert_eq!(refused.len(), 13);

    assert_eq!(counts(backend.clone()).await, before);
    let received = backend
        .receive(receive(10, 60_000, 0))
        .await
        .unwrap()
        .into_inner()
        .messages;
    let mut bodies: Vec<_> = received.iter().map(|m| m.body.to_vec()).collect();
    bodies.sort();
    assert_eq!(bodies, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
}

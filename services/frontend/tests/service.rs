//! The public API's rules through `QueueService`, over the real engine and embedded metadata
//! store in a temporary directory: limits, error codes, and that refused requests store nothing.

use std::collections::HashMap;

use sluice_frontend::QueueServiceImpl;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;
use tonic::{Code, Request};

mod common;
use common::assert_code;

struct Fixture {
    service: QueueServiceImpl,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (service, dir) = common::service();
    Fixture { service, _dir: dir }
}

impl Fixture {
    async fn create(
        &self,
        name: &str,
        attributes: pb::QueueAttributes,
    ) -> Result<pb::Queue, tonic::Status> {
        self.service
            .create_queue(Request::new(pb::CreateQueueRequest {
                name: name.into(),
                attributes: Some(attributes),
                tags: HashMap::new(),
            }))
            .await
            .map(|r| r.into_inner().queue.unwrap())
    }

    async fn send(
        &self,
        req: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, tonic::Status> {
        self.service
            .send_message(Request::new(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn receive(&self, queue: &str, max: u32, visibility: Option<u32>) -> Vec<pb::Message> {
        self.service
            .receive_message(Request::new(pb::ReceiveMessageRequest {
                queue: queue.into(),
                max_messages: max,
                wait_time_seconds: Some(0),
                visibility_timeout_seconds: visibility,
            }))
            .await
            .unwrap()
            .into_inner()
            .messages
    }

    async fn counts(&self, queue: &str) -> pb::QueueCounts {
        self.service
            .get_queue(Request::new(pb::GetQueueRequest { name: queue.into() }))
            .await
            .unwrap()
            .into_inner()
            .queue
            .unwrap()
            .counts
            .unwrap()
    }

    async fn total(&self, queue: &str) -> u64 {
        let c = self.counts(queue).await;
        c.visible + c.in_flight + c.delayed
    }
}

fn body(queue: &str, body: &[u8]) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        queue: queue.into(),
        body: bytes::Bytes::copy_from_slice(body),
        ..Default::default()
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("request must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message {:?} should name {field}",
        status.message()
    );
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_on_different_attributes() {
    let f = fixture().await;
    let attrs = pb::QueueAttributes {
        visibility_timeout_seconds: Some(45),
        ..Default::default()
    };
    let first = f.create("orders", attrs.clone()).await.unwrap();
    let again = f.create("orders", attrs).await.unwrap();
    assert_eq!(first.created_at_ms, again.created_at_ms);
    let effective = first.attributes.unwrap();
    assert_eq!(effective.visibility_timeout_seconds, Some(45));
    assert_eq!(effective.message_retention_seconds, Some(345_600));
    assert_eq!(effective.max_message_bytes, Some(1_048_576));
    assert_eq!(effective.replication, pb::Replication::Sync as i32);

    let conflict = f
        .create(
            "orders",
            pb::QueueAttributes {
                visibility_timeout_seconds: Some(46),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn queue_limits_are_enforced_and_nothing_is_created() {
    let f = fixture().await;
    let long_name = "x".repeat(81);
    let cases: Vec<(&str, pb::QueueAttributes, &str)> = vec![
        ("a b", Default::default(), "name"),
        (&long_name, Default::default(), "name"),
        ("", Default::default(), "name"),
        (
            "q",
            pb::QueueAttributes {
                visibility_timeout_seconds: Some(43_201),
                ..Default::default()
            },
            "visibility_timeout_seconds",
        ),
        (
            "q",
            pb::QueueAttributes {
                message_retention_seconds: Some(59),
                ..Default::default()
            },
            "message_retention_seconds",
        ),
        (
            "q",
            pb::QueueAttributes {
                message_retention_seconds: Some(1_209_601),
                ..Default::default()
            },
            "message_retention_seconds",
        ),
        (
            "q",
            pb::QueueAttributes {
                delay_seconds: Some(901),
                ..Default::default()
            },
            "delay_seconds",
        ),
        (
            "q",
            pb::QueueAttributes {
                max_message_bytes: Some(1_048_577),
                ..Default::default()
            },
            "max_message_bytes",
        ),
        (
            "q",
            pb::QueueAttributes {
                max_message_bytes: Some(1023),
                ..Default::default()
            },
            "max_message_bytes",
        ),
        (
            "q",
            pb::QueueAttributes {
                receive_wait_time_seconds: Some(21),
                ..Default::default()
            },
            "receive_wait_time_seconds",
        ),
        (
            "q",
            pb::QueueAttributes {
                fifo: true,
                ..Default::default()
            },
            "fifo",
        ),
        ("q.fifo", pb::QueueAttributes::default(), "fifo"),
        (
            "q",
            pb::QueueAttributes {
                replication: 7,
                ..Default::default()
            },
            "replication",
        ),
    ];
    for (name, attrs, field) in cases {
        assert_invalid(f.create(name, attrs).await, field);
    }
    let listed = f
        .service
        .list_queues(Request::new(pb::ListQueuesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.names.is_empty(),
        "refused creates stored {:?}",
        listed.names
    );
}

#[tokio::test]
async fn message_limits_are_enforced_and_nothing_is_stored() {
    let f = fixture().await;
    f.create(
        "q",
        pb::QueueAttributes {
            max_message_bytes: Some(1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_invalid(f.send(body("q", b"")).await, "body");
    assert_invalid(
        f.send(body("q", &[7u8; 1025])).await,
        "max_message_bytes is 1024",
    );
    let mut big_attr = body("q", &[7u8; 1000]);
    big_attr.attributes.insert(
        "pad".into(),
        pb::MessageAttributeValue {
            data_type: "String".into(),
            string_value: "y".repeat(100),
            ..Default::default()
        },
    );
    assert_invalid(f.send(big_attr).await, "body");
    assert_invalid(
        f.send(pb::SendMessageRequest {
            delay_seconds: Some(901),
            ..body("q", b"x")
        })
        .await,
        "delay_seconds",
    );
    let mut too_many = body("q", b"x");
    for i in 0..11 {
        too_many.attributes.insert(
            format!("a{i}"),
            pb::MessageAttributeValue {
                data_type: "String".into(),
                string_value: "v".into(),
                ..Default::default()
            },
        );
    }
    assert_invalid(f.send(too_many).await, "attributes");
    let mut reserved = body("q", b"x");
    reserved.attributes.insert(
        "AWS.trace".into(),
        pb::MessageAttributeValue {
            data_type: "String".into(),
            string_value: "v".into(),
            ..Default::default()
        },
    );
    assert_invalid(f.send(reserved).await, "attributes");
    assert_invalid(
        f.send(pb::SendMessageRequest {
            deduplication_id: "d".repeat(129),
            ..body("q", b"x")
        })
        .await,
        "deduplication_id",
    );
    assert_invalid(
        f.send(pb::SendMessageRequest {
            deduplication_id: "tab\there".into(),
            ..body("q", b"x")
        })
        .await,
        "deduplication_id",
    );
    // Exactly at the limit is accepted.
    f.send(body("q", &[7u8; 1024])).await.unwrap();
    assert_eq!(f.total("q").await, 1);

    let missing = f.send(body("nope", b"x")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("nope"));

    // Receive limits.
    for (max, wait, vis, field) in [
        (11, Some(0), None, "max_messages"),
        (1, Some(21), None, "wait_time_seconds"),
        (1, Some(0), Some(43_201), "visibility_timeout_seconds"),
    ] {
        let result = f
            .service
            .receive_message(Request::new(pb::ReceiveMessageRequest {
                queue: "q".into(),
                max_messages: max,
                wait_time_seconds: wait,
                visibility_timeout_seconds: vis,
            }))
            .await;
        assert_invalid(result, field);
    }
    // Refused receives put nothing in flight.
    assert_eq!(f.counts("q").await.in_flight, 0);
}

#[tokio::test]
async fn batch_with_one_bad_entry_fails_alone() {
    let f = fixture().await;
    f.create("q", Default::default()).await.unwrap();
    let entry = |id: &str, body: &[u8]| pb::SendMessageBatchEntry {
        id: id.into(),
        body: bytes::Bytes::copy_from_slice(body),
        ..Default::default()
    };
    let resp = f
        .service
        .send_message_batch(Request::new(pb::SendMessageBatchRequest {
            queue: "q".into(),
            entries: vec![entry("a", b"one"), entry("bad", b""), entry("c", b"three")],
        }))
        .await
        .unwrap()
        .into_inner();
    let ok: Vec<_> = resp.successful.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ok, ["a", "c"]);
    assert_eq!(resp.failed.len(), 1);
    assert_eq!(resp.failed[0].id, "bad");
    assert_eq!(resp.failed[0].code, "INVALID_ARGUMENT");
    assert!(resp.failed[0].message.contains("body"));
    assert_eq!(
        resp.successful[0].md5_of_body,
        "f97c5d29941bfb1b2fdab0874906ab82"
    );
    assert_eq!(f.total("q").await, 2);

    // Whole-batch limits refuse the request and store nothing.
    let eleven = (0..11).map(|i| entry(&format!("e{i}"), b"x")).collect();
    let too_many = f
        .service
        .send_message_batch(Request::new(pb::SendMessageBatchRequest {
            queue: "q".into(),
            entries: eleven,
        }))
        .await;
    assert_invalid(too_many, "entries");
    let empty = f
        .service
        .send_message_batch(Request::new(pb::SendMessageBatchRequest {
            queue: "q".into(),
            entries: vec![],
        }))
        .await;
    assert_invalid(empty, "entries");
    let duplicate_ids = f
        .service
        .send_message_batch(Request::new(pb::SendMessageBatchRequest {
            queue: "q".into(),
            entries: vec![entry("x", b"1"), entry("x", b"2")],
        }))
        .await;
    assert_invalid(duplicate_ids, "entries.id");
    assert_eq!(f.total("q").await, 2);

    // Delete batch: one good handle, one garbled.
    let got = f.receive("q", 10, Some(60)).await;
    let resp = f
        .service
        .delete_message_batch(Request::new(pb::DeleteMessageBatchRequest {
            queue: "q".into(),
            entries: vec![
                pb::DeleteMessageBatchEntry {
                    id: "good".into(),
                    receipt_handle: got[0].receipt_handle.clone(),
                },
                pb::DeleteMessageBatchEntry {
                    id: "garbled".into(),
                    receipt_handle: "zzz".into(),
                },
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.successful, ["good"]);
    assert_eq!(resp.failed[0].id, "garbled");
    assert_eq!(resp.failed[0].code, "INVALID_ARGUMENT");
    assert_eq!(f.total("q").await, 1);
}

#[tokio::test]
async fn receipts_stale_forged_and_garbled_get_their_codes() {
    let f = fixture().await;
    f.create("q", Default::default()).await.unwrap();
    let sent = f.send(body("q", b"hello")).await.unwrap();
    assert_eq!(sent.md5_of_body, "5d41402abc4b2a76b9719d911017c592");
    let first = f.receive("q", 1, Some(0)).await;
    let second = f.receive("q", 1, Some(60)).await;
    assert_eq!(second[0].approximate_receive_count, 2);
    assert_eq!(second[0].md5_of_body, sent.md5_of_body);

    let delete = |handle: String| {
        f.service
            .delete_message(Request::new(pb::DeleteMessageRequest {
                queue: "q".into(),
                receipt_handle: handle,
            }))
    };
    let stale = delete(first[0].receipt_handle.clone()).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(f.counts("q").await.in_flight, 1);

    let mut forged = second[0].receipt_handle.clone().into_bytes();
    // Inside the signed body, so the handle decodes but its signature fails.
    forged[12] = if forged[12] == b'A' { b'B' } else { b'A' };
    let forged = delete(String::from_utf8(forged).unwrap())
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
    assert!(forged.message().contains("signature"), "{forged:?}");
    assert_eq!(
        delete("!!".into()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        delete(String::new()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(f.counts("q").await.in_flight, 1);

    let change = f
        .service
        .change_message_visibility(Request::new(pb::ChangeMessageVisibilityRequest {
            queue: "q".into(),
            receipt_handle: second[0].receipt_handle.clone(),
            visibility_timeout_seconds: 43_201,
        }))
        .await;
    assert_invalid(change, "visibility_timeout_seconds");

    delete(second[0].receipt_handle.clone()).await.unwrap();
    assert_eq!(f.total("q").await, 0);
}

#[tokio::test]
async fn attributes_round_trip_and_set_changes_only_given_fields() {
    let f = fixture().await;
    f.create("q", Default::default()).await.unwrap();
    let mut req = body("q", b"x");
    req.attributes.insert(
        "kind".into(),
        pb::MessageAttributeValue {
            data_type: "String.json".into(),
            string_value: "{}".into(),
            ..Default::default()
        },
    );
    req.attributes.insert(
        "blob".into(),
        pb::MessageAttributeValue {
            data_type: "Binary".into(),
            binary_value: vec![0, 1, 2].into(),
            ..Default::default()
        },
    );
    f.send(req.clone()).await.unwrap();
    let got = f.receive("q", 1, None).await;
    assert_eq!(got[0].attributes, req.attributes);

    let updated = f
        .service
        .set_queue_attributes(Request::new(pb::SetQueueAttributesRequest {
            name: "q".into(),
            attributes: Some(pb::QueueAttributes {
                delay_seconds: Some(5),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(updated.delay_seconds, Some(5));
    assert_eq!(updated.visibility_timeout_seconds, Some(30));
    f.send(body("q", b"later")).await.unwrap();
    assert_eq!(f.counts("q").await.delayed, 1);

    let bad = f
        .service
        .set_queue_attributes(Request::new(pb::SetQueueAttributesRequest {
            name: "q".into(),
            attributes: Some(pb::QueueAttributes {
                delay_seconds: Some(0),
                message_retention_seconds: Some(10),
                ..Default::default()
            }),
        }))
        .await;
    assert_invalid(bad, "message_retention_seconds");
    // The refused change left every attribute as it was.
    let queue = f
        .service
        .get_queue(Request::new(pb::GetQueueRequest { name: "q".into() }))
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(queue.attributes.unwrap().delay_seconds, Some(5));
}

#[tokio::test]
async fn list_pages_purge_and_delete() {
    let f = fixture().await;
    for name in ["a1", "a2", "a3", "b1"] {
        f.create(name, Default::default()).await.unwrap();
    }
    let page = |prefix: &str, token: &str| {
        f.service.list_queues(Request::new(pb::ListQueuesRequest {
            prefix: prefix.into(),
            page_size: 2,
            page_token: token.into(),
        }))
    };
    let first = page("a", "").await.unwrap().into_inner();
    assert_eq!(first.names, ["a1", "a2"]);
    let second = page("a", &first.next_page_token)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.names, ["a3"]);
    assert!(second.next_page_token.is_empty());

    f.send(body("a1", b"x")).await.unwrap();
    f.service
        .purge_queue(Request::new(pb::PurgeQueueRequest { name: "a1".into() }))
        .await
        .unwrap();
    assert_eq!(f.total("a1").await, 0);

    f.send(body("a2", b"x")).await.unwrap();
    f.service
        .delete_queue(Request::new(pb::DeleteQueueRequest { name: "a2".into() }))
        .await
        .unwrap();
    let gone = f
        .service
        .get_queue(Request::new(pb::GetQueueRequest { name: "a2".into() }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // A new queue of the same name starts empty.
    f.create("a2", Default::default()).await.unwrap();
    assert_eq!(f.total("a2").await, 0);
}

#[tokio::test]
async fn fifo_dead_letter_and_move_task_limits_store_nothing() {
    let f = fixture().await;
    let fifo = pb::QueueAttributes {
        fifo: true,
        ..Default::default()
    };
    f.create("jobs.fifo", fifo.clone()).await.unwrap();
    f.create("plain", Default::default()).await.unwrap();

    // FIFO sends: group and deduplication are required, no per-message delay, ids checked.
    let fifo_send = |group: &str, dedup: &str| pb::SendMessageRequest {
        group_id: group.into(),
        deduplication_id: dedup.into(),
        ..body("jobs.fifo", b"x")
    };
    assert_invalid(f.send(fifo_send("", "d1")).await, "group_id");
    assert_invalid(f.send(fifo_send("g", "")).await, "deduplication_id");
    assert_invalid(f.send(fifo_send("g\u{7f}", "d1")).await, "group_id");
    assert_invalid(f.send(fifo_send(&"g".repeat(129), "d1")).await, "group_id");
    assert_invalid(
        f.send(pb::SendMessageRequest {
            delay_seconds: Some(5),
            ..fifo_send("g", "d1")
        })
        .await,
        "delay_seconds",
    );
    assert_eq!(f.total("jobs.fifo").await, 0);
    // The same rules fail one batch entry alone.
    let batch = f
        .service
        .send_message_batch(Request::new(pb::SendMessageBatchRequest {
            queue: "jobs.fifo".into(),
            entries: vec![
                pb::SendMessageBatchEntry {
                    id: "ok".into(),
                    body: bytes::Bytes::from_static(b"x"),
                    group_id: "g".into(),
                    deduplication_id: "d1".into(),
                    ..Default::default()
                },
                pb::SendMessageBatchEntry {
                    id: "no-group".into(),
                    body: bytes::Bytes::from_static(b"y"),
                    deduplication_id: "d2".into(),
                    ..Default::default()
                },
            ],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.successful.len(), 1);
    assert_eq!(batch.failed.len(), 1);
    assert_eq!(batch.failed[0].id, "no-group");
    assert!(batch.failed[0].message.contains("group_id"));
    assert_eq!(f.total("jobs.fifo").await, 1);

    // Queue attributes of the new features.
    let with_dlq = |dlq: &str, count: u32| pb::QueueAttributes {
        redrive_policy: Some(pb::RedrivePolicy {
            dead_letter_queue: dlq.into(),
            max_receive_count: count,
        }),
        ..Default::default()
    };
    assert_code(
        f.create("orders", with_dlq("missing", 3)).await,
        Code::NotFound,
        "missing",
    );
    assert_invalid(
        f.create("orders", with_dlq("jobs.fifo", 3)).await,
        "dead_letter_queue",
    );
    assert_invalid(
        f.create("orders", with_dlq("plain", 0)).await,
        "max_receive_count",
    );
    assert_invalid(
        f.create("orders", with_dlq("plain", 1001)).await,
        "max_receive_count",
    );
    assert_invalid(
        f.create("orders", with_dlq("orders", 3)).await,
        "dead_letter_queue",
    );
    assert_invalid(
        f.create(
            "orders",
            pb::QueueAttributes {
                content_based_deduplication: true,
                ..Default::default()
            },
        )
        .await,
        "content_based_deduplication",
    );
    assert_invalid(f.create("orders", fifo.clone()).await, "fifo");
    assert_code(
        f.service
            .get_queue(Request::new(pb::GetQueueRequest {
                name: "orders".into(),
            }))
            .await,
        Code::NotFound,
        "orders",
    );
    let set = |attributes| {
        f.service
            .set_queue_attributes(Request::new(pb::SetQueueAttributesRequest {
                name: "plain".into(),
                attributes: Some(attributes),
            }))
    };
    assert_code(set(with_dlq("missing", 3)).await, Code::NotFound, "missing");
    assert_invalid(set(fifo.clone()).await, "fifo");
    let plain = f
        .service
        .get_queue(Request::new(pb::GetQueueRequest {
            name: "plain".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    let attributes = plain.attributes.unwrap();
    assert_eq!(
        attributes.redrive_policy, None,
        "a refused set changed nothing"
    );
    assert!(!attributes.fifo);

    // Move tasks.
    let start = |source: &str, destination: &str, rate: Option<u32>| {
        f.service
            .start_message_move_task(Request::new(pb::StartMessageMoveTaskRequest {
                source: source.into(),
                destination: destination.into(),
                max_messages_per_second: rate,
            }))
    };
    assert_invalid(start("plain", "", Some(0)).await, "max_messages_per_second");
    assert_invalid(
        start("plain", "", Some(1001)).await,
        "max_messages_per_second",
    );
    assert_code(start("missing", "", None).await, Code::NotFound, "missing");
    assert_code(
        start("plain", "missing", None).await,
        Code::NotFound,
        "missing",
    );
    assert_invalid(start("plain", "plain", None).await, "destination");
    assert_invalid(start("plain", "jobs.fifo", None).await, "destination");
    let listed = f
        .service
        .list_message_move_tasks(Request::new(pb::ListMessageMoveTasksRequest {
            source: "plain".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.tasks.is_empty(), "refused starts created {listed:?}");
    let cancel = |handle: &str| {
        f.service
            .cancel_message_move_task(Request::new(pb::CancelMessageMoveTaskRequest {
                task_handle: handle.into(),
            }))
    };
    assert_invalid(cancel("garbage").await, "task_handle");
    assert_code(
        cancel("plain/3f0e4b7c-1f43-4d55-9d7a-2d9a6c1c5e11").await,
        Code::NotFound,
        "3f0e4b7c",
    );
}

//! SQS's message actions judged by the AWS SDK for Rust against `sluice standalone`: sends and
//! receives with SQS's MD5s, batches and their partial failures, visibility, long polls woken
//! by a send, FIFO order and deduplication, repeated receive attempts. Each error check names
//! the legacy code the SDKs match on, so a wrong code fails the test.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use sluice_tests::sqs::{
    attributes, attributes_md5, code, create, md5_hex, open_standalone, string_attribute,
    TestAttribute,
};

#[tokio::test(flavor = "multi_thread")]
async fn messages_round_trip_with_sqs_md5s_batches_partial_failures_and_visibility() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, _) = open_standalone(dir.path());
    let url = create(&client, "work", &[]).await;

    let body = "héllo\r\n\tworld 😀";
    let binary = [0u8, 1, 2, 255];
    let sent = client
        .send_message()
        .queue_url(&url)
        .message_body(body)
        .message_attributes("colour", string_attribute("red"))
        .message_attributes(
            "count",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("42")
                .build()
                .unwrap(),
        )
        .message_attributes(
            "blob",
            MessageAttributeValue::builder()
                .data_type("Binary.raw")
                .binary_value(Blob::new(binary))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let expected_attributes_md5 = attributes_md5(&[
        TestAttribute {
            name: "colour",
            data_type: "String",
            string: Some("red"),
            binary: None,
        },
        TestAttribute {
            name: "count",
            data_type: "Number",
            string: Some("42"),
            binary: None,
        },
        TestAttribute {
            name: "blob",
            data_type: "Binary.raw",
            string: None,
            binary: Some(&binary),
        },
    ]);
    assert_eq!(
        sent.md5_of_message_body(),
        Some(md5_hex(body.as_bytes()).as_str())
    );
    assert_eq!(
        sent.md5_of_message_attributes(),
        Some(expected_attributes_md5.as_str())
    );

    let received = client
        .receive_message()
        .queue_url(&url)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let [message] = received.messages() else {
        panic!("one message: {received:?}");
    };
    assert_eq!(message.body(), Some(body));
    assert_eq!(message.message_id(), sent.message_id());
    assert_eq!(
        message.md5_of_body(),
        Some(md5_hex(body.as_bytes()).as_str())
    );
    assert_eq!(
        message.md5_of_message_attributes(),
        Some(expected_attributes_md5.as_str())
    );
    let attrs = message.message_attributes().unwrap();
    assert_eq!(attrs["colour"].string_value(), Some("red"));
    assert_eq!(attrs["count"].data_type(), "Number");
    assert_eq!(attrs["blob"].binary_value().unwrap().as_ref(), binary);
    let system = message.attributes().unwrap();
    assert_eq!(
        system[&MessageSystemAttributeName::ApproximateReceiveCount],
        "1"
    );
    assert!(system.contains_key(&MessageSystemAttributeName::SentTimestamp));
    assert!(system.contains_key(&MessageSystemAttributeName::ApproximateFirstReceiveTimestamp));

    // Made visible again, it is received a second time.
    client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(message.receipt_handle().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    let again = client
        .receive_message()
        .queue_url(&url)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_attribute_names("col.*")
        .send()
        .await
        .unwrap();
    let [again] = again.messages() else {
        panic!("received again");
    };
    assert_eq!(
        again.attributes().unwrap()[&MessageSystemAttributeName::ApproximateReceiveCount],
        "2"
    );
    // No attribute is named col.<something>: none is returned, and no MD5 for none.
    assert!(again.message_attributes().is_none());
    let handle = again.receipt_handle().unwrap().to_owned();
    client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(&handle)
        .send()
        .await
        .unwrap();
    let err = client
        .delete_message()
        .queue_url(&url)
        .receipt_handle("not-a-handle")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "ReceiptHandleIsInvalid");
    let err = client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&handle)
        .visibility_timeout(43_201)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidParameterValue");
    let err = client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&handle)
        .visibility_timeout(10)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        "ReceiptHandleIsInvalid",
        "the message was deleted"
    );
    // A message made visible again is no longer in flight under its handle.
    client
        .send_message()
        .queue_url(&url)
        .message_body("let go")
        .send()
        .await
        .unwrap();
    let let_go = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    let let_go = let_go.messages()[0].receipt_handle().unwrap().to_owned();
    for timeout in [0, 10] {
        let changed = client
            .change_message_visibility()
            .queue_url(&url)
            .receipt_handle(&let_go)
            .visibility_timeout(timeout)
            .send()
            .await;
        if timeout == 0 {
            changed.unwrap();
        } else {
            assert_eq!(
                code(&changed.unwrap_err()),
                "AWS.SimpleQueueService.MessageNotInflight"
            );
        }
    }
    let again = client
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    client
        .delete_message()
        .queue_url(&url)
        .receipt_handle(again.messages()[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    // A batch: the entry SQS would refuse alone fails alone.
    let entry = |id: &str, body: &str| {
        SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(body)
            .build()
            .unwrap()
    };
    let batch = client
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("a", "first"))
        .entries(entry("bad", "bell \u{7}"))
        .entries(entry("b", "second"))
        .send()
        .await
        .unwrap();
    let mut ok: Vec<&str> = batch.successful().iter().map(|e| e.id()).collect();
    ok.sort();
    assert_eq!(ok, ["a", "b"]);
    let [failed] = batch.failed() else {
        panic!("one failure: {batch:?}");
    };
    assert_eq!(failed.id(), "bad");
    assert_eq!(failed.code(), "InvalidMessageContents");
    assert!(failed.sender_fault());
    for e in batch.successful() {
        let expected = if e.id() == "a" { "first" } else { "second" };
        assert_eq!(e.md5_of_message_body(), md5_hex(expected.as_bytes()));
    }

    // What SQS checks of a batch as a whole refuses all of it.
    let big = "x".repeat(600 * 1024);
    let cases: Vec<(Vec<SendMessageBatchRequestEntry>, &str)> = vec![
        (vec![], "AWS.SimpleQueueService.EmptyBatchRequest"),
        (
            (0..11).map(|i| entry(&format!("e{i}"), "x")).collect(),
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        ),
        (
            vec![entry("same", "x"), entry("same", "y")],
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        ),
        (
            vec![entry("not ok", "x")],
            "AWS.SimpleQueueService.InvalidBatchEntryId",
        ),
        (
            vec![entry("big1", &big), entry("big2", &big)],
            "AWS.SimpleQueueService.BatchRequestTooLong",
        ),
    ];
    for (entries, expected) in cases {
        let err = client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err), expected);
    }
    let err = client
        .send_message()
        .queue_url(&url)
        .message_body("nul \u{0}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidMessageContents");
    let err = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(11)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidParameterValue");
    // Only the two good entries were stored.
    assert_eq!(
        attributes(&client, &url).await[&QueueAttributeName::ApproximateNumberOfMessages],
        "2"
    );

    // Batches of handles: the good ones succeed, a bad one fails alone.
    let received = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 2);
    let handles: Vec<&str> = received
        .messages()
        .iter()
        .map(|m| m.receipt_handle().unwrap())
        .collect();
    let changed = client
        .change_message_visibility_batch()
        .queue_url(&url)
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("one")
                .receipt_handle(handles[0])
                .visibility_timeout(60)
                .build()
                .unwrap(),
        )
        .entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id("junk")
                .receipt_handle("junk")
                .visibility_timeout(60)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(changed.successful().len(), 1);
    assert_eq!(changed.failed()[0].code(), "ReceiptHandleIsInvalid");
    let deleted = client
        .delete_message_batch()
        .queue_url(&url)
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("one")
                .receipt_handle(handles[0])
                .build()
                .unwrap(),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("two")
                .receipt_handle(handles[1])
                .build()
                .unwrap(),
        )
        .entries(
            DeleteMessageBatchRequestEntry::builder()
                .id("junk")
                .receipt_handle("junk")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut ok: Vec<&str> = deleted.successful().iter().map(|e| e.id()).collect();
    ok.sort();
    assert_eq!(ok, ["one", "two"]);
    assert_eq!(deleted.failed()[0].id(), "junk");
    assert_eq!(deleted.failed()[0].code(), "ReceiptHandleIsInvalid");
    let counts = attributes(&client, &url).await;
    assert_eq!(
        counts[&QueueAttributeName::ApproximateNumberOfMessages],
        "0"
    );
    assert_eq!(
        counts[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "0"
    );

    let err = client
        .send_message()
        .queue_url(url.replace("/work", "/gone"))
        .message_body("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AWS.SimpleQueueService.NonExistentQueue");
}

/// Receives from `url` until `count` messages came, deleting each; returns their bodies in the
/// order received.
async fn drain(client: &Client, url: &str, count: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < count {
        let received = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(5)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        for m in received.messages() {
            let group = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .unwrap_or_default();
            got.push((group, m.body().unwrap().to_owned()));
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn long_polls_wake_on_a_send_fifo_groups_keep_order_duplicates_drop_and_attempts_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client, _) = open_standalone(dir.path());
    let url = create(&client, "waiting", &[]).await;

    let poll = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .receive_message()
                .queue_url(url)
                .wait_time_seconds(20)
                .send()
                .await
                .unwrap()
        }
    });
    // The poll is waiting in the frontend before the message is sent.
    let waiting = "sluice_frontend_in_flight{bulkhead=\"long_polls\"}";
    while server.metric_sample(waiting).unwrap_or(0.0) < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .send_message()
        .queue_url(&url)
        .message_body("wake up")
        .send()
        .await
        .unwrap();
    let woken = poll.await.unwrap();
    assert_eq!(woken.messages()[0].body(), Some("wake up"));

    let fifo = create(
        &client,
        "jobs.fifo",
        &[
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::ContentBasedDeduplication, "true"),
        ],
    )
    .await;
    let described = attributes(&client, &fifo).await;
    assert_eq!(described[&QueueAttributeName::FifoQueue], "true");
    assert_eq!(described[&QueueAttributeName::DeduplicationScope], "queue");
    let mut ids = HashMap::new();
    for (group, body) in [
        ("g1", "a"),
        ("g2", "x"),
        ("g1", "b"),
        ("g1", "c"),
        ("g2", "y"),
    ] {
        let sent = client
            .send_message()
            .queue_url(&fifo)
            .message_body(body)
            .message_group_id(group)
            .send()
            .await
            .unwrap();
        assert!(sent.sequence_number().is_some());
        ids.insert(body, sent.message_id.unwrap());
    }
    // The same body again is a duplicate by content; an explicit id deduplicates too.
    let again = client
        .send_message()
        .queue_url(&fifo)
        .message_body("a")
        .message_group_id("g1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.message_id.as_ref(), Some(&ids["a"]));
    let batch = client
        .send_message_batch()
        .queue_url(&fifo)
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("retry")
                .message_body("b, sent again under another body")
                .message_group_id("g1")
                .message_deduplication_id(md5_hex(b"unused"))
                .build()
                .unwrap(),
        )
        .entries(
            SendMessageBatchRequestEntry::builder()
                .id("retry2")
                .message_body("b, sent again under another body")
                .message_group_id("g1")
                .message_deduplication_id(md5_hex(b"unused"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let batch_ids: Vec<&str> = batch.successful().iter().map(|e| e.message_id()).collect();
    assert_eq!(batch_ids.len(), 2);
    assert_eq!(
        batch_ids[0], batch_ids[1],
        "the second entry is a duplicate"
    );

    let got = drain(&client, &fifo, 6).await;
    let in_group = |g: &str| -> Vec<String> {
        got.iter()
            .filter(|(group, _)| group == g)
            .map(|(_, body)| body.clone())
            .collect()
    };
    assert_eq!(
        in_group("g1"),
        ["a", "b", "c", "b, sent again under another body"]
    );
    assert_eq!(in_group("g2"), ["x", "y"]);

    // A receive retried with its attempt id gets the same messages and handles; another
    // attempt finds the group still in flight.
    client
        .send_message()
        .queue_url(&fifo)
        .message_body("retried")
        .message_group_id("g3")
        .send()
        .await
        .unwrap();
    let receive = |attempt: &'static str| {
        client
            .receive_message()
            .queue_url(&fifo)
            .receive_request_attempt_id(attempt)
            .send()
    };
    let first = receive("attempt-1").await.unwrap();
    let [message] = first.messages() else {
        panic!("one message: {first:?}");
    };
    assert_eq!(message.body(), Some("retried"));
    let retried = receive("attempt-1").await.unwrap();
    assert_eq!(retried.messages(), first.messages());
    assert!(receive("attempt-2").await.unwrap().messages().is_empty());

    let err = client
        .send_message()
        .queue_url(&fifo)
        .message_body("no group")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidParameterValue");
}

#[tokio::test(flavor = "multi_thread")]
async fn system_attributes_carry_the_trace_header_sender_and_deduplication_id_with_their_md5() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, _) = open_standalone(dir.path());
    let url = create(
        &client,
        "traced.fifo",
        &[
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::ContentBasedDeduplication, "true"),
        ],
    )
    .await;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let traced = |value: &str| {
        MessageSystemAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .unwrap()
    };
    let expected_md5 = attributes_md5(&[TestAttribute {
        name: "AWSTraceHeader",
        data_type: "String",
        string: Some(trace),
        binary: None,
    }]);
    let sent = client
        .send_message()
        .queue_url(&url)
        .message_body("traced")
        .message_group_id("g")
        .message_deduplication_id("order-1")
        .message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            traced(trace),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        sent.md5_of_message_system_attributes(),
        Some(expected_md5.as_str())
    );
    assert_eq!(sent.md5_of_message_attributes(), None);

    let entry = |id: &str, trace: Option<&str>| {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(if trace.is_some() {
                "traced too"
            } else {
                "untraced"
            })
            .message_group_id(id);
        if let Some(trace) = trace {
            entry = entry.message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                traced(trace),
            );
        }
        entry.build().unwrap()
    };
    let batch = client
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("t", Some(trace)))
        .entries(entry("n", None))
        .entries(entry("long", Some(&"t".repeat(1025))))
        .send()
        .await
        .unwrap();
    let md5s: HashMap<&str, Option<&str>> = batch
        .successful()
        .iter()
        .map(|e| (e.id(), e.md5_of_message_system_attributes()))
        .collect();
    assert_eq!(
        md5s,
        HashMap::from([("t", Some(expected_md5.as_str())), ("n", None)])
    );
    let [failed] = batch.failed() else {
        panic!("one failure: {batch:?}");
    };
    assert_eq!(
        (failed.id(), failed.code()),
        ("long", "InvalidParameterValue")
    );
    assert!(
        failed.message().unwrap().contains("AWSTraceHeader"),
        "{failed:?}"
    );

    // SQS takes AWSTraceHeader alone, as a String; anything else is refused, naming it.
    for (name, value, named) in [
        ("SenderId", traced("me"), "SenderId"),
        (
            "AWSTraceHeader",
            MessageSystemAttributeValue::builder()
                .data_type("Number")
                .string_value("1")
                .build()
                .unwrap(),
            "DataType",
        ),
    ] {
        let err = client
            .send_message()
            .queue_url(&url)
            .message_body("refused")
            .message_group_id("g")
            .message_system_attributes(MessageSystemAttributeNameForSends::from(name), value)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err), "InvalidParameterValue");
        assert!(format!("{err:?}").contains(named), "{err:?}");
    }

    // All three are received with what they were sent with (three groups: one receive may
    // not hand out all of them).
    let mut system: HashMap<String, HashMap<MessageSystemAttributeName, String>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while system.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "received {system:?}");
        let received = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        for m in received.messages() {
            system.insert(m.body().unwrap().into(), m.attributes().unwrap().clone());
        }
    }
    use MessageSystemAttributeName::{AwsTraceHeader, MessageDeduplicationId, SenderId};
    for (attributes, dedup, traced) in [
        (&system["traced"], "order-1", true),
        // Content-based: the body's SHA-256.
        (
            &system["traced too"],
            "f372aa842ba521a9d17141ec643a0a9938854898ff2afbbc561b0fcbacd80f15",
            true,
        ),
        (
            &system["untraced"],
            "35027e5db28fec4b7e77a719e21b43a41286e9edfeae56f725f43b0b0b7cd559",
            false,
        ),
    ] {
        // Standalone on loopback lets callers in without credentials: the sender is the
        // caller's address.
        assert_eq!(attributes[&SenderId], "127.0.0.1");
        assert_eq!(attributes[&MessageDeduplicationId], dedup);
        assert_eq!(
            attributes.get(&AwsTraceHeader).map(String::as_str),
            traced.then_some(trace)
        );
    }
}

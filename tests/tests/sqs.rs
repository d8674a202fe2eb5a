//! The SQS endpoint judged by SQS's own clients: the AWS SDK for Rust (the JSON protocol) and raw
//! requests of the query protocol, signed by AWS's signer, against `sluice standalone`. Each
//! error check names the legacy code the SDKs match on, so a wrong code fails the test.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use sluice_tests::sqs::{self, attributes_md5, code, md5_hex, TestAttribute, ACCOUNT};
use sluice_tests::ServerProcess;

/// Standalone on loopback, which lets in callers whose keys it does not know (the SDKs always
/// sign), and an SDK client of its SQS endpoint.
fn open_standalone(dir: &std::path::Path) -> (ServerProcess, Client, String) {
    let server = ServerProcess::start(dir).unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let client = sqs::client(&endpoint, "AKIDANYTHING", "any-secret-will-do");
    (server, client, endpoint)
}

fn arn(name: &str) -> String {
    format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}")
}

async fn create(client: &Client, name: &str, attributes: &[(QueueAttributeName, &str)]) -> String {
    let mut request = client.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), *v);
    }
    request.send().await.unwrap().queue_url.unwrap()
}

async fn attributes(client: &Client, url: &str) -> HashMap<QueueAttributeName, String> {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default()
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_are_created_found_listed_described_changed_tagged_purged_and_deleted_by_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, endpoint) = open_standalone(dir.path());

    let url = client
        .create_queue()
        .queue_name("orders")
        .attributes(QueueAttributeName::VisibilityTimeout, "45")
        .tags("team", "billing")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    assert_eq!(url, format!("{endpoint}/{ACCOUNT}/orders"));
    // Idempotent with equal attributes; QueueAlreadyExists with others.
    assert_eq!(
        create(
            &client,
            "orders",
            &[(QueueAttributeName::VisibilityTimeout, "45")]
        )
        .await,
        url
    );
    let err = client
        .create_queue()
        .queue_name("orders")
        .attributes(QueueAttributeName::VisibilityTimeout, "46")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "QueueAlreadyExists");
    assert!(err.into_service_error().is_queue_name_exists());

    let found = client
        .get_queue_url()
        .queue_name("orders")
        .send()
        .await
        .unwrap();
    assert_eq!(found.queue_url.as_deref(), Some(url.as_str()));
    let err = client
        .get_queue_url()
        .queue_name("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AWS.SimpleQueueService.NonExistentQueue");
    assert!(err.into_service_error().is_queue_does_not_exist());

    // Listing by prefix, a page at a time.
    create(&client, "orders-eu", &[]).await;
    create(&client, "payments", &[]).await;
    let first = client
        .list_queues()
        .queue_name_prefix("orders")
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!(first.queue_urls(), std::slice::from_ref(&url));
    let next = first.next_token.expect("a second page");
    let second = client
        .list_queues()
        .queue_name_prefix("orders")
        .max_results(1)
        .next_token(next)
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.queue_urls(),
        [format!("{endpoint}/{ACCOUNT}/orders-eu")]
    );
    let err = client
        .list_queues()
        .max_results(1001)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidParameterValue");

    let described = attributes(&client, &url).await;
    assert_eq!(described[&QueueAttributeName::QueueArn], arn("orders"));
    assert_eq!(described[&QueueAttributeName::VisibilityTimeout], "45");
    assert_eq!(described[&QueueAttributeName::DelaySeconds], "0");
    assert_eq!(
        described[&QueueAttributeName::MaximumMessageSize],
        "1048576"
    );
    assert_eq!(
        described[&QueueAttributeName::ApproximateNumberOfMessages],
        "0"
    );
    let created: u64 = described[&QueueAttributeName::CreatedTimestamp]
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(created <= now && created + 600 > now, "{created} vs {now}");
    assert!(!described.contains_key(&QueueAttributeName::FifoQueue));
    // Only what is asked for.
    let some = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(some.len(), 1, "{some:?}");

    client
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::DelaySeconds, "5")
        .attributes(QueueAttributeName::from("SluiceReplication"), "ASYNC")
        .send()
        .await
        .unwrap();
    let described = attributes(&client, &url).await;
    assert_eq!(described[&QueueAttributeName::DelaySeconds], "5");
    let modified: u64 = described[&QueueAttributeName::LastModifiedTimestamp]
        .parse()
        .unwrap();
    assert!(modified >= created, "{modified} vs {created}");
    assert_eq!(
        described[&QueueAttributeName::from("SluiceReplication")],
        "ASYNC"
    );
    for (name, value, expected) in [
        (
            QueueAttributeName::DelaySeconds,
            "901",
            "InvalidAttributeValue",
        ),
        (
            QueueAttributeName::VisibilityTimeout,
            "soon",
            "InvalidAttributeValue",
        ),
        (
            QueueAttributeName::from("Bogus"),
            "1",
            "InvalidAttributeName",
        ),
        (
            QueueAttributeName::FifoQueue,
            "true",
            "InvalidAttributeName",
        ),
    ] {
        let err = client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(name.clone(), value)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err), expected, "{name:?}={value}");
    }
    // A refused change changed nothing.
    assert_eq!(
        attributes(&client, &url).await[&QueueAttributeName::DelaySeconds],
        "5"
    );

    let tags = |client: Client, url: String| async move {
        client
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .unwrap()
            .tags
            .unwrap_or_default()
    };
    assert_eq!(
        tags(client.clone(), url.clone()).await,
        HashMap::from([("team".to_owned(), "billing".to_owned())])
    );
    client
        .tag_queue()
        .queue_url(&url)
        .tags("env", "prod")
        .send()
        .await
        .unwrap();
    client
        .untag_queue()
        .queue_url(&url)
        .tag_keys("team")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags(client.clone(), url.clone()).await,
        HashMap::from([("env".to_owned(), "prod".to_owned())])
    );

    for body in ["one", "two"] {
        client
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        attributes(&client, &url).await[&QueueAttributeName::ApproximateNumberOfMessagesDelayed],
        "2"
    );
    client.purge_queue().queue_url(&url).send().await.unwrap();
    let after = attributes(&client, &url).await;
    assert_eq!(
        after[&QueueAttributeName::ApproximateNumberOfMessagesDelayed],
        "0"
    );
    // One purge a minute.
    let err = client
        .purge_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AWS.SimpleQueueService.PurgeQueueInProgress");
    assert!(err.into_service_error().is_purge_queue_in_progress());

    client.delete_queue().queue_url(&url).send().await.unwrap();
    let err = client
        .get_queue_url()
        .queue_name("orders")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AWS.SimpleQueueService.NonExistentQueue");
    let err = client
        .delete_queue()
        .queue_url(format!("{endpoint}/123456789012/payments"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        "AWS.SimpleQueueService.NonExistentQueue",
        "another account"
    );
    let err = client
        .delete_queue()
        .queue_url(format!("{endpoint}/payments"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidAddress");
}

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
async fn dead_letters_move_are_listed_by_source_move_back_by_task_and_obey_the_allow_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, endpoint) = open_standalone(dir.path());
    let dlq = create(&client, "dead", &[]).await;
    let policy = format!(
        r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":1}}"#,
        arn("dead")
    );
    let src = create(
        &client,
        "src",
        &[(QueueAttributeName::RedrivePolicy, &policy)],
    )
    .await;
    let described = attributes(&client, &src).await;
    let stored: serde_json::Value =
        serde_json::from_str(&described[&QueueAttributeName::RedrivePolicy]).unwrap();
    assert_eq!(stored["deadLetterTargetArn"], arn("dead"));
    assert_eq!(stored["maxReceiveCount"], 1);

    let sources = client
        .list_dead_letter_source_queues()
        .queue_url(&dlq)
        .send()
        .await
        .unwrap();
    assert_eq!(sources.queue_urls(), [format!("{endpoint}/{ACCOUNT}/src")]);

    for body in ["m1", "m2", "m3"] {
        client
            .send_message()
            .queue_url(&src)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    // Received once and let go: the next receive moves them to the dead-letter queue.
    let first = client
        .receive_message()
        .queue_url(&src)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    assert!(!first.messages().is_empty());
    let mut dead = Vec::new();
    while dead.len() < 3 {
        client
            .receive_message()
            .queue_url(&src)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        let received = client
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .message_system_attribute_names(MessageSystemAttributeName::DeadLetterQueueSourceArn)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in received.messages() {
            assert_eq!(
                m.attributes().unwrap()[&MessageSystemAttributeName::DeadLetterQueueSourceArn],
                arn("src")
            );
            if !dead.contains(&m.body().unwrap().to_owned()) {
                dead.push(m.body().unwrap().to_owned());
            }
        }
    }

    let task = client
        .start_message_move_task()
        .source_arn(arn("dead"))
        .send()
        .await
        .unwrap()
        .task_handle
        .unwrap();
    loop {
        let listed = client
            .list_message_move_tasks()
            .source_arn(arn("dead"))
            .send()
            .await
            .unwrap();
        let latest = &listed.results()[0];
        assert_eq!(latest.source_arn(), Some(arn("dead").as_str()));
        match latest.status() {
            Some("RUNNING") => {
                assert_eq!(latest.task_handle(), Some(task.as_str()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some("COMPLETED") => {
                assert_eq!(latest.approximate_number_of_messages_moved(), 3);
                break;
            }
            other => panic!("task {other:?}: {latest:?}"),
        }
    }
    let counts = attributes(&client, &src).await;
    assert_eq!(
        counts[&QueueAttributeName::ApproximateNumberOfMessages],
        "3"
    );

    // A dead-letter queue's redrive allow policy decides who may name it.
    let allow = format!(
        r#"{{"redrivePermission":"byQueue","sourceQueueArns":["{}"]}}"#,
        arn("src")
    );
    client
        .set_queue_attributes()
        .queue_url(&dlq)
        .attributes(QueueAttributeName::RedriveAllowPolicy, &allow)
        .send()
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(
        &attributes(&client, &dlq).await[&QueueAttributeName::RedriveAllowPolicy],
    )
    .unwrap();
    assert_eq!(stored["redrivePermission"], "byQueue");
    assert_eq!(stored["sourceQueueArns"][0], arn("src"));
    let err = client
        .create_queue()
        .queue_name("other")
        .attributes(QueueAttributeName::RedrivePolicy, &policy)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidAttributeValue");
    let err = client
        .get_queue_url()
        .queue_name("other")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        "AWS.SimpleQueueService.NonExistentQueue",
        "nothing made"
    );
    // The source it allows may name it again; a malformed policy is refused by name.
    client
        .set_queue_attributes()
        .queue_url(&src)
        .attributes(QueueAttributeName::RedrivePolicy, &policy)
        .send()
        .await
        .unwrap();
    for bad in [
        r#"{"redrivePermission":"sometimes"}"#,
        r#"{"redrivePermission":"byQueue","sourceQueueArns":[]}"#,
        r#"{"redrivePermission":"denyAll","sourceQueueArns":["arn:aws:sqs:us-east-1:000000000000:src"]}"#,
    ] {
        let err = client
            .set_queue_attributes()
            .queue_url(&dlq)
            .attributes(QueueAttributeName::RedriveAllowPolicy, bad)
            .send()
            .await
            .unwrap_err();
        assert_eq!(code(&err), "InvalidAttributeValue", "{bad}");
    }
    client
        .set_queue_attributes()
        .queue_url(&dlq)
        .attributes(
            QueueAttributeName::RedriveAllowPolicy,
            r#"{"redrivePermission":"denyAll"}"#,
        )
        .send()
        .await
        .unwrap();
    let err = client
        .set_queue_attributes()
        .queue_url(&src)
        .attributes(QueueAttributeName::RedrivePolicy, &policy)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidAttributeValue");

    let err = client
        .start_message_move_task()
        .source_arn("arn:aws:sqs:eu-west-1:000000000000:dead")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidParameterValue");
    let err = client
        .cancel_message_move_task()
        .task_handle("dead/no-such-task")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "ResourceNotFoundException");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_over_its_rate_limit_answers_request_throttled_and_stores_nothing_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client, _) = open_standalone(dir.path());
    let url = create(
        &client,
        "limited",
        &[(QueueAttributeName::from("SluiceSendMessagesPerSecond"), "1")],
    )
    .await;
    assert_eq!(
        attributes(&client, &url).await[&QueueAttributeName::from("SluiceSendMessagesPerSecond")],
        "1"
    );
    // One message a second: sending faster is refused, with the code the SDKs retry on.
    let mut stored = 0;
    let err = loop {
        match client
            .send_message()
            .queue_url(&url)
            .message_body("x")
            .send()
            .await
        {
            Ok(_) => stored += 1,
            Err(err) => break err,
        }
        assert!(stored < 100, "never throttled");
    };
    assert_eq!(code(&err), "RequestThrottled");
    assert!(err.into_service_error().is_request_throttled());
    let counts = attributes(&client, &url).await;
    let held: u32 = counts[&QueueAttributeName::ApproximateNumberOfMessages]
        .parse()
        .unwrap();
    assert_eq!(held, stored, "the refused send stored nothing");
}

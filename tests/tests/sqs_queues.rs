//! SQS's queue actions judged by the AWS SDK for Rust against `sluice standalone`: queues made,
//! found, listed, described, changed, tagged, purged and deleted; dead-letter queues, their
//! sources, move tasks and redrive allow policies; a queue's rate limit. Each error check names
//! the legacy code the SDKs match on, so a wrong code fails the test.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use sluice_tests::sqs::{arn, attributes, code, create, open_standalone, ACCOUNT};

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

//! The SQS endpoint of the distributed deployment: `sluice dev cluster up`'s two frontends
//! (TLS, authentication) serve one set of queues, so an SQS client may send through one
//! frontend and receive through the other, with the AWS SDK for Rust and the AWS CLI.

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::Value;
use sluice_tests::dev::DevCluster;
use sluice_tests::sqs::{self, code, md5_hex, run_aws_trusting, ACCOUNT};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_clients_use_the_dev_cluster_through_both_frontends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(&dir.path().join("cluster"), &[], &[]).unwrap();
    let ca = cluster.certs().join("ca.pem");
    let (id, secret) = cluster.root_key().unwrap();
    let endpoints = [cluster.sqs_endpoint(0), cluster.sqs_endpoint(1)];
    let clients: Vec<aws_sdk_sqs::Client> = endpoints
        .iter()
        .map(|endpoint| sqs::client_trusting(&ca, endpoint, &id, &secret).unwrap())
        .collect();

    // Made through the first frontend, found through the second.
    let url = clients[0]
        .create_queue()
        .queue_name("orders.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    assert_eq!(url, format!("{}/{ACCOUNT}/orders.fifo", endpoints[0]));
    let found = clients[1]
        .get_queue_url()
        .queue_name("orders.fifo")
        .send()
        .await
        .unwrap();
    let url_1 = found.queue_url.unwrap();
    assert_eq!(url_1, format!("{}/{ACCOUNT}/orders.fifo", endpoints[1]));

    // Sent alternately through both, received in order through the second.
    for i in 0..6 {
        let client = &clients[i % 2];
        client
            .send_message()
            .queue_url(&url)
            .message_body(format!("step {i}"))
            .message_group_id("order-7")
            .send()
            .await
            .unwrap();
    }
    let mut bodies = Vec::new();
    while bodies.len() < 6 {
        let received = clients[1]
            .receive_message()
            .queue_url(&url_1)
            .max_number_of_messages(10)
            .wait_time_seconds(5)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        for message in received.messages() {
            assert_eq!(
                message.md5_of_body().unwrap(),
                md5_hex(message.body().unwrap().as_bytes())
            );
            bodies.push(message.body().unwrap().to_owned());
            clients[0]
                .delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    let expected: Vec<String> = (0..6).map(|i| format!("step {i}")).collect();
    assert_eq!(bodies, expected);

    // A wrong secret is refused by either frontend.
    for endpoint in &endpoints {
        let wrong = sqs::client_trusting(
            &ca,
            endpoint,
            &id,
            "not-the-root-secret-xxxxxxxxxxxxxxxxxxxx",
        )
        .unwrap();
        let err = wrong.list_queues().send().await.unwrap_err();
        assert_eq!(code(&err), "SignatureDoesNotMatch", "{endpoint}");
    }

    // The AWS CLI over TLS, trusting the cluster's CA, through the second frontend.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let aws =
        |args: &[&str]| run_aws_trusting(Some(&ca), &home, &endpoints[1], (&id, &secret), args);
    let (status, out, err) = aws(&["sqs", "create-queue", "--queue-name", "cli"]);
    assert_eq!(status, 0, "{err}");
    let cli_url = serde_json::from_str::<Value>(&out).unwrap()["QueueUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, err) = aws(&[
        "sqs",
        "send-message",
        "--queue-url",
        &cli_url,
        "--message-body",
        "via the cli",
    ]);
    assert_eq!(status, 0, "{err}");
    let received = clients[0]
        .receive_message()
        .queue_url(&cli_url)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages()[0].body(), Some("via the cli"));
    let (status, _, err) = aws(&["sqs", "get-queue-url", "--queue-name", "nope"]);
    assert_ne!(status, 0);
    assert!(
        err.contains("(AWS.SimpleQueueService.NonExistentQueue)"),
        "{err}"
    );

    let stopped = tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped, "the cluster did not exit cleanly");
}

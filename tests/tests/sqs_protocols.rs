//! The SQS endpoint on the wire: SigV4 under Sluice's access keys (every refusal with its code,
//! nothing written by a refused request), the query protocol's XML, and the JSON protocol's
//! error shape, checked byte for byte where the SDKs parse them.

use std::time::{Duration, SystemTime};

use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use sluice_proto::v1 as pb;
use sluice_tests::auth::{auth_env, root_credentials, root_key};
use sluice_tests::sqs::{self, attributes_md5, code, md5_hex, query, raw, TestAttribute, ACCOUNT};
use sluice_tests::ServerProcess;

const XMLNS: &str = "http://queue.amazonaws.com/doc/2012-11-05/";

/// Standalone that requires credentials (the tests' root key).
fn guarded_standalone(dir: &std::path::Path) -> ServerProcess {
    ServerProcess::start_with(dir, |command| {
        command.envs(auth_env());
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigv4_refusals_say_why_and_write_nothing_and_permissions_map_to_sqs_actions() {
    let dir = tempfile::tempdir().unwrap();
    let server = guarded_standalone(dir.path());
    let endpoint = server.sqs_endpoint().unwrap();
    let (root_id, root_secret) = root_key();
    let root = sqs::client(&endpoint, &root_id, &root_secret);
    let url = root
        .create_queue()
        .queue_name("guarded")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    // A wrong secret, an unknown key.
    let wrong = sqs::client(&endpoint, &root_id, "not-the-secret-of-this-key-at-all");
    let err = wrong
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "SignatureDoesNotMatch");
    let unknown = sqs::client(
        &endpoint,
        "SLKAAAAAAAAAAAAAAAAA",
        "some-secret-of-forty-characters-xxxxxxx",
    );
    let err = unknown
        .send_message()
        .queue_url(&url)
        .message_body("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidClientTokenId");

    let send = format!(r#"{{"QueueUrl":"{url}","MessageBody":"x"}}"#);
    let json = [
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-target", "AmazonSQS.SendMessage"),
    ];
    // No signature at all.
    let answer = raw(&endpoint, "/", &json, &send, None, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "MissingAuthenticationToken;Sender"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body["__type"],
        "com.amazonaws.sqs#MissingAuthenticationToken"
    );
    // Signed 20 minutes ago: outside the 15 minutes allowed.
    let stale = SystemTime::now() - Duration::from_secs(20 * 60);
    let answer = raw(
        &endpoint,
        "/",
        &json,
        &send,
        Some((&root_id, &root_secret)),
        stale,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "SignatureDoesNotMatch;Sender"
    );
    assert!(answer.body.contains("Signature expired"), "{}", answer.body);
    // Signed now by AWS's signer: accepted.
    let answer = raw(
        &endpoint,
        "/",
        &json,
        &send,
        Some((&root_id, &root_secret)),
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    // A partial Authorization header.
    let partial = [
        json[0],
        json[1],
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=SLKAAAAAAAAAAAAAAAAA/20261207/us-east-1/sqs/aws4_request",
        ),
        ("x-amz-date", "20261207T000000Z"),
    ];
    let answer = raw(&endpoint, "/", &partial, &send, None, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "IncompleteSignature;Sender"
    );
    // The body signed is the body sent: one changed on the way is refused.
    let answer = raw(
        &endpoint,
        "/",
        &[json[0], json[1], ("x-amz-content-sha256", &"0".repeat(64))],
        &send,
        Some((&root_id, &root_secret)),
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 403, "{answer:?}");

    // Only the one signed send was stored.
    assert_eq!(
        sqs::attributes(&root, &url).await[&QueueAttributeName::ApproximateNumberOfMessages],
        "1"
    );

    // A principal allowed to receive only: SQS's AccessDenied for a send, and nothing stored.
    let channel = server.channel();
    let mut identity = sluice_client::identity_client(channel, root_credentials());
    identity
        .create_principal(pb::CreatePrincipalRequest {
            name: "reader".into(),
            admin: false,
        })
        .await
        .unwrap();
    identity
        .grant(pb::GrantRequest {
            principal: "reader".into(),
            actions: vec!["receive".into()],
            queues: "guarded".into(),
        })
        .await
        .unwrap();
    let key = identity
        .create_access_key(pb::CreateAccessKeyRequest {
            principal: "reader".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reader = sqs::client(&endpoint, &key.key.unwrap().id, &key.secret);
    let err = reader
        .send_message()
        .queue_url(&url)
        .message_body("not allowed")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AccessDenied");
    let received = reader
        .receive_message()
        .queue_url(&url)
        .message_system_attribute_names(MessageSystemAttributeName::SenderId)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 1);
    // The root key's send: its sender is the principal that signed it.
    assert_eq!(
        received.messages()[0].attributes().unwrap()[&MessageSystemAttributeName::SenderId],
        "root"
    );
    let err = reader
        .create_queue()
        .queue_name("mine")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "AccessDenied");
    // It lists only what it may touch.
    let listed = reader.list_queues().send().await.unwrap();
    assert_eq!(listed.queue_urls(), std::slice::from_ref(&url));
}

/// The text of element `name` in `xml`, the first one.
fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
        + open.len();
    let end = xml[start..].find(&format!("</{name}>")).unwrap() + start;
    &xml[start..end]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_protocol_answers_in_sqs_xml_and_takes_the_queue_from_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let key = Some(("AKIDANYTHING", "any-secret"));

    let created = query(
        &endpoint,
        "/",
        &[
            ("Action", "CreateQueue"),
            ("Version", "2012-11-05"),
            ("QueueName", "legacy"),
            ("Attribute.1.Name", "VisibilityTimeout"),
            ("Attribute.1.Value", "40"),
            ("Tag.1.Key", "team"),
            ("Tag.1.Value", "ops"),
        ],
        key,
    )
    .await
    .unwrap();
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(created.headers["content-type"], "text/xml");
    let url = format!("{endpoint}/{ACCOUNT}/legacy");
    assert!(
        created.body.contains(&format!(
            "<CreateQueueResponse xmlns=\"{XMLNS}\"><CreateQueueResult><QueueUrl>{url}</QueueUrl></CreateQueueResult>"
        )),
        "{}",
        created.body
    );
    let request_id = created.headers["x-amzn-requestid"].to_str().unwrap();
    assert_eq!(element(&created.body, "RequestId"), request_id);

    // Posted to the queue's path, without QueueUrl, as the Java SDK v1 does.
    let path = format!("/{ACCOUNT}/legacy");
    let sent = query(
        &endpoint,
        &path,
        &[
            ("Action", "SendMessage"),
            ("MessageBody", "a <b> & \"c\"\r\n"),
            ("MessageAttribute.1.Name", "colour"),
            ("MessageAttribute.1.Value.DataType", "String"),
            ("MessageAttribute.1.Value.StringValue", "red"),
            ("MessageSystemAttribute.1.Name", "AWSTraceHeader"),
            ("MessageSystemAttribute.1.Value.DataType", "String"),
            ("MessageSystemAttribute.1.Value.StringValue", "Root=1-abc"),
        ],
        key,
    )
    .await
    .unwrap();
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(
        element(&sent.body, "MD5OfMessageSystemAttributes"),
        attributes_md5(&[TestAttribute {
            name: "AWSTraceHeader",
            data_type: "String",
            string: Some("Root=1-abc"),
            binary: None,
        }])
    );
    assert_eq!(
        element(&sent.body, "MD5OfMessageBody"),
        md5_hex("a <b> & \"c\"\r\n".as_bytes())
    );
    assert!(!element(&sent.body, "MessageId").is_empty());

    let received = query(
        &endpoint,
        &path,
        &[
            ("Action", "ReceiveMessage"),
            ("AttributeName.1", "All"),
            ("MessageAttributeName.1", "All"),
        ],
        key,
    )
    .await
    .unwrap();
    let body = &received.body;
    assert!(body.contains("<ReceiveMessageResult><Message>"), "{body}");
    // The carriage return is escaped, so an XML parser keeps it and the MD5 holds.
    assert_eq!(
        element(body, "Body"),
        "a &lt;b&gt; &amp; &quot;c&quot;&#xD;\n"
    );
    assert!(
        body.contains(
            "<Attribute><Name>ApproximateReceiveCount</Name><Value>1</Value></Attribute>"
        ),
        "{body}"
    );
    assert!(
        body.contains(
            "<Attribute><Name>AWSTraceHeader</Name><Value>Root=1-abc</Value></Attribute>"
        ),
        "{body}"
    );
    // Let in without credentials (any key, on an open standalone): the sender is the address.
    assert!(
        body.contains("<Attribute><Name>SenderId</Name><Value>127.0.0.1</Value></Attribute>"),
        "{body}"
    );
    assert!(body.contains("<MessageAttribute><Name>colour</Name><Value><DataType>String</DataType><StringValue>red</StringValue></Value></MessageAttribute>"), "{body}");
    let handle = element(body, "ReceiptHandle").to_owned();

    let attributes = query(
        &endpoint,
        "/",
        &[
            ("Action", "GetQueueAttributes"),
            ("QueueUrl", &url),
            ("AttributeName.1", "QueueArn"),
            ("AttributeName.2", "VisibilityTimeout"),
        ],
        key,
    )
    .await
    .unwrap();
    assert!(attributes.body.contains(&format!(
        "<Attribute><Name>QueueArn</Name><Value>arn:aws:sqs:us-east-1:{ACCOUNT}:legacy</Value></Attribute>"
    )), "{}", attributes.body);
    assert!(attributes
        .body
        .contains("<Attribute><Name>VisibilityTimeout</Name><Value>40</Value></Attribute>"));
    let tags = query(&endpoint, &path, &[("Action", "ListQueueTags")], key)
        .await
        .unwrap();
    assert!(
        tags.body
            .contains("<Tag><Key>team</Key><Value>ops</Value></Tag>"),
        "{}",
        tags.body
    );

    let deleted = query(
        &endpoint,
        &path,
        &[
            ("Action", "DeleteMessageBatch"),
            ("DeleteMessageBatchRequestEntry.1.Id", "ok"),
            ("DeleteMessageBatchRequestEntry.1.ReceiptHandle", &handle),
            ("DeleteMessageBatchRequestEntry.2.Id", "junk"),
            ("DeleteMessageBatchRequestEntry.2.ReceiptHandle", "junk"),
        ],
        key,
    )
    .await
    .unwrap();
    assert!(
        deleted
            .body
            .contains("<DeleteMessageBatchResultEntry><Id>ok</Id></DeleteMessageBatchResultEntry>"),
        "{}",
        deleted.body
    );
    assert!(
        deleted
            .body
            .contains("<BatchResultErrorEntry><Code>ReceiptHandleIsInvalid</Code>"),
        "{}",
        deleted.body
    );

    let listed = query(&endpoint, "/", &[("Action", "ListQueues")], key)
        .await
        .unwrap();
    assert!(
        listed.body.contains(&format!(
            "<ListQueuesResult><QueueUrl>{url}</QueueUrl></ListQueuesResult>"
        )),
        "{}",
        listed.body
    );

    // Errors: the ErrorResponse document with the legacy code.
    let missing = query(
        &endpoint,
        "/",
        &[("Action", "GetQueueUrl"), ("QueueName", "nope")],
        key,
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains(&format!(
        "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>"
    )), "{}", missing.body);
    let unknown = query(&endpoint, "/", &[("Action", "FlyAway")], key)
        .await
        .unwrap();
    assert_eq!(element(&unknown.body, "Code"), "InvalidAction");
    let no_action = query(&endpoint, "/", &[("QueueName", "x")], key)
        .await
        .unwrap();
    assert_eq!(element(&no_action.body, "Code"), "MissingParameter");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_protocol_errors_carry_the_shape_the_legacy_code_and_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let key = Some(("AKIDANYTHING", "any-secret"));
    let call = |target: &'static str, body: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            raw(
                &endpoint,
                "/",
                &[
                    ("content-type", "application/x-amz-json-1.0"),
                    ("x-amz-target", target),
                ],
                body,
                key,
                SystemTime::now(),
            )
            .await
            .unwrap()
        }
    };
    let answer = call("AmazonSQS.GetQueueUrl", r#"{"QueueName":"nope"}"#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.headers["content-type"], "application/x-amz-json-1.0");
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "AWS.SimpleQueueService.NonExistentQueue;Sender"
    );
    assert!(!answer.headers["x-amzn-requestid"].is_empty());
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    assert!(body["message"].as_str().unwrap().contains("does not exist"));

    let answer = call("AmazonSQS.GetQueueUrl", r#"{"QueueName": 7}"#).await;
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "InvalidParameterValue;Sender"
    );
    let answer = call("AmazonSQS.GetQueueUrl", "{not json").await;
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "InvalidParameterValue;Sender"
    );
    let answer = call("AmazonSQS.GetQueueUrl", "{}").await;
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "MissingParameter;Sender"
    );
    let answer = call("AmazonSQS.AddPermission", r#"{"QueueUrl":"x"}"#).await;
    assert_eq!(
        answer.headers["x-amzn-query-error"],
        "AWS.SimpleQueueService.UnsupportedOperation;Sender"
    );
    let answer = call("AmazonSQS.CreateQueue", r#"{"QueueName":"ok"}"#).await;
    assert_eq!(answer.status, 200);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["QueueUrl"], format!("{endpoint}/{ACCOUNT}/ok"));
    assert!(!answer.headers["x-amzn-requestid"].is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_bad_signatures_from_one_address_get_throttling_exception_which_sdks_retry() {
    let dir = tempfile::tempdir().unwrap();
    let server = guarded_standalone(dir.path());
    let endpoint = server.sqs_endpoint().unwrap();
    let (root_id, root_secret) = root_key();
    let wrong = sqs::client(&endpoint, &root_id, "not-the-secret-of-this-key-at-all");
    // The budget is 20 failures per address, one earned back every 3 s: the first refusals
    // say why, then the address is told to slow down.
    let mut codes = Vec::new();
    while codes.last().map(String::as_str) != Some("ThrottlingException") {
        assert!(codes.len() < 40, "never throttled: {codes:?}");
        let err = wrong.list_queues().send().await.unwrap_err();
        codes.push(code(&err));
    }
    let refusals = codes.len() - 1;
    assert!((20..=25).contains(&refusals), "{codes:?}");
    assert!(
        codes[..refusals]
            .iter()
            .all(|c| c == "SignatureDoesNotMatch"),
        "{codes:?}"
    );
    // While it is blocked, the right key from the same address is throttled too, and the SDK's
    // standard retry strategy takes the answer for throttling: it tries again, here twice (the
    // server counts three requests).
    let root = sqs::client(&endpoint, &root_id, &root_secret);
    let retrying = aws_sdk_sqs::Client::from_conf(
        root.config()
            .to_builder()
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(10)),
            )
            .build(),
    );
    let requests = || server.metric_sum("sluice_sqs_requests_total").unwrap();
    let before = requests();
    let err = retrying.list_queues().send().await.unwrap_err();
    assert_eq!(code(&err), "ThrottlingException");
    assert_eq!(requests() - before, 3.0);
    let raw = err.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(
        raw.headers().get("x-amzn-query-error"),
        Some("ThrottlingException;Sender")
    );
}

//! Python's SQS clients (from PyPI, installed by `scripts/test.sh`) against the SQS endpoint of
//! `sluice standalone`: the AWS CLI (JSON protocol) makes a queue, sends, receives and deletes
//! a message and reports errors; boto3 1.26 does the same and more over the query protocol.

use serde_json::Value;
use sluice_tests::auth::{auth_env, root_key};
use sluice_tests::sqs::{md5_hex, query_python, run_aws, ACCOUNT};
use sluice_tests::ServerProcess;

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}

#[test]
fn the_aws_cli_creates_sends_receives_and_deletes_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(&dir.path().join("data"), |command| {
        command.envs(auth_env());
    })
    .unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let (id, secret) = root_key();
    let key = (id.as_str(), secret.as_str());
    let aws = |args: &[&str]| run_aws(dir.path(), &endpoint, key, args);

    let (status, out, err) = aws(&["sqs", "create-queue", "--queue-name", "cli"]);
    assert_eq!(status, 0, "{err}");
    let url = json(&out)["QueueUrl"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{endpoint}/{ACCOUNT}/cli"));

    let (status, out, err) = aws(&[
        "sqs",
        "send-message",
        "--queue-url",
        &url,
        "--message-body",
        "hello from the cli",
        "--message-attributes",
        r#"{"colour":{"DataType":"String","StringValue":"red"}}"#,
    ]);
    assert_eq!(status, 0, "{err}");
    let sent = json(&out);
    assert_eq!(sent["MD5OfMessageBody"], md5_hex(b"hello from the cli"));

    let (status, out, err) = aws(&[
        "sqs",
        "receive-message",
        "--queue-url",
        &url,
        "--attribute-names",
        "All",
        "--message-attribute-names",
        "All",
        "--wait-time-seconds",
        "5",
    ]);
    assert_eq!(status, 0, "{err}");
    let received = json(&out);
    let message = &received["Messages"][0];
    assert_eq!(message["Body"], "hello from the cli");
    assert_eq!(message["MessageId"], sent["MessageId"]);
    assert_eq!(
        message["MD5OfMessageAttributes"],
        sent["MD5OfMessageAttributes"]
    );
    assert_eq!(message["MessageAttributes"]["colour"]["StringValue"], "red");
    assert_eq!(message["Attributes"]["ApproximateReceiveCount"], "1");
    let handle = message["ReceiptHandle"].as_str().unwrap();

    let (status, _, err) = aws(&[
        "sqs",
        "delete-message",
        "--queue-url",
        &url,
        "--receipt-handle",
        handle,
    ]);
    assert_eq!(status, 0, "{err}");
    let (status, out, err) = aws(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &url,
        "--attribute-names",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    ]);
    assert_eq!(status, 0, "{err}");
    let attributes = &json(&out)["Attributes"];
    assert_eq!(attributes["ApproximateNumberOfMessages"], "0");
    assert_eq!(attributes["ApproximateNumberOfMessagesNotVisible"], "0");

    // Errors as the CLI reports them: the legacy code, and a failing exit status.
    let (status, _, err) = aws(&["sqs", "get-queue-url", "--queue-name", "nope"]);
    assert_ne!(status, 0);
    assert!(
        err.contains("(AWS.SimpleQueueService.NonExistentQueue)"),
        "{err}"
    );
    let (status, _, err) = run_aws(
        dir.path(),
        &endpoint,
        (id.as_str(), "a-wrong-secret-for-the-root-key-xxxxxxxxx"),
        &["sqs", "list-queues"],
    );
    assert_ne!(status, 0);
    assert!(err.contains("(SignatureDoesNotMatch)"), "{err}");
    let (status, _, err) = aws(&[
        "sqs",
        "change-message-visibility",
        "--queue-url",
        &url,
        "--receipt-handle",
        handle,
        "--visibility-timeout",
        "99999",
    ]);
    assert_ne!(status, 0);
    assert!(err.contains("(InvalidParameterValue)"), "{err}");
}

#[test]
fn boto3_of_the_query_protocol_manages_queues_and_messages_with_sqs_md5s_and_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), |command| {
        command.envs(auth_env());
    })
    .unwrap();
    let endpoint = server.sqs_endpoint().unwrap();
    let (id, secret) = root_key();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/boto3_query.py");
    let output = std::process::Command::new(query_python())
        .arg(script)
        .args([&endpoint, &id, &secret])
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("the script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("(query): every check passed"), "{stdout}");
}

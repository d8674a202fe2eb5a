"""SQS's query protocol as a real SDK sends it: boto3 1.26 on botocore 1.29, the last series
before botocore moved SQS to the JSON protocol, which stacks pinned to it (Celery's kombu among
them) still run. Form-encoded requests, XML answers, `<ErrorResponse>` errors.

Run by tests/tests/sqs_cli.rs: `python boto3_query.py ENDPOINT KEY SECRET`. Exits non-zero
naming the first check that fails; boto3 checks no MD5, so this script does.
"""

import hashlib
import struct
import sys

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, key, secret = sys.argv[1:4]

protocol = botocore.session.get_session().get_service_model("sqs").metadata["protocol"]
assert protocol == "query", f"botocore {botocore.__version__} speaks {protocol}, not query"

sqs = boto3.client(
    "sqs",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id=key,
    aws_secret_access_key=secret,
    config=Config(retries={"max_attempts": 1}),
)


def md5_of_attributes(attributes):
    """MD5OfMessageAttributes by SQS's published algorithm."""

    def prefixed(value):
        return struct.pack(">I", len(value)) + value

    data = b""
    for name in sorted(attributes):
        value = attributes[name]
        data += prefixed(name.encode()) + prefixed(value["DataType"].encode())
        if "StringValue" in value:
            data += b"\x01" + prefixed(value["StringValue"].encode())
        else:
            data += b"\x02" + prefixed(value["BinaryValue"])
    return hashlib.md5(data).hexdigest()


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


def error_code(call, **kwargs):
    try:
        call(**kwargs)
    except ClientError as err:
        return err.response["Error"]["Code"]
    raise AssertionError(f"{call.__name__} succeeded")


url = sqs.create_queue(
    QueueName="legacy-boto",
    Attributes={"VisibilityTimeout": "40"},
    tags={"team": "payments"},
)["QueueUrl"]
assert url == f"{endpoint}/000000000000/legacy-boto", url
attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
assert attributes["VisibilityTimeout"] == "40", attributes
assert attributes["QueueArn"] == "arn:aws:sqs:us-east-1:000000000000:legacy-boto", attributes
assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "payments"}
assert sqs.list_queues(QueueNamePrefix="legacy")["QueueUrls"] == [url]
# An empty queue: the answer has its result element, with no message in it.
assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)

body = "caf\u00e9 <order> & \"7\"\r\n\tline two \U0001f600"
message_attributes = {
    "colour": {"DataType": "String", "StringValue": "red"},
    "count": {"DataType": "Number", "StringValue": "42"},
    "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xff"},
}
trace = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-legacy;Sampled=1"}}
sent = sqs.send_message(
    QueueUrl=url,
    MessageBody=body,
    MessageAttributes=message_attributes,
    MessageSystemAttributes=trace,
)
assert sent["MD5OfMessageBody"] == md5(body), sent
assert sent["MD5OfMessageAttributes"] == md5_of_attributes(message_attributes), sent
assert sent["MD5OfMessageSystemAttributes"] == md5_of_attributes(trace), sent

batch = sqs.send_message_batch(
    QueueUrl=url,
    Entries=[
        {"Id": "a", "MessageBody": "first"},
        {"Id": "bad", "MessageBody": "bell \u0007"},
        {"Id": "b", "MessageBody": "second"},
    ],
)
assert sorted(e["Id"] for e in batch["Successful"]) == ["a", "b"], batch
for entry in batch["Successful"]:
    expected = "first" if entry["Id"] == "a" else "second"
    assert entry["MD5OfMessageBody"] == md5(expected), batch
[failed] = batch["Failed"]
assert (failed["Id"], failed["Code"], failed["SenderFault"]) == (
    "bad",
    "InvalidMessageContents",
    True,
), batch
assert error_code(sqs.send_message_batch, QueueUrl=url, Entries=[]) == (
    "AWS.SimpleQueueService.EmptyBatchRequest"
)

received = {}
for _ in range(20):
    answer = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        AttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    for message in answer.get("Messages", []):
        received[message["Body"]] = message
    if len(received) == 3:
        break
assert sorted(received) == sorted([body, "first", "second"]), list(received)
message = received[body]
assert message["MD5OfBody"] == md5(body), message
assert message["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\x01\xff", message
assert message["MD5OfMessageAttributes"] == md5_of_attributes(message_attributes), message
assert message["Attributes"]["AWSTraceHeader"] == "Root=1-legacy;Sampled=1", message
assert message["Attributes"]["ApproximateReceiveCount"] == "1", message
assert "MessageAttributes" not in received["first"], received["first"]

handles = [m["ReceiptHandle"] for m in received.values()]
sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handles[0], VisibilityTimeout=60)
deleted = sqs.delete_message_batch(
    QueueUrl=url,
    Entries=[{"Id": f"d{i}", "ReceiptHandle": h} for i, h in enumerate(handles)],
)
assert len(deleted["Successful"]) == 3 and not deleted.get("Failed"), deleted
assert (
    error_code(
        sqs.change_message_visibility,
        QueueUrl=url,
        ReceiptHandle="garbled",
        VisibilityTimeout=10,
    )
    == "ReceiptHandleIsInvalid"
)
assert (
    error_code(sqs.get_queue_url, QueueName="no-such-queue")
    == "AWS.SimpleQueueService.NonExistentQueue"
)
sqs.delete_queue(QueueUrl=url)
assert "QueueUrls" not in sqs.list_queues(QueueNamePrefix="legacy")
print(f"botocore {botocore.__version__} ({protocol}): every check passed")

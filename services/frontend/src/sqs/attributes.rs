//! SQS's queue attributes and Sluice's: each name, how its value reads and is checked, and the
//! errors about them in SQS's words (`InvalidAttributeName`, `InvalidAttributeValue`).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use sluice_api::Error;
use sluice_proto::v1 as pb;

use super::error::{Code, SqsError};
use super::Sqs;

/// Queue attributes by their SQS names. `Sluice*` are Sluice's own, for what SQS has no
/// attribute for.
const DELAY: &str = "DelaySeconds";
const MAX_SIZE: &str = "MaximumMessageSize";
const RETENTION: &str = "MessageRetentionPeriod";
const WAIT: &str = "ReceiveMessageWaitTimeSeconds";
const VISIBILITY: &str = "VisibilityTimeout";
const REDRIVE: &str = "RedrivePolicy";
const REDRIVE_ALLOW: &str = "RedriveAllowPolicy";
const FIFO: &str = "FifoQueue";
const CONTENT_DEDUP: &str = "ContentBasedDeduplication";
const SSE: &str = "SqsManagedSseEnabled";
const DEDUP_SCOPE: &str = "DeduplicationScope";
const THROUGHPUT: &str = "FifoThroughputLimit";
const REPLICATION: &str = "SluiceReplication";
const SEND_RATE: &str = "SluiceSendMessagesPerSecond";
const SEND_BYTES_RATE: &str = "SluiceSendBytesPerSecond";
const RECEIVE_RATE: &str = "SluiceReceivesPerSecond";
const DELETE_RATE: &str = "SluiceDeletesPerSecond";

/// Every attribute GetQueueAttributes knows, for `All` and to refuse unknown names.
pub(super) const READABLE: &[&str] = &[
    "All",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "QueueArn",
    DELAY,
    MAX_SIZE,
    RETENTION,
    WAIT,
    VISIBILITY,
    REDRIVE,
    REDRIVE_ALLOW,
    FIFO,
    CONTENT_DEDUP,
    SSE,
    DEDUP_SCOPE,
    THROUGHPUT,
    REPLICATION,
    SEND_RATE,
    SEND_BYTES_RATE,
    RECEIVE_RATE,
    DELETE_RATE,
];

/// The fields of Sluice's errors about attributes, and the SQS names a client knows them by.
const FIELDS: &[(&str, &str)] = &[
    ("attributes.visibility_timeout_seconds", VISIBILITY),
    ("attributes.message_retention_seconds", RETENTION),
    ("attributes.delay_seconds", DELAY),
    ("attributes.max_message_bytes", MAX_SIZE),
    ("attributes.receive_wait_time_seconds", WAIT),
    ("attributes.redrive_policy.dead_letter_queue", REDRIVE),
    ("attributes.redrive_policy.max_receive_count", REDRIVE),
    ("attributes.redrive_policy", REDRIVE),
    ("attributes.redrive_allow_policy", REDRIVE_ALLOW),
    ("attributes.content_based_deduplication", CONTENT_DEDUP),
    ("attributes.fifo", FIFO),
    ("attributes.rate_limits", "Sluice*PerSecond"),
    ("attributes", "Attributes"),
];

/// An error about a queue's attributes, in SQS's words.
pub(super) fn attribute_error(err: Error) -> SqsError {
    match err {
        Error::InvalidArgument { field, reason } if field.starts_with("attributes") => {
            let name = FIELDS
                .iter()
                .find(|(ours, _)| field.starts_with(ours))
                .map_or(field.as_str(), |(_, sqs)| sqs);
            SqsError::new(
                Code::InvalidAttributeValue,
                format!("Invalid value for the parameter {name}: {reason}"),
            )
        }
        Error::NotFound { what } if what.starts_with("dead-letter queue") => SqsError::new(
            Code::InvalidAttributeValue,
            format!("Invalid value for the parameter {REDRIVE}: {what} does not exist"),
        ),
        other => SqsError::from(other),
    }
}

fn invalid_value(name: &str, reason: impl std::fmt::Display) -> SqsError {
    SqsError::new(
        Code::InvalidAttributeValue,
        format!("Invalid value for the parameter {name}: {reason}"),
    )
}

fn number(name: &str, value: &str) -> Result<u32, SqsError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid_value(name, format!("{value:?} is not a whole number")))
}

fn boolean(name: &str, value: &str) -> Result<bool, SqsError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid_value(name, "must be true or false")),
    }
}

impl Sqs {
    /// SQS's attributes as Sluice's; `creating` allows those fixed at creation.
    pub(super) fn to_attributes(
        &self,
        attributes: &HashMap<String, String>,
        creating: bool,
    ) -> Result<pb::QueueAttributes, SqsError> {
        let mut out = pb::QueueAttributes::default();
        let mut rates = pb::RateLimits::default();
        for (name, value) in attributes {
            let name = name.as_str();
            match name {
                DELAY => out.delay_seconds = Some(number(name, value)?),
                MAX_SIZE => out.max_message_bytes = Some(number(name, value)?),
                RETENTION => out.message_retention_seconds = Some(number(name, value)?),
                WAIT => out.receive_wait_time_seconds = Some(number(name, value)?),
                VISIBILITY => out.visibility_timeout_seconds = Some(number(name, value)?),
                REDRIVE => out.redrive_policy = Some(self.redrive_policy(value)?),
                REDRIVE_ALLOW => out.redrive_allow_policy = Some(self.redrive_allow(value)?),
                FIFO if creating => out.fifo = boolean(name, value)?,
                FIFO => {
                    return Err(SqsError::new(
                        Code::InvalidAttributeName,
                        "FifoQueue can only be set when the queue is created.",
                    ))
                }
                CONTENT_DEDUP => out.content_based_deduplication = boolean(name, value)?,
                SSE => out.server_side_encryption = Some(boolean(name, value)?),
                DEDUP_SCOPE if value == "queue" => {}
                DEDUP_SCOPE => {
                    return Err(invalid_value(
                        name,
                        "Sluice deduplicates across the whole queue: the only value is queue",
                    ))
                }
                // Sluice puts no per-queue or per-group throughput cap on FIFO queues, so both
                // of SQS's settings hold.
                THROUGHPUT if matches!(value.as_str(), "perQueue" | "perMessageGroupId") => {}
                THROUGHPUT => {
                    return Err(invalid_value(name, "must be perQueue or perMessageGroupId"))
                }
                REPLICATION => {
                    out.replication = match value.as_str() {
                        "SYNC" => pb::Replication::Sync,
                        "ASYNC" => pb::Replication::Async,
                        _ => return Err(invalid_value(name, "must be SYNC or ASYNC")),
                    } as i32
                }
                SEND_RATE => rates.send_messages_per_second = Some(number(name, value)?),
                SEND_BYTES_RATE => rates.send_bytes_per_second = Some(number(name, value)?),
                RECEIVE_RATE => rates.receives_per_second = Some(number(name, value)?),
                DELETE_RATE => rates.deletes_per_second = Some(number(name, value)?),
                "Policy" => {
                    return Err(SqsError::new(
                        Code::InvalidAttributeName,
                        "Policy: Sluice grants rights to its own principals, not by IAM \
                         policies; use `sluice admin grant` (README, \"Security\").",
                    ))
                }
                "KmsMasterKeyId" | "KmsDataKeyReusePeriodSeconds" => {
                    return Err(SqsError::new(
                        Code::InvalidAttributeName,
                        format!(
                            "{name}: Sluice encrypts with keys of its own, not KMS keys; set \
                             SqsManagedSseEnabled instead."
                        ),
                    ))
                }
                _ => {
                    return Err(SqsError::new(
                        Code::InvalidAttributeName,
                        format!("Unknown Attribute {name}."),
                    ))
                }
            }
        }
        if rates != pb::RateLimits::default() {
            out.rate_limits = Some(rates);
        }
        Ok(out)
    }

    /// `RedrivePolicy`'s JSON: `{"deadLetterTargetArn": ..., "maxReceiveCount": ...}`; empty
    /// removes the policy.
    fn redrive_policy(&self, value: &str) -> Result<pb::RedrivePolicy, SqsError> {
        if value.trim().is_empty() {
            return Ok(pb::RedrivePolicy::default());
        }
        let policy: Value = serde_json::from_str(value)
            .map_err(|err| invalid_value(REDRIVE, format!("not valid JSON: {err}")))?;
        let arn = policy
            .get("deadLetterTargetArn")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_value(REDRIVE, "deadLetterTargetArn is missing"))?;
        let count = match policy.get("maxReceiveCount") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid_value(REDRIVE, "maxReceiveCount must be a whole number"))?;
        let dlq = self
            .arn_queue("deadLetterTargetArn", arn)
            .map_err(|err| invalid_value(REDRIVE, err.message))?;
        Ok(pb::RedrivePolicy {
            dead_letter_queue: dlq,
            max_receive_count: count,
        })
    }

    /// `RedriveAllowPolicy`'s JSON: `{"redrivePermission": "allowAll" | "denyAll" | "byQueue",
    /// "sourceQueueArns": [...]}`.
    fn redrive_allow(&self, value: &str) -> Result<pb::RedriveAllowPolicy, SqsError> {
        let policy: Value = serde_json::from_str(value)
            .map_err(|err| invalid_value(REDRIVE_ALLOW, format!("not valid JSON: {err}")))?;
        let permission = match policy.get("redrivePermission").and_then(Value::as_str) {
            Some("allowAll") => pb::RedrivePermission::AllowAll,
            Some("denyAll") => pb::RedrivePermission::DenyAll,
            Some("byQueue") => pb::RedrivePermission::ByQueue,
            _ => {
                return Err(invalid_value(
                    REDRIVE_ALLOW,
                    "redrivePermission must be allowAll, denyAll or byQueue",
                ))
            }
        };
        let arns = match policy.get("sourceQueueArns") {
            None => Vec::new(),
            Some(Value::Array(arns)) => arns.clone(),
            Some(_) => {
                return Err(invalid_value(
                    REDRIVE_ALLOW,
                    "sourceQueueArns must be a list of queue ARNs",
                ))
            }
        };
        let source_queues = arns
            .iter()
            .map(|arn| {
                let arn = arn.as_str().unwrap_or_default();
                self.arn_queue("sourceQueueArns", arn)
                    .map_err(|err| invalid_value(REDRIVE_ALLOW, err.message))
            })
            .collect::<Result<_, _>>()?;
        Ok(pb::RedriveAllowPolicy {
            permission: permission as i32,
            source_queues,
        })
    }

    /// A queue's attributes by their SQS names, every one it has.
    pub(super) fn queue_attributes(&self, queue: &pb::Queue) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        let attributes = queue.attributes.clone().unwrap_or_default();
        let counts = queue.counts.unwrap_or_default();
        out.insert("ApproximateNumberOfMessages", counts.visible.to_string());
        out.insert(
            "ApproximateNumberOfMessagesNotVisible",
            counts.in_flight.to_string(),
        );
        out.insert(
            "ApproximateNumberOfMessagesDelayed",
            counts.delayed.to_string(),
        );
        out.insert("CreatedTimestamp", (queue.created_at_ms / 1000).to_string());
        out.insert(
            "LastModifiedTimestamp",
            (queue.modified_at_ms / 1000).to_string(),
        );
        out.insert("QueueArn", self.queue_arn(&queue.name));
        let numbers = [
            (DELAY, attributes.delay_seconds),
            (MAX_SIZE, attributes.max_message_bytes),
            (RETENTION, attributes.message_retention_seconds),
            (WAIT, attributes.receive_wait_time_seconds),
            (VISIBILITY, attributes.visibility_timeout_seconds),
        ];
        for (name, value) in numbers {
            out.insert(name, value.unwrap_or_default().to_string());
        }
        if let Some(policy) = attributes
            .redrive_policy
            .as_ref()
            .filter(|p| !p.dead_letter_queue.is_empty())
        {
            out.insert(
                REDRIVE,
                json!({
                    "deadLetterTargetArn": self.queue_arn(&policy.dead_letter_queue),
                    "maxReceiveCount": policy.max_receive_count,
                })
                .to_string(),
            );
        }
        if let Some(allow) = attributes
            .redrive_allow_policy
            .as_ref()
            .filter(|a| a.permission() != pb::RedrivePermission::AllowAll)
        {
            let permission = match allow.permission() {
                pb::RedrivePermission::DenyAll => "denyAll",
                _ => "byQueue",
            };
            let arns: Vec<String> = allow
                .source_queues
                .iter()
                .map(|q| self.queue_arn(q))
                .collect();
            let mut policy = json!({ "redrivePermission": permission });
            if !arns.is_empty() {
                policy["sourceQueueArns"] = json!(arns);
            }
            out.insert(REDRIVE_ALLOW, policy.to_string());
        }
        out.insert(
            SSE,
            attributes
                .server_side_encryption
                .unwrap_or_default()
                .to_string(),
        );
        if attributes.fifo {
            out.insert(FIFO, "true".into());
            out.insert(
                CONTENT_DEDUP,
                attributes.content_based_deduplication.to_string(),
            );
            out.insert(DEDUP_SCOPE, "queue".into());
            out.insert(THROUGHPUT, "perQueue".into());
        }
        let replication = if attributes.replication == pb::Replication::Async as i32 {
            "ASYNC"
        } else {
            "SYNC"
        };
        out.insert(REPLICATION, replication.into());
        let own = attributes.rate_limits.unwrap_or_default();
        let rates = [
            (SEND_RATE, own.send_messages_per_second),
            (SEND_BYTES_RATE, own.send_bytes_per_second),
            (RECEIVE_RATE, own.receives_per_second),
            (DELETE_RATE, own.deletes_per_second),
        ];
        for (name, rate) in rates {
            if let Some(rate) = rate {
                out.insert(name, rate.to_string());
            }
        }
        out
    }
}

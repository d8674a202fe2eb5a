//! SQS's queue actions: create, find, list, delete, attributes, purge, tags, dead-letter sources
//! and message move tasks, each served by the `QueueService` (or, where SQS has an action gRPC
//! lacks, by the service's own code under the same checks).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_api::identity::Action;
use sluice_api::Error;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;

use super::error::{Code, SqsError};
use super::{ranged, required, Ctx, Sqs};
use crate::service::{Guarded, Needs, QueueName};

/// SQS allows one purge of a queue a minute.
const PURGE_REST: std::time::Duration = std::time::Duration::from_secs(60);

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
const READABLE: &[&str] = &[
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
fn attribute_error(err: Error) -> SqsError {
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateQueueInput {
    queue_name: Option<String>,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default, rename = "tags")]
    tags: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct QueueUrlInput {
    queue_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetQueueUrlInput {
    queue_name: Option<String>,
    #[serde(rename = "QueueOwnerAWSAccountId")]
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListQueuesInput {
    #[serde(default)]
    queue_name_prefix: String,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct GetAttributesInput {
    queue_url: Option<String>,
    #[serde(default)]
    attribute_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SetAttributesInput {
    queue_url: Option<String>,
    attributes: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TagInput {
    queue_url: Option<String>,
    tags: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UntagInput {
    queue_url: Option<String>,
    tag_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeadLetterSourcesInput {
    queue_url: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StartMoveInput {
    source_arn: Option<String>,
    destination_arn: Option<String>,
    max_number_of_messages_per_second: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListMovesInput {
    source_arn: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CancelMoveInput {
    task_handle: Option<String>,
}

/// Tagging changes a queue as setting its attributes does; reading tags needs any right on it.
struct Tagging<'a> {
    queue: &'a str,
    action: Option<Action>,
}

impl QueueName for Tagging<'_> {
    fn queue_name(&self) -> &str {
        self.queue
    }
}

impl Guarded for Tagging<'_> {
    fn needs(&self) -> Vec<Needs<'_>> {
        match self.action {
            Some(action) => vec![Needs::Action(action, self.queue)],
            None => vec![Needs::Any(self.queue)],
        }
    }
}

impl Sqs {
    fn url_queue(&self, url: Option<String>) -> Result<String, SqsError> {
        self.queue_name(&required(url, "QueueUrl")?)
    }

    /// SQS's attributes as Sluice's; `creating` allows those fixed at creation.
    fn to_attributes(
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
    fn queue_attributes(&self, queue: &pb::Queue) -> BTreeMap<&'static str, String> {
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

    pub(crate) async fn create_queue(
        &self,
        ctx: &Ctx,
        input: CreateQueueInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = required(input.queue_name, "QueueName")?;
        let attributes = self.to_attributes(&input.attributes, true)?;
        let created = QueueService::create_queue(
            &self.service,
            ctx.request(pb::CreateQueueRequest {
                name,
                attributes: Some(attributes),
                tags: input.tags,
            }),
        )
        .await
        .map_err(|status| attribute_error(status.into()))?
        .into_inner();
        let queue = created.queue.unwrap_or_default();
        Ok(output(
            json!({"QueueUrl": self.queue_url(ctx, &queue.name)}),
        ))
    }

    pub(crate) async fn get_queue_url(
        &self,
        ctx: &Ctx,
        input: GetQueueUrlInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = required(input.queue_name, "QueueName")?;
        if input
            .owner
            .is_some_and(|owner| owner != self.opts.sqs_account_id)
        {
            return Err(SqsError::no_queue());
        }
        QueueService::get_queue(
            &self.service,
            ctx.request(pb::GetQueueRequest { name: name.clone() }),
        )
        .await?;
        Ok(output(json!({"QueueUrl": self.queue_url(ctx, &name)})))
    }

    pub(crate) async fn list_queues(
        &self,
        ctx: &Ctx,
        input: ListQueuesInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let page_size = ranged(input.max_results, "MaxResults", 1..=1000)?.unwrap_or(1000);
        let listed = QueueService::list_queues(
            &self.service,
            ctx.request(pb::ListQueuesRequest {
                prefix: input.queue_name_prefix,
                page_size,
                page_token: input.next_token.unwrap_or_default(),
            }),
        )
        .await?
        .into_inner();
        let urls: Vec<String> = listed
            .names
            .iter()
            .map(|name| self.queue_url(ctx, name))
            .collect();
        let mut out = Map::new();
        if !urls.is_empty() {
            out.insert("QueueUrls".into(), json!(urls));
        }
        if !listed.next_page_token.is_empty() {
            out.insert("NextToken".into(), json!(listed.next_page_token));
        }
        Ok(out)
    }

    pub(crate) async fn delete_queue(
        &self,
        ctx: &Ctx,
        input: QueueUrlInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        QueueService::delete_queue(&self.service, ctx.request(pb::DeleteQueueRequest { name }))
            .await?;
        Ok(Map::new())
    }

    pub(crate) async fn get_queue_attributes(
        &self,
        ctx: &Ctx,
        input: GetAttributesInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        for wanted in &input.attribute_names {
            if !READABLE.contains(&wanted.as_str()) {
                return Err(SqsError::new(
                    Code::InvalidAttributeName,
                    format!("Unknown Attribute {wanted}."),
                ));
            }
        }
        let queue =
            QueueService::get_queue(&self.service, ctx.request(pb::GetQueueRequest { name }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
        let all = input.attribute_names.iter().any(|n| n == "All");
        let attributes: Map<String, Value> = self
            .queue_attributes(&queue)
            .into_iter()
            .filter(|(name, _)| all || input.attribute_names.iter().any(|n| n == name))
            .map(|(name, value)| (name.to_owned(), Value::String(value)))
            .collect();
        let mut out = Map::new();
        if !attributes.is_empty() {
            out.insert("Attributes".into(), Value::Object(attributes));
        }
        Ok(out)
    }

    pub(crate) async fn set_queue_attributes(
        &self,
        ctx: &Ctx,
        input: SetAttributesInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        let attributes = self.to_attributes(&required(input.attributes, "Attributes")?, false)?;
        QueueService::set_queue_attributes(
            &self.service,
            ctx.request(pb::SetQueueAttributesRequest {
                name,
                attributes: Some(attributes),
            }),
        )
        .await
        .map_err(|status| attribute_error(status.into()))?;
        Ok(Map::new())
    }

    pub(crate) async fn purge_queue(
        &self,
        ctx: &Ctx,
        input: QueueUrlInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        self.service
            .observed(
                "PurgeQueue",
                ctx.request(pb::PurgeQueueRequest { name }),
                |_, req| async move { self.service.purge_queue_rested(&req.name, PURGE_REST).await },
            )
            .await?;
        Ok(Map::new())
    }

    pub(crate) async fn tag_queue(
        &self,
        ctx: &Ctx,
        input: TagInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        let tags = required(input.tags, "Tags")?;
        self.retag(ctx, "TagQueue", &name, &tags, &[]).await?;
        Ok(Map::new())
    }

    pub(crate) async fn untag_queue(
        &self,
        ctx: &Ctx,
        input: UntagInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        let keys = required(input.tag_keys, "TagKeys")?;
        self.retag(ctx, "UntagQueue", &name, &HashMap::new(), &keys)
            .await?;
        Ok(Map::new())
    }

    async fn retag(
        &self,
        ctx: &Ctx,
        method: &'static str,
        name: &str,
        add: &HashMap<String, String>,
        remove: &[String],
    ) -> Result<HashMap<String, String>, SqsError> {
        let request = ctx.request(Tagging {
            queue: name,
            action: Some(Action::SetAttributes),
        });
        Ok(self
            .service
            .observed(method, request, |_, tagging| async move {
                self.service.retag_queue(tagging.queue, add, remove).await
            })
            .await?
            .into_inner())
    }

    pub(crate) async fn list_queue_tags(
        &self,
        ctx: &Ctx,
        input: QueueUrlInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        // Adding and removing nothing reads the tags under the same checks.
        let request = ctx.request(Tagging {
            queue: &name,
            action: None,
        });
        let tags = self
            .service
            .observed("ListQueueTags", request, |_, tagging| async move {
                let queue = self.service.queue("name", tagging.queue).await?;
                Ok(queue.tags)
            })
            .await?
            .into_inner();
        let mut out = Map::new();
        if !tags.is_empty() {
            out.insert("Tags".into(), json!(tags));
        }
        Ok(out)
    }

    pub(crate) async fn list_dead_letter_source_queues(
        &self,
        ctx: &Ctx,
        input: DeadLetterSourcesInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let name = self.url_queue(input.queue_url)?;
        let limit = ranged(input.max_results, "MaxResults", 1..=1000)?.unwrap_or(1000);
        let after = input.next_token.unwrap_or_default();
        let request = ctx.request(Tagging {
            queue: &name,
            action: None,
        });
        let (names, next) = self
            .service
            .observed(
                "ListDeadLetterSourceQueues",
                request,
                |caller, tagging| async move {
                    self.service
                        .dead_letter_sources(
                            tagging.queue,
                            &after,
                            limit as usize,
                            &caller.identity().principal,
                        )
                        .await
                },
            )
            .await?
            .into_inner();
        let urls: Vec<String> = names.iter().map(|n| self.queue_url(ctx, n)).collect();
        let mut out = output(json!({ "queueUrls": urls }));
        if !next.is_empty() {
            out.insert("NextToken".into(), json!(next));
        }
        Ok(out)
    }

    pub(crate) async fn start_message_move_task(
        &self,
        ctx: &Ctx,
        input: StartMoveInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let source = self.arn_queue("SourceArn", &required(input.source_arn, "SourceArn")?)?;
        let destination = match input.destination_arn {
            Some(arn) => self.arn_queue("DestinationArn", &arn)?,
            None => String::new(),
        };
        let rate = ranged(
            input.max_number_of_messages_per_second,
            "MaxNumberOfMessagesPerSecond",
            1..=500,
        )?;
        let started = QueueService::start_message_move_task(
            &self.service,
            ctx.request(pb::StartMessageMoveTaskRequest {
                source,
                destination,
                max_messages_per_second: rate,
            }),
        )
        .await?
        .into_inner();
        Ok(output(json!({"TaskHandle": started.task_handle})))
    }

    pub(crate) async fn list_message_move_tasks(
        &self,
        ctx: &Ctx,
        input: ListMovesInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let source_arn = required(input.source_arn, "SourceArn")?;
        let source = self.arn_queue("SourceArn", &source_arn)?;
        let limit = ranged(input.max_results, "MaxResults", 1..=10)?.unwrap_or(1);
        let listed = QueueService::list_message_move_tasks(
            &self.service,
            ctx.request(pb::ListMessageMoveTasksRequest { source }),
        )
        .await?
        .into_inner();
        let results: Vec<Value> = listed
            .tasks
            .into_iter()
            .take(limit as usize)
            .map(|task| self.move_task(&source_arn, task))
            .collect();
        Ok(output(json!({ "Results": results })))
    }

    fn move_task(&self, source_arn: &str, task: pb::MessageMoveTask) -> Value {
        let status = match task.status() {
            pb::MessageMoveTaskStatus::Running => "RUNNING",
            pb::MessageMoveTaskStatus::Completed => "COMPLETED",
            pb::MessageMoveTaskStatus::Cancelled => "CANCELLED",
            pb::MessageMoveTaskStatus::Failed => "FAILED",
            pb::MessageMoveTaskStatus::Unspecified => "RUNNING",
        };
        let mut entry = output(json!({
            "Status": status,
            "SourceArn": source_arn,
            "ApproximateNumberOfMessagesMoved": task.moved,
            "ApproximateNumberOfMessagesToMove": task.total,
            "StartedTimestamp": task.started_at_ms,
        }));
        // SQS names the task only while it runs: only a running task can be cancelled.
        if status == "RUNNING" {
            entry.insert("TaskHandle".into(), json!(task.task_handle));
        }
        if !task.destination.is_empty() {
            entry.insert(
                "DestinationArn".into(),
                json!(self.queue_arn(&task.destination)),
            );
        }
        if let Some(rate) = task.max_messages_per_second {
            entry.insert("MaxNumberOfMessagesPerSecond".into(), json!(rate));
        }
        if !task.failure_reason.is_empty() {
            entry.insert("FailureReason".into(), json!(task.failure_reason));
        }
        Value::Object(entry)
    }

    pub(crate) async fn cancel_message_move_task(
        &self,
        ctx: &Ctx,
        input: CancelMoveInput,
    ) -> Result<Map<String, Value>, SqsError> {
        let task_handle = required(input.task_handle, "TaskHandle")?;
        let cancelled = QueueService::cancel_message_move_task(
            &self.service,
            ctx.request(pb::CancelMessageMoveTaskRequest { task_handle }),
        )
        .await?
        .into_inner();
        Ok(output(
            json!({"ApproximateNumberOfMessagesMoved": cancelled.moved}),
        ))
    }
}

/// An object literal as an action's output.
pub(crate) fn output(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

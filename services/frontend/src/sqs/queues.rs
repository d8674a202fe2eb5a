//! SQS's queue actions: create, find, list, delete, attributes, purge, tags, dead-letter sources
//! and message move tasks, each served by the `QueueService` (or, where SQS has an action gRPC
//! lacks, by the service's own code under the same checks).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_api::identity::Action;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;

use super::attributes::{attribute_error, READABLE};
use super::error::{Code, SqsError};
use super::{ranged, required, Ctx, Sqs};
use crate::service::{Guarded, Needs, QueueName};

/// SQS allows one purge of a queue a minute.
const PURGE_REST: std::time::Duration = std::time::Duration::from_secs(60);

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

//! The `QueueService` implementation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::{
    AttributeValue, DeadLetter, EffectiveAttributes, Error, MoveTask, MoveTaskStatus, NewMessage,
    QueueBackend, QueueConfig, QueueCounts, QueueRecord, ReceivedMessage, Replication, Result,
    Stored,
};
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_server::QueueService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::Catalog;
use crate::consume::Consumer;
use crate::digest;
use crate::metrics;
use crate::validate;

/// How often a create or attribute change retries when another writer changed the record first.
const CAS_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct QueueServiceImpl {
    catalog: Catalog,
    backend: Arc<dyn QueueBackend>,
    /// Cancelled when the server shuts down, which ends the Consume streams.
    closing: CancellationToken,
}

/// The queue a request names, for the RPC span.
trait QueueName {
    fn queue_name(&self) -> &str;
}

macro_rules! queue_name {
    ($($request:ident => $field:ident),* $(,)?) => {
        $(impl QueueName for pb::$request {
            fn queue_name(&self) -> &str {
                &self.$field
            }
        })*
    };
}

queue_name! {
    CreateQueueRequest => name,
    GetQueueRequest => name,
    DeleteQueueRequest => name,
    SetQueueAttributesRequest => name,
    PurgeQueueRequest => name,
    SendMessageRequest => queue,
    SendMessageBatchRequest => queue,
    ReceiveMessageRequest => queue,
    DeleteMessageRequest => queue,
    DeleteMessageBatchRequest => queue,
    ChangeMessageVisibilityRequest => queue,
    ChangeMessageVisibilityBatchRequest => queue,
    StartMessageMoveTaskRequest => source,
    ListMessageMoveTasksRequest => source,
}

/// A task handle starts with its source queue's name.
impl QueueName for pb::CancelMessageMoveTaskRequest {
    fn queue_name(&self) -> &str {
        self.task_handle
            .split_once('/')
            .map_or("", |(queue, _)| queue)
    }
}

/// Listing names no queue.
impl QueueName for pb::ListQueuesRequest {
    fn queue_name(&self) -> &str {
        ""
    }
}

const SERVICE: &str = "sluice.v1.QueueService";

/// Runs one RPC inside a span that continues the caller's trace, counts it by gRPC code and
/// times it.
async fn observed<R, T, Fut>(
    method: &'static str,
    request: Request<R>,
    work: impl FnOnce(R) -> Fut,
) -> Result<Response<T>, Status>
where
    R: QueueName,
    Fut: Future<Output = Result<T>>,
{
    let (metadata, _, request) = request.into_parts();
    let queue = request.queue_name().to_owned();
    rpc::observe(
        SERVICE,
        method,
        &queue,
        &metadata,
        &metrics::RPC,
        work(request),
    )
    .await
}

pub(crate) fn batch_error(id: String, err: &Error) -> pb::BatchResultError {
    pb::BatchResultError {
        id,
        code: err.code_name().to_owned(),
        message: err.to_string(),
    }
}

/// Pairs entry ids with the backend's per-entry results: the ids that succeeded are returned,
/// the failures appended to `failed`.
pub(crate) fn split_results(
    ids: Vec<String>,
    results: Vec<Result<()>>,
    failed: &mut Vec<pb::BatchResultError>,
) -> Vec<String> {
    let mut successful = Vec::new();
    for (id, result) in ids.into_iter().zip(results) {
        match result {
            Ok(()) => successful.push(id),
            Err(err) => failed.push(batch_error(id, &err)),
        }
    }
    successful
}

/// What a move task's handle says: `<source queue>/<task id>`, so any frontend can route it.
fn task_handle(source: &str, task: &str) -> String {
    format!("{source}/{task}")
}

fn to_proto_task(source: &str, task: MoveTask) -> pb::MessageMoveTask {
    let status = match task.status {
        MoveTaskStatus::Running => pb::MessageMoveTaskStatus::Running,
        MoveTaskStatus::Completed => pb::MessageMoveTaskStatus::Completed,
        MoveTaskStatus::Cancelled => pb::MessageMoveTaskStatus::Cancelled,
        MoveTaskStatus::Failed => pb::MessageMoveTaskStatus::Failed,
    };
    pb::MessageMoveTask {
        task_handle: task_handle(source, &task.id),
        status: status as i32,
        source: source.to_owned(),
        destination: task.destination_name,
        max_messages_per_second: task.max_per_second,
        moved: task.moved,
        total: task.total,
        failure_reason: task.failure,
        started_at_ms: task.started_ms,
    }
}

/// A received message as the API returns it.
pub(crate) fn to_proto_message(m: ReceivedMessage) -> pb::Message {
    let attributes: HashMap<String, pb::MessageAttributeValue> = m
        .attributes
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                pb::MessageAttributeValue {
                    data_type: v.data_type,
                    string_value: v.string_value,
                    binary_value: v.binary_value,
                },
            )
        })
        .collect();
    pb::Message {
        md5_of_body: m.md5_of_body,
        md5_of_message_attributes: digest::md5_of_attributes(&attributes),
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        attributes,
        sent_timestamp_ms: m.sent_timestamp_ms,
        approximate_receive_count: m.receive_count,
        approximate_first_receive_timestamp_ms: m.first_receive_timestamp_ms,
        group_id: m.group_id,
        sequence_number: m.sequence.to_string(),
        dead_letter_source_queue: m.dead_letter_source,
    }
}

fn kind(fifo: bool) -> &'static str {
    if fifo {
        "FIFO"
    } else {
        "standard"
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_proto_queue(record: &QueueRecord, counts: QueueCounts) -> pb::Queue {
    pb::Queue {
        name: record.name.clone(),
        attributes: Some(record.attributes.to_proto()),
        counts: Some(pb::QueueCounts {
            visible: counts.visible,
            in_flight: counts.in_flight,
            delayed: counts.delayed,
        }),
        created_at_ms: record.created_at_ms,
        tags: record.tags.clone(),
    }
}

/// The fields of a send, whether it came alone or in a batch.
struct SendFields<'a> {
    body: &'a bytes::Bytes,
    attributes: &'a HashMap<String, pb::MessageAttributeValue>,
    delay_seconds: Option<u32>,
    deduplication_id: &'a str,
    group_id: &'a str,
}

impl QueueServiceImpl {
    pub fn new(catalog: Catalog, backend: Arc<dyn QueueBackend>) -> Self {
        metrics::register();
        QueueServiceImpl {
            catalog,
            backend,
            closing: CancellationToken::new(),
        }
    }

    /// Ends the Consume streams once `shutdown` is cancelled; [`crate::serve`] calls it.
    pub fn ending_streams_on(mut self, shutdown: CancellationToken) -> Self {
        self.closing = shutdown;
        self
    }

    async fn queue(&self, field: &str, name: &str) -> Result<QueueRecord> {
        validate::queue_name(field, name)?;
        Ok(self.catalog.require(name).await?.record)
    }

    /// What the engine needs of a queue, with the dead-letter queue resolved to its id. Checks
    /// that the dead-letter queue exists (NOT_FOUND) and is of the queue's kind.
    async fn engine_config(
        &self,
        name: &str,
        attributes: &EffectiveAttributes,
    ) -> Result<QueueConfig> {
        let dead_letter = match &attributes.redrive_policy {
            None => None,
            Some(policy) => {
                let field = "attributes.redrive_policy.dead_letter_queue";
                let dlq = self
                    .catalog
                    .get(&policy.dead_letter_queue)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "dead-letter queue {:?} ({field})",
                            policy.dead_letter_queue
                        ))
                    })?
                    .record;
                if dlq.attributes.fifo != attributes.fifo {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "{:?} is a {} queue; the dead-letter queue of a {} queue must be {} too",
                            dlq.name,
                            kind(dlq.attributes.fifo),
                            kind(attributes.fifo),
                            kind(attributes.fifo),
                        ),
                    ));
                }
                Some(DeadLetter {
                    queue: dlq.id,
                    max_receive_count: policy.max_receive_count,
                })
            }
        };
        Ok(QueueConfig {
            name: name.to_owned(),
            retention: Duration::from_secs(attributes.message_retention_seconds.into()),
            fifo: attributes.fifo,
            dead_letter,
            replication: Replication::from_async(
                attributes.replication == pb::Replication::Async as i32,
            ),
        })
    }

    /// Checks one message against the queue's limits and turns it into what the engine stores.
    fn message(&self, queue: &QueueRecord, fields: SendFields<'_>) -> Result<NewMessage> {
        let limit = queue.attributes.max_message_bytes as usize;
        if fields.body.is_empty() {
            return Err(Error::invalid("body", "must not be empty"));
        }
        let attributes_size = validate::message_attributes(fields.attributes)?;
        let size = fields.body.len() + attributes_size;
        if size > limit {
            return Err(Error::invalid(
                "body",
                format!(
                    "message is {size} bytes (body {} + attributes {attributes_size}), the queue's max_message_bytes is {limit}",
                    fields.body.len()
                ),
            ));
        }
        let fifo = queue.attributes.fifo;
        let delay =
            match fields.delay_seconds {
                Some(_) if fifo => return Err(Error::invalid(
                    "delay_seconds",
                    "FIFO queues take no per-message delay; set the queue's delay_seconds instead",
                )),
                Some(secs) => validate::delay("delay_seconds", secs)?,
                None => Duration::from_secs(queue.attributes.delay_seconds.into()),
            };
        validate::group_id(fields.group_id)?;
        if fifo && fields.group_id.is_empty() {
            return Err(Error::invalid("group_id", "required on FIFO queues"));
        }
        validate::deduplication_id(fields.deduplication_id)?;
        let deduplication_id = if !fields.deduplication_id.is_empty() {
            fields.deduplication_id.to_owned()
        } else if fifo && queue.attributes.content_based_deduplication {
            digest::content_deduplication_id(fields.body)
        } else if fifo {
            return Err(Error::invalid(
                "deduplication_id",
                "required on a FIFO queue without content_based_deduplication",
            ));
        } else {
            String::new()
        };
        Ok(NewMessage {
            body: fields.body.clone(),
            attributes: fields
                .attributes
                .iter()
                .map(|(name, v)| {
                    (
                        name.clone(),
                        AttributeValue {
                            data_type: v.data_type.clone(),
                            string_value: v.string_value.clone(),
                            binary_value: v.binary_value.clone(),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            delay,
            group_id: fields.group_id.to_owned(),
            deduplication_id,
        })
    }

    async fn create_queue(&self, req: pb::CreateQueueRequest) -> Result<pb::CreateQueueResponse> {
        validate::queue_name("name", &req.name)?;
        validate::tags(&req.tags)?;
        let attributes = validate::apply_attributes(
            &EffectiveAttributes::default(),
            &req.name,
            &req.attributes.unwrap_or_default(),
            true,
        )?;
        let config = self.engine_config(&req.name, &attributes).await?;
        for _ in 0..CAS_ATTEMPTS {
            if let Some(existing) = self.catalog.get(&req.name).await? {
                if existing.record.attributes != attributes {
                    return Err(Error::AlreadyExists {
                        what: format!("queue {:?} with different attributes", req.name),
                    });
                }
                let counts = self.backend.counts(existing.record.id).await?;
                return Ok(pb::CreateQueueResponse {
                    queue: Some(to_proto_queue(&existing.record, counts)),
                });
            }
            let record = QueueRecord {
                id: self.catalog.allocate_id().await?,
                name: req.name.clone(),
                attributes: attributes.clone(),
                tags: req.tags.clone(),
                created_at_ms: now_ms(),
            };
            // The engine's queue first: a record in the catalog always has storage behind it.
            self.backend.create_queue(record.id, config.clone()).await?;
            if self.catalog.create(&record).await? {
                tracing::info!(queue = %record.name, id = record.id, "queue created");
                return Ok(pb::CreateQueueResponse {
                    queue: Some(to_proto_queue(&record, QueueCounts::default())),
                });
            }
            // Another request created the name first; drop ours and answer as for an existing one.
            self.backend.delete_queue(record.id).await?;
        }
        Err(Error::Unavailable(format!(
            "queue {:?} is being changed concurrently, retry",
            req.name
        )))
    }

    async fn get_queue(&self, req: pb::GetQueueRequest) -> Result<pb::GetQueueResponse> {
        let record = self.queue("name", &req.name).await?;
        let counts = self.backend.counts(record.id).await?;
        Ok(pb::GetQueueResponse {
            queue: Some(to_proto_queue(&record, counts)),
        })
    }

    async fn list_queues(&self, req: pb::ListQueuesRequest) -> Result<pb::ListQueuesResponse> {
        let page_size = validate::page_size(req.page_size)?;
        if !req.prefix.is_empty() {
            // A prefix is a partial name: check its characters only.
            if req.prefix.len() > sluice_api::limits::MAX_QUEUE_NAME_LEN
                || !req
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(Error::invalid(
                    "prefix",
                    "must be at most 80 characters of A-Z, a-z, 0-9, '_', '-' and '.'",
                ));
            }
        }
        if !req.page_token.is_empty() {
            validate::queue_name("page_token", &req.page_token)?;
        }
        // One more than a page tells whether another page follows.
        let mut names = self
            .catalog
            .list(&req.prefix, &req.page_token, page_size + 1)
            .await?;
        let next_page_token = if names.len() > page_size {
            names.truncate(page_size);
            names.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListQueuesResponse {
            names,
            next_page_token,
        })
    }

    async fn delete_queue(&self, req: pb::DeleteQueueRequest) -> Result<pb::DeleteQueueResponse> {
        validate::queue_name("name", &req.name)?;
        for _ in 0..CAS_ATTEMPTS {
            let Stored { record, revision } = self.catalog.require(&req.name).await?;
            if self.catalog.delete(&record.name, revision).await? {
                self.backend.delete_queue(record.id).await?;
                tracing::info!(queue = %record.name, id = record.id, "queue deleted");
                return Ok(pb::DeleteQueueResponse {});
            }
        }
        Err(Error::Unavailable(format!(
            "queue {:?} is being changed concurrently, retry",
            req.name
        )))
    }

    async fn set_queue_attributes(
        &self,
        req: pb::SetQueueAttributesRequest,
    ) -> Result<pb::SetQueueAttributesResponse> {
        validate::queue_name("name", &req.name)?;
        let update = req.attributes.unwrap_or_default();
        for _ in 0..CAS_ATTEMPTS {
            let Stored {
                mut record,
                revision,
            } = self.catalog.require(&req.name).await?;
            record.attributes =
                validate::apply_attributes(&record.attributes, &record.name, &update, false)?;
            let config = self.engine_config(&record.name, &record.attributes).await?;
            if self.catalog.update(&record, revision).await? {
                self.backend.create_queue(record.id, config).await?;
                tracing::info!(queue = %record.name, "queue attributes changed");
                let counts = self.backend.counts(record.id).await?;
                return Ok(pb::SetQueueAttributesResponse {
                    queue: Some(to_proto_queue(&record, counts)),
                });
            }
        }
        Err(Error::Unavailable(format!(
            "queue {:?} is being changed concurrently, retry",
            req.name
        )))
    }

    async fn purge_queue(&self, req: pb::PurgeQueueRequest) -> Result<pb::PurgeQueueResponse> {
        let record = self.queue("name", &req.name).await?;
        let removed = self.backend.purge_queue(record.id).await?;
        tracing::info!(queue = %record.name, removed, "queue purged");
        Ok(pb::PurgeQueueResponse {})
    }

    async fn send_message(&self, req: pb::SendMessageRequest) -> Result<pb::SendMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        let message = self.message(
            &queue,
            SendFields {
                body: &req.body,
                attributes: &req.attributes,
                delay_seconds: req.delay_seconds,
                deduplication_id: &req.deduplication_id,
                group_id: &req.group_id,
            },
        )?;
        let mut sent = self.backend.send(queue.id, vec![message]).await?;
        let sent = sent
            .pop()
            .ok_or_else(|| Error::Internal("engine stored no message".into()))?;
        metrics::MESSAGES_SENT
            .with_label_values(&[&queue.name])
            .inc();
        Ok(pb::SendMessageResponse {
            message_id: sent.message_id,
            md5_of_body: sent.md5_of_body,
            sequence_number: sent.sequence.to_string(),
            md5_of_message_attributes: digest::md5_of_attributes(&req.attributes),
        })
    }

    async fn send_message_batch(
        &self,
        req: pb::SendMessageBatchRequest,
    ) -> Result<pb::SendMessageBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        let mut failed = Vec::new();
        let mut accepted = Vec::new();
        let mut messages = Vec::new();
        for entry in &req.entries {
            let fields = SendFields {
                body: &entry.body,
                attributes: &entry.attributes,
                delay_seconds: entry.delay_seconds,
                deduplication_id: &entry.deduplication_id,
                group_id: &entry.group_id,
            };
            match self.message(&queue, fields) {
                Ok(message) => {
                    accepted.push(entry);
                    messages.push(message);
                }
                Err(err) => failed.push(batch_error(entry.id.clone(), &err)),
            }
        }
        let mut successful = Vec::with_capacity(accepted.len());
        if !messages.is_empty() {
            match self.backend.send(queue.id, messages).await {
                Ok(sent) => {
                    metrics::MESSAGES_SENT
                        .with_label_values(&[&queue.name])
                        .inc_by(sent.len() as u64);
                    for (entry, sent) in accepted.into_iter().zip(sent) {
                        successful.push(pb::SendMessageBatchResultEntry {
                            id: entry.id.clone(),
                            message_id: sent.message_id,
                            md5_of_body: sent.md5_of_body,
                            sequence_number: sent.sequence.to_string(),
                            md5_of_message_attributes: digest::md5_of_attributes(&entry.attributes),
                        });
                    }
                }
                Err(err) => {
                    // Nothing of the batch was stored: every entry fails with the same cause.
                    failed.extend(
                        accepted
                            .into_iter()
                            .map(|e| batch_error(e.id.clone(), &err)),
                    );
                }
            }
        }
        Ok(pb::SendMessageBatchResponse { successful, failed })
    }

    async fn receive_message(
        &self,
        req: pb::ReceiveMessageRequest,
    ) -> Result<pb::ReceiveMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        let max = validate::max_messages(req.max_messages)?;
        let wait = validate::wait_time(
            "wait_time_seconds",
            req.wait_time_seconds
                .unwrap_or(queue.attributes.receive_wait_time_seconds),
        )?;
        let visibility = validate::visibility_timeout(
            "visibility_timeout_seconds",
            req.visibility_timeout_seconds
                .unwrap_or(queue.attributes.visibility_timeout_seconds),
        )?;
        let received = self
            .backend
            .receive(queue.id, max, visibility, wait)
            .await?;
        metrics::count_received(&queue.name, received.len());
        let messages = received.into_iter().map(to_proto_message).collect();
        Ok(pb::ReceiveMessageResponse { messages })
    }

    async fn delete_message(
        &self,
        req: pb::DeleteMessageRequest,
    ) -> Result<pb::DeleteMessageResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::receipt_handle("receipt_handle", &req.receipt_handle)?;
        let mut results = self
            .backend
            .delete(queue.id, vec![req.receipt_handle])
            .await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("engine returned no result".into()))??;
        metrics::MESSAGES_DELETED
            .with_label_values(&[&queue.name])
            .inc();
        Ok(pb::DeleteMessageResponse {})
    }

    async fn delete_message_batch(
        &self,
        req: pb::DeleteMessageBatchRequest,
    ) -> Result<pb::DeleteMessageBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        let mut failed = Vec::new();
        let mut ids = Vec::new();
        let mut handles = Vec::new();
        for entry in req.entries {
            match validate::receipt_handle("receipt_handle", &entry.receipt_handle) {
                Ok(()) => {
                    ids.push(entry.id);
                    handles.push(entry.receipt_handle);
                }
                Err(err) => failed.push(batch_error(entry.id, &err)),
            }
        }
        let results = self.backend.delete(queue.id, handles).await?;
        let successful = split_results(ids, results, &mut failed);
        metrics::MESSAGES_DELETED
            .with_label_values(&[&queue.name])
            .inc_by(successful.len() as u64);
        Ok(pb::DeleteMessageBatchResponse { successful, failed })
    }

    async fn change_message_visibility(
        &self,
        req: pb::ChangeMessageVisibilityRequest,
    ) -> Result<pb::ChangeMessageVisibilityResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::receipt_handle("receipt_handle", &req.receipt_handle)?;
        let visibility = validate::visibility_timeout(
            "visibility_timeout_seconds",
            req.visibility_timeout_seconds,
        )?;
        let mut results = self
            .backend
            .change_visibility(queue.id, vec![(req.receipt_handle, visibility)])
            .await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("engine returned no result".into()))??;
        Ok(pb::ChangeMessageVisibilityResponse {})
    }

    async fn change_message_visibility_batch(
        &self,
        req: pb::ChangeMessageVisibilityBatchRequest,
    ) -> Result<pb::ChangeMessageVisibilityBatchResponse> {
        let queue = self.queue("queue", &req.queue).await?;
        validate::batch_size("entries", req.entries.len())?;
        validate::batch_ids("entries.id", req.entries.iter().map(|e| e.id.as_str()))?;
        let mut failed = Vec::new();
        let mut ids = Vec::new();
        let mut changes = Vec::new();
        for entry in req.entries {
            let checked = validate::receipt_handle("receipt_handle", &entry.receipt_handle)
                .and_then(|()| {
                    validate::visibility_timeout(
                        "visibility_timeout_seconds",
                        entry.visibility_timeout_seconds,
                    )
                });
            match checked {
                Ok(visibility) => {
                    ids.push(entry.id);
                    changes.push((entry.receipt_handle, visibility));
                }
                Err(err) => failed.push(batch_error(entry.id, &err)),
            }
        }
        let results = self.backend.change_visibility(queue.id, changes).await?;
        let successful = split_results(ids, results, &mut failed);
        Ok(pb::ChangeMessageVisibilityBatchResponse { successful, failed })
    }
}

impl QueueServiceImpl {
    async fn start_message_move_task(
        &self,
        req: pb::StartMessageMoveTaskRequest,
    ) -> Result<pb::StartMessageMoveTaskResponse> {
        let source = self.queue("source", &req.source).await?;
        let rate = validate::move_rate(req.max_messages_per_second)?;
        let destination = if req.destination.is_empty() {
            None
        } else {
            let destination = self.queue("destination", &req.destination).await?;
            if destination.id == source.id {
                return Err(Error::invalid(
                    "destination",
                    "is the source queue; leave it empty to return messages to their sources",
                ));
            }
            if destination.attributes.fifo != source.attributes.fifo {
                return Err(Error::invalid(
                    "destination",
                    format!(
                        "{:?} is a {} queue and the source is a {} queue",
                        destination.name,
                        kind(destination.attributes.fifo),
                        kind(source.attributes.fifo)
                    ),
                ));
            }
            Some(destination.id)
        };
        let task = self
            .backend
            .start_move_task(source.id, destination, rate)
            .await?;
        tracing::info!(queue = %source.name, destination = %req.destination, task = %task, "message move task started");
        Ok(pb::StartMessageMoveTaskResponse {
            task_handle: task_handle(&source.name, &task),
        })
    }

    async fn list_message_move_tasks(
        &self,
        req: pb::ListMessageMoveTasksRequest,
    ) -> Result<pb::ListMessageMoveTasksResponse> {
        let source = self.queue("source", &req.source).await?;
        let tasks = self.backend.list_move_tasks(source.id).await?;
        Ok(pb::ListMessageMoveTasksResponse {
            tasks: tasks
                .into_iter()
                .map(|task| to_proto_task(&source.name, task))
                .collect(),
        })
    }

    async fn cancel_message_move_task(
        &self,
        req: pb::CancelMessageMoveTaskRequest,
    ) -> Result<pb::CancelMessageMoveTaskResponse> {
        let Some((source, task)) = req.task_handle.split_once('/') else {
            return Err(Error::invalid(
                "task_handle",
                "is not a handle StartMessageMoveTask returned (<queue>/<task id>)",
            ));
        };
        let source = self.queue("task_handle", source).await?;
        let task = self
            .backend
            .cancel_move_task(source.id, task.to_owned())
            .await?;
        tracing::info!(queue = %source.name, task = %task.id, moved = task.moved, "message move task cancelled");
        Ok(pb::CancelMessageMoveTaskResponse { moved: task.moved })
    }
}

#[tonic::async_trait]
impl QueueService for QueueServiceImpl {
    async fn start_message_move_task(
        &self,
        request: Request<pb::StartMessageMoveTaskRequest>,
    ) -> Result<Response<pb::StartMessageMoveTaskResponse>, Status> {
        observed("StartMessageMoveTask", request, |req| {
            self.start_message_move_task(req)
        })
        .await
    }

    async fn list_message_move_tasks(
        &self,
        request: Request<pb::ListMessageMoveTasksRequest>,
    ) -> Result<Response<pb::ListMessageMoveTasksResponse>, Status> {
        observed("ListMessageMoveTasks", request, |req| {
            self.list_message_move_tasks(req)
        })
        .await
    }

    async fn cancel_message_move_task(
        &self,
        request: Request<pb::CancelMessageMoveTaskRequest>,
    ) -> Result<Response<pb::CancelMessageMoveTaskResponse>, Status> {
        observed("CancelMessageMoveTask", request, |req| {
            self.cancel_message_move_task(req)
        })
        .await
    }

    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        observed("CreateQueue", request, |req| self.create_queue(req)).await
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        observed("GetQueue", request, |req| self.get_queue(req)).await
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        observed("ListQueues", request, |req| self.list_queues(req)).await
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        observed("DeleteQueue", request, |req| self.delete_queue(req)).await
    }

    async fn set_queue_attributes(
        &self,
        request: Request<pb::SetQueueAttributesRequest>,
    ) -> Result<Response<pb::SetQueueAttributesResponse>, Status> {
        observed("SetQueueAttributes", request, |req| {
            self.set_queue_attributes(req)
        })
        .await
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        observed("PurgeQueue", request, |req| self.purge_queue(req)).await
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        observed("SendMessage", request, |req| self.send_message(req)).await
    }

    async fn send_message_batch(
        &self,
        request: Request<pb::SendMessageBatchRequest>,
    ) -> Result<Response<pb::SendMessageBatchResponse>, Status> {
        observed("SendMessageBatch", request, |req| {
            self.send_message_batch(req)
        })
        .await
    }

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<pb::ReceiveMessageResponse>, Status> {
        observed("ReceiveMessage", request, |req| self.receive_message(req)).await
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        observed("DeleteMessage", request, |req| self.delete_message(req)).await
    }

    async fn delete_message_batch(
        &self,
        request: Request<pb::DeleteMessageBatchRequest>,
    ) -> Result<Response<pb::DeleteMessageBatchResponse>, Status> {
        observed("DeleteMessageBatch", request, |req| {
            self.delete_message_batch(req)
        })
        .await
    }

    async fn change_message_visibility(
        &self,
        request: Request<pb::ChangeMessageVisibilityRequest>,
    ) -> Result<Response<pb::ChangeMessageVisibilityResponse>, Status> {
        observed("ChangeMessageVisibility", request, |req| {
            self.change_message_visibility(req)
        })
        .await
    }

    async fn change_message_visibility_batch(
        &self,
        request: Request<pb::ChangeMessageVisibilityBatchRequest>,
    ) -> Result<Response<pb::ChangeMessageVisibilityBatchResponse>, Status> {
        observed("ChangeMessageVisibilityBatch", request, |req| {
            self.change_message_visibility_batch(req)
        })
        .await
    }

    type ConsumeStream = ReceiverStream<Result<pb::ConsumeResponse, Status>>;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let (metadata, _, mut requests) = request.into_parts();
        let start = match requests.message().await? {
            Some(pb::ConsumeRequest {
                request: Some(pb::consume_request::Request::Start(start)),
            }) => Some(start),
            _ => None,
        };
        let queue = start.as_ref().map_or("", |s| s.queue.as_str()).to_owned();
        let consumer = rpc::observe(
            SERVICE,
            "Consume",
            &queue,
            &metadata,
            &metrics::RPC,
            async {
                let start = start.ok_or_else(|| {
                    Error::invalid(
                        "start",
                        "the first request of a Consume stream must be a start",
                    )
                })?;
                validate::queue_name("start.queue", &start.queue)?;
                let record = self.catalog.require_fresh(&start.queue).await?.record;
                Consumer::new(self.backend.clone(), record, &start, self.closing.clone())
            },
        )
        .await?
        .into_inner();
        Ok(Response::new(ReceiverStream::new(consumer.spawn(requests))))
    }
}

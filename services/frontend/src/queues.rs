//! Managing queues: create (idempotent for the same attributes), read, list, change attributes,
//! purge, delete, and the tasks that move messages out of a dead-letter queue. Records are
//! written with a compare-and-swap on the revision they were read at, so two frontends changing
//! one queue at once cannot lose a change.

use std::collections::HashMap;
use std::time::Duration;

use sluice_api::identity::Principal;
use sluice_api::{
    DeadLetter, EffectiveAttributes, Error, QueueConfig, QueueCounts, QueueRecord, Replication,
    Result, Stored,
};
use sluice_proto::v1 as pb;

use crate::convert::{task_handle, to_proto_queue, to_proto_task};
use crate::service::QueueServiceImpl;
use crate::validate;

/// How often a create or attribute change retries when another writer changed the record first.
const CAS_ATTEMPTS: usize = 5;

fn kind(fifo: bool) -> &'static str {
    if fifo {
        "FIFO"
    } else {
        "standard"
    }
}

impl QueueServiceImpl {
    /// What the engine needs of a queue, with the dead-letter queue resolved to its id. Checks
    /// that the dead-letter queue exists (NOT_FOUND) and is of the queue's kind.
    pub(crate) async fn engine_config(
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

    /// Refuses a redrive policy that `update` sets for queue `name` if its dead-letter queue's
    /// redrive allow policy does not let `name` use it. Checked only when the policy is set:
    /// a queue that named the dead-letter queue before keeps it.
    async fn redrive_allowed(&self, name: &str, update: &pb::QueueAttributes) -> Result<()> {
        let Some(policy) = &update.redrive_policy else {
            return Ok(());
        };
        if policy.dead_letter_queue.is_empty() {
            return Ok(());
        }
        let Some(dlq) = self.catalog.get(&policy.dead_letter_queue).await? else {
            // engine_config says that it does not exist.
            return Ok(());
        };
        if dlq.record.attributes.redrive_allow.allows(name) {
            return Ok(());
        }
        Err(Error::invalid(
            "attributes.redrive_policy.dead_letter_queue",
            format!(
                "the redrive allow policy of {:?} does not let {name:?} use it as its dead-letter \
                 queue",
                dlq.record.name
            ),
        ))
    }

    pub(crate) async fn create_queue(
        &self,
        req: pb::CreateQueueRequest,
    ) -> Result<pb::CreateQueueResponse> {
        validate::queue_name("name", &req.name)?;
        validate::tags(&req.tags)?;
        let mut requested = req.attributes.unwrap_or_default();
        // Encrypted unless asked otherwise, wherever this frontend can keep a data key.
        requested
            .server_side_encryption
            .get_or_insert(self.encryption.is_some());
        let attributes = validate::apply_attributes(
            &EffectiveAttributes::default(),
            &req.name,
            &requested,
            true,
        )?;
        self.can_encrypt(&attributes)?;
        self.redrive_allowed(&req.name, &requested).await?;
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
                    queue: Some(to_proto_queue(
                        &existing.record,
                        counts,
                        self.rates.queue_limits(&existing.record),
                    )),
                });
            }
            let now = sluice_api::now_ms();
            let record = QueueRecord {
                id: self.catalog.allocate_id().await?,
                name: req.name.clone(),
                attributes: attributes.clone(),
                tags: req.tags.clone(),
                created_at_ms: now,
                modified_at_ms: now,
                purged_at_ms: 0,
            };
            // The data key and the engine's queue first: a record in the catalog always has
            // both behind it.
            self.ensure_data_key(&record).await?;
            self.backend.create_queue(record.id, config.clone()).await?;
            if self.catalog.create(&record).await? {
                tracing::info!(queue = %record.name, id = record.id, "queue created");
                return Ok(pb::CreateQueueResponse {
                    queue: Some(to_proto_queue(
                        &record,
                        QueueCounts::default(),
                        self.rates.queue_limits(&record),
                    )),
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

    pub(crate) async fn get_queue(
        &self,
        req: &pb::GetQueueRequest,
    ) -> Result<pb::GetQueueResponse> {
        let record = self.queue("name", &req.name).await?;
        let counts = self.backend.counts(record.id).await?;
        Ok(pb::GetQueueResponse {
            queue: Some(to_proto_queue(
                &record,
                counts,
                self.rates.queue_limits(&record),
            )),
        })
    }

    /// A page of the queue names `principal` may do something with. The page is cut before
    /// the names it may not see are left out, so a page can hold fewer than `page_size` names
    /// while more follow.
    pub(crate) async fn list_queues(
        &self,
        req: pb::ListQueuesRequest,
        principal: &Principal,
    ) -> Result<pb::ListQueuesResponse> {
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
        names.retain(|name| principal.allows_any(name));
        Ok(pb::ListQueuesResponse {
            names,
            next_page_token,
        })
    }

    pub(crate) async fn delete_queue(
        &self,
        req: pb::DeleteQueueRequest,
    ) -> Result<pb::DeleteQueueResponse> {
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

    pub(crate) async fn set_queue_attributes(
        &self,
        req: pb::SetQueueAttributesRequest,
    ) -> Result<pb::SetQueueAttributesResponse> {
        validate::queue_name("name", &req.name)?;
        let update = req.attributes.unwrap_or_default();
        self.redrive_allowed(&req.name, &update).await?;
        for _ in 0..CAS_ATTEMPTS {
            let Stored {
                mut record,
                revision,
            } = self.catalog.require(&req.name).await?;
            record.attributes =
                validate::apply_attributes(&record.attributes, &record.name, &update, false)?;
            record.modified_at_ms = sluice_api::now_ms();
            if update.server_side_encryption == Some(true) {
                self.can_encrypt(&record.attributes)?;
            }
            self.ensure_data_key(&record).await?;
            let config = self.engine_config(&record.name, &record.attributes).await?;
            if self.catalog.update(&record, revision).await? {
                self.backend.create_queue(record.id, config).await?;
                tracing::info!(queue = %record.name, "queue attributes changed");
                let counts = self.backend.counts(record.id).await?;
                return Ok(pb::SetQueueAttributesResponse {
                    queue: Some(to_proto_queue(
                        &record,
                        counts,
                        self.rates.queue_limits(&record),
                    )),
                });
            }
        }
        Err(Error::Unavailable(format!(
            "queue {:?} is being changed concurrently, retry",
            req.name
        )))
    }

    /// Adds `add` to the tags of queue `name` (a key it has takes the new value) and removes
    /// the keys in `remove`; the tags it ends with are checked against the limits.
    pub(crate) async fn retag_queue(
        &self,
        name: &str,
        add: &HashMap<String, String>,
        remove: &[String],
    ) -> Result<HashMap<String, String>> {
        validate::queue_name("name", name)?;
        for _ in 0..CAS_ATTEMPTS {
            let Stored {
                mut record,
                revision,
            } = self.catalog.require(name).await?;
            for key in remove {
                record.tags.remove(key);
            }
            record
                .tags
                .extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
            validate::tags(&record.tags)?;
            record.modified_at_ms = sluice_api::now_ms();
            if self.catalog.update(&record, revision).await? {
                tracing::info!(queue = %record.name, "queue tags changed");
                return Ok(record.tags);
            }
        }
        Err(Error::Unavailable(format!(
            "queue {name:?} is being changed concurrently, retry"
        )))
    }

    /// A page of the queues whose dead-letter queue is `dlq`, in name order after `after`, and
    /// where the next page starts (empty at the end). It reads every queue record: a deployment
    /// keeps no index of redrive policies.
    pub(crate) async fn dead_letter_sources(
        &self,
        dlq: &str,
        after: &str,
        limit: usize,
        principal: &Principal,
    ) -> Result<(Vec<String>, String)> {
        const PAGE: usize = 1000;
        self.queue("queue", dlq).await?;
        let mut found = Vec::new();
        let mut start = after.to_owned();
        loop {
            let names = self.catalog.list("", &start, PAGE).await?;
            for name in &names {
                let Some(stored) = self.catalog.get(name).await? else {
                    continue;
                };
                let feeds = stored
                    .record
                    .attributes
                    .redrive_policy
                    .as_ref()
                    .is_some_and(|policy| policy.dead_letter_queue == dlq);
                if feeds && principal.allows_any(name) {
                    found.push(name.clone());
                    if found.len() == limit {
                        return Ok((found, name.clone()));
                    }
                }
            }
            match names.last() {
                Some(last) if names.len() == PAGE => start = last.clone(),
                _ => return Ok((found, String::new())),
            }
        }
    }

    pub(crate) async fn purge_queue(
        &self,
        req: &pb::PurgeQueueRequest,
    ) -> Result<pb::PurgeQueueResponse> {
        let record = self.queue("name", &req.name).await?;
        let removed = self.backend.purge_queue(record.id).await?;
        tracing::info!(queue = %record.name, removed, "queue purged");
        Ok(pb::PurgeQueueResponse {})
    }

    /// Purges queue `name` as SQS does: refused while its last purge is less than `rest` ago,
    /// and the time of this one written down once it is done, so every frontend sees it.
    pub(crate) async fn purge_queue_rested(&self, name: &str, rest: Duration) -> Result<()> {
        let Stored { record, .. } = self.catalog.require(name).await?;
        let since = Duration::from_millis(sluice_api::now_ms().saturating_sub(record.purged_at_ms));
        if record.purged_at_ms > 0 && since < rest {
            return Err(Error::FailedPrecondition(format!(
                "queue {name:?} was purged {} s ago; it can be purged again in {} s",
                since.as_secs(),
                (rest - since).as_secs().max(1)
            )));
        }
        let removed = self.backend.purge_queue(record.id).await?;
        tracing::info!(queue = %record.name, removed, "queue purged");
        for _ in 0..CAS_ATTEMPTS {
            let Stored {
                mut record,
                revision,
            } = self.catalog.require(name).await?;
            record.purged_at_ms = sluice_api::now_ms();
            if self.catalog.update(&record, revision).await? {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!(
            "queue {name:?} was purged but is being changed concurrently: the time of the purge \
             was not written"
        )))
    }

    pub(crate) async fn start_message_move_task(
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

    pub(crate) async fn list_message_move_tasks(
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

    pub(crate) async fn cancel_message_move_task(
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

//! The `BackendService` server: each RPC decodes its request, checks it, calls the queue engine,
//! and encodes the answer. The frontend checked the client's request already; a backend checks
//! again what reaches it (counts, sizes, durations the engine adds to its clock, attribute
//! values), because anything that can reach its port can call it. The engine refuses what it
//! cannot do (unknown queue, stale receipt) with the codes the frontend passes on.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::content;
use sluice_api::limits::{
    self, MAX_ACK_HANDLES, MAX_FORWARDED_RECEIVE, MAX_MOVE_RATE, MAX_VISIBILITY_TIMEOUT_SECS,
    MAX_WAIT_TIME_SECS,
};
use sluice_api::wire::{self, LEADER_HEADER};
use sluice_api::{Error, IdempotencyKey, QueueBackend, Result};
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_server::BackendService;
use tonic::{Request, Response, Status};

use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_storage::Engine;
use tonic::transport::Channel;

use crate::local::NodeQueues;
use crate::metrics;
use crate::replica::Replica;

/// Request metadata on a forwarded call, so that it is not forwarded twice.
const FORWARDED_HEADER: &str = "sluice-forwarded";

#[derive(Clone)]
pub struct BackendServiceImpl {
    queues: NodeQueues,
    /// The node's Raft group; none on an unreplicated node, whose engine always serves.
    replica: Option<Replica>,
    /// Clients of the nodes this one forwarded to, by URL.
    leaders: Arc<parking_lot::Mutex<HashMap<String, BackendServiceClient<Channel>>>>,
}

impl BackendServiceImpl {
    pub fn new(queues: NodeQueues, replica: Option<Replica>) -> Self {
        BackendServiceImpl {
            queues,
            replica,
            leaders: Arc::default(),
        }
    }

    /// The leader to hand `request` to, when this node does not serve: any node takes a
    /// request, and only the leader's engine serves it.
    fn forward<T>(
        &self,
        request: &mut Request<T>,
    ) -> Result<Option<(BackendServiceClient<Channel>, String)>> {
        if self.engine().is_active() {
            return Ok(None);
        }
        if request.metadata().contains_key(FORWARDED_HEADER) {
            return Err(Error::Unavailable(
                "the backend cluster is changing leaders; retry".into(),
            ));
        }
        let leader = self
            .replica
            .as_ref()
            .and_then(|replica| {
                replica
                    .leader()
                    .filter(|leader| leader.name != replica.me.name)
            })
            .ok_or_else(|| {
                Error::Unavailable("the backend cluster has no serving leader yet; retry".into())
            })?;
        if let Some(silent) = self
            .replica
            .as_ref()
            .and_then(|replica| replica.leader_contact.silent_for())
        {
            return Err(Error::Unavailable(format!(
                "this node has not heard from its leader {} for {} ms; the cluster may be electing another: retry",
                leader.name,
                silent.as_millis()
            )));
        }
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let mut leaders = self.leaders.lock();
        if let Some(client) = leaders.get(&leader.url) {
            return Ok(Some((client.clone(), leader.url)));
        }
        let client = sluice_client::node_client(
            &leader.url,
            sluice_client::BackendClientOptions::default().connect_timeout,
        )?;
        leaders.insert(leader.url.clone(), client.clone());
        Ok(Some((client, leader.url)))
    }

    fn engine(&self) -> &Engine {
        self.queues.engine()
    }

    /// The engine as the frontend-facing operations see it, with their error mapping.
    fn backend(&self) -> &dyn QueueBackend {
        &self.queues
    }
}

/// Runs one RPC about queue `queue_id` under the shared span and metrics.
async fn observed<R, T, Fut>(
    method: &'static str,
    request: Request<R>,
    queue_id: impl FnOnce(&R) -> u64,
    work: impl FnOnce(R) -> Fut,
) -> Result<Response<T>, Status>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let (metadata, _, request) = request.into_parts();
    let queue = queue_id(&request).to_string();
    rpc::observe(
        "sluice.v1.BackendService",
        method,
        &queue,
        &metadata,
        &metrics::RPC,
        work(request),
    )
    .await
}

fn results(results: Vec<Result<()>>) -> pb::EntryResults {
    pb::EntryResults {
        results: results.into_iter().map(wire::entry_to_pb).collect(),
    }
}

/// Hands the call to the leader when this node does not serve, and tells the caller where the
/// leader is. A leader that cannot be reached or dies mid-call is UNAVAILABLE to the caller, as
/// if it had called the leader itself, so it tries again elsewhere.
macro_rules! forward {
    ($self:ident, $request:ident, $rpc:ident) => {
        if let Some((mut leader, url)) = $self.forward(&mut $request)? {
            let mut response = leader.$rpc($request).await.map_err(|status| {
                Status::from(sluice_client::channel::from_status("the leader", status))
            })?;
            if let Ok(url) = url.parse() {
                response.metadata_mut().insert(LEADER_HEADER, url);
            }
            return Ok(response);
        }
    };
}

/// A duration in milliseconds another service sent, at most `max_secs` seconds: the engine adds
/// it to the clock, which must not overflow.
fn millis_within(field: &str, ms: u64, max_secs: u32) -> Result<Duration> {
    let max = u64::from(max_secs) * 1000;
    if ms > max {
        return Err(Error::invalid(field, format!("{ms} is more than {max}")));
    }
    Ok(Duration::from_millis(ms))
}

/// Deletes and visibility changes name at most [`MAX_ACK_HANDLES`] receipt handles: a consume
/// stream's ack is the largest. None is a call that does nothing, which a batch whose every
/// entry failed the frontend's checks makes.
fn handle_count(field: &str, len: usize) -> Result<()> {
    if len > MAX_ACK_HANDLES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_ACK_HANDLES} receipt handles, got {len}"),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl BackendService for BackendServiceImpl {
    async fn put_queue(
        &self,
        mut request: Request<pb::PutQueueRequest>,
    ) -> Result<Response<pb::PutQueueResponse>, Status> {
        forward!(self, request, put_queue);
        observed(
            "PutQueue",
            request,
            |r| r.queue_id,
            |r| async move {
                let config = wire::config_from_pb(r.config.unwrap_or_default())?;
                if config.dead_letter.is_some_and(|d| d.queue == r.queue_id) {
                    return Err(Error::invalid(
                        "config.dead_letter_queue_id",
                        "a queue cannot be its own dead-letter queue",
                    ));
                }
                self.engine()
                    .create_partition(r.queue_id, config, r.first_sequence)
                    .await?;
                Ok(pb::PutQueueResponse {})
            },
        )
        .await
    }

    async fn seal_queue(
        &self,
        mut request: Request<pb::SealQueueRequest>,
    ) -> Result<Response<pb::SealQueueResponse>, Status> {
        forward!(self, request, seal_queue);
        observed(
            "SealQueue",
            request,
            |r| r.queue_id,
            |r| async move {
                let (config, next_sequence) = self.engine().seal_queue(r.queue_id).await?;
                Ok(pb::SealQueueResponse {
                    config: Some(wire::config_to_pb(&config)),
                    next_sequence,
                })
            },
        )
        .await
    }

    async fn drop_queue(
        &self,
        mut request: Request<pb::DropQueueRequest>,
    ) -> Result<Response<pb::DropQueueResponse>, Status> {
        forward!(self, request, drop_queue);
        observed(
            "DropQueue",
            request,
            |r| r.queue_id,
            |r| async move {
                self.backend().delete_queue(r.queue_id).await?;
                Ok(pb::DropQueueResponse {})
            },
        )
        .await
    }

    async fn purge(
        &self,
        mut request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        forward!(self, request, purge);
        observed(
            "Purge",
            request,
            |r| r.queue_id,
            |r| async move {
                let purged = self.backend().purge_queue(r.queue_id).await?;
                Ok(pb::PurgeResponse { purged })
            },
        )
        .await
    }

    async fn counts(
        &self,
        mut request: Request<pb::CountsRequest>,
    ) -> Result<Response<pb::QueueCounts>, Status> {
        forward!(self, request, counts);
        observed(
            "Counts",
            request,
            |r| r.queue_id,
            |r| async move { Ok(wire::counts_to_pb(self.backend().counts(r.queue_id).await?)) },
        )
        .await
    }

    async fn deduplicated(
        &self,
        mut request: Request<pb::DeduplicatedRequest>,
    ) -> Result<Response<pb::DeduplicatedResponse>, Status> {
        forward!(self, request, deduplicated);
        observed(
            "Deduplicated",
            request,
            |r| r.queue_id,
            |r| async move {
                content::deduplication_ids(&r.deduplication_ids)?;
                let found = self
                    .backend()
                    .deduplicated(r.queue_id, r.deduplication_ids)
                    .await?;
                Ok(pb::DeduplicatedResponse {
                    entries: found
                        .into_iter()
                        .map(|f| match f {
                            Some(first) => pb::DeduplicatedEntry {
                                found: true,
                                message_id: first.message_id,
                                sequence: first.sequence,
                            },
                            None => pb::DeduplicatedEntry::default(),
                        })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn send(
        &self,
        mut request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        forward!(self, request, send);
        observed(
            "Send",
            request,
            |r| r.queue_id,
            |r| async move {
                let key = IdempotencyKey::from_wire(&r.idempotency_key)?;
                content::forwarded_messages(&r.messages)?;
                let messages = r
                    .messages
                    .into_iter()
                    .map(wire::new_message_from_pb)
                    .collect::<Result<_, _>>()?;
                let sent = match key {
                    Some(key) => {
                        self.backend()
                            .send_idempotent(r.queue_id, key, messages)
                            .await?
                    }
                    None => self.backend().send(r.queue_id, messages).await?,
                };
                Ok(pb::SendResponse {
                    messages: sent.into_iter().map(wire::sent_to_pb).collect(),
                })
            },
        )
        .await
    }

    async fn receive(
        &self,
        mut request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<pb::ReceiveResponse>, Status> {
        forward!(self, request, receive);
        observed(
            "Receive",
            request,
            |r| r.queue_id,
            |r| async move {
                let max =
                    limits::in_range("max_messages", r.max_messages, 1, MAX_FORWARDED_RECEIVE)?;
                let visibility = millis_within(
                    "visibility_ms",
                    r.visibility_ms,
                    MAX_VISIBILITY_TIMEOUT_SECS,
                )?;
                let wait = millis_within("wait_ms", r.wait_ms, MAX_WAIT_TIME_SECS)?;
                let messages = self
                    .backend()
                    .receive(r.queue_id, max as usize, visibility, wait)
                    .await?;
                Ok(pb::ReceiveResponse {
                    messages: messages.into_iter().map(wire::received_to_pb).collect(),
                })
            },
        )
        .await
    }

    async fn delete(
        &self,
        mut request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::EntryResults>, Status> {
        forward!(self, request, delete);
        observed(
            "Delete",
            request,
            |r| r.queue_id,
            |r| async move {
                handle_count("receipt_handles", r.receipt_handles.len())?;
                Ok(results(
                    self.backend().delete(r.queue_id, r.receipt_handles).await?,
                ))
            },
        )
        .await
    }

    async fn change_visibility(
        &self,
        mut request: Request<pb::ChangeVisibilityRequest>,
    ) -> Result<Response<pb::EntryResults>, Status> {
        forward!(self, request, change_visibility);
        observed(
            "ChangeVisibility",
            request,
            |r| r.queue_id,
            |r| async move {
                handle_count("changes", r.changes.len())?;
                let changes = r
                    .changes
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let field = format!("changes[{i}].visibility_ms");
                        let visibility =
                            millis_within(&field, c.visibility_ms, MAX_VISIBILITY_TIMEOUT_SECS)?;
                        Ok((c.receipt_handle, visibility))
                    })
                    .collect::<Result<_>>()?;
                Ok(results(
                    self.backend()
                        .change_visibility(r.queue_id, changes)
                        .await?,
                ))
            },
        )
        .await
    }

    async fn start_move_task(
        &self,
        mut request: Request<pb::StartMoveTaskRequest>,
    ) -> Result<Response<pb::StartMoveTaskResponse>, Status> {
        forward!(self, request, start_move_task);
        observed(
            "StartMoveTask",
            request,
            |r| r.source_queue_id,
            |r| async move {
                let destination = (r.destination_queue_id != 0).then_some(r.destination_queue_id);
                let rate = r
                    .max_messages_per_second
                    .map(|rate| limits::in_range("max_messages_per_second", rate, 1, MAX_MOVE_RATE))
                    .transpose()?
                    .and_then(NonZeroU32::new);
                let task_id = self
                    .backend()
                    .start_move_task(r.source_queue_id, destination, rate)
                    .await?;
                Ok(pb::StartMoveTaskResponse { task_id })
            },
        )
        .await
    }

    async fn list_move_tasks(
        &self,
        mut request: Request<pb::ListMoveTasksRequest>,
    ) -> Result<Response<pb::ListMoveTasksResponse>, Status> {
        forward!(self, request, list_move_tasks);
        observed(
            "ListMoveTasks",
            request,
            |r| r.source_queue_id,
            |r| async move {
                let tasks = self.backend().list_move_tasks(r.source_queue_id).await?;
                Ok(pb::ListMoveTasksResponse {
                    tasks: tasks.into_iter().map(wire::task_to_pb).collect(),
                })
            },
        )
        .await
    }

    async fn cancel_move_task(
        &self,
        mut request: Request<pb::CancelMoveTaskRequest>,
    ) -> Result<Response<pb::MoveTask>, Status> {
        forward!(self, request, cancel_move_task);
        observed(
            "CancelMoveTask",
            request,
            |r| r.source_queue_id,
            |r| async move {
                let task = self
                    .backend()
                    .cancel_move_task(r.source_queue_id, r.task_id)
                    .await?;
                Ok(wire::task_to_pb(task))
            },
        )
        .await
    }
}

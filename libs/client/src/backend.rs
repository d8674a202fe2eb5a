//! The client of a backend node's `BackendService`, the one place that owns its timeouts and
//! error mapping, and follows its cluster's leader as the nodes name it. It implements
//! `QueueBackend`, so a frontend talks to a backend node over the network exactly as standalone
//! talks to the engine in its own process.
//!
//! Each call is one attempt. Trying again belongs to the caller that knows where else to go:
//! the frontend's router tries the cluster's other nodes until a leader answers (sends with an
//! idempotency key, so a retry never stores a message twice), the manager resumes an unfinished
//! move on its next pass. Retrying here as well would multiply the attempts and the wait.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_api::wire::{self, LEADER_HEADER};
use sluice_api::{
    Error, FirstSend, IdempotencyKey, MoveTask, NewMessage, QueueBackend, QueueConfig, QueueCounts,
    QueueId, ReceivedMessage, Result, SentMessage,
};
use sluice_common::grpc::MAX_MESSAGE_BYTES;
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::channel::{self, ChannelOptions};

#[derive(Debug, Clone)]
pub struct BackendClientOptions {
    pub connect_timeout: Duration,
    /// Longest wait for an answer; a long poll gets its wait time on top.
    pub request_timeout: Duration,
}

impl Default for BackendClientOptions {
    fn default() -> Self {
        BackendClientOptions {
            // Backend nodes sit in the frontends' network: a connection takes well under a
            // millisecond there. A node cut off answers nothing at all, so every attempt on it
            // costs the whole timeout (a send's longest stall through a partition).
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// How a connection to a backend node notices that the node went silent (cut off, frozen):
/// a ping every half second that must be answered within a second. A call under way on it
/// then fails as UNAVAILABLE within 1.5 s, and is tried on another node, instead of waiting
/// out its timeout. A node merely busy answers pings from its connection task, which does not
/// wait behind its requests or its disk.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a caller keeps the URL of a cluster's leader, as its nodes name it (see
/// [`BackendClient::with_leader_hint`]).
pub type LeaderHint = Arc<parking_lot::Mutex<Option<String>>>;

/// A lazily connected client of the `BackendService` at `endpoint`, taking messages as large as
/// the largest batch.
pub fn node_client(
    endpoint: &str,
    connect_timeout: Duration,
) -> Result<BackendServiceClient<Channel>> {
    let options = ChannelOptions {
        connect_timeout,
        keep_alive_interval: Some(KEEP_ALIVE_INTERVAL),
        keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
    };
    let channel = channel::channel("backend endpoint", endpoint, &options)?;
    Ok(BackendServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A backend node reached over gRPC. Clones share the connection.
#[derive(Clone)]
pub struct BackendClient {
    client: BackendServiceClient<Channel>,
    options: BackendClientOptions,
    url: String,
    leader: LeaderHint,
    /// Until when this node counts as unreachable, after a call failed to reach it.
    unreachable_until: Arc<parking_lot::Mutex<Option<Instant>>>,
}

/// How long a node that could not be reached is passed over: about the time a partitioned or
/// dead node takes to lose its place (a new leader elected, its etcd key expired), after which
/// it is tried again.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

impl BackendClient {
    /// A client of the node at `endpoint` (e.g. `http://10.0.0.5:7080`). Connects lazily, so a
    /// node that is down shows up as UNAVAILABLE on the first call rather than here.
    pub fn new(endpoint: &str, options: BackendClientOptions) -> Result<Self> {
        let client = node_client(endpoint, options.connect_timeout)?;
        Ok(BackendClient {
            client,
            options,
            url: endpoint.to_owned(),
            leader: LeaderHint::default(),
            unreachable_until: Arc::default(),
        })
    }

    /// Like [`new`](Self::new), writing the leader's URL into `leader` whenever a follower
    /// forwarded a call and named it, and clearing it when the leader it names cannot be
    /// reached; clients of one cluster's nodes share one hint.
    pub fn with_leader_hint(
        endpoint: &str,
        options: BackendClientOptions,
        leader: LeaderHint,
    ) -> Result<Self> {
        Ok(BackendClient {
            leader,
            ..Self::new(endpoint, options)?
        })
    }

    /// Creates the queue's partition on this node's cluster, or updates its config, with
    /// sequence numbers from `first_sequence` on.
    pub async fn create_partition(
        &self,
        id: QueueId,
        config: &QueueConfig,
        first_sequence: u64,
    ) -> Result<()> {
        let request = pb::PutQueueRequest {
            queue_id: id,
            config: Some(wire::config_to_pb(config)),
            first_sequence,
        };
        let timeout = self.options.request_timeout;
        self.call(
            request,
            timeout,
            |mut c, r| async move { c.put_queue(r).await },
        )
        .await?;
        Ok(())
    }

    /// Seals the queue's partition on this node's cluster; returns its config and the sequence
    /// number its next message would have had.
    pub async fn seal(&self, id: QueueId) -> Result<(QueueConfig, u64)> {
        let request = pb::SealQueueRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let sealed = self
            .call(
                request,
                timeout,
                |mut c, r| async move { c.seal_queue(r).await },
            )
            .await?;
        Ok((
            wire::config_from_pb(sealed.config.unwrap_or_default())?,
            sealed.next_sequence,
        ))
    }

    /// Calls `rpc` with `request` under `timeout`, once. Remembers the leader a follower names
    /// in its answer, and forgets this node as the leader when it cannot be reached. The trace
    /// context goes along in the metadata.
    async fn call<Req, Resp, F, Fut>(&self, request: Req, timeout: Duration, rpc: F) -> Result<Resp>
    where
        F: FnOnce(BackendServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let span = channel::client_span::<Req>("sluice.v1.BackendService");
        let client = self.client.clone();
        let result = async { rpc(client, channel::request(request, timeout)).await }
            .instrument(span)
            .await
            .map(|response| {
                let leader = response
                    .metadata()
                    .get(LEADER_HEADER)
                    .and_then(|v| v.to_str().ok());
                if let Some(leader) = leader {
                    *self.leader.lock() = Some(leader.to_owned());
                }
                response.into_inner()
            })
            .map_err(|status| {
                if sluice_api::error::is_transport_failure(&status) {
                    *self.unreachable_until.lock() = Some(Instant::now() + UNREACHABLE_FOR);
                }
                channel::from_status("backend", status)
            });
        if result.is_ok() {
            self.unreachable_until.lock().take();
        }
        if matches!(result, Err(Error::Unavailable(_))) {
            let mut leader = self.leader.lock();
            if leader.as_deref() == Some(self.url.as_str()) {
                leader.take();
            }
        }
        result
    }

    async fn send_with(
        &self,
        id: QueueId,
        key: Option<IdempotencyKey>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        let request = wire::send_request(id, key, messages);
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, |mut c, r| async move { c.send(r).await })
            .await?;
        Ok(response
            .messages
            .into_iter()
            .map(wire::sent_from_pb)
            .collect())
    }
}

fn entries(results: pb::EntryResults) -> Vec<Result<()>> {
    results
        .results
        .into_iter()
        .map(wire::entry_from_pb)
        .collect()
}

#[async_trait]
impl QueueBackend for BackendClient {
    fn unreachable(&self) -> bool {
        self.unreachable_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        self.create_partition(id, &config, 0).await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        let request = pb::DropQueueRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        self.call(
            request,
            timeout,
            |mut c, r| async move { c.drop_queue(r).await },
        )
        .await?;
        Ok(())
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        let request = pb::PurgeRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, |mut c, r| async move { c.purge(r).await })
            .await?;
        Ok(response.purged)
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        let request = pb::CountsRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let counts = self
            .call(
                request,
                timeout,
                |mut c, r| async move { c.counts(r).await },
            )
            .await?;
        Ok(wire::counts_from_pb(counts))
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        self.send_with(id, None, messages).await
    }

    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        self.send_with(id, Some(key), messages).await
    }

    async fn deduplicated(&self, id: QueueId, ids: Vec<String>) -> Result<Vec<Option<FirstSend>>> {
        let asked = ids.len();
        let request = pb::DeduplicatedRequest {
            queue_id: id,
            deduplication_ids: ids,
        };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, |mut c, r| async move {
                c.deduplicated(r).await
            })
            .await?;
        // The backend answers each id asked; a reply that does not is not trusted.
        if response.entries.len() != asked {
            return Err(Error::Internal(format!(
                "a backend answered {} of {asked} deduplication ids",
                response.entries.len()
            )));
        }
        Ok(response
            .entries
            .into_iter()
            .map(|e| {
                e.found.then_some(FirstSend {
                    message_id: e.message_id,
                    sequence: e.sequence,
                })
            })
            .collect())
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let request = pb::ReceiveRequest {
            queue_id: id,
            max_messages: max as u32,
            visibility_ms: visibility.as_millis() as u64,
            wait_ms: wait.as_millis() as u64,
        };
        let timeout = self.options.request_timeout + wait;
        let response = self
            .call(
                request,
                timeout,
                |mut c, r| async move { c.receive(r).await },
            )
            .await?;
        Ok(response
            .messages
            .into_iter()
            .map(wire::received_from_pb)
            .collect())
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        let request = pb::DeleteRequest {
            queue_id: id,
            receipt_handles: handles,
        };
        let timeout = self.options.request_timeout;
        let results = self
            .call(
                request,
                timeout,
                |mut c, r| async move { c.delete(r).await },
            )
            .await?;
        Ok(entries(results))
    }

    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>> {
        let request = pb::ChangeVisibilityRequest {
            queue_id: id,
            changes: changes
                .into_iter()
                .map(|(receipt_handle, d)| pb::VisibilityChange {
                    receipt_handle,
                    visibility_ms: d.as_millis() as u64,
                })
                .collect(),
        };
        let timeout = self.options.request_timeout;
        let results = self
            .call(request, timeout, |mut c, r| async move {
                c.change_visibility(r).await
            })
            .await?;
        Ok(entries(results))
    }

    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        let request = pb::StartMoveTaskRequest {
            source_queue_id: source,
            destination_queue_id: destination.unwrap_or(0),
            max_messages_per_second: max_per_second.map(NonZeroU32::get),
        };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, |mut c, r| async move {
                c.start_move_task(r).await
            })
            .await?;
        Ok(response.task_id)
    }

    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        let request = pb::ListMoveTasksRequest {
            source_queue_id: source,
        };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, |mut c, r| async move {
                c.list_move_tasks(r).await
            })
            .await?;
        response.tasks.into_iter().map(wire::task_from_pb).collect()
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        let request = pb::CancelMoveTaskRequest {
            source_queue_id: source,
            task_id: task,
        };
        let timeout = self.options.request_timeout;
        let task = self
            .call(request, timeout, |mut c, r| async move {
                c.cancel_move_task(r).await
            })
            .await?;
        wire::task_from_pb(task)
    }
}

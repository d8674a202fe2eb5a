//! The typed client of `BackendService`, the one place that owns its timeouts, retries and error
//! mapping. It implements `QueueBackend`, so a frontend talks to a backend node over the network
//! exactly as standalone talks to the engine in its own process.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use sluice_common::grpc::MAX_MESSAGE_BYTES;
use sluice_common::{Error, Result};
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_storage::{
    MoveTask, NewMessage, QueueConfig, QueueCounts, QueueId, ReceivedMessage, SentMessage,
};
use tonic::transport::{Channel, Endpoint};

use crate::api::QueueBackend;
use crate::convert;
use crate::service::LEADER_HEADER;

/// How often an idle or busy connection to a node is pinged, and how long a ping may wait.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest wait for an answer; a long poll gets its wait time on top.
    pub request_timeout: Duration,
    /// Attempts after the first for a call that failed with UNAVAILABLE.
    pub retries: usize,
    /// First and longest pause between attempts; each pause is jittered.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retries: 3,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Where a caller keeps the URL of a cluster's leader, as its nodes name it (see
/// [`RemoteBackend::with_leader_hint`]).
pub type LeaderHint = Arc<parking_lot::Mutex<Option<String>>>;

/// A lazily connected client of the `BackendService` at `endpoint`.
pub(crate) fn node_client(
    endpoint: &str,
    connect_timeout: Duration,
) -> Result<BackendServiceClient<Channel>> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|err| Error::invalid("backend endpoint", format!("{endpoint:?}: {err}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // A node cut off the network answers nothing, not even a reset: pings find that out in
        // seconds, failing its calls as UNAVAILABLE so they go to another node.
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(BackendServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A backend node reached over gRPC. Clones share the connection.
#[derive(Clone)]
pub struct RemoteBackend {
    client: BackendServiceClient<Channel>,
    options: ClientOptions,
    url: String,
    leader: LeaderHint,
}

impl RemoteBackend {
    /// A client of the node at `endpoint` (e.g. `http://10.0.0.5:7080`). Connects lazily, so a
    /// node that is down shows up as UNAVAILABLE on the first call rather than here.
    pub fn new(endpoint: &str, options: ClientOptions) -> Result<Self> {
        let client = node_client(endpoint, options.connect_timeout)?;
        Ok(RemoteBackend {
            client,
            options,
            url: endpoint.to_owned(),
            leader: LeaderHint::default(),
        })
    }

    /// Like [`new`](Self::new), writing the leader's URL into `leader` whenever a follower
    /// forwarded a call and named it, and clearing it when the leader it names cannot be
    /// reached; clients of one cluster's nodes share one hint.
    pub fn with_leader_hint(
        endpoint: &str,
        options: ClientOptions,
        leader: LeaderHint,
    ) -> Result<Self> {
        Ok(RemoteBackend {
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
            config: Some(convert::config_to_pb(config)),
            first_sequence,
        };
        let timeout = self.options.request_timeout;
        self.call(request, timeout, true, |mut c, r| async move {
            c.put_queue(r).await
        })
        .await?;
        Ok(())
    }

    /// Seals the queue's partition on this node's cluster; returns its config and the sequence
    /// number its next message would have had.
    pub async fn seal(&self, id: QueueId) -> Result<(QueueConfig, u64)> {
        let request = pb::SealQueueRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let sealed = self
            .call(request, timeout, true, |mut c, r| async move {
                c.seal_queue(r).await
            })
            .await?;
        Ok((
            convert::config_from_pb(sealed.config.unwrap_or_default()),
            sealed.next_sequence,
        ))
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.retries)
    }

    /// Calls `rpc` with `request` under `timeout`, retrying UNAVAILABLE with jittered
    /// exponential backoff when `retry` allows. The trace context goes along in the metadata.
    async fn call<Req, Resp, F, Fut>(
        &self,
        request: Req,
        timeout: Duration,
        retry: bool,
        rpc: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(BackendServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let attempt = || {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(timeout);
            sluice_common::telemetry::inject_trace(request.metadata_mut());
            let call = rpc(self.client.clone(), request);
            async move {
                let result = call
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
                    .map_err(from_status);
                if matches!(result, Err(Error::Unavailable(_))) {
                    let mut leader = self.leader.lock();
                    if leader.as_deref() == Some(self.url.as_str()) {
                        leader.take();
                    }
                }
                result
            }
        };
        let backoff = if retry {
            self.backoff()
        } else {
            self.backoff().with_max_times(0)
        };
        attempt
            .retry(backoff)
            .when(|err| matches!(err, Error::Unavailable(_)))
            .notify(
                |err, pause| tracing::debug!(error = %err, ?pause, "backend call failed, retrying"),
            )
            .await
    }
}

/// A status that a failed connection produced on this side (it carries the transport error as
/// its source, and tonic gives it code UNKNOWN) means the node could not be reached or went
/// away mid-call: UNAVAILABLE, as retry logic and callers expect. Anything else is the node's
/// own answer.
fn from_status(status: tonic::Status) -> Error {
    if sluice_common::error::is_transport_failure(&status) {
        return Error::Unavailable(format!("backend unreachable: {}", status.message()));
    }
    Error::from(status)
}

fn entries(results: pb::EntryResults) -> Vec<Result<()>> {
    results
        .results
        .into_iter()
        .map(convert::entry_from_pb)
        .collect()
}

#[async_trait]
impl QueueBackend for RemoteBackend {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        self.create_partition(id, &config, 0).await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        let request = pb::DropQueueRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        self.call(request, timeout, true, |mut c, r| async move {
            c.drop_queue(r).await
        })
        .await?;
        Ok(())
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        let request = pb::PurgeRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, true, |mut c, r| async move {
                c.purge(r).await
            })
            .await?;
        Ok(response.purged)
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        let request = pb::CountsRequest { queue_id: id };
        let timeout = self.options.request_timeout;
        let counts = self
            .call(request, timeout, true, |mut c, r| async move {
                c.counts(r).await
            })
            .await?;
        Ok(convert::counts_from_pb(counts))
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        // A send whose answer was lost may have been stored; trying again is safe only when
        // deduplication makes the second attempt a no-op.
        let retry = messages.iter().all(|m| !m.deduplication_id.is_empty());
        let request = pb::SendRequest {
            queue_id: id,
            messages: messages
                .into_iter()
                .map(convert::new_message_to_pb)
                .collect(),
        };
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, retry, |mut c, r| async move {
                c.send(r).await
            })
            .await?;
        Ok(response
            .messages
            .into_iter()
            .map(convert::sent_from_pb)
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
        // Retrying a receive whose answer was lost only leaves those messages in flight until
        // their visibility timeout: at-least-once delivery allows it.
        let timeout = self.options.request_timeout + wait;
        let response = self
            .call(request, timeout, true, |mut c, r| async move {
                c.receive(r).await
            })
            .await?;
        Ok(response
            .messages
            .into_iter()
            .map(convert::received_from_pb)
            .collect())
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        let request = pb::DeleteRequest {
            queue_id: id,
            receipt_handles: handles,
        };
        let timeout = self.options.request_timeout;
        let results = self
            .call(request, timeout, true, |mut c, r| async move {
                c.delete(r).await
            })
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
            .call(request, timeout, true, |mut c, r| async move {
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
        // Not retried: a second start would meet the first task and fail with a conflict.
        let timeout = self.options.request_timeout;
        let response = self
            .call(request, timeout, false, |mut c, r| async move {
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
            .call(request, timeout, true, |mut c, r| async move {
                c.list_move_tasks(r).await
            })
            .await?;
        response
            .tasks
            .into_iter()
            .map(convert::task_from_pb)
            .collect()
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        let request = pb::CancelMoveTaskRequest {
            source_queue_id: source,
            task_id: task,
        };
        let timeout = self.options.request_timeout;
        let task = self
            .call(request, timeout, true, |mut c, r| async move {
                c.cancel_move_task(r).await
            })
            .await?;
        convert::task_from_pb(task)
    }
}

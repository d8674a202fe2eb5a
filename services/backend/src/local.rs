//! The node's queues as the frontend-facing operations see them: the engine (replicated by the
//! node's Raft group, unless the node runs unreplicated), counting the messages that go in and
//! out for the node's load reports. The `BackendService` serves its RPCs through it, and
//! `sluice standalone` hands it to its frontend in the same process, so standalone skips
//! protobuf and the service's span for each call (the frontend's span covers it).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_api::{
    IdempotencyKey, MoveTask, NewMessage, QueueBackend, QueueConfig, QueueCounts, QueueId,
    ReceivedMessage, Result, SentMessage,
};
use sluice_storage::Engine;

/// Messages that went through this node, for its load reports.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Messages stored (duplicates excluded).
    pub messages_in: AtomicU64,
    /// Message deliveries.
    pub messages_out: AtomicU64,
}

#[derive(Clone)]
pub struct NodeQueues {
    engine: Engine,
    traffic: Arc<Traffic>,
}

impl NodeQueues {
    pub(crate) fn new(engine: Engine) -> Self {
        NodeQueues {
            engine,
            traffic: Arc::default(),
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    fn stored(&self, sent: Result<Vec<SentMessage>>) -> Result<Vec<SentMessage>> {
        if let Ok(sent) = &sent {
            let stored = sent.iter().filter(|m| !m.duplicate).count() as u64;
            self.traffic
                .messages_in
                .fetch_add(stored, Ordering::Relaxed);
        }
        sent
    }

    fn backend(&self) -> &dyn QueueBackend {
        &self.engine
    }
}

#[async_trait]
impl QueueBackend for NodeQueues {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        self.backend().create_queue(id, config).await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        self.backend().delete_queue(id).await
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        self.backend().purge_queue(id).await
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        self.backend().counts(id).await
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        self.stored(self.backend().send(id, messages).await)
    }

    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        self.stored(self.backend().send_idempotent(id, key, messages).await)
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let received = self.backend().receive(id, max, visibility, wait).await?;
        self.traffic
            .messages_out
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        Ok(received)
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        self.backend().delete(id, handles).await
    }

    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>> {
        self.backend().change_visibility(id, changes).await
    }

    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        self.backend()
            .start_move_task(source, destination, max_per_second)
            .await
    }

    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        self.backend().list_move_tasks(source).await
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        self.backend().cancel_move_task(source, task).await
    }
}

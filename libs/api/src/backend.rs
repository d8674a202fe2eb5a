//! What a frontend needs from the tier that stores messages. The engine in the same process
//! (standalone, tests) and the network client of a backend cluster (`sluice-client`'s
//! `BackendClient`) both implement it, so the frontend cannot tell them apart.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    FirstSend, IdempotencyKey, MoveTask, NewMessage, QueueConfig, QueueCounts, QueueId,
    ReceivedMessage, Result, SentMessage,
};

#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// True while this backend could not be reached lately (a node cut off or gone): a router
    /// tries the cluster's other nodes first. A backend in this process is always reachable.
    fn unreachable(&self) -> bool {
        false
    }
    /// Creates the queue, or updates its config if it exists.
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()>;
    async fn delete_queue(&self, id: QueueId) -> Result<()>;
    async fn purge_queue(&self, id: QueueId) -> Result<u64>;
    async fn counts(&self, id: QueueId) -> Result<QueueCounts>;
    /// Stores all the messages durably or none.
    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>>;
    /// Like [`send`](Self::send), and safe to call again with the same `key` and messages when
    /// the outcome was not heard: within the backend's idempotency window a send whose key was
    /// stored stores nothing and gets the first send's message ids and sequences back.
    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>>;
    /// For each deduplication id, the first send's answer if the queue stored a message with
    /// it within its deduplication window. Answers only once those sends are durable.
    async fn deduplicated(&self, id: QueueId, ids: Vec<String>) -> Result<Vec<Option<FirstSend>>>;
    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>>;
    /// One result per handle, in order.
    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>>;
    /// One result per change, in order.
    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>>;
    /// Starts moving the messages now in `source` to `destination` (`None`: back to the queues
    /// they were dead-lettered from); returns the task's id.
    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String>;
    /// The source's running task and its last ended ones, newest first.
    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>>;
    /// Stops a running task and returns it as it ended.
    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask>;
}

//! What the frontend needs from the tier that stores messages. Standalone implements it with the
//! engine in the same process; the network client to backend clusters implements it the same way.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use sluice_common::{Error, Result};
use sluice_storage::{
    Engine, MoveTask, NewMessage, QueueConfig, QueueCounts, QueueId, ReceivedMessage, SentMessage,
};

#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// Creates the queue, or updates its config if it exists.
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()>;
    async fn delete_queue(&self, id: QueueId) -> Result<()>;
    async fn purge_queue(&self, id: QueueId) -> Result<u64>;
    async fn counts(&self, id: QueueId) -> Result<QueueCounts>;
    /// Stores all the messages durably or none.
    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>>;
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

fn per_entry(results: Vec<sluice_storage::Result<()>>) -> Vec<Result<()>> {
    results
        .into_iter()
        .map(|r| r.map_err(Error::from))
        .collect()
}

#[async_trait]
impl QueueBackend for Engine {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        Ok(Engine::create_queue(self, id, config).await?)
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        Ok(Engine::delete_queue(self, id).await?)
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        Ok(Engine::purge_queue(self, id).await?)
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        Ok(Engine::counts(self, id)?)
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        Ok(Engine::send(self, id, messages).await?)
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        Ok(Engine::receive(self, id, max, visibility, wait).await?)
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        let handles: Vec<&str> = handles.iter().map(String::as_str).collect();
        Ok(per_entry(Engine::delete(self, id, &handles).await?))
    }

    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>> {
        let changes: Vec<(&str, Duration)> =
            changes.iter().map(|(h, d)| (h.as_str(), *d)).collect();
        Ok(per_entry(
            Engine::change_visibility(self, id, &changes).await?,
        ))
    }

    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        Ok(Engine::start_move_task(self, source, destination, max_per_second).await?)
    }

    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        Ok(Engine::list_move_tasks(self, source)?)
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        Ok(Engine::cancel_move_task(self, source, &task).await?)
    }
}

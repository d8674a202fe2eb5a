//! The engine as the tier that stores messages, for a caller in the same process
//! (`sluice standalone`, the backend service, tests): the same [`QueueBackend`] the frontend
//! reaches a backend cluster through over the network.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use sluice_api::{
    Error, FirstSend, IdempotencyKey, MoveTask, NewMessage, QueueBackend, QueueConfig, QueueCounts,
    QueueId, ReceivedMessage, Result, SentMessage,
};

use crate::Engine;

fn per_entry(results: Vec<crate::Result<()>>) -> Vec<Result<()>> {
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

    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        Ok(Engine::send_idempotent(self, id, key, messages).await?)
    }

    async fn deduplicated(&self, id: QueueId, ids: Vec<String>) -> Result<Vec<Option<FirstSend>>> {
        Ok(Engine::deduplicated(self, id, &ids)
            .await?
            .into_iter()
            .map(|found| {
                found.map(|(message_id, sequence)| FirstSend {
                    message_id,
                    sequence,
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

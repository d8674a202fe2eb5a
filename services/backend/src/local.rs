//! The node's queues as the frontend-facing operations see them: the engine (replicated by the
//! node's Raft group, unless the node runs unreplicated), counting the messages that go in and
//! out for the node's load reports. The `BackendService` serves its RPCs through it, and
//! `sluice standalone` hands it to its frontend in the same process, so standalone skips
//! protobuf and the service's span for each call (the frontend's span covers it).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_api::{
    AttributeValue, FirstSend, IdempotencyKey, MoveTask, NewMessage, QueueBackend, QueueConfig,
    QueueCounts, QueueId, ReceivedMessage, Result, SentMessage,
};
use sluice_storage::Engine;

/// Messages that went through this node, for its load reports.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Messages stored (duplicates excluded).
    pub messages_in: AtomicU64,
    /// Message deliveries.
    pub messages_out: AtomicU64,
    /// Bytes of those messages: bodies and attributes.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// The same per queue, one lock a send.
    queues: Mutex<HashMap<QueueId, QueueCounters>>,
}

/// One queue's traffic over a report period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueTraffic {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Default)]
struct QueueCounters {
    /// Since the last load report took it.
    period: QueueTraffic,
    /// Bytes and messages stored since the node started, for the mean message size.
    bytes_stored_in: u64,
    messages_stored_in: u64,
}

impl Traffic {
    fn count_in(&self, id: QueueId, messages: u64, bytes: u64) {
        self.messages_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        let mut queues = self.queues.lock();
        let queue = queues.entry(id).or_default();
        queue.period.messages_in += messages;
        queue.period.bytes_in += bytes;
        queue.messages_stored_in += messages;
        queue.bytes_stored_in += bytes;
    }

    fn count_out(&self, id: QueueId, messages: u64, bytes: u64) {
        self.messages_out.fetch_add(messages, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        let mut queues = self.queues.lock();
        let queue = &mut queues.entry(id).or_default().period;
        queue.messages_out += messages;
        queue.bytes_out += bytes;
    }

    /// Every queue's traffic since the last call, with the mean size of the messages sent to it
    /// since the node started (`None` if none were).
    pub fn take_queues(&self) -> HashMap<QueueId, (QueueTraffic, Option<u64>)> {
        self.queues
            .lock()
            .iter_mut()
            .map(|(id, queue)| {
                let mean = queue.bytes_stored_in.checked_div(queue.messages_stored_in);
                (*id, (std::mem::take(&mut queue.period), mean))
            })
            .collect()
    }

    /// Forgets a deleted queue.
    fn forget(&self, id: QueueId) {
        self.queues.lock().remove(&id);
    }
}

/// What a message weighs in the load reports: its body, and its attributes' names and values.
fn message_bytes<'a>(
    body: &[u8],
    attributes: impl IntoIterator<Item = (&'a String, &'a AttributeValue)>,
) -> u64 {
    let attributes: usize = attributes
        .into_iter()
        .map(|(name, value)| {
            name.len() + value.data_type.len() + value.string_value.len() + value.binary_value.len()
        })
        .sum();
    (body.len() + attributes) as u64
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

    /// Counts the messages, of the sizes given, that `sent` says were stored (not duplicates).
    fn stored(
        &self,
        id: QueueId,
        sizes: &[u64],
        sent: Result<Vec<SentMessage>>,
    ) -> Result<Vec<SentMessage>> {
        if let Ok(sent) = &sent {
            let (count, bytes) = sent
                .iter()
                .zip(sizes)
                .filter(|(m, _)| !m.duplicate)
                .fold((0, 0), |(count, bytes), (_, size)| {
                    (count + 1, bytes + size)
                });
            self.traffic.count_in(id, count, bytes);
        }
        sent
    }

    fn backend(&self) -> &dyn QueueBackend {
        &self.engine
    }
}

/// Each message's weight, taken before the send consumes them.
fn sizes(messages: &[NewMessage]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| message_bytes(&m.body, &m.attributes))
        .collect()
}

#[async_trait]
impl QueueBackend for NodeQueues {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        self.backend().create_queue(id, config).await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        self.backend().delete_queue(id).await?;
        self.traffic.forget(id);
        Ok(())
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        self.backend().purge_queue(id).await
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        self.backend().counts(id).await
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        let sizes = sizes(&messages);
        self.stored(id, &sizes, self.backend().send(id, messages).await)
    }

    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        let sizes = sizes(&messages);
        self.stored(
            id,
            &sizes,
            self.backend().send_idempotent(id, key, messages).await,
        )
    }

    async fn deduplicated(&self, id: QueueId, ids: Vec<String>) -> Result<Vec<Option<FirstSend>>> {
        self.backend().deduplicated(id, ids).await
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let received = self.backend().receive(id, max, visibility, wait).await?;
        let bytes = received
            .iter()
            .map(|m| message_bytes(&m.body, &m.attributes))
            .sum();
        self.traffic.count_out(id, received.len() as u64, bytes);
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

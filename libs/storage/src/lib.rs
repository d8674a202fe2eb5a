//! The Sluice queue engine: SQS-style standard queues stored durably in RocksDB.
//!
//! Messages live in RocksDB (payloads in one column family, a small per-message state record in
//! another); which message is visible, delayed or in flight is kept in memory per queue, rebuilt
//! from the state records at start-up, so a receive costs the same whatever the backlog.
//! Every acknowledged write goes through one writer thread that batches concurrent requests into
//! a single fsync'd RocksDB write (group commit).

mod commit;
mod engine;
mod error;
mod keys;
mod metrics;
mod queue;
mod receipt;
mod records;

pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use queue::QueueCounts;
pub use records::AttributeValue;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// Identifies a queue inside the engine; never reused, so a deleted queue's receipt handles and
/// records can never be mistaken for a new queue's.
pub type QueueId = u64;

/// What the engine must know of a queue on its own, without the metadata tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's public name, for logs and metric labels.
    pub name: String,
    /// Messages older than this are deleted.
    pub retention: Duration,
}

/// A message to store.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Not visible to receives until this has passed.
    pub delay: Duration,
    pub group_id: String,
}

/// The engine's answer to a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: String,
    /// Increases with every message the queue stores, across restarts.
    pub sequence: u64,
}

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub sent_timestamp_ms: u64,
    pub receive_count: u32,
    pub first_receive_timestamp_ms: u64,
    pub group_id: String,
    pub sequence: u64,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

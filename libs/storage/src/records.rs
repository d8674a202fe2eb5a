//! What is stored in RocksDB, as prost messages so fields can be added later without a
//! migration.

use std::collections::BTreeMap;

use bytes::Bytes;
use sluice_api::AttributeValue;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct QueueRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub retention_ms: u64,
    #[prost(bool, tag = "3")]
    pub fifo: bool,
    /// 0 when the queue has no dead-letter queue.
    #[prost(uint64, tag = "4")]
    pub dead_letter_queue: u64,
    #[prost(uint32, tag = "5")]
    pub max_receive_count: u32,
    /// The queue's partition moved to another backend cluster: no new sends, only draining.
    #[prost(bool, tag = "6")]
    pub sealed: bool,
    /// Sends are acknowledged once the leader holds them, before they are replicated.
    #[prost(bool, tag = "7")]
    pub async_replication: bool,
}

/// The immutable part of a message, written once at send.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    #[prost(btree_map = "string, message", tag = "3")]
    pub attributes: BTreeMap<String, AttributeValue>,
    #[prost(string, tag = "4")]
    pub group_id: String,
    /// Set on a message moved to a dead-letter queue: the queue it came from.
    #[prost(uint64, tag = "5")]
    pub source_queue: u64,
    #[prost(string, tag = "6")]
    pub source_queue_name: String,
    /// Hex MD5 of the body, computed once at send for every receive to return. Empty in
    /// records stored before it was kept; those are digested when read.
    #[prost(string, tag = "7")]
    pub md5_of_body: String,
    /// When the engine last moved the message to another queue (a dead-letter redrive, a move
    /// task); 0 for a message where it was sent. A dropped log entry's moved messages are no
    /// sends to make again: their source still holds them (`dropped.rs`).
    #[prost(uint64, tag = "8")]
    pub moved_ms: u64,
}

/// The small, mutable part of a message: rewritten on every receive and visibility change, and
/// all that start-up reads to rebuild the in-memory index.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StateRecord {
    #[prost(uint64, tag = "1")]
    pub sent_ms: u64,
    #[prost(uint64, tag = "2")]
    pub visible_at_ms: u64,
    #[prost(uint32, tag = "3")]
    pub receive_count: u32,
    #[prost(uint64, tag = "4")]
    pub first_receive_ms: u64,
    /// FIFO queues only: start-up needs it to rebuild each group's order.
    #[prost(string, tag = "5")]
    pub group_id: String,
}

/// A deduplication id seen within the window, and what its first send stored.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DedupRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    #[prost(uint64, tag = "3")]
    pub expires_ms: u64,
}

/// An idempotency key seen within its window, and which sequences its send stored.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SendOnceRecord {
    #[prost(uint64, tag = "1")]
    pub first_sequence: u64,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(uint64, tag = "3")]
    pub expires_ms: u64,
}

/// A task moving messages out of a dead-letter queue. Its progress is written in the same batch
/// as each move, so after a crash it resumes exactly where the last durable move left it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MoveTaskRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    /// 0: each message back to the queue it came from.
    #[prost(uint64, tag = "2")]
    pub destination: u64,
    #[prost(string, tag = "3")]
    pub destination_name: String,
    /// 0: as fast as the engine goes.
    #[prost(uint32, tag = "4")]
    pub max_per_second: u32,
    #[prost(enumeration = "crate::MoveTaskStatus", tag = "5")]
    pub status: i32,
    #[prost(uint64, tag = "6")]
    pub moved: u64,
    /// Messages to move when the task started.
    #[prost(uint64, tag = "7")]
    pub total: u64,
    /// Messages sent to the source after the task started (higher sequences) stay.
    #[prost(uint64, tag = "8")]
    pub last_sequence: u64,
    #[prost(string, tag = "9")]
    pub failure: String,
    #[prost(uint64, tag = "10")]
    pub started_ms: u64,
}

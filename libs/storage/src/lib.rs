//! The Sluice queue engine: SQS-style standard queues stored durably in RocksDB.
//!
//! Messages live in RocksDB (payloads in one column family, a small per-message state record in
//! another); which message is visible, delayed or in flight is kept in memory per queue, rebuilt
//! from the state records at start-up, so a receive costs the same whatever the backlog.
//! Every acknowledged write goes through one writer thread that batches concurrent requests into
//! a single RocksDB write, and a second thread fsyncs the WAL behind it once for every batch
//! written since its last fsync (group commit).
//!
//! On top of that: FIFO queues (one message of a group in flight at a time, in send order),
//! deduplication ids and idempotency keys remembered for a window, dead-letter moves after too many receives, and
//! tasks that move messages out of a dead-letter queue again.

mod backend;
pub mod background;
mod batch;
mod commit;
pub mod dbstats;
mod delivery;
pub mod disk;
mod dropped;
mod engine;
mod error;
mod keys;
mod lease;
mod metrics;
mod moves;
mod queue;
mod receipt;
mod records;
mod recovery;
mod replica;
pub mod wal;
mod window;

pub use commit::{Completion, Replicator};
pub use disk::DEFAULT_MIN_FREE_DISK_BYTES;
pub use dropped::DroppedSend;
pub use engine::{Engine, EngineOptions, DEFAULT_DEDUP_WINDOW, DEFAULT_IDEMPOTENCY_WINDOW};
pub use error::{Error, Result};
pub use lease::Lease;
pub use metrics::commit_totals;

// The words the engine's API is written in come from the shared vocabulary; the modules here
// name them as `crate::...`.
use sluice_api::{
    md5_of_body, now_ms, DeadLetter, IdempotencyKey, MoveTask, MoveTaskStatus, NewMessage,
    QueueConfig, QueueCounts, QueueId, ReceivedMessage, Replication, SentMessage,
};

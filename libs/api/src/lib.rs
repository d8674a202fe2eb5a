//! The words every Sluice tier shares: messages and queue settings as the engine stores them,
//! queue records and their attributes as the metadata tier keeps them, placements and the etcd
//! key layout, the limits of the public API, the one error type and its gRPC mapping, and the
//! [`QueueBackend`] a frontend stores messages through. No storage engine, no server, no
//! consensus here: a tier links this crate to speak to the others, not to be one of them.

mod backend;
pub mod cluster;
pub mod content;
mod directory;
pub mod error;
mod idempotency;
pub mod identity;
pub mod limits;
mod message;
pub mod metrics;
mod queue;
pub mod wire;

pub use backend::QueueBackend;
pub use directory::{DataKeyDirectory, PlacementDirectory, QueueDirectory};
pub use error::{Error, Result};
pub use idempotency::IdempotencyKey;
pub use identity::{AccessKey, Action, IdentityDirectory, Principal};
pub use message::{
    attach_system, md5_of_body, take_system, AttributeValue, DeadLetter, FirstSend, MoveTask,
    MoveTaskStatus, NewMessage, QueueConfig, QueueCounts, QueueId, ReceivedMessage, Replication,
    SentMessage, SystemAttributes, SYSTEM_ATTRIBUTE,
};
pub use queue::{
    EffectiveAttributes, QueueRecord, RateLimits, RedriveAllow, RedrivePolicy, Stored, Versioned,
};

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

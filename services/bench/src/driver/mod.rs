//! One trait for every system under test. The runner owns the workload, the pacing and all
//! measurement; a driver only creates queues, sends a batch and waits for it to be durably
//! acknowledged, and hands received messages back before acknowledging them.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub mod nats;
pub mod rabbitmq;
pub mod sluice;
pub mod sqs;

#[async_trait]
pub trait Driver: Send + Sync {
    /// Creates the queues, empty: whatever an earlier run left in them is removed.
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()>;

    /// Removes the queues and what is left in them.
    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()>;

    /// A producer for `queue`. `index` counts producers over the run, so a driver with several
    /// servers can spread them.
    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>>;

    async fn consumer(&self, queue: &str, index: usize) -> anyhow::Result<Box<dyn Consumer>>;
}

#[async_trait]
pub trait Producer: Send + Sync {
    /// Sends the bodies as one batch where the system has batches, and returns once every one
    /// is acknowledged as stored. Several sends of one producer may be in flight at once.
    async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()>;
}

#[async_trait]
pub trait Consumer: Send {
    /// The next messages' bodies, waiting about a second at most; empty if none came. They
    /// stay unacknowledged until `ack`.
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>>;

    /// Acknowledges (deletes) everything the last `receive` returned. A driver may leave the
    /// acknowledgement running and report its failure on a later call.
    async fn ack(&mut self) -> anyhow::Result<()>;

    /// Waits for acknowledgements still running, before the consumer stops.
    async fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Picks one of several server addresses for the `index`th client, so load spreads over a
/// cluster's nodes the same way for every system.
pub fn pick(urls: &[String], index: usize) -> &str {
    &urls[index % urls.len()]
}

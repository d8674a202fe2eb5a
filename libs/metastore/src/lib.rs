//! The metadata store: the source of truth for queues and, later, cluster membership. Services
//! talk to the `MetaStore` trait; standalone uses the embedded RocksDB implementation in its data
//! directory, the distributed deployment etcd (`EtcdStore`). The trait is the small subset of etcd's
//! model the services need: versioned keys, prefix listing and compare-and-swap.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod embedded;
mod etcd;
pub mod lease;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

use async_trait::async_trait;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("metadata store error: {0}")]
    Backend(String),
    #[error("corrupt metadata record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<Error> for sluice_common::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Backend(_) => sluice_common::Error::Unavailable(err.to_string()),
            Error::Corrupt { .. } => sluice_common::Error::Internal(err.to_string()),
        }
    }
}

/// A value with the revision at which it was last written; a compare-and-swap names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: u64,
}

#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Keys starting with `prefix`, in order, strictly after `start_after` (empty: from the
    /// first), at most `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>>;

    /// Writes `value` only if `key` is absent. Returns the new revision, or `None` if the key
    /// exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Option<u64>>;

    /// Writes `value` only if `key` is still at `revision`. Returns the new revision, or `None`
    /// if the key changed or vanished.
    async fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<Option<u64>>;

    /// Deletes `key` if it is still at `revision`. Returns whether it did.
    async fn delete(&self, key: &str, revision: u64) -> Result<bool>;

    /// Atomically increments the counter under `key` and returns the new value (first is 1).
    async fn next_id(&self, key: &str) -> Result<u64>;
}

/// Decodes a counter written by `next_id`: 8 bytes, big-endian.
pub(crate) fn counter_value(key: &str, value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| Error::Corrupt {
        key: key.to_owned(),
        reason: "counter is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

//! The metadata store: the source of truth for queues and, later, cluster membership. Services
//! talk to the `MetaStore` trait; standalone uses the embedded RocksDB implementation in its data
//! directory (feature `embedded`, so the tiers that only speak to etcd do not link RocksDB), the distributed deployment etcd (`EtcdStore`). The trait is the small subset of etcd's
//! model the services need: versioned keys, prefix listing and compare-and-swap.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod directory;
#[cfg(feature = "embedded")]
mod embedded;
mod etcd;
pub mod lease;
pub mod watch;

pub use directory::StoreDirectory;
#[cfg(feature = "embedded")]
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

impl From<Error> for sluice_api::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Backend(_) => sluice_api::Error::Unavailable(err.to_string()),
            Error::Corrupt { .. } => sluice_api::Error::Internal(err.to_string()),
        }
    }
}

pub use sluice_api::Versioned;

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

    /// Atomically takes the next `count` values (at least one) of the counter under `key`, and
    /// returns the first of them: the values from it to it plus `count - 1` were never handed
    /// out before. The first value a counter hands out is 1.
    async fn next_ids(&self, key: &str, count: u64) -> Result<u64>;
}

/// Decodes a counter written by `next_ids` (the last value handed out): 8 bytes, big-endian.
pub(crate) fn counter_value(key: &str, value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| Error::Corrupt {
        key: key.to_owned(),
        reason: "counter is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

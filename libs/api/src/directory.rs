//! Where queue records live, as a frontend sees it: the metadata tier over the network
//! (`sluice-client`'s `MetadataClient`), or the metadata store in the same process
//! (`sluice-metastore`'s `StoreDirectory`, for standalone and tests). Every write is a
//! compare-and-swap on the revision a record was read at.

use async_trait::async_trait;

use crate::{QueueId, QueueRecord, Result, Stored};

#[async_trait]
pub trait QueueDirectory: Send + Sync + 'static {
    /// The queue's record and the revision it was read at; `None` if there is no such queue.
    async fn get_queue(&self, name: &str) -> Result<Option<Stored>>;

    /// Names starting with `prefix`, in order, after `start_after` (empty: from the first), at
    /// most `limit`.
    async fn list_queues(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Stores a new record; its revision, or `None` if the name is taken.
    async fn create_queue(&self, record: &QueueRecord) -> Result<Option<u64>>;

    /// Replaces the record if it is still at `revision`; the new revision, or `None` if it
    /// changed or vanished meanwhile.
    async fn update_queue(&self, record: &QueueRecord, revision: u64) -> Result<Option<u64>>;

    /// Deletes the record if it is still at `revision`; whether it did.
    async fn delete_queue(&self, name: &str, revision: u64) -> Result<bool>;

    /// A queue id never handed out before.
    async fn allocate_queue_id(&self) -> Result<QueueId>;
}

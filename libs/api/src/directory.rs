//! Where queue records live, as a frontend sees it: the metadata tier over the network
//! (`sluice-client`'s `MetadataClient`), or the metadata store in the same process
//! (`sluice-metastore`'s `StoreDirectory`, which the metadata tier writes etcd with too).
//! Every write is a compare-and-swap on the revision a record was read at.

use async_trait::async_trait;

use crate::cluster::Placement;
use crate::identity::Sealed;
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

/// Where queues' data keys live, sealed under the master key: the metadata tier over the
/// network, or the store in the same process (standalone). A key outlives its queue, since
/// messages moved to a dead-letter queue stay encrypted under it.
#[async_trait]
pub trait DataKeyDirectory: Send + Sync + 'static {
    /// Queue `id`'s data key and the revision it was read at; `None` if it has none.
    async fn data_key(&self, id: QueueId) -> Result<Option<(Sealed, u64)>>;

    /// Stores queue `id`'s data key: a new one if `revision` is `None` (and the queue has
    /// none), else only if it is still at `revision`. The new revision, or `None` if the
    /// compare failed.
    async fn put_data_key(
        &self,
        id: QueueId,
        key: &Sealed,
        revision: Option<u64>,
    ) -> Result<Option<u64>>;

    /// Data keys of the queues after `after` in id order, at most `limit`, with revisions.
    async fn data_keys(&self, after: QueueId, limit: usize) -> Result<Vec<(QueueId, Sealed, u64)>>;
}

/// Where queues live, as a frontend routes to them: each queue's placement on a backend
/// cluster, made by the managers' policy, and each cluster's live nodes. The metadata tier over
/// the network (`MetadataClient`), or the store and node in the same process (standalone).
#[async_trait]
pub trait PlacementDirectory: Send + Sync + 'static {
    /// Where queue `id`'s partitions are, and the revision it was read at; `None` if the queue
    /// was never placed or its placement was removed.
    async fn placement(&self, id: QueueId) -> Result<Option<(Placement, u64)>>;

    /// Places queue `id` (named `queue`) if it is not placed yet, and returns its cluster:
    /// `colocate_with`'s cluster if given, otherwise the policy's choice.
    async fn place(
        &self,
        id: QueueId,
        queue: &str,
        colocate_with: Option<QueueId>,
    ) -> Result<String>;

    /// Removes queue `id`'s placement if it is still at `revision`; whether it did.
    async fn delete_placement(&self, id: QueueId, revision: u64) -> Result<bool>;

    /// The live nodes of backend cluster `cluster`: (node, URL).
    async fn cluster_nodes(&self, cluster: &str) -> Result<Vec<(String, String)>>;
}

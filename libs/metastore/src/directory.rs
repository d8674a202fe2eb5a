//! Queue records in a metadata store: keys, values and ids as docs/etcd-keys.md lays them out.
//! The metadata tier writes etcd through it, and a frontend in the same process as its store
//! (standalone, tests) uses it as its directory, so both write records alike.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_api::{cluster, QueueDirectory, QueueId, QueueRecord, Result, Stored};

use crate::MetaStore;

pub struct StoreDirectory {
    store: Arc<dyn MetaStore>,
}

impl StoreDirectory {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        StoreDirectory { store }
    }

    /// Takes `count` queue ids (at least one) never handed out before; returns the first.
    pub async fn allocate_queue_ids(&self, count: u64) -> Result<QueueId> {
        Ok(self
            .store
            .next_ids(cluster::QUEUE_ID_COUNTER, count)
            .await?)
    }
}

#[async_trait]
impl QueueDirectory for StoreDirectory {
    async fn get_queue(&self, name: &str) -> Result<Option<Stored>> {
        let key = cluster::queue_record_key("", name);
        match self.store.get(&key).await? {
            Some(value) => Stored::decode(&key, value).map(Some),
            None => Ok(None),
        }
    }

    async fn list_queues(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let (prefix, start_after) = cluster::queue_list_range("", prefix, start_after);
        let mut names = Vec::new();
        for (key, _) in self.store.list(&prefix, &start_after, limit).await? {
            names.push(cluster::queue_name_of("", &key).to_owned());
        }
        Ok(names)
    }

    async fn create_queue(&self, record: &QueueRecord) -> Result<Option<u64>> {
        let key = cluster::queue_record_key("", &record.name);
        Ok(self.store.create(&key, record.encode()).await?)
    }

    async fn update_queue(&self, record: &QueueRecord, revision: u64) -> Result<Option<u64>> {
        let key = cluster::queue_record_key("", &record.name);
        Ok(self.store.update(&key, record.encode(), revision).await?)
    }

    async fn delete_queue(&self, name: &str, revision: u64) -> Result<bool> {
        let key = cluster::queue_record_key("", name);
        Ok(self.store.delete(&key, revision).await?)
    }

    async fn allocate_queue_id(&self) -> Result<QueueId> {
        // A frontend in the same process as its store takes one id per local write: no block
        // to keep.
        self.allocate_queue_ids(1).await
    }
}

//! Queue records, principals and access keys in a metadata store: keys, values and ids as
//! docs/etcd-keys.md lays them out. The metadata tier writes etcd through it, and a frontend in
//! the same process as its store (standalone, tests) uses it as its directory, so both write
//! records alike.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_api::identity::Sealed;
use sluice_api::{
    cluster, AccessKey, DataKeyDirectory, IdentityDirectory, Principal, QueueDirectory, QueueId,
    QueueRecord, Result, Stored,
};

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
        let first = self
            .store
            .next_ids(cluster::QUEUE_ID_COUNTER, count)
            .await?;
        // A spread queue's partitions are stored under ids that hold the queue's id in 40 bits.
        if first.saturating_add(count.max(1) - 1) > cluster::MAX_QUEUE_ID {
            return Err(sluice_api::Error::ResourceExhausted(format!(
                "queue ids are used up (at most {})",
                cluster::MAX_QUEUE_ID
            )));
        }
        Ok(first)
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

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|err| {
        crate::Error::Corrupt {
            key: key.to_owned(),
            reason: err.to_string(),
        }
        .into()
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("identity records serialize")
}

/// A page of keys scanned at a time while filtering access keys by principal.
const KEY_SCAN_PAGE: usize = 500;

#[async_trait]
impl IdentityDirectory for StoreDirectory {
    async fn principal(&self, name: &str) -> Result<Option<(Principal, u64)>> {
        let key = cluster::principal_key("", name);
        match self.store.get(&key).await? {
            Some(v) => Ok(Some((decode(&key, &v.value)?, v.revision))),
            None => Ok(None),
        }
    }

    async fn principals(&self, start_after: &str, limit: usize) -> Result<Vec<Principal>> {
        let prefix = cluster::principal_key("", "");
        let after = if start_after.is_empty() {
            String::new()
        } else {
            cluster::principal_key("", start_after)
        };
        self.store
            .list(&prefix, &after, limit)
            .await?
            .iter()
            .map(|(key, v)| decode(key, &v.value))
            .collect()
    }

    async fn put_principal(
        &self,
        principal: &Principal,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let key = cluster::principal_key("", &principal.name);
        let value = encode(principal);
        Ok(match revision {
            None => self.store.create(&key, value).await?,
            Some(revision) => self.store.update(&key, value, revision).await?,
        })
    }

    async fn delete_principal(&self, name: &str, revision: u64) -> Result<bool> {
        let key = cluster::principal_key("", name);
        Ok(self.store.delete(&key, revision).await?)
    }

    async fn access_key(&self, id: &str) -> Result<Option<(AccessKey, u64)>> {
        let key = cluster::access_key_key("", id);
        match self.store.get(&key).await? {
            Some(v) => Ok(Some((decode(&key, &v.value)?, v.revision))),
            None => Ok(None),
        }
    }

    async fn access_keys(
        &self,
        principal: Option<&str>,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<AccessKey>> {
        let prefix = cluster::access_key_key("", "");
        let mut after = if start_after.is_empty() {
            String::new()
        } else {
            cluster::access_key_key("", start_after)
        };
        let mut keys = Vec::new();
        loop {
            let page = self.store.list(&prefix, &after, KEY_SCAN_PAGE).await?;
            for (key, v) in &page {
                let access_key: AccessKey = decode(key, &v.value)?;
                if principal.is_none_or(|p| p == access_key.principal) {
                    keys.push(access_key);
                    if keys.len() == limit {
                        return Ok(keys);
                    }
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == KEY_SCAN_PAGE => after = last.clone(),
                _ => return Ok(keys),
            }
        }
    }

    async fn put_access_key(&self, key: &AccessKey, revision: Option<u64>) -> Result<Option<u64>> {
        let path = cluster::access_key_key("", &key.id);
        let value = encode(key);
        Ok(match revision {
            None => self.store.create(&path, value).await?,
            Some(revision) => self.store.update(&path, value, revision).await?,
        })
    }

    async fn delete_access_key(&self, id: &str, revision: u64) -> Result<bool> {
        let key = cluster::access_key_key("", id);
        Ok(self.store.delete(&key, revision).await?)
    }
}

#[async_trait]
impl DataKeyDirectory for StoreDirectory {
    async fn data_key(&self, id: QueueId) -> Result<Option<(Sealed, u64)>> {
        let key = cluster::data_key_key("", id);
        match self.store.get(&key).await? {
            Some(v) => Ok(Some((decode(&key, &v.value)?, v.revision))),
            None => Ok(None),
        }
    }

    async fn put_data_key(
        &self,
        id: QueueId,
        sealed: &Sealed,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let key = cluster::data_key_key("", id);
        let value = encode(sealed);
        Ok(match revision {
            None => self.store.create(&key, value).await?,
            Some(revision) => self.store.update(&key, value, revision).await?,
        })
    }

    async fn data_keys(&self, after: QueueId, limit: usize) -> Result<Vec<(QueueId, Sealed, u64)>> {
        let prefix = cluster::data_keys_prefix("");
        let start = if after == 0 {
            String::new()
        } else {
            cluster::data_key_key("", after)
        };
        self.store
            .list(&prefix, &start, limit)
            .await?
            .into_iter()
            .map(|(key, v)| {
                let id = key[prefix.len()..]
                    .parse()
                    .map_err(|_| crate::Error::Corrupt {
                        key: key.clone(),
                        reason: "not a queue id".into(),
                    })?;
                Ok((id, decode(&key, &v.value)?, v.revision))
            })
            .collect()
    }
}

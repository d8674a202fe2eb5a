//! Queue records in the metadata store, under `queues/<name>`, as JSON so operators can read
//! them with the store's own tools.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_common::{Error, Result};
use sluice_metastore::MetaStore;
use sluice_storage::QueueId;

use crate::validate::EffectiveAttributes;

const QUEUE_PREFIX: &str = "queues/";
const QUEUE_ID_COUNTER: &str = "ids/queue";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueRecord {
    pub id: QueueId,
    pub name: String,
    pub attributes: EffectiveAttributes,
    #[serde(default)]
    pub tags: HashMap<String, String>,
    pub created_at_ms: u64,
}

/// A record together with the store revision it was read at.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: QueueRecord,
    pub revision: u64,
}

#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn MetaStore>,
}

fn key(name: &str) -> String {
    format!("{QUEUE_PREFIX}{name}")
}

fn decode(key: &str, raw: &[u8]) -> Result<QueueRecord> {
    serde_json::from_slice(raw)
        .map_err(|err| Error::Internal(format!("queue record {key} is corrupt: {err}")))
}

impl Catalog {
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Catalog { store }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let key = key(name);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(Stored {
                record: decode(&key, &v.value)?,
                revision: v.revision,
            })),
        }
    }

    /// The queue's record, or NOT_FOUND naming it.
    pub async fn require(&self, name: &str) -> Result<Stored> {
        self.get(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))
    }

    pub async fn allocate_id(&self) -> Result<QueueId> {
        Ok(self.store.next_id(QUEUE_ID_COUNTER).await?)
    }

    /// Stores a new record; `false` if the name is taken.
    pub async fn create(&self, record: &QueueRecord) -> Result<bool> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(self
            .store
            .create(&key(&record.name), value)
            .await?
            .is_some())
    }

    /// Replaces the record if it is still at `revision`; `false` if it changed meanwhile.
    pub async fn update(&self, record: &QueueRecord, revision: u64) -> Result<bool> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(self
            .store
            .update(&key(&record.name), value, revision)
            .await?
            .is_some())
    }

    pub async fn delete(&self, name: &str, revision: u64) -> Result<bool> {
        Ok(self.store.delete(&key(name), revision).await?)
    }

    /// Names starting with `prefix`, after `start_after`, at most `limit`.
    pub async fn list(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<String>> {
        let start_after = if start_after.is_empty() {
            String::new()
        } else {
            key(start_after)
        };
        let rows = self.store.list(&key(prefix), &start_after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(k, _)| k[QUEUE_PREFIX.len()..].to_owned())
            .collect())
    }
}

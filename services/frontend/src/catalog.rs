//! Queue records in the metadata store, under `queues/<name>`, as JSON so operators can read
//! them with the store's own tools.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Queue records cached by name, so a send or receive does not read and parse its queue's record
/// from the store every time. Every write goes through this catalog and drops the entry; in
/// standalone the catalog is the store's only writer, so the cache never serves a stale record.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn MetaStore>,
    cache: moka::sync::Cache<String, Stored>,
    /// With a TTL: the last record read of each queue, kept past the TTL. When the fresh copy
    /// has expired, a request uses this one at once while a background read refreshes it, so a
    /// slow or stalled metadata tier does not hold up requests to queues seen before.
    last_known: Option<moka::sync::Cache<String, Stored>>,
    refreshing: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    /// Bumped by every write, so a read that raced with a write does not leave the record it read
    /// before the write in the cache.
    writes: Arc<AtomicU64>,
}

/// Queue records kept in memory at most; each is a few hundred bytes.
const CACHED_RECORDS: u64 = 100_000;

fn key(name: &str) -> String {
    // Relative to the store's root, which the store adds.
    sluice_common::cluster::queue_record_key("", name)
}

fn decode(key: &str, raw: &[u8]) -> Result<QueueRecord> {
    serde_json::from_slice(raw)
        .map_err(|err| Error::Internal(format!("queue record {key} is corrupt: {err}")))
}

impl Catalog {
    /// A catalog that is its store's only writer (standalone): cached records never go stale.
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self::build(store, moka::sync::Cache::new(CACHED_RECORDS), None)
    }

    /// A catalog beside other writers (other frontends): a cached record is trusted for `ttl` at
    /// most, which bounds how long a change made elsewhere takes to be seen here.
    pub fn with_ttl(store: Arc<dyn MetaStore>, ttl: std::time::Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(CACHED_RECORDS)
            .time_to_live(ttl)
            .build();
        let last_known = moka::sync::Cache::new(CACHED_RECORDS);
        Self::build(store, cache, Some(last_known))
    }

    fn build(
        store: Arc<dyn MetaStore>,
        cache: moka::sync::Cache<String, Stored>,
        last_known: Option<moka::sync::Cache<String, Stored>>,
    ) -> Self {
        Catalog {
            store,
            cache,
            last_known,
            refreshing: Arc::default(),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads the record from the store and caches it (or forgets it, if it is gone).
    async fn load(&self, name: &str) -> Result<Option<Stored>> {
        let before = self.writes.load(Ordering::SeqCst);
        let key = key(name);
        let Some(v) = self.store.get(&key).await? else {
            if let Some(last_known) = &self.last_known {
                last_known.invalidate(name);
            }
            return Ok(None);
        };
        let stored = Stored {
            record: decode(&key, &v.value)?,
            revision: v.revision,
        };
        self.cache.insert(name.to_owned(), stored.clone());
        if let Some(last_known) = &self.last_known {
            last_known.insert(name.to_owned(), stored.clone());
        }
        // A write that landed since the read may have dropped the entry before we put ours in;
        // drop it again. (A write after this check drops it itself.)
        if self.writes.load(Ordering::SeqCst) != before {
            self.forget(name);
        }
        Ok(Some(stored))
    }

    fn forget(&self, name: &str) {
        self.cache.invalidate(name);
        if let Some(last_known) = &self.last_known {
            last_known.invalidate(name);
        }
    }

    /// Refreshes `name` in the background, once at a time per queue.
    fn refresh(&self, name: &str) {
        if !self.refreshing.lock().insert(name.to_owned()) {
            return;
        }
        let catalog = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            if let Err(err) = catalog.load(&name).await {
                tracing::warn!(queue = %name, error = %err, "cannot refresh the queue record; using the last one read");
            }
            catalog.refreshing.lock().remove(&name);
        });
    }

    pub async fn get(&self, name: &str) -> Result<Option<Stored>> {
        if let Some(hit) = self.cache.get(name) {
            return Ok(Some(hit));
        }
        if let Some(known) = self.last_known.as_ref().and_then(|l| l.get(name)) {
            self.refresh(name);
            return Ok(Some(known));
        }
        self.load(name).await
    }

    /// Called after every write to the store: counts it, then drops the cached record.
    fn written(&self, name: &str) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.forget(name);
    }

    /// The queue's record, or NOT_FOUND naming it.
    pub async fn require(&self, name: &str) -> Result<Stored> {
        self.get(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))
    }

    /// The queue's record as the store has it now, for a caller that keeps it a long time (a
    /// Consume stream) rather than one request: a record cached from before the queue was
    /// deleted and created again would name a queue that no longer exists.
    pub async fn require_fresh(&self, name: &str) -> Result<Stored> {
        self.load(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))
    }

    pub async fn allocate_id(&self) -> Result<QueueId> {
        Ok(self.store.next_id(QUEUE_ID_COUNTER).await?)
    }

    /// Stores a new record; `false` if the name is taken.
    pub async fn create(&self, record: &QueueRecord) -> Result<bool> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        let created = self.store.create(&key(&record.name), value).await?;
        self.written(&record.name);
        Ok(created.is_some())
    }

    /// Replaces the record if it is still at `revision`; `false` if it changed meanwhile.
    pub async fn update(&self, record: &QueueRecord, revision: u64) -> Result<bool> {
        let value = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
        let updated = self
            .store
            .update(&key(&record.name), value, revision)
            .await?;
        self.written(&record.name);
        Ok(updated.is_some())
    }

    pub async fn delete(&self, name: &str, revision: u64) -> Result<bool> {
        let deleted = self.store.delete(&key(name), revision).await?;
        self.written(name);
        Ok(deleted)
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

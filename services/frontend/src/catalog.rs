//! Queue records cached in front of the [`QueueDirectory`] that holds them: the metadata tier,
//! or in standalone the metadata store in the same process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_api::{Error, QueueDirectory, QueueId, QueueRecord, Result, Stored};

use crate::metrics;

/// Queue records cached by name, so a send or receive does not read and parse its queue's record
/// from the store every time. Every write goes through this catalog and drops the entry; in
/// standalone the catalog is the store's only writer, so the cache never serves a stale record.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn QueueDirectory>,
    cache: moka::sync::Cache<String, Stored>,
    /// With a TTL: the last record read of each queue, kept past the TTL. When the fresh copy
    /// has expired, a request uses this one at once while a background read refreshes it, so a
    /// slow or stalled metadata tier does not hold up requests to queues seen before.
    last_known: Option<moka::sync::Cache<String, Stored>>,
    refreshing: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    /// Names the store had no queue under when last asked, for a moment: a client that keeps
    /// calling a queue that does not exist costs the store one read per `MISSING_TTL`, not one
    /// per request.
    missing: moka::sync::Cache<String, ()>,
    /// Bumped by every write, so a read that raced with a write does not leave the record it read
    /// before the write in the cache.
    writes: Arc<AtomicU64>,
}

/// Queue records kept in memory at most; each is a few hundred bytes.
const CACHED_RECORDS: u64 = 100_000;

/// How long a name with no queue is remembered as such: a queue created through another
/// frontend is found here within this bound (or the record TTL, if shorter). A create through
/// this catalog forgets it at once.
const MISSING_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl Catalog {
    /// A catalog that is its store's only writer (standalone): cached records never go stale.
    pub fn new(store: Arc<dyn QueueDirectory>) -> Self {
        Self::build(
            store,
            moka::sync::Cache::new(CACHED_RECORDS),
            None,
            MISSING_TTL,
        )
    }

    /// A catalog beside other writers (other frontends): a cached record is trusted for `ttl` at
    /// most, which bounds how long a change made elsewhere takes to be seen here.
    pub fn with_ttl(store: Arc<dyn QueueDirectory>, ttl: std::time::Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(CACHED_RECORDS)
            .time_to_live(ttl)
            .build();
        let last_known = moka::sync::Cache::new(CACHED_RECORDS);
        Self::build(store, cache, Some(last_known), ttl.min(MISSING_TTL))
    }

    fn build(
        store: Arc<dyn QueueDirectory>,
        cache: moka::sync::Cache<String, Stored>,
        last_known: Option<moka::sync::Cache<String, Stored>>,
        missing_ttl: std::time::Duration,
    ) -> Self {
        Catalog {
            store,
            cache,
            last_known,
            refreshing: Arc::default(),
            missing: moka::sync::Cache::builder()
                .max_capacity(CACHED_RECORDS)
                .time_to_live(missing_ttl)
                .build(),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Reads the record from the store and caches it (or forgets it, if it is gone).
    async fn load(&self, name: &str) -> Result<Option<Stored>> {
        let before = self.writes.load(Ordering::SeqCst);
        let Some(stored) = self.store.get_queue(name).await? else {
            if let Some(last_known) = &self.last_known {
                last_known.invalidate(name);
            }
            self.missing.insert(name.to_owned(), ());
            if self.writes.load(Ordering::SeqCst) != before {
                self.missing.invalidate(name);
            }
            return Ok(None);
        };
        self.missing.invalidate(name);
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
        self.missing.invalidate(name);
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
            metrics::cache_lookup("queues", "hit");
            return Ok(Some(hit));
        }
        if self.missing.contains_key(name) {
            metrics::cache_lookup("queues", "hit");
            return Ok(None);
        }
        if let Some(known) = self.last_known.as_ref().and_then(|l| l.get(name)) {
            metrics::cache_lookup("queues", "stale");
            self.refresh(name);
            return Ok(Some(known));
        }
        metrics::cache_lookup("queues", "miss");
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
    /// Consume stream) rather than one request, or that found the cached one names a queue that
    /// is gone: a record cached from before the queue was deleted and created again would name
    /// a queue that no longer exists.
    pub async fn require_fresh(&self, name: &str) -> Result<Stored> {
        self.load(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))
    }

    pub async fn allocate_id(&self) -> Result<QueueId> {
        self.store.allocate_queue_id().await
    }

    /// Stores a new record; `false` if the name is taken.
    pub async fn create(&self, record: &QueueRecord) -> Result<bool> {
        let created = self.store.create_queue(record).await?;
        self.written(&record.name);
        Ok(created.is_some())
    }

    /// Replaces the record if it is still at `revision`; `false` if it changed meanwhile.
    pub async fn update(&self, record: &QueueRecord, revision: u64) -> Result<bool> {
        let updated = self.store.update_queue(record, revision).await?;
        self.written(&record.name);
        Ok(updated.is_some())
    }

    pub async fn delete(&self, name: &str, revision: u64) -> Result<bool> {
        let deleted = self.store.delete_queue(name, revision).await?;
        self.written(name);
        Ok(deleted)
    }

    /// Names starting with `prefix`, after `start_after`, at most `limit`.
    pub async fn list(&self, prefix: &str, start_after: &str, limit: usize) -> Result<Vec<String>> {
        self.store.list_queues(prefix, start_after, limit).await
    }
}

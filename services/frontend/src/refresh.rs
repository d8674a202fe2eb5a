//! Values read from the metadata tier and trusted for a while: fresh for a TTL, and past it the
//! last value read is still served at once while one background read per key refreshes it. A
//! stalled metadata tier therefore does not hold up requests for keys seen before. Both caches
//! are bounded: past `capacity` keys the least used are dropped and read again when next needed.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_api::Result;

use crate::metrics;

pub struct Refreshing<K, V> {
    /// The cache's name in `sluice_frontend_cache_lookups_total`.
    name: &'static str,
    fresh: moka::sync::Cache<K, V>,
    known: moka::sync::Cache<K, V>,
    refreshing: Arc<Mutex<HashSet<K>>>,
}

impl<K, V> Refreshing<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Values are fresh for `ttl`; at most `capacity` keys are kept.
    pub fn new(name: &'static str, ttl: Duration, capacity: u64) -> Self {
        Refreshing {
            name,
            fresh: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            known: moka::sync::Cache::new(capacity),
            refreshing: Arc::default(),
        }
    }

    /// The value of `key`: fresh from the cache, else the last one read (refreshed in the
    /// background by `load`), else read by `load` now.
    pub async fn get<F, Fut>(&self, key: &K, load: F) -> Result<V>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        if let Some(value) = self.fresh.get(key) {
            metrics::cache_lookup(self.name, "hit");
            return Ok(value);
        }
        match self.known.get(key) {
            Some(value) => {
                metrics::cache_lookup(self.name, "stale");
                self.refresh(key, load);
                Ok(value)
            }
            None => {
                metrics::cache_lookup(self.name, "miss");
                self.reload(key, load).await
            }
        }
    }

    /// Reads `key` again now, whatever is cached.
    pub async fn reload<F, Fut>(&self, key: &K, load: F) -> Result<V>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        let value = load(key.clone()).await?;
        self.insert(key.clone(), value.clone());
        Ok(value)
    }

    /// Marks `key` stale: the next `get` refreshes it (serving the last value meanwhile).
    pub fn expire(&self, key: &K) {
        self.fresh.invalidate(key);
    }

    /// Forgets `key` entirely.
    pub fn forget(&self, key: &K) {
        self.fresh.invalidate(key);
        self.known.invalidate(key);
    }

    fn insert(&self, key: K, value: V) {
        self.known.insert(key.clone(), value.clone());
        self.fresh.insert(key, value);
    }

    fn refresh<F, Fut>(&self, key: &K, load: F)
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        let read = load(key.clone());
        let (fresh, known, refreshing) = (
            self.fresh.clone(),
            self.known.clone(),
            self.refreshing.clone(),
        );
        let key = key.clone();
        tokio::spawn(async move {
            match read.await {
                Ok(value) => {
                    known.insert(key.clone(), value.clone());
                    fresh.insert(key.clone(), value);
                }
                Err(err) => {
                    tracing::warn!(key = ?key, error = %err, "cannot refresh from the metadata tier; using the last value read")
                }
            }
            refreshing.lock().remove(&key);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn keeps_at_most_its_capacity_and_reads_a_dropped_key_again() {
        let cache = Refreshing::new("test", Duration::from_secs(3600), 10);
        let reads = Arc::new(AtomicUsize::new(0));
        let load = |reads: Arc<AtomicUsize>| {
            move |key: u64| async move {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(key * 2)
            }
        };
        for key in 0..1000u64 {
            assert_eq!(cache.get(&key, load(reads.clone())).await.unwrap(), key * 2);
        }
        cache.fresh.run_pending_tasks();
        cache.known.run_pending_tasks();
        assert!(
            cache.fresh.entry_count() <= 10,
            "{}",
            cache.fresh.entry_count()
        );
        assert!(
            cache.known.entry_count() <= 10,
            "{}",
            cache.known.entry_count()
        );
        assert_eq!(reads.load(Ordering::SeqCst), 1000);

        // Keys dropped from both caches are read again, and their values are right.
        let dropped: Vec<u64> = (0..1000)
            .filter(|k| !cache.fresh.contains_key(k) && !cache.known.contains_key(k))
            .take(5)
            .collect();
        assert_eq!(dropped.len(), 5);
        for key in &dropped {
            assert_eq!(cache.get(key, load(reads.clone())).await.unwrap(), key * 2);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1005);
    }
}

//! Values read from the metadata tier and trusted for a while: fresh for a TTL, and past it the
//! last value read is still served at once while one background read per key refreshes it. A
//! stalled metadata tier therefore does not hold up requests for keys seen before.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_api::Result;

pub struct Refreshing<K, V> {
    fresh: moka::sync::Cache<K, V>,
    known: Arc<Mutex<HashMap<K, V>>>,
    refreshing: Arc<Mutex<HashSet<K>>>,
}

impl<K, V> Refreshing<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(ttl: Duration) -> Self {
        Refreshing {
            fresh: moka::sync::Cache::builder().time_to_live(ttl).build(),
            known: Arc::default(),
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
            return Ok(value);
        }
        let known = self.known.lock().get(key).cloned();
        match known {
            Some(value) => {
                self.refresh(key, load);
                Ok(value)
            }
            None => self.reload(key, load).await,
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
        self.known.lock().remove(key);
    }

    fn insert(&self, key: K, value: V) {
        self.known.lock().insert(key.clone(), value.clone());
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
                    known.lock().insert(key.clone(), value.clone());
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

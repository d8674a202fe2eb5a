//! The owner's cache of metadata records, kept true by an etcd watch. Each entry remembers the
//! etcd revision it reflects, and an older value never replaces a newer one, so a load that
//! races with a change cannot leave a stale record behind.

use etcd_client::{Event, EventType, KeyValue};
use moka::ops::compute::Op;
use moka::sync::Cache;
use sluice_metastore::Versioned;

use crate::watch::Follower;

/// A record as of etcd revision `seen_at`; `None` if the key was absent then.
#[derive(Debug, Clone)]
pub struct Cached {
    pub value: Option<Versioned>,
    pub seen_at: i64,
}

#[derive(Clone)]
pub struct RecordCache {
    cache: Cache<String, Cached>,
    /// The root prefix, stripped from watched keys.
    root: String,
}

impl RecordCache {
    pub fn new(capacity: u64, root: &str) -> Self {
        RecordCache {
            cache: Cache::new(capacity),
            root: root.to_owned(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Cached> {
        self.cache.get(key)
    }

    /// Stores `entry` unless the cache already reflects a later revision of the key.
    pub fn offer(&self, key: &str, entry: Cached) {
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(current) if current.value().seen_at >= entry.seen_at => Op::Nop,
                _ => Op::Put(entry),
            });
    }

    pub fn forget(&self, key: &str) {
        self.cache.invalidate(key);
    }

    fn relative<'a>(&self, kv: &'a KeyValue) -> Option<&'a str> {
        kv.key_str().ok()?.strip_prefix(&self.root)
    }
}

impl Follower for RecordCache {
    fn snapshot(&mut self, _kvs: &[KeyValue]) {
        // Whatever was cached may have changed while the watch was down; reload on demand.
        self.cache.invalidate_all();
    }

    fn event(&mut self, event: &Event) {
        let Some(kv) = event.kv() else { return };
        let Some(key) = self.relative(kv) else { return };
        let entry = match event.event_type() {
            EventType::Put => Cached {
                value: Some(Versioned {
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision() as u64,
                }),
                seen_at: kv.mod_revision(),
            },
            EventType::Delete => Cached {
                value: None,
                seen_at: kv.mod_revision(),
            },
        };
        // Every change is kept, not only changes of keys already cached: a load that was in
        // flight when the change came must not be able to put an older value in after it.
        self.offer(key, entry);
    }
}

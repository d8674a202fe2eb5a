//! The owner's cache of metadata records (queue records and placements), kept true by an etcd
//! watch. A node caches only the keys the ring gives it: a change to a key another node owns is
//! dropped, and every entry is tagged with the ring's generation, so that what was cached under
//! one membership is never served under the next (while another node owned the key, this one
//! did not follow its changes). Each entry also remembers the etcd revision it reflects, and an
//! older value never replaces a newer one, so a load that races with a change cannot leave a
//! stale record behind.

use std::sync::Arc;

use etcd_client::{Event, EventType, KeyValue};
use moka::ops::compute::Op;
use moka::sync::Cache;
use sluice_api::Versioned;
use sluice_client::Ring;

use sluice_metastore::watch::Follower;

/// A record as of etcd revision `seen_at`; `None` if the key was absent then.
#[derive(Debug, Clone)]
pub struct Cached {
    pub value: Option<Versioned>,
    pub seen_at: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    cached: Cached,
    /// The ring's generation when the value was read.
    generation: u64,
}

#[derive(Clone)]
pub struct RecordCache {
    cache: Cache<String, Entry>,
    ring: Arc<Ring>,
    /// This node's id on the ring.
    node_id: String,
    /// The root prefix, stripped from watched keys.
    root: String,
}

impl RecordCache {
    pub fn new(capacity: u64, root: &str, ring: Arc<Ring>, node_id: &str) -> Self {
        RecordCache {
            cache: Cache::new(capacity),
            ring,
            node_id: node_id.to_owned(),
            root: root.to_owned(),
        }
    }

    /// The ring's generation now, if this node owns `key` under it.
    pub fn owned(&self, key: &str) -> Option<u64> {
        let generation = self.ring.generation();
        let (owner, _) = self.ring.owner(key)?;
        (owner == self.node_id).then_some(generation)
    }

    /// The cached record of `key`, if this node owns it and cached it under the ring as it is.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let generation = self.owned(key)?;
        self.cache
            .get(key)
            .filter(|entry| entry.generation == generation)
            .map(|entry| entry.cached)
    }

    /// Stores `cached`, read under ring generation `generation`, unless the cache holds a later
    /// read of the key.
    pub fn offer(&self, key: &str, cached: Cached, generation: u64) {
        let entry = Entry { cached, generation };
        self.cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(current) => {
                    let current = current.value();
                    let newer = (entry.generation, entry.cached.seen_at)
                        > (current.generation, current.cached.seen_at);
                    if newer {
                        Op::Put(entry)
                    } else {
                        Op::Nop
                    }
                }
                None => Op::Put(entry),
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
        let Some(generation) = self.owned(key) else {
            return;
        };
        let cached = match event.event_type() {
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
        // Every change of an owned key is kept, not only changes of keys already cached: a load
        // that was in flight when the change came must not be able to put an older value in
        // after it.
        self.offer(key, cached, generation);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn members(ids: &[&str]) -> BTreeMap<String, String> {
        ids.iter()
            .map(|id| (id.to_string(), format!("http://{id}")))
            .collect()
    }

    fn record(value: &[u8], revision: i64) -> Cached {
        Cached {
            value: Some(Versioned {
                value: value.to_vec(),
                revision: revision as u64,
            }),
            seen_at: revision,
        }
    }

    /// A key this node owns under `ring`.
    fn owned_key(ring: &Ring, node: &str) -> String {
        (0..)
            .map(|i| format!("queues/q{i}"))
            .find(|key| ring.owner(key).is_some_and(|(owner, _)| owner == node))
            .expect("some key is owned")
    }

    #[test]
    fn serves_only_owned_keys_cached_under_the_ring_as_it_is() {
        let ring = Arc::new(Ring::default());
        ring.set_members(members(&["m1", "m2"]));
        let cache = RecordCache::new(100, "/sluice/", ring.clone(), "m1");
        let mine = owned_key(&ring, "m1");
        let theirs = owned_key(&ring, "m2");

        let generation = cache.owned(&mine).expect("m1 owns it");
        cache.offer(&mine, record(b"v1", 5), generation);
        assert_eq!(cache.get(&mine).unwrap().seen_at, 5);
        // An older read does not replace a newer one.
        cache.offer(&mine, record(b"v0", 4), generation);
        assert_eq!(cache.get(&mine).unwrap().seen_at, 5);
        assert!(cache.owned(&theirs).is_none());
        assert!(cache.get(&theirs).is_none(), "not this node's key");

        // The membership changes and comes back: m1 owns the key again, but while it did not
        // own it, it did not follow its changes, so its old entry is not served.
        ring.set_members(members(&["m2"]));
        assert!(cache.get(&mine).is_none());
        ring.set_members(members(&["m1", "m2"]));
        assert!(
            cache.get(&mine).is_none(),
            "cached under an earlier membership"
        );
        let generation = cache.owned(&mine).unwrap();
        cache.offer(&mine, record(b"v2", 3), generation);
        assert_eq!(
            cache.get(&mine).unwrap().seen_at,
            3,
            "a read under the new membership replaces one under the old"
        );
    }
}

//! What a queue remembers of its sends for a while: deduplication ids (minutes, as in SQS) and
//! idempotency keys (long enough for a caller's retries). Each kind has one window, so the order
//! entries were added in is the order they expire in, and forgetting them never scans.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use sluice_api::IdempotencyKey;

/// An entry of a [`Window`]: when it expires, and the first sequence number its send stored,
/// which tells a failed send's entry from a later one under the same name.
pub(crate) trait Expiring {
    fn expires_ms(&self) -> u64;
    fn seq(&self) -> u64;
}

/// What the first send with a deduplication id stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dedup {
    pub message_id: String,
    pub seq: u64,
    pub expires_ms: u64,
}

impl Expiring for Dedup {
    fn expires_ms(&self) -> u64 {
        self.expires_ms
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// What a send with an idempotency key stored: `count` messages from sequence `first_seq` on,
/// consecutive because one send takes its sequences under the queue's lock. Duplicates of
/// earlier deduplication ids it carried took no sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendOnce {
    pub first_seq: u64,
    pub count: u64,
    pub expires_ms: u64,
}

impl Expiring for SendOnce {
    fn expires_ms(&self) -> u64 {
        self.expires_ms
    }
    fn seq(&self) -> u64 {
        self.first_seq
    }
}

pub(crate) type DedupWindow = Window<String, Dedup>;
pub(crate) type SendWindow = Window<IdempotencyKey, SendOnce>;

pub(crate) struct Window<K, V> {
    entries: HashMap<K, V>,
    /// (expiry, name) in the order the entries were added.
    expiry: VecDeque<(u64, K)>,
}

impl<K, V> Default for Window<K, V> {
    fn default() -> Self {
        Window {
            entries: HashMap::new(),
            expiry: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Expiring> Window<K, V> {
    /// The entry named `key` if its window has not passed at `now_ms`.
    pub fn get<Q>(&self, key: &Q, now_ms: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).filter(|e| e.expires_ms() > now_ms)
    }

    pub fn insert(&mut self, key: K, entry: V) {
        self.expiry.push_back((entry.expires_ms(), key.clone()));
        self.entries.insert(key, entry);
    }

    /// Forgets the entry of a send that failed (the one that stored from `seq`), so a retry is
    /// not taken for a duplicate.
    pub fn forget<Q>(&mut self, key: &Q, seq: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.entries.get(key).is_some_and(|e| e.seq() == seq) {
            self.entries.remove(key);
        }
    }

    /// Removes and returns the names whose window has passed at `now_ms`.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<K> {
        let mut expired = Vec::new();
        while let Some((expires, _)) = self.expiry.front() {
            if *expires > now_ms {
                break;
            }
            let (expires, key) = self.expiry.pop_front().expect("checked above");
            // A forgotten name may have been used again since, with a later expiry.
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.expires_ms() == expires)
            {
                self.entries.remove(&key);
                expired.push(key);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_in_order_and_a_failed_send_is_forgotten() {
        let mut window = DedupWindow::default();
        let entry = |seq, expires_ms| Dedup {
            message_id: format!("m{seq}"),
            seq,
            expires_ms,
        };
        window.insert("a".into(), entry(1, 100));
        window.insert("b".into(), entry(2, 200));
        assert_eq!(window.get("a", 50).map(|d| d.seq), Some(1));
        assert_eq!(window.get("a", 100), None, "expired at its deadline");
        assert_eq!(window.take_expired(150), vec!["a".to_string()]);
        window.forget("b", 3);
        assert!(window.get("b", 150).is_some(), "another send's entry stays");
        window.forget("b", 2);
        assert_eq!(window.get("b", 150), None);
        assert!(window.take_expired(300).is_empty());
    }

    #[test]
    fn a_name_used_again_after_a_failure_keeps_its_new_expiry() {
        let mut window = SendWindow::default();
        let key = IdempotencyKey::random();
        let entry = |first_seq, expires_ms| SendOnce {
            first_seq,
            count: 1,
            expires_ms,
        };
        window.insert(key, entry(1, 100));
        window.forget(&key, 1);
        window.insert(key, entry(5, 300));
        assert!(
            window.take_expired(150).is_empty(),
            "the first expiry is stale"
        );
        assert_eq!(window.get(&key, 150).map(|s| s.first_seq), Some(5));
        assert_eq!(window.take_expired(300), vec![key]);
    }
}

//! A leader's lease: until when this node may act as its cluster's leader without hearing from a
//! majority again. The node's Raft sets it (`services/backend/src/replica/lease.rs` says how it
//! is computed and why it is safe); the engine consults it before every acknowledgement that a
//! majority does not vouch for: an asynchronous send, and a receive, which hands out messages
//! from this node's own index. docs/replication.md has the timing argument.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Lease {
    /// The instant the microseconds below count from.
    origin: Instant,
    /// Until when the lease holds, in microseconds since `origin`; 0 when it does not.
    until_us: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            until_us: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// Makes the lease hold until `until` (it never moves back: an older quorum ack observed late
    /// must not shorten what a newer one granted).
    pub fn extend_to(&self, until: Instant) {
        let us = until.saturating_duration_since(self.origin).as_micros() as u64;
        self.until_us.fetch_max(us, Ordering::SeqCst);
    }

    /// Ends the lease: the node no longer leads.
    pub fn revoke(&self) {
        self.until_us.store(0, Ordering::SeqCst);
    }

    /// How long the lease still holds; `None` once it has run out.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.until_us.load(Ordering::SeqCst);
        let now = self.origin.elapsed().as_micros() as u64;
        (until > now).then(|| Duration::from_micros(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_it_runs_out_and_never_moves_back() {
        let lease = Lease::default();
        assert!(lease.remaining().is_none(), "a new lease does not hold");
        let now = Instant::now();
        lease.extend_to(now + Duration::from_secs(60));
        lease.extend_to(now + Duration::from_secs(1));
        assert!(lease.remaining().unwrap() > Duration::from_secs(59));
        lease.revoke();
        assert!(lease.remaining().is_none());
        lease.extend_to(now - Duration::from_millis(1));
        assert!(
            lease.remaining().is_none(),
            "a lease in the past does not hold"
        );
    }
}

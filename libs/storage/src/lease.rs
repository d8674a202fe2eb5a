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
    /// A majority acknowledged what this node sent at `acked`: the lease holds until
    /// `acked + length`. It never moves back (an older acknowledgement reported late must not
    /// shorten what a newer one granted). A lease that has run out takes only an
    /// acknowledgement from the last half of a lease: the same old one, estimated again a little
    /// later (the estimate is only as exact as the report's delivery), must not bring it back for
    /// a moment, so that a leader that stopped acknowledging stays stopped until it hears from a
    /// majority again.
    pub fn renew(&self, acked: Instant, length: Duration) {
        let now = Instant::now();
        if self.remaining().is_none() && now.saturating_duration_since(acked) > length / 2 {
            return;
        }
        let until = (acked + length).saturating_duration_since(self.origin);
        self.until_us
            .fetch_max(until.as_micros() as u64, Ordering::SeqCst);
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

    const LENGTH: Duration = Duration::from_secs(60);

    #[test]
    fn holds_until_it_runs_out_and_never_moves_back() {
        let lease = Lease::default();
        assert!(lease.remaining().is_none(), "a new lease does not hold");
        let now = Instant::now();
        lease.renew(now, LENGTH);
        lease.renew(now - Duration::from_secs(29), LENGTH);
        assert!(lease.remaining().unwrap() > Duration::from_secs(59));
        lease.revoke();
        assert!(lease.remaining().is_none());
    }

    #[test]
    fn a_lease_that_ran_out_takes_only_a_fresh_acknowledgement() {
        let lease = Lease::default();
        let now = Instant::now();
        // An acknowledgement 59 s old, as a late report would show the last one before a
        // partition: it would hold for another second, but the lease had run out.
        lease.renew(now - Duration::from_secs(59), LENGTH);
        assert!(lease.remaining().is_none());
        lease.renew(now - Duration::from_secs(10), LENGTH);
        assert!(
            lease.remaining().is_some(),
            "a fresh acknowledgement renews it"
        );
    }
}

//! Keeps the engine's leader lease (`sluice_storage::Lease`) from what openraft reports.
//!
//! openraft gives a leader a lease on the voters: a voter that has heard from an established
//! leader refuses every vote request for `election_timeout_max` after that, and stands for
//! election itself only later still. A leader that sent a heartbeat or an append at time `t`
//! and had it acknowledged by a majority so knows that no other leader can be elected before
//! `t + election_timeout_max`: any election needs a vote from that majority. openraft reports
//! how long ago the latest such `t` was (`millis_since_quorum_ack`, counting from the request's
//! sending, not its answer). The lease here runs out [`MARGIN`] before that bound, so a leader
//! cut off from its majority stops acknowledging before the others can have a new leader.
//! docs/replication.md states the clock assumptions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use sluice_storage::Lease;
use tokio_util::sync::CancellationToken;

use super::{metrics, NodeId, Raft, ELECTION_TIMEOUT_MAX_MS};

/// What the lease keeps back from the voters' bound: the time between openraft computing the
/// age of its last quorum ack and this task reading it (a report waits in a watch channel for
/// a busy runtime), and any difference in the rate at which two nodes' monotonic clocks run.
pub(super) const MARGIN: Duration = Duration::from_millis(250);

/// How long a majority's acknowledgement lets this node lead.
pub(super) const LEASE: Duration =
    Duration::from_millis(ELECTION_TIMEOUT_MAX_MS).saturating_sub(MARGIN);

/// Extends `lease` with every quorum acknowledgement openraft reports while this node leads,
/// and revokes it when the node does not lead.
pub(super) async fn keep(raft: Raft, id: NodeId, lease: Arc<Lease>, shutdown: CancellationToken) {
    let mut reports = raft.metrics();
    loop {
        {
            let m = reports.borrow_and_update();
            let now = Instant::now();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(id);
            let acked = m
                .millis_since_quorum_ack
                .and_then(|ms| now.checked_sub(Duration::from_millis(ms)));
            match (leading, acked) {
                (true, Some(acked)) => lease.renew(acked, LEASE),
                _ => lease.revoke(),
            }
            let remaining = lease.remaining().unwrap_or_default();
            metrics::LEASE_REMAINING.set(remaining.as_secs_f64());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
            // Reports come with every heartbeat round; this only keeps the gauge current when
            // they stop, which is when the lease runs out.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// How long a follower may go without an append or heartbeat from its leader (sent every
/// 100 ms) before it stops forwarding requests to it: the leader is gone or cut off, and a
/// forwarded call would hang until the connection's keep-alive gives up. Refused at once, the
/// caller tries the other nodes until one leads.
const LEADER_SILENCE: Duration = Duration::from_millis(500);

/// When a follower last heard from its leader.
pub(crate) struct LeaderContact {
    origin: Instant,
    /// Milliseconds since `origin`; `u64::MAX` before the first contact.
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            origin: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl LeaderContact {
    /// An append or heartbeat arrived from a leader.
    pub(crate) fn heard(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the last contact, if that is longer than a leader stays silent.
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        self.silence().filter(|silent| *silent > LEADER_SILENCE)
    }

    /// How long since the last contact; `None` before the first.
    pub(crate) fn silence(&self) -> Option<Duration> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last == u64::MAX {
            return None;
        }
        Some(Duration::from_millis(
            (self.origin.elapsed().as_millis() as u64).saturating_sub(last),
        ))
    }
}

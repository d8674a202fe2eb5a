//! When each node snapshots. Every node of a cluster receives the same entries, so any rule that
//! counts them (openraft's `LogsSinceLast`, or bytes appended) has all three snapshot at the
//! same entry and flush their RocksDBs in the same moment: the writes that moment holds up wait
//! for every node, and no two of them can make a majority. Here a node snapshots when a rule
//! falls due, but only once the applied index reaches its own residue modulo `SNAPSHOT_SPACING`,
//! so two nodes snapshot some `SNAPSHOT_SPACING / members` entries apart or more (less by at most
//! the entries one apply step passes over), however long they run or restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{NodeId, Raft};

/// Bytes of entries appended since this node's last snapshot after which it snapshots, whatever
/// `--raft-snapshot-logs` says: a snapshot lets the log be purged, and the purge must come before
/// the entries since the last one fill the log's memtable (`log::LOGS_WRITE_BUFFER_BYTES`, with
/// room for the wait for the node's turn), or they are all written to a file. Entries grow with
/// the load (some 30 KB each at the 3-node maximum), so a count of entries alone fits either a
/// light load or a heavy one.
const SNAPSHOT_LOG_BYTES: u64 = 128 << 20;

/// The period, in entries, of the indexes at which the members take turns to snapshot. A node
/// waits at most this many entries for its turn once a rule falls due (some 45 MB at the 3-node
/// maximum), and in a cluster of three, two nodes' snapshots are at least a third of it apart
/// (about half a second of entries at half the maximum).
const SNAPSHOT_SPACING: u64 = 1_536;

/// One node's snapshot rules and its turn among the members.
#[derive(Debug)]
struct Schedule {
    every_entries: u64,
    every_bytes: u64,
    spacing: u64,
    /// The applied index and the bytes appended when this node last asked for a snapshot.
    last_index: u64,
    last_bytes: u64,
    /// The index at which to ask, once a rule fell due.
    turn: Option<u64>,
}

impl Schedule {
    fn new(every_entries: u64, every_bytes: u64, start_index: u64) -> Self {
        Schedule {
            every_entries,
            every_bytes,
            spacing: SNAPSHOT_SPACING.min(every_entries).max(1),
            last_index: start_index,
            last_bytes: 0,
            turn: None,
        }
    }

    /// Whether to snapshot now, given the index applied, the bytes appended to the log since
    /// start, and this node's place (`rank`) among `members` ordered by id.
    fn due(&mut self, applied: u64, appended: u64, rank: usize, members: usize) -> bool {
        if self.turn.is_none()
            && (applied.saturating_sub(self.last_index) >= self.every_entries
                || appended.saturating_sub(self.last_bytes) >= self.every_bytes)
        {
            let phase = self.spacing * rank as u64 / members.max(1) as u64;
            let past = (applied + self.spacing - phase) % self.spacing;
            // The first index at or after `applied` that is this node's, which is `applied`
            // itself when `past` is 0.
            self.turn = Some(applied + (self.spacing - past) % self.spacing);
        }
        match self.turn {
            Some(turn) if applied >= turn => {
                self.turn = None;
                self.last_index = applied;
                self.last_bytes = appended;
                true
            }
            _ => false,
        }
    }
}

/// Asks this node's Raft for a snapshot whenever its schedule says, until the node shuts down
/// (or its Raft stops, which fails the trigger). `appended` counts the bytes the log appended.
pub(crate) async fn run(
    raft: Raft,
    me: NodeId,
    every_entries: u64,
    appended: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    let start = {
        let m = metrics.borrow();
        m.snapshot.max(m.purged).map_or(0, |log_id| log_id.index)
    };
    let mut schedule = Schedule::new(every_entries, SNAPSHOT_LOG_BYTES, start);
    loop {
        let due = {
            let m = metrics.borrow_and_update();
            let membership = m.membership_config.membership();
            let members = membership.nodes().count();
            let rank = membership.nodes().filter(|(id, _)| **id < me).count();
            let applied = m.last_applied.map_or(0, |log_id| log_id.index);
            schedule.due(applied, appended.load(Ordering::Relaxed), rank, members)
        };
        if due {
            if let Err(err) = raft.trigger().snapshot().await {
                tracing::debug!(error = %err, "raft stopped; no more snapshots");
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The indexes at which a node of rank `rank` among three snapshots while entries of
    /// `bytes_each` bytes are applied `step` at a time, up to `until`.
    fn turns(
        schedule: &mut Schedule,
        rank: usize,
        step: u64,
        bytes_each: u64,
        until: u64,
    ) -> Vec<u64> {
        (0..=until)
            .step_by(step as usize)
            .filter(|&applied| schedule.due(applied, applied * bytes_each, rank, 3))
            .collect()
    }

    #[test]
    fn members_snapshot_at_their_own_turns_apart_from_each_other() {
        let all: Vec<Vec<u64>> = (0..3)
            .map(|rank| turns(&mut Schedule::new(10_000, u64::MAX, 0), rank, 1, 0, 50_000))
            .collect();
        for (rank, mine) in all.iter().enumerate() {
            assert!(
                mine.len() >= 4,
                "rank {rank} snapshots every 10,000 or so: {mine:?}"
            );
            for pair in mine.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    (10_000..10_000 + SNAPSHOT_SPACING).contains(&gap),
                    "rank {rank}: {mine:?}"
                );
            }
            for index in mine {
                assert_eq!(index % SNAPSHOT_SPACING, SNAPSHOT_SPACING * rank as u64 / 3);
            }
        }
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            for x in &all[a] {
                for y in &all[b] {
                    assert!(
                        x.abs_diff(*y) >= SNAPSHOT_SPACING / 3,
                        "{a}:{x} and {b}:{y}"
                    );
                }
            }
        }
    }

    #[test]
    fn bytes_make_a_snapshot_due_long_before_the_count() {
        // 1 MiB of bytes every 16 entries of 64 KiB, far sooner than 10,000 entries.
        let mut schedule = Schedule::new(10_000, 1 << 20, 0);
        let mine = turns(&mut schedule, 1, 1, 64 << 10, 5_000);
        let phase = SNAPSHOT_SPACING / 3;
        assert_eq!(
            mine,
            vec![
                phase,
                phase + SNAPSHOT_SPACING,
                phase + 2 * SNAPSHOT_SPACING
            ]
        );
    }

    #[test]
    fn a_batch_of_entries_that_passes_the_turn_snapshots_at_once() {
        // Applied 100 entries at a time: rank 1 of 3's turns, at 1,333 and 3,333 (period 1,000),
        // fall inside a step, so it asks at the end of that step.
        let mut schedule = Schedule::new(1_000, u64::MAX, 0);
        assert_eq!(turns(&mut schedule, 1, 100, 0, 4_000), vec![1_400, 3_400]);
    }

    #[test]
    fn a_small_count_makes_a_small_period() {
        // Tests snapshot every 50 entries: the turns are 50 apart, 16 or 17 between members.
        let mut schedule = Schedule::new(50, u64::MAX, 0);
        assert_eq!(turns(&mut schedule, 2, 1, 0, 200), vec![83, 133, 183]);
    }
}

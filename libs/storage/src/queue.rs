//! The in-memory index of one queue: which messages are visible now, and an ordered timer set
//! for the ones that become visible later (delayed, or in flight until their visibility timeout).
//! Receives pop from the visible set and due timers are promoted in order, so no operation scans
//! the backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::Notify;

use crate::QueueConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Visible,
    /// Not yet received; waiting for its delay to pass.
    Delayed,
    /// Received; waiting for its visibility timeout.
    InFlight,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageMeta {
    pub sent_ms: u64,
    pub visible_at_ms: u64,
    pub receive_count: u32,
    pub first_receive_ms: u64,
    pub phase: Phase,
}

/// Approximate number of messages in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

pub(crate) struct QueueState {
    pub config: QueueConfig,
    pub next_seq: u64,
    pub messages: BTreeMap<u64, MessageMeta>,
    visible: BTreeSet<u64>,
    /// (due time in ms, sequence) for every delayed or in-flight message.
    timers: BTreeSet<(u64, u64)>,
    in_flight: u64,
    delayed: u64,
    /// Set when the queue is deleted, so waiters and late writers notice.
    pub deleted: bool,
}

pub(crate) struct Queue {
    pub state: parking_lot::Mutex<QueueState>,
    /// Woken when a message becomes visible by a send or a visibility change, so long polls
    /// return at once instead of polling.
    pub visible_notify: Notify,
}

impl Queue {
    pub(crate) fn new(config: QueueConfig, next_seq: u64) -> Self {
        Queue {
            state: parking_lot::Mutex::new(QueueState {
                config,
                next_seq,
                messages: BTreeMap::new(),
                visible: BTreeSet::new(),
                timers: BTreeSet::new(),
                in_flight: 0,
                delayed: 0,
                deleted: false,
            }),
            visible_notify: Notify::new(),
        }
    }
}

impl QueueState {
    /// Adds a message in the phase its `visible_at_ms` and receive count imply at `now_ms`.
    pub(crate) fn insert(&mut self, seq: u64, mut meta: MessageMeta, now_ms: u64) {
        meta.phase = if meta.visible_at_ms <= now_ms {
            Phase::Visible
        } else if meta.receive_count == 0 {
            Phase::Delayed
        } else {
            Phase::InFlight
        };
        self.place(seq, meta.phase, meta.visible_at_ms);
        if let Some(old) = self.messages.insert(seq, meta) {
            self.unplace(seq, old.phase, old.visible_at_ms);
        }
    }

    fn place(&mut self, seq: u64, phase: Phase, visible_at_ms: u64) {
        match phase {
            Phase::Visible => {
                self.visible.insert(seq);
            }
            Phase::Delayed => {
                self.delayed += 1;
                self.timers.insert((visible_at_ms, seq));
            }
            Phase::InFlight => {
                self.in_flight += 1;
                self.timers.insert((visible_at_ms, seq));
            }
        }
    }

    fn unplace(&mut self, seq: u64, phase: Phase, visible_at_ms: u64) {
        match phase {
            Phase::Visible => {
                self.visible.remove(&seq);
            }
            Phase::Delayed => {
                self.delayed -= 1;
                self.timers.remove(&(visible_at_ms, seq));
            }
            Phase::InFlight => {
                self.in_flight -= 1;
                self.timers.remove(&(visible_at_ms, seq));
            }
        }
    }

    pub(crate) fn remove(&mut self, seq: u64) -> Option<MessageMeta> {
        let meta = self.messages.remove(&seq)?;
        self.unplace(seq, meta.phase, meta.visible_at_ms);
        Some(meta)
    }

    pub(crate) fn clear(&mut self) -> usize {
        let n = self.messages.len();
        self.messages.clear();
        self.visible.clear();
        self.timers.clear();
        self.in_flight = 0;
        self.delayed = 0;
        n
    }

    /// Makes every message whose timer is due visible.
    pub(crate) fn promote_due(&mut self, now_ms: u64) {
        while let Some(&(due, seq)) = self.timers.first() {
            if due > now_ms {
                break;
            }
            self.timers.pop_first();
            if let Some(meta) = self.messages.get_mut(&seq) {
                match meta.phase {
                    Phase::Delayed => self.delayed -= 1,
                    Phase::InFlight => self.in_flight -= 1,
                    Phase::Visible => {}
                }
                meta.phase = Phase::Visible;
                self.visible.insert(seq);
            }
        }
    }

    /// When the next delayed or in-flight message becomes visible.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.timers.first().map(|&(due, _)| due)
    }

    /// Takes up to `max` visible messages, oldest first, and puts them in flight for
    /// `visibility`. Returns each with its new state.
    pub(crate) fn take_visible(
        &mut self,
        max: usize,
        visibility: Duration,
        now_ms: u64,
    ) -> Vec<(u64, MessageMeta)> {
        let mut taken = Vec::with_capacity(max);
        while taken.len() < max {
            let Some(seq) = self.visible.pop_first() else {
                break;
            };
            let Some(meta) = self.messages.get_mut(&seq) else {
                continue;
            };
            meta.receive_count += 1;
            if meta.first_receive_ms == 0 {
                meta.first_receive_ms = now_ms;
            }
            meta.visible_at_ms = now_ms + visibility.as_millis() as u64;
            taken.push((seq, *meta));
        }
        // Placed after the loop so a zero timeout cannot hand the same message out twice in one
        // receive.
        for (seq, meta) in &mut taken {
            if visibility.is_zero() {
                self.visible.insert(*seq);
            } else {
                meta.phase = Phase::InFlight;
                self.in_flight += 1;
                self.timers.insert((meta.visible_at_ms, *seq));
            }
            if let Some(stored) = self.messages.get_mut(seq) {
                stored.phase = meta.phase;
            }
        }
        taken
    }

    /// Moves an in-flight message's visibility to `now + visibility`; zero makes it visible now.
    pub(crate) fn set_visibility(&mut self, seq: u64, visibility: Duration, now_ms: u64) {
        let Some(meta) = self.messages.get(&seq).copied() else {
            return;
        };
        self.unplace(seq, meta.phase, meta.visible_at_ms);
        let visible_at_ms = now_ms + visibility.as_millis() as u64;
        let phase = if visibility.is_zero() {
            Phase::Visible
        } else {
            Phase::InFlight
        };
        self.place(seq, phase, visible_at_ms);
        let stored = self.messages.get_mut(&seq).expect("checked above");
        stored.phase = phase;
        stored.visible_at_ms = visible_at_ms;
    }

    pub(crate) fn counts(&self) -> QueueCounts {
        QueueCounts {
            visible: self.visible.len() as u64,
            in_flight: self.in_flight,
            delayed: self.delayed,
        }
    }

    /// Removes and returns the sequences of messages older than the retention period. Messages
    /// are stored in send order, so this stops at the first one still within it.
    pub(crate) fn take_expired(&mut self, now_ms: u64) -> Vec<u64> {
        let retention_ms = self.config.retention.as_millis() as u64;
        let mut expired = Vec::new();
        while let Some((&seq, meta)) = self.messages.first_key_value() {
            if meta.sent_ms.saturating_add(retention_ms) > now_ms {
                break;
            }
            self.remove(seq);
            expired.push(seq);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> QueueState {
        Queue::new(
            QueueConfig {
                name: "q".into(),
                retention: Duration::from_secs(60),
            },
            1,
        )
        .state
        .into_inner()
    }

    fn fresh(sent_ms: u64, visible_at_ms: u64) -> MessageMeta {
        MessageMeta {
            sent_ms,
            visible_at_ms,
            receive_count: 0,
            first_receive_ms: 0,
            phase: Phase::Visible,
        }
    }

    #[test]
    fn in_flight_messages_come_back_when_due() {
        let mut q = state();
        q.insert(1, fresh(0, 0), 0);
        q.insert(2, fresh(0, 500), 0);
        assert_eq!(
            q.counts(),
            QueueCounts {
                visible: 1,
                in_flight: 0,
                delayed: 1
            }
        );

        let taken = q.take_visible(10, Duration::from_secs(1), 0);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1.receive_count, 1);
        assert_eq!(
            q.counts(),
            QueueCounts {
                visible: 0,
                in_flight: 1,
                delayed: 1
            }
        );
        assert_eq!(q.next_due_ms(), Some(500));

        q.promote_due(1000);
        assert_eq!(
            q.counts(),
            QueueCounts {
                visible: 2,
                in_flight: 0,
                delayed: 0
            }
        );
        let again = q.take_visible(10, Duration::from_secs(1), 1000);
        assert_eq!(
            again.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(again[0].1.receive_count, 2);
    }

    #[test]
    fn zero_visibility_keeps_message_visible_but_not_twice_per_receive() {
        let mut q = state();
        q.insert(1, fresh(0, 0), 0);
        assert_eq!(q.take_visible(10, Duration::ZERO, 0).len(), 1);
        assert_eq!(q.counts().visible, 1);
        assert_eq!(q.take_visible(10, Duration::ZERO, 0)[0].1.receive_count, 2);
    }

    #[test]
    fn expiry_stops_at_first_young_message() {
        let mut q = state();
        q.insert(1, fresh(0, 0), 0);
        q.insert(2, fresh(10, 100_000), 0);
        q.insert(3, fresh(50_000, 0), 0);
        assert_eq!(q.take_expired(60_010), vec![1, 2]);
        assert_eq!(
            q.counts(),
            QueueCounts {
                visible: 1,
                in_flight: 0,
                delayed: 0
            }
        );
    }
}

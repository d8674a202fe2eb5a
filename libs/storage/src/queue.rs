//! The in-memory index of one queue: which messages are visible now, and an ordered timer set
//! for the ones that become visible later (delayed, or in flight until their visibility timeout).
//! Receives pop from the visible set and due timers are promoted in order, so no operation scans
//! the backlog.
//!
//! In a FIFO queue only the first undeleted message of each group may be delivered: the visible
//! set holds group heads only, and the next message of a group joins it when the head is deleted
//! or moved. So while a group's head is in flight, nothing else of that group is handed out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::window::{DedupWindow, SendWindow};
use crate::{QueueConfig, QueueCounts};

/// How long a message being moved to another queue is hidden. The move normally takes one commit;
/// if it fails, the message becomes receivable again after this.
pub(crate) const MOVE_GUARD: Duration = Duration::from_secs(60);

/// Most messages one receive moves to the dead-letter queue, so a queue full of poison messages
/// does not turn one receive into an unbounded write.
const MAX_DEAD_PER_RECEIVE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Visible,
    /// Not yet received; waiting for its delay to pass.
    Delayed,
    /// Received (or being moved); waiting for its visibility timeout.
    InFlight,
}

#[derive(Debug, Clone)]
pub(crate) struct MessageMeta {
    pub sent_ms: u64,
    pub visible_at_ms: u64,
    pub receive_count: u32,
    pub first_receive_ms: u64,
    pub phase: Phase,
    /// FIFO queues only: the message's group.
    pub group: Option<Arc<str>>,
}

/// What a receive took from the visible set.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Now in flight, to be delivered.
    pub deliver: Vec<(u64, MessageMeta)>,
    /// Received too often: hidden under the move guard, to be moved to the dead-letter queue.
    pub dead: Vec<(u64, MessageMeta)>,
}

pub(crate) struct QueueState {
    pub config: QueueConfig,
    pub next_seq: u64,
    pub messages: BTreeMap<u64, MessageMeta>,
    /// Messages a receive may take now (in a FIFO queue, group heads only).
    visible: BTreeSet<u64>,
    /// (due time in ms, sequence) for every delayed or in-flight message.
    timers: BTreeSet<(u64, u64)>,
    in_flight: u64,
    delayed: u64,
    /// FIFO queues only: each group's messages in send order.
    groups: HashMap<Arc<str>, BTreeSet<u64>>,
    /// Deduplication ids within their window.
    pub dedup: DedupWindow,
    /// Idempotency keys within their window.
    pub sends: SendWindow,
    /// Set when the queue is deleted, so waiters and late writers notice.
    pub deleted: bool,
    /// Takes no more sends: the queue continues on another backend cluster and this partition
    /// is drained by consumers.
    pub sealed: bool,
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
                groups: HashMap::new(),
                dedup: DedupWindow::default(),
                sends: SendWindow::default(),
                deleted: false,
                sealed: false,
            }),
            visible_notify: Notify::new(),
        }
    }
}

impl QueueState {
    /// Interns a group name, so the messages of one group share one allocation.
    pub(crate) fn group(&self, group_id: &str) -> Option<Arc<str>> {
        if !self.config.fifo {
            return None;
        }
        Some(
            self.groups
                .get_key_value(group_id)
                .map(|(g, _)| g.clone())
                .unwrap_or_else(|| Arc::from(group_id)),
        )
    }

    /// Whether a receive may take the message when it is visible: always in a standard queue,
    /// only as its group's head in a FIFO queue.
    fn deliverable(&self, seq: u64, group: Option<&Arc<str>>) -> bool {
        match group {
            None => true,
            Some(g) => self.groups.get(g).and_then(|s| s.first()) == Some(&seq),
        }
    }

    /// Adds a message in the phase its `visible_at_ms` and receive count imply at `now_ms`.
    pub(crate) fn insert(&mut self, seq: u64, mut meta: MessageMeta, now_ms: u64) {
        meta.phase = if meta.visible_at_ms <= now_ms {
            Phase::Visible
        } else if meta.receive_count == 0 {
            Phase::Delayed
        } else {
            Phase::InFlight
        };
        if self.messages.contains_key(&seq) {
            self.remove(seq);
        }
        if let Some(group) = &meta.group {
            self.groups.entry(group.clone()).or_default().insert(seq);
        }
        self.place(seq, &meta);
        self.messages.insert(seq, meta);
    }

    fn place(&mut self, seq: u64, meta: &MessageMeta) {
        match meta.phase {
            Phase::Visible => {
                if self.deliverable(seq, meta.group.as_ref()) {
                    self.visible.insert(seq);
                }
            }
            Phase::Delayed => {
                self.delayed += 1;
                self.timers.insert((meta.visible_at_ms, seq));
            }
            Phase::InFlight => {
                self.in_flight += 1;
                self.timers.insert((meta.visible_at_ms, seq));
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
        if let Some(group) = &meta.group {
            self.leave_group(seq, group);
        }
        Some(meta)
    }

    /// Takes a FIFO message's place in its group's order before its send is durable, so a later
    /// message of the group cannot be delivered first. `insert` completes it; `unreserve` gives
    /// it up if the send fails.
    pub(crate) fn reserve(&mut self, seq: u64, group: &Arc<str>) {
        self.groups.entry(group.clone()).or_default().insert(seq);
    }

    pub(crate) fn unreserve(&mut self, seq: u64, group: &Arc<str>) {
        if !self.messages.contains_key(&seq) {
            self.leave_group(seq, group);
        }
    }

    fn leave_group(&mut self, seq: u64, group: &Arc<str>) {
        let Some(seqs) = self.groups.get_mut(group) else {
            return;
        };
        let was_head = seqs.first() == Some(&seq);
        seqs.remove(&seq);
        match seqs.first().copied() {
            None => {
                self.groups.remove(group);
            }
            // The group's next message may go out now.
            Some(next) if was_head => {
                if self.messages.get(&next).map(|m| m.phase) == Some(Phase::Visible) {
                    self.visible.insert(next);
                }
            }
            Some(_) => {}
        }
    }

    pub(crate) fn clear(&mut self) -> usize {
        let n = self.messages.len();
        self.messages.clear();
        self.visible.clear();
        self.timers.clear();
        self.groups.clear();
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
            let Some(meta) = self.messages.get_mut(&seq) else {
                continue;
            };
            match meta.phase {
                Phase::Delayed => self.delayed -= 1,
                Phase::InFlight => self.in_flight -= 1,
                Phase::Visible => {}
            }
            meta.phase = Phase::Visible;
            let group = meta.group.clone();
            if self.deliverable(seq, group.as_ref()) {
                self.visible.insert(seq);
            }
        }
    }

    /// When the next delayed or in-flight message becomes visible.
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.timers.first().map(|&(due, _)| due)
    }

    /// Hides a message that was just taken from the visible set until `visible_at_ms`.
    fn hide(&mut self, seq: u64, visible_at_ms: u64) -> Option<MessageMeta> {
        let meta = self.messages.get_mut(&seq)?;
        meta.visible_at_ms = visible_at_ms;
        meta.phase = Phase::InFlight;
        self.in_flight += 1;
        self.timers.insert((visible_at_ms, seq));
        Some(meta.clone())
    }

    /// Takes up to `max` visible messages, oldest first, and puts them in flight for
    /// `visibility`. With `max_receives`, a message already received that often is not delivered
    /// but hidden under the move guard and returned in `dead`, for the caller to move.
    pub(crate) fn take_visible(
        &mut self,
        max: usize,
        visibility: Duration,
        now_ms: u64,
        max_receives: Option<u32>,
    ) -> Taken {
        let mut taken = Taken::default();
        while taken.deliver.len() < max && taken.dead.len() < MAX_DEAD_PER_RECEIVE {
            let Some(seq) = self.visible.pop_first() else {
                break;
            };
            let Some(meta) = self.messages.get_mut(&seq) else {
                continue;
            };
            if max_receives.is_some_and(|limit| meta.receive_count >= limit) {
                let guard = now_ms + MOVE_GUARD.as_millis() as u64;
                if let Some(meta) = self.hide(seq, guard) {
                    taken.dead.push((seq, meta));
                }
                continue;
            }
            meta.receive_count += 1;
            if meta.first_receive_ms == 0 {
                meta.first_receive_ms = now_ms;
            }
            meta.visible_at_ms = now_ms + visibility.as_millis() as u64;
            taken.deliver.push((seq, meta.clone()));
        }
        // Placed after the loop so a zero timeout cannot hand the same message out twice in one
        // receive.
        for (seq, meta) in &mut taken.deliver {
            if visibility.is_zero() {
                self.visible.insert(*seq);
            } else if let Some(hidden) = self.hide(*seq, meta.visible_at_ms) {
                *meta = hidden;
            }
        }
        taken
    }

    /// Hides up to `max` visible messages with sequence at most `last_seq`, oldest first, under
    /// the move guard, for a move task to move.
    pub(crate) fn take_for_move(
        &mut self,
        max: usize,
        last_seq: u64,
        now_ms: u64,
    ) -> Vec<(u64, MessageMeta)> {
        let guard = now_ms + MOVE_GUARD.as_millis() as u64;
        let mut taken = Vec::new();
        while taken.len() < max {
            match self.visible.first().copied() {
                Some(seq) if seq <= last_seq => {
                    self.visible.pop_first();
                    if let Some(meta) = self.hide(seq, guard) {
                        taken.push((seq, meta));
                    }
                }
                _ => break,
            }
        }
        taken
    }

    /// Whether any message with sequence at most `last_seq` is left.
    pub(crate) fn has_up_to(&self, last_seq: u64) -> bool {
        self.messages.range(..=last_seq).next().is_some()
    }

    /// Moves an in-flight message's visibility to `now + visibility`; zero makes it visible now.
    pub(crate) fn set_visibility(&mut self, seq: u64, visibility: Duration, now_ms: u64) {
        let Some(meta) = self.messages.get(&seq) else {
            return;
        };
        let (phase, old_visible_at) = (meta.phase, meta.visible_at_ms);
        self.unplace(seq, phase, old_visible_at);
        let stored = self.messages.get_mut(&seq).expect("checked above");
        stored.visible_at_ms = now_ms + visibility.as_millis() as u64;
        stored.phase = if visibility.is_zero() {
            Phase::Visible
        } else {
            Phase::InFlight
        };
        let meta = stored.clone();
        self.place(seq, &meta);
    }

    pub(crate) fn counts(&self) -> QueueCounts {
        // In a FIFO queue visible messages behind an in-flight head are not in the visible set,
        // but a receive will get them later, so they count as visible.
        let len = self.messages.len() as u64;
        QueueCounts {
            visible: len - self.in_flight - self.delayed,
            in_flight: self.in_flight,
            delayed: self.delayed,
        }
    }

    /// When the oldest message still stored was sent, if there is one.
    pub(crate) fn oldest_sent_ms(&self) -> Option<u64> {
        self.messages
            .first_key_value()
            .map(|(_, meta)| meta.sent_ms)
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

    fn state_of(fifo: bool) -> QueueState {
        let mut config = QueueConfig::standard("q", Duration::from_secs(60));
        config.fifo = fifo;
        Queue::new(config, 1).state.into_inner()
    }

    fn state() -> QueueState {
        state_of(false)
    }

    fn fresh(sent_ms: u64, visible_at_ms: u64) -> MessageMeta {
        MessageMeta {
            sent_ms,
            visible_at_ms,
            receive_count: 0,
            first_receive_ms: 0,
            phase: Phase::Visible,
            group: None,
        }
    }

    fn in_group(q: &QueueState, group: &str) -> MessageMeta {
        MessageMeta {
            group: q.group(group),
            ..fresh(0, 0)
        }
    }

    fn seqs(taken: &[(u64, MessageMeta)]) -> Vec<u64> {
        taken.iter().map(|(s, _)| *s).collect()
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

        let taken = q.take_visible(10, Duration::from_secs(1), 0, None).deliver;
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
        let again = q
            .take_visible(10, Duration::from_secs(1), 1000, None)
            .deliver;
        assert_eq!(seqs(&again), vec![1, 2]);
        assert_eq!(again[0].1.receive_count, 2);
    }

    #[test]
    fn zero_visibility_keeps_message_visible_but_not_twice_per_receive() {
        let mut q = state();
        q.insert(1, fresh(0, 0), 0);
        assert_eq!(q.take_visible(10, Duration::ZERO, 0, None).deliver.len(), 1);
        assert_eq!(q.counts().visible, 1);
        assert_eq!(
            q.take_visible(10, Duration::ZERO, 0, None).deliver[0]
                .1
                .receive_count,
            2
        );
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

    #[test]
    fn messages_over_the_receive_limit_are_held_for_the_dead_letter_queue() {
        let mut q = state();
        q.insert(1, fresh(0, 0), 0);
        q.insert(2, fresh(0, 0), 0);
        for now in [0, 1000] {
            q.promote_due(now);
            let taken = q.take_visible(1, Duration::from_millis(500), now, Some(2));
            assert_eq!(seqs(&taken.deliver), vec![1]);
        }
        // Message 1 has been received twice: the third receive moves it and delivers message 2.
        q.promote_due(2000);
        let taken = q.take_visible(1, Duration::from_millis(500), 2000, Some(2));
        assert_eq!(seqs(&taken.dead), vec![1]);
        assert_eq!(taken.dead[0].1.receive_count, 2, "a move is not a receive");
        assert_eq!(seqs(&taken.deliver), vec![2]);
        assert_eq!(q.counts().in_flight, 2, "held under the move guard");
        q.remove(1);
        assert_eq!(q.counts().in_flight, 1);
    }

    #[test]
    fn fifo_delivers_one_message_per_group_in_send_order() {
        let mut q = state_of(true);
        for (seq, group) in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "b")] {
            let meta = in_group(&q, group);
            q.insert(seq, meta, 0);
        }
        assert_eq!(q.counts().visible, 5);
        let visibility = Duration::from_secs(1);
        let first = q.take_visible(10, visibility, 0, None).deliver;
        assert_eq!(seqs(&first), vec![1, 3], "one head per group");
        assert!(q.take_visible(10, visibility, 0, None).deliver.is_empty());

        // Deleting a's head releases a's next message only.
        q.remove(1);
        assert_eq!(
            seqs(&q.take_visible(10, visibility, 0, None).deliver),
            vec![2]
        );

        // b's head times out: it comes back before b's next message.
        q.promote_due(1000);
        let again = q.take_visible(10, visibility, 1000, None).deliver;
        assert_eq!(seqs(&again), vec![2, 3]);
        assert_eq!(again[1].1.receive_count, 2);
        q.remove(3);
        q.remove(2);
        assert_eq!(
            seqs(&q.take_visible(10, visibility, 1000, None).deliver),
            vec![4, 5]
        );
    }

    #[test]
    fn fifo_head_moved_to_the_dead_letter_queue_unblocks_its_group() {
        let mut q = state_of(true);
        for seq in 1..=2 {
            let meta = in_group(&q, "g");
            q.insert(seq, meta, 0);
        }
        assert_eq!(
            seqs(&q.take_visible(10, Duration::ZERO, 0, Some(1)).deliver),
            vec![1]
        );
        let taken = q.take_visible(10, Duration::ZERO, 0, Some(1));
        assert_eq!(seqs(&taken.dead), vec![1]);
        assert!(
            taken.deliver.is_empty(),
            "the group waits until the move is done"
        );
        q.remove(1);
        assert_eq!(
            seqs(&q.take_visible(10, Duration::ZERO, 0, Some(1)).deliver),
            vec![2]
        );
    }

    #[test]
    fn move_tasks_take_visible_messages_up_to_their_last_sequence() {
        let mut q = state();
        for seq in 1..=4 {
            q.insert(seq, fresh(0, 0), 0);
        }
        q.take_visible(1, Duration::from_secs(1), 0, None);
        assert_eq!(seqs(&q.take_for_move(10, 3, 0)), vec![2, 3]);
        assert!(q.take_for_move(10, 3, 0).is_empty());
        assert!(q.has_up_to(3));
        for seq in 1..=3 {
            q.remove(seq);
        }
        assert!(!q.has_up_to(3));
    }
}

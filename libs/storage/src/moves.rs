//! Moving messages between queues: to a dead-letter queue when a message was received too often,
//! and back out of one by a move task.
//!
//! A move is one write: the message is deleted from its source and stored in its destination
//! (with a new sequence number there) in the same fsync'd batch, so it is never in both queues
//! and never in neither. A move task's progress goes into the batch of each move, so after a
//! crash the task resumes exactly where the last durable move left it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use prost::Message as _;
use rocksdb::{Direction, IteratorMode};
use sluice_api::metrics::queue_label;
use tokio_util::sync::CancellationToken;

use crate::commit::{Cf, Op};
use crate::engine::{meta_of, Engine, Inner, RunningTask};
use crate::error::{Error, Result};
use crate::keys::{self, message_key, task_key, task_prefix};
use crate::metrics;
use crate::queue::{MessageMeta, Queue};
use crate::records::{MessageRecord, MoveTaskRecord, StateRecord};
use crate::{now_ms, DeadLetter, MoveTask, MoveTaskStatus, QueueId};

/// Most messages a task moves in one write.
const TASK_BATCH: u32 = 100;

/// Ended tasks kept per source queue for listing; older ones are forgotten.
const ENDED_TASKS_KEPT: usize = 10;

/// Where the messages of one move go.
#[derive(Debug, Clone, Copy)]
enum Destination {
    /// The source's dead-letter queue; the message remembers where it came from.
    DeadLetter(QueueId),
    Queue(QueueId),
    /// Each message back to the queue it was dead-lettered from.
    Origin,
}

/// The part of a move bound for one destination queue.
struct Landing {
    queue: Arc<Queue>,
    id: QueueId,
    /// (sequence in the destination, its index entry)
    messages: Vec<(u64, MessageMeta)>,
}

impl Engine {
    /// The queue's dead-letter policy, if it has one.
    pub(crate) fn dead_letter_of(&self, queue: &Queue) -> Option<DeadLetter> {
        queue.state.lock().config.dead_letter
    }

    /// Moves messages a receive found received too often. If the move fails they stay hidden
    /// under the move guard and a later receive tries again.
    pub(crate) async fn move_to_dead_letter(
        &self,
        id: QueueId,
        queue: &Arc<Queue>,
        dead_letter: DeadLetter,
        dead: Vec<(u64, MessageMeta)>,
    ) {
        let count = dead.len();
        match self
            .move_messages(
                id,
                queue,
                Destination::DeadLetter(dead_letter.queue),
                dead,
                None,
            )
            .await
        {
            Ok(moved) => metrics::DEAD_LETTER_MOVES
                .with_label_values(&[&queue_label(&queue.state.lock().config.name)])
                .inc_by(moved as u64),
            Err(err) => {
                metrics::MOVE_FAILURES.inc_by(count as u64);
                tracing::warn!(
                    queue_id = id,
                    dead_letter_queue = dead_letter.queue,
                    messages = count,
                    error = %err,
                    "dead-letter move failed; retried after the move guard passes"
                );
            }
        }
    }

    /// Moves `taken` (hidden under the move guard by the caller) from queue `id` to `to` in one
    /// durable write, with `task`'s progress if given. Returns how many moved. If a message
    /// cannot go where it should (its destination is gone or of the wrong kind), nothing is
    /// written, the messages are visible again, and the error says why.
    async fn move_messages(
        &self,
        id: QueueId,
        queue: &Arc<Queue>,
        to: Destination,
        taken: Vec<(u64, MessageMeta)>,
        task: Option<&mut MoveTaskRecord>,
    ) -> Result<usize> {
        if taken.is_empty() {
            return Ok(0);
        }
        let records = match self.read_records(id, &taken).await {
            Ok(records) => records,
            Err(err) => {
                self.release(queue, &taken);
                return Err(err);
            }
        };
        let source_name = queue.state.lock().config.name.clone();
        let now = now_ms();

        // Where each message goes, checked before anything is reserved.
        let mut plan: Vec<(QueueId, u64, MessageMeta, MessageRecord)> = Vec::new();
        let mut gone = Vec::new();
        for ((seq, meta), record) in taken.iter().cloned().zip(records) {
            let Some(record) = record else {
                // Deleted while we read it (purge): nothing to move.
                gone.push(seq);
                continue;
            };
            let target = match to {
                Destination::DeadLetter(queue) | Destination::Queue(queue) => queue,
                Destination::Origin if record.source_queue != 0 => record.source_queue,
                Destination::Origin => {
                    self.release(queue, &taken);
                    return Err(Error::MoveFailed(format!(
                        "message {} was not moved here from another queue, so it has no source \
                         to return to; name a destination",
                        record.message_id
                    )));
                }
            };
            plan.push((target, seq, meta, record));
        }
        if !gone.is_empty() {
            let mut state = queue.state.lock();
            for seq in &gone {
                state.remove(*seq);
            }
        }

        let mut landings: HashMap<QueueId, Landing> = HashMap::new();
        let mut ops = Vec::with_capacity(plan.len() * 4 + 1);
        let result = (|| {
            for (target, seq, meta, mut record) in plan {
                let landing = match landings.entry(target) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let dest = self.queue(target).map_err(|_| {
                            Error::MoveFailed(format!(
                                "the destination queue of message {} no longer exists",
                                record.message_id
                            ))
                        })?;
                        entry.insert(Landing {
                            queue: dest,
                            id: target,
                            messages: Vec::new(),
                        })
                    }
                };
                let mut dest = landing.queue.state.lock();
                if dest.sealed {
                    return Err(Error::MoveFailed(format!(
                        "the destination queue {} has moved to another backend cluster",
                        dest.config.name
                    )));
                }
                if dest.config.fifo && record.group_id.is_empty() {
                    return Err(Error::MoveFailed(format!(
                        "message {} has no group id and {} is a FIFO queue",
                        record.message_id, dest.config.name
                    )));
                }
                let new_seq = dest.next_seq;
                dest.next_seq += 1;
                let group = dest.group(&record.group_id);
                if let Some(group) = &group {
                    dest.reserve(new_seq, group);
                }
                drop(dest);
                if let Destination::DeadLetter(_) = to {
                    record.source_queue = id;
                    record.source_queue_name = source_name.clone();
                } else {
                    record.source_queue = 0;
                    record.source_queue_name.clear();
                }
                if group.is_none() {
                    record.group_id.clear();
                }
                record.moved_ms = now;
                let state = StateRecord {
                    sent_ms: meta.sent_ms,
                    visible_at_ms: now,
                    receive_count: 0,
                    first_receive_ms: 0,
                    group_id: record.group_id.clone(),
                };
                let new_key = message_key(target, new_seq).to_vec();
                ops.push(Op::Put(
                    Cf::Messages,
                    new_key.clone(),
                    record.encode_to_vec(),
                ));
                ops.push(Op::Put(Cf::State, new_key, state.encode_to_vec()));
                let old_key = message_key(id, seq).to_vec();
                ops.push(Op::Delete(Cf::Messages, old_key.clone()));
                ops.push(Op::Delete(Cf::State, old_key));
                landing.messages.push((new_seq, meta_of(&state, group)));
            }
            Ok(())
        })();
        let moved: usize = landings.values().map(|l| l.messages.len()).sum();
        if let Err(err) = result {
            self.unreserve(&landings);
            self.release(queue, &taken);
            return Err(err);
        }
        let floors: Vec<(QueueId, u64)> = landings
            .values()
            .map(|l| (l.id, l.queue.state.lock().next_seq))
            .collect();
        for (target, floor) in floors {
            ops.push(crate::engine::seq_floor_op(target, floor));
        }
        if let Some(task) = &task {
            let mut progress = (*task).clone();
            progress.moved += moved as u64;
            ops.push(Op::Put(
                Cf::Meta,
                task_key(id, &task.id),
                progress.encode_to_vec(),
            ));
        }

        if let Err(err) = self.inner.committer.commit(ops, true).await {
            // The write may or may not have happened; the move guard keeps the messages out of
            // sight until it passes, and the destination entries are given up.
            self.unreserve(&landings);
            return Err(err);
        }
        if let Some(task) = task {
            task.moved += moved as u64;
        }
        {
            let mut state = queue.state.lock();
            for (seq, _) in &taken {
                state.remove(*seq);
            }
        }
        let now = now_ms();
        for landing in landings.into_values() {
            {
                let mut state = landing.queue.state.lock();
                if state.deleted {
                    continue;
                }
                for (seq, meta) in landing.messages {
                    state.insert(seq, meta, now);
                }
            }
            landing.queue.visible_notify.notify_waiters();
        }
        Ok(moved)
    }

    /// Makes messages hidden for a move that did not happen visible again.
    fn release(&self, queue: &Queue, taken: &[(u64, MessageMeta)]) {
        {
            let mut state = queue.state.lock();
            let now = now_ms();
            for (seq, _) in taken {
                if state.messages.contains_key(seq) {
                    state.set_visibility(*seq, Duration::ZERO, now);
                }
            }
        }
        queue.visible_notify.notify_waiters();
    }

    fn unreserve(&self, landings: &HashMap<QueueId, Landing>) {
        for landing in landings.values() {
            let mut state = landing.queue.state.lock();
            for (seq, meta) in &landing.messages {
                if let Some(group) = &meta.group {
                    state.unreserve(*seq, group);
                }
            }
        }
    }

    /// Starts a task moving every message now in `source` to `destination` (`None`: each back to
    /// the queue it was dead-lettered from), at most `max_per_second` a second. Messages sent to
    /// the source after this stay. Returns the task's id. One task runs per source at a time.
    pub async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        let queue = self.queue(source)?;
        let destination_name = match destination {
            Some(dest) if dest == source => {
                return Err(Error::MoveFailed(
                    "the destination is the source queue itself".into(),
                ))
            }
            Some(dest) => self.queue(dest)?.state.lock().config.name.clone(),
            None => String::new(),
        };
        let record = {
            let mut tasks = self.inner.tasks.lock();
            if tasks.values().any(|t| t.source == source) {
                return Err(Error::TaskConflict(
                    "a move task is already running on this queue; cancel it or wait for it to \
                     end"
                    .into(),
                ));
            }
            let state = queue.state.lock();
            let record = MoveTaskRecord {
                id: uuid::Uuid::new_v4().to_string(),
                destination: destination.unwrap_or(0),
                destination_name,
                max_per_second: max_per_second.map_or(0, NonZeroU32::get),
                status: MoveTaskStatus::Running as i32,
                moved: 0,
                total: state.messages.len() as u64,
                last_sequence: state.next_seq - 1,
                failure: String::new(),
                started_ms: now_ms(),
            };
            drop(state);
            // Claimed before the record is durable, so two starts cannot both run.
            tasks.insert(
                record.id.clone(),
                RunningTask {
                    source,
                    cancel: CancellationToken::new(),
                    ended: CancellationToken::new(),
                },
            );
            record
        };
        let mut ops = vec![Op::Put(
            Cf::Meta,
            task_key(source, &record.id),
            record.encode_to_vec(),
        )];
        let ended = self.task_records(source)?;
        ops.extend(
            ended
                .into_iter()
                .filter(|t| t.status != MoveTaskStatus::Running as i32)
                .skip(ENDED_TASKS_KEPT - 1)
                .map(|t| Op::Delete(Cf::Meta, task_key(source, &t.id))),
        );
        if let Err(err) = self.inner.committer.commit(ops, true).await {
            self.inner.tasks.lock().remove(&record.id);
            return Err(err);
        }
        tracing::info!(
            queue = %queue.state.lock().config.name,
            task = %record.id,
            total = record.total,
            "message move task started"
        );
        let id = record.id.clone();
        self.spawn_task(source, record);
        Ok(id)
    }

    /// The source queue's move tasks, newest first: the running one and the last few ended.
    pub fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        self.queue(source)?;
        Ok(self.task_records(source)?.into_iter().map(listed).collect())
    }

    /// Stops a running task after the move in progress and returns it once it has stopped. Its
    /// status becomes `Cancelled`; what it moved stays moved.
    pub async fn cancel_move_task(&self, source: QueueId, task: &str) -> Result<MoveTask> {
        let running = self
            .inner
            .tasks
            .lock()
            .get(task)
            .filter(|t| t.source == source)
            .map(|t| (t.cancel.clone(), t.ended.clone()));
        let Some((cancel, ended)) = running else {
            let known = self
                .task_records(source)?
                .into_iter()
                .find(|t| t.id == task);
            return match known {
                Some(record) => Err(Error::TaskConflict(format!(
                    "move task {task:?} has already ended ({:?})",
                    record.status()
                ))),
                None => Err(Error::TaskNotFound(task.to_owned())),
            };
        };
        cancel.cancel();
        ended.cancelled().await;
        self.task_records(source)?
            .into_iter()
            .find(|t| t.id == task)
            .map(listed)
            .ok_or_else(|| Error::TaskNotFound(task.to_owned()))
    }

    /// Cancels the tasks moving messages out of a queue being deleted, without waiting.
    pub(crate) fn cancel_tasks_of(&self, source: QueueId) {
        for task in self.inner.tasks.lock().values() {
            if task.source == source {
                task.cancel.cancel();
            }
        }
    }

    /// The source's task records, newest first.
    fn task_records(&self, source: QueueId) -> Result<Vec<MoveTaskRecord>> {
        let db = &self.inner.db;
        let cf = db.cf_handle(keys::CF_META).expect("created at open");
        let prefix = task_prefix(source);
        let mut records = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            records.push(
                MoveTaskRecord::decode(value.as_ref())
                    .map_err(|err| Error::Corrupt(format!("move task record: {err}")))?,
            );
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        Ok(records)
    }

    /// Restarts the tasks that were running when the engine last stopped.
    pub(crate) fn resume_move_tasks(&self) -> Result<()> {
        let db = self.inner.db.clone();
        let cf = db.cf_handle(keys::CF_META).expect("created at open");
        let mut orphans = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(b"task/", Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(b"task/") {
                break;
            }
            let record = MoveTaskRecord::decode(value.as_ref())
                .map_err(|err| Error::Corrupt(format!("move task record: {err}")))?;
            let source = key
                .get(5..13)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::Corrupt("move task key".into()))?;
            if self.queue(source).is_err() {
                orphans.push(key);
                continue;
            }
            if record.status() != MoveTaskStatus::Running {
                continue;
            }
            tracing::info!(task = %record.id, moved = record.moved, "resuming message move task");
            self.inner.tasks.lock().insert(
                record.id.clone(),
                RunningTask {
                    source,
                    cancel: CancellationToken::new(),
                    ended: CancellationToken::new(),
                },
            );
            self.spawn_task(source, record);
        }
        for key in orphans {
            db.delete_cf(cf, key)?;
        }
        Ok(())
    }

    fn spawn_task(&self, source: QueueId, record: MoveTaskRecord) {
        let weak = Arc::downgrade(&self.inner);
        let (cancel, ended) = {
            let tasks = self.inner.tasks.lock();
            let task = &tasks[&record.id];
            (task.cancel.clone(), task.ended.clone())
        };
        // Stops, leaving the task `Running` for whoever serves next, when the engine closes or
        // stops serving (its node no longer leads).
        let stop = self.inner.serving.lock().clone();
        self.inner.workers.spawn(async move {
            let id = record.id.clone();
            run_task(weak.clone(), source, record, cancel, stop.clone()).await;
            if let Some(inner) = weak.upgrade() {
                // After a stop the engine forgot its tasks already, and may be tracking this
                // one again under a new worker.
                if !stop.is_cancelled() {
                    inner.tasks.lock().remove(&id);
                }
            }
            ended.cancel();
        });
    }
}

fn listed(record: MoveTaskRecord) -> MoveTask {
    MoveTask {
        status: record.status(),
        destination: (record.destination != 0).then_some(record.destination),
        max_per_second: (record.max_per_second != 0).then_some(record.max_per_second),
        id: record.id,
        destination_name: record.destination_name,
        moved: record.moved,
        total: record.total,
        failure: record.failure,
        started_ms: record.started_ms,
    }
}

/// Moves the task's messages batch by batch until none with a sequence up to its last is left,
/// then writes its final status. On engine shutdown it stops with the status still `Running`,
/// so the next start resumes it.
async fn run_task(
    weak: Weak<Inner>,
    source: QueueId,
    mut record: MoveTaskRecord,
    cancel: CancellationToken,
    shutdown: CancellationToken,
) {
    let limiter = NonZeroU32::new(record.max_per_second)
        .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
    let batch =
        NonZeroU32::new(record.max_per_second.clamp(1, TASK_BATCH)).expect("clamped to at least 1");
    let to = match record.destination {
        0 => Destination::Origin,
        queue => Destination::Queue(queue),
    };
    let outcome = loop {
        if cancel.is_cancelled() {
            break Some((MoveTaskStatus::Cancelled, String::new()));
        }
        if shutdown.is_cancelled() {
            break None;
        }
        if let Some(limiter) = &limiter {
            tokio::select! {
                _ = limiter.until_n_ready(batch) => {}
                _ = cancel.cancelled() => continue,
                _ = shutdown.cancelled() => continue,
            }
        }
        let Some(inner) = weak.upgrade() else {
            break None;
        };
        let engine = Engine { inner };
        if !engine.is_active() {
            break None;
        }
        let Ok(queue) = engine.queue(source) else {
            break Some((
                MoveTaskStatus::Cancelled,
                "the source queue was deleted".into(),
            ));
        };
        let notified = queue.visible_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (taken, left, next_due) = {
            let mut state = queue.state.lock();
            let now = now_ms();
            state.promote_due(now);
            let taken = state.take_for_move(batch.get() as usize, record.last_sequence, now);
            (
                taken,
                state.has_up_to(record.last_sequence),
                state.next_due_ms(),
            )
        };
        if taken.is_empty() {
            if !left {
                break Some((MoveTaskStatus::Completed, String::new()));
            }
            // What is left is in flight or delayed: wait for it to become visible or go.
            let until_due =
                Duration::from_millis(next_due.map_or(1000, |due| due.saturating_sub(now_ms())));
            drop(engine);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(until_due.min(Duration::from_secs(1))) => {}
                _ = cancel.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        let count = taken.len();
        match engine
            .move_messages(source, &queue, to, taken, Some(&mut record))
            .await
        {
            Ok(moved) => metrics::TASK_MOVES
                .with_label_values(&[&queue_label(&queue.state.lock().config.name)])
                .inc_by(moved as u64),
            Err(Error::Closed | Error::NotLeader(_)) => break None,
            Err(err) => {
                metrics::MOVE_FAILURES.inc_by(count as u64);
                break Some((MoveTaskStatus::Failed, err.to_string()));
            }
        }
    };
    let Some((status, failure)) = outcome else {
        return;
    };
    let Some(inner) = weak.upgrade() else {
        return;
    };
    record.status = status as i32;
    record.failure = failure;
    let engine = Engine { inner };
    let write = Op::Put(
        Cf::Meta,
        task_key(source, &record.id),
        record.encode_to_vec(),
    );
    match engine.inner.committer.commit(vec![write], true).await {
        Ok(()) => tracing::info!(
            task = %record.id,
            status = ?status,
            moved = record.moved,
            failure = %record.failure,
            "message move task ended"
        ),
        Err(err) => {
            tracing::warn!(task = %record.id, error = %err, "cannot record the end of a move task")
        }
    }
}

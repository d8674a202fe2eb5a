//! The message path of the engine: sends (group-committed, deduplicated), receives served from
//! the in-memory index (waiting for a message when asked to), deletes and visibility changes by
//! receipt handle.

use std::time::Duration;

use prost::Message as _;

use crate::commit::{Cf, Op};
use crate::engine::{meta_of, seq_floor_op, state_of, Engine};
use crate::error::{Error, Result};
use crate::keys::{self, dedup_key, message_key, send_key};
use crate::metrics;
use crate::queue::{MessageMeta, Phase, Queue, QueueState, Taken};
use crate::receipt::Receipt;
use crate::records::{DedupRecord, MessageRecord, SendOnceRecord, StateRecord};
use crate::window::{Dedup, SendOnce};
use crate::{
    now_ms, IdempotencyKey, NewMessage, QueueId, ReceivedMessage, Replication, SentMessage,
};

impl Engine {
    /// Stores the messages durably (fsync'd) and returns once they are; then they become
    /// visible (or delayed). All are stored or none is. A message whose deduplication id was
    /// seen within the window stores nothing and gets the first send's answer, once that send is
    /// durable.
    pub async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        self.send_with(id, None, messages).await
    }

    /// Like [`send`](Self::send), remembering `key` with the messages for the idempotency
    /// window: a send with the same key in that window, on this node or on whichever leads the
    /// cluster after it, stores nothing and gets the first send's answer (every message marked
    /// a duplicate) once that send is durable.
    pub async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        self.send_with(id, Some(key), messages).await
    }

    async fn send_with(
        &self,
        id: QueueId,
        key: Option<IdempotencyKey>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        let queue = self.queue(id)?;
        self.inner.disk.check()?;
        let now = now_ms();
        // Encoded and digested before taking the queue's lock: reading the body is the
        // expensive part. The digest is stored, so no receive has to compute it again.
        let prepared: Vec<Prepared> = messages
            .into_iter()
            .enumerate()
            .map(|(index, mut message)| {
                let message_id = match key {
                    _ if !message.message_id.is_empty() => std::mem::take(&mut message.message_id),
                    Some(key) => key.message_id(index),
                    None => uuid::Uuid::new_v4().to_string(),
                };
                // Given by a frontend that encrypted the body: the MD5 of the plain text.
                let md5 = if message.md5_of_body.is_empty() {
                    crate::md5_of_body(&message.body)
                } else {
                    std::mem::take(&mut message.md5_of_body)
                };
                let record = MessageRecord {
                    message_id: message_id.clone(),
                    body: std::mem::take(&mut message.body),
                    attributes: std::mem::take(&mut message.attributes),
                    group_id: message.group_id.clone(),
                    source_queue: 0,
                    source_queue_name: String::new(),
                    md5_of_body: md5.clone(),
                    moved_ms: 0,
                };
                Prepared {
                    message_id,
                    encoded: record.encode_to_vec(),
                    message,
                    md5_of_body: md5,
                }
            })
            .collect();

        let asynchronous;
        let (sent, pending, undo) = {
            let mut state = queue.state.lock();
            if state.deleted {
                return Err(Error::QueueNotFound(id));
            }
            let stored = key.and_then(|key| state.sends.get(&key, now).copied());
            // A send whose key this partition stored before it was sealed is answered from
            // here: a frontend that lost the first answer and retries after the move must not
            // store the messages again on the queue's new partition.
            if state.sealed && stored.is_none() {
                return Err(Error::Sealed(id));
            }
            asynchronous = self.inner.replicated && state.config.replication == Replication::Async;
            let (sent, write) = match stored {
                Some(first) => (replay(&state, first, &prepared, now)?, Write::default()),
                None => self.stage(id, &mut state, key, prepared, now),
            };
            // Submitted under the lock, so a duplicate sent after this is acknowledged only once
            // this write is done. Only duplicates: an empty write that waits for the originals.
            let sync = !write.ops.is_empty();
            let pending = self.inner.committer.submit(write.ops, sync);
            (sent, pending, write.undo)
        };
        let duplicates = sent.iter().filter(|s| s.duplicate).count();
        if duplicates > 0 {
            metrics::DUPLICATE_SENDS.inc_by(duplicates as u64);
        }
        let (durable, applied) = match pending {
            Ok(pending) => pending.split(),
            Err(err) => return finish_send(&queue, id, Err(err), undo).map(|()| sent),
        };
        // The write is finished (kept in the index or undone) in a task of its own, whatever
        // becomes of this call: a caller that gives up (a cancelled RPC drops this future) or
        // is told UNAVAILABLE must not leave stored messages out of the index, nor their FIFO
        // groups held for them.
        let finishing = tokio::spawn(async move {
            let result = applied.wait().await;
            let failed = result.is_err();
            let finished = finish_send(&queue, id, result, undo);
            if asynchronous && failed {
                tracing::warn!(
                    queue_id = id,
                    "an asynchronous send was not applied here: this node stopped leading before a majority had it"
                );
            }
            finished
        });
        if asynchronous {
            // Acknowledged once durable in the leader's log; receivable once applied, which is
            // when the payload is in RocksDB to be read. Only this node's log holds it yet:
            // acknowledged only while no other node can lead. Refused, it may still commit; the
            // frontend's retry with the same idempotency key then finds it instead of storing
            // it twice.
            durable.wait().await?;
            self.check_lease()?;
            return Ok(sent);
        }
        // A replicated send waits for a majority only while this node may still lead.
        self.unless_lease_lost(finishing)
            .await?
            .map_err(|err| Error::Corrupt(format!("a send's completion failed: {err}")))??;
        Ok(sent)
    }

    /// For each deduplication id, the first send's message id and sequence if this queue
    /// stored a message with it within the window. An id is remembered when its send is
    /// staged: this waits for the writes staged so far, as a duplicate send does, and looks
    /// again, so a send that failed meanwhile is not counted.
    pub async fn deduplicated(
        &self,
        id: QueueId,
        ids: &[String],
    ) -> Result<Vec<Option<(String, u64)>>> {
        let queue = self.queue(id)?;
        let pending = {
            let state = queue.state.lock();
            if state.deleted {
                return Err(Error::QueueNotFound(id));
            }
            let now = now_ms();
            let any = ids
                .iter()
                .any(|d| state.dedup.get(d.as_str(), now).is_some());
            any.then(|| self.inner.committer.submit(Vec::new(), false))
        };
        if let Some(pending) = pending {
            let (_, applied) = pending?.split();
            applied.wait().await?;
        }
        let state = queue.state.lock();
        let now = now_ms();
        Ok(ids
            .iter()
            .map(|d| {
                state
                    .dedup
                    .get(d.as_str(), now)
                    .map(|first| (first.message_id.clone(), first.seq))
            })
            .collect())
    }

    /// Takes sequences for the messages and stages their write, remembering their
    /// deduplication ids and `key` (under the queue's lock, which the caller holds).
    fn stage(
        &self,
        id: QueueId,
        state: &mut QueueState,
        key: Option<IdempotencyKey>,
        prepared: Vec<Prepared>,
        now: u64,
    ) -> (Vec<SentMessage>, Write) {
        let dedup_expires = now + self.inner.dedup_window.as_millis() as u64;
        let first_seq = state.next_seq;
        let mut sent = Vec::with_capacity(prepared.len());
        let mut write = Write {
            // A payload and a state record a message, and the send's key.
            ops: Vec::with_capacity(prepared.len() * 2 + 1),
            undo: Undo::default(),
        };
        for Prepared {
            message_id,
            encoded,
            message,
            md5_of_body,
        } in prepared
        {
            if !message.deduplication_id.is_empty() {
                if let Some(first) = state.dedup.get(&message.deduplication_id, now) {
                    sent.push(SentMessage {
                        message_id: first.message_id.clone(),
                        sequence: first.seq,
                        duplicate: true,
                        md5_of_body,
                    });
                    continue;
                }
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            let group = state.group(&message.group_id);
            if let Some(group) = &group {
                // Claims the message's place in its group now, so a later send of the group
                // that commits first cannot overtake it.
                state.reserve(seq, group);
            }
            let record = StateRecord {
                sent_ms: now,
                visible_at_ms: now + message.delay.as_millis() as u64,
                receive_count: 0,
                first_receive_ms: 0,
                group_id: if group.is_some() {
                    message.group_id
                } else {
                    String::new()
                },
            };
            let message_key = message_key(id, seq).to_vec();
            write
                .ops
                .push(Op::Put(Cf::Messages, message_key.clone(), encoded));
            write
                .ops
                .push(Op::Put(Cf::State, message_key, record.encode_to_vec()));
            if !message.deduplication_id.is_empty() {
                let dedup = DedupRecord {
                    message_id: message_id.clone(),
                    sequence: seq,
                    expires_ms: dedup_expires,
                };
                write.ops.push(Op::Put(
                    Cf::Dedup,
                    dedup_key(id, &message.deduplication_id),
                    dedup.encode_to_vec(),
                ));
                state.dedup.insert(
                    message.deduplication_id.clone(),
                    Dedup {
                        message_id: message_id.clone(),
                        seq,
                        expires_ms: dedup_expires,
                    },
                );
                write.undo.dedup.push((message.deduplication_id, seq));
            }
            write.undo.metas.push((seq, meta_of(&record, group)));
            sent.push(SentMessage {
                message_id,
                sequence: seq,
                duplicate: false,
                md5_of_body,
            });
        }
        let count = state.next_seq - first_seq;
        if let (Some(key), true) = (key, count > 0) {
            // A send that stored nothing needs no key: sent again, its deduplication ids give
            // the same answer.
            let expires_ms = now + self.inner.idempotency_window.as_millis() as u64;
            let record = SendOnceRecord {
                first_sequence: first_seq,
                count,
                expires_ms,
            };
            write.ops.push(Op::Put(
                Cf::Dedup,
                send_key(id, key),
                record.encode_to_vec(),
            ));
            state.sends.insert(
                key,
                SendOnce {
                    first_seq,
                    count,
                    expires_ms,
                },
            );
            write.undo.send = Some((key, first_seq));
        }
        (sent, write)
    }

    /// Receives up to `max` messages and hides them for `visibility`. With a non-zero `wait`,
    /// waits until at least one message is visible or `wait` has passed.
    pub async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let queue = self.queue(id)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let dead_letter = self.dead_letter_of(&queue);
            // Registered before looking, so a send between the look and the wait still wakes us.
            let notified = queue.visible_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (taken, next_due) = {
                let mut state = queue.state.lock();
                if state.deleted {
                    return Err(Error::QueueNotFound(id));
                }
                let now = now_ms();
                state.promote_due(now);
                (
                    state.take_visible(
                        max,
                        visibility,
                        now,
                        dead_letter.map(|d| d.max_receive_count),
                    ),
                    state.next_due_ms(),
                )
            };
            let Taken { deliver, dead } = taken;
            let moved = !dead.is_empty();
            if let (Some(dead_letter), true) = (dead_letter, moved) {
                self.move_to_dead_letter(id, &queue, dead_letter, dead)
                    .await;
            }
            if !deliver.is_empty() {
                return self.deliver(id, &queue, deliver).await;
            }
            if moved {
                // Moving made room: look again before waiting.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || self.inner.shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            let mut wake_at = deadline;
            if let Some(due) = next_due {
                let until_due = Duration::from_millis(due.saturating_sub(now_ms()));
                wake_at = wake_at.min(now + until_due);
            }
            let _waiting = WaitingGuard::new();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Reads the stored records of messages taken from a queue's state; `None` for one deleted
    /// meanwhile.
    #[tracing::instrument(name = "storage.read", level = "info", skip_all, fields(messages = taken.len()))]
    pub(crate) async fn read_records(
        &self,
        id: QueueId,
        taken: &[(u64, MessageMeta)],
    ) -> Result<Vec<Option<MessageRecord>>> {
        let db = &self.inner.db;
        let keys: Vec<[u8; 16]> = taken.iter().map(|(seq, _)| message_key(id, *seq)).collect();
        // Messages received soon after they were sent are still in the memtable or the block
        // cache: read those right here, which costs microseconds, and hand only what needs the
        // disk to a blocking thread, instead of a thread switch for every receive.
        let mut payloads = {
            let mut cached = rocksdb::ReadOptions::default();
            cached.set_read_tier(rocksdb::ReadTier::BlockCache);
            let cf = db.cf_handle(keys::CF_MESSAGES).expect("created at open");
            db.multi_get_cf_opt(keys.iter().map(|k| (cf, k.as_slice())), &cached)
        };
        let misses: Vec<usize> = payloads
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete))
            .map(|(i, _)| i)
            .collect();
        if !misses.is_empty() {
            let db = db.clone();
            let missed: Vec<[u8; 16]> = misses.iter().map(|&i| keys[i]).collect();
            let read = tokio::task::spawn_blocking(move || {
                let cf = db.cf_handle(keys::CF_MESSAGES).expect("created at open");
                db.multi_get_cf(missed.iter().map(|k| (cf, k.as_slice())))
            })
            .await
            .map_err(|err| Error::Corrupt(format!("read task failed: {err}")))?;
            for (i, payload) in misses.into_iter().zip(read) {
                payloads[i] = payload;
            }
        }
        payloads
            .into_iter()
            .zip(taken)
            .map(|(payload, (seq, _))| {
                payload?
                    .map(|bytes| {
                        MessageRecord::decode(bytes.as_slice())
                            .map_err(|err| Error::Corrupt(format!("message {id}/{seq}: {err}")))
                    })
                    .transpose()
            })
            .collect()
    }

    /// Reads the payloads of messages just put in flight and records their new delivery state.
    pub(crate) async fn deliver(
        &self,
        id: QueueId,
        queue: &Queue,
        taken: Vec<(u64, MessageMeta)>,
    ) -> Result<Vec<ReceivedMessage>> {
        let records = self.read_records(id, &taken).await?;
        let mut ops = Vec::with_capacity(taken.len());
        let mut delivered = Vec::with_capacity(taken.len());
        for ((seq, meta), record) in taken.into_iter().zip(records) {
            let Some(record) = record else {
                // Deleted while we were reading (purge, queue delete): not a delivery.
                queue.state.lock().remove(seq);
                continue;
            };
            ops.push(Op::Put(
                Cf::State,
                message_key(id, seq).to_vec(),
                state_of(&meta).encode_to_vec(),
            ));
            let md5_of_body = if record.md5_of_body.is_empty() {
                crate::md5_of_body(&record.body)
            } else {
                record.md5_of_body
            };
            delivered.push(ReceivedMessage {
                md5_of_body,
                message_id: record.message_id,
                receipt_handle: self.inner.signer.read().encode(Receipt {
                    queue: id,
                    seq,
                    receive_count: meta.receive_count,
                }),
                body: record.body,
                attributes: record.attributes,
                sent_timestamp_ms: meta.sent_ms,
                receive_count: meta.receive_count,
                first_receive_timestamp_ms: meta.first_receive_ms,
                group_id: record.group_id,
                sequence: seq,
                dead_letter_source: record.source_queue_name,
            });
        }
        // In a standard queue delivery state need not be fsync'd, nor even written before the
        // messages go out: losing it only makes a message visible early and its receive count
        // approximate, which at-least-once delivery allows. So a receive does not wait behind
        // the group commit (and its fsync) that carries it. Writes apply in the order they
        // are submitted, so a delete of these messages still lands after their state.
        //
        // A FIFO queue promises that a group's message is with one consumer at a time, so its
        // deliveries are durable (fsync'd, or committed by a majority) before they go out: a
        // restarted node or the next leader keeps them in flight until their timeout.
        if !ops.is_empty() {
            let fifo = queue.state.lock().config.fifo;
            if fifo {
                self.unless_lease_lost(self.inner.committer.commit(ops, true))
                    .await??;
            } else {
                drop(self.inner.committer.submit(ops, false)?);
            }
        }
        // The messages leave this node's index for the consumer: only while no other leader can
        // be handing them out too. Refused, they are back after their visibility timeout here,
        // and on the next leader at once (a standard queue's) or after that timeout (a FIFO
        // queue's, whose delivery was committed).
        self.check_lease()?;
        Ok(delivered)
    }

    /// Checks a receipt handle against the queue's current state.
    pub(crate) fn check_receipt(&self, id: QueueId, handle: &str) -> Result<Receipt> {
        let receipt = self.inner.signer.read().decode(handle)?;
        if receipt.queue != id {
            return Err(Error::ReceiptForOtherQueue);
        }
        Ok(receipt)
    }

    /// Deletes the message a receipt handle names. Deleting an already deleted message succeeds;
    /// a handle from an earlier delivery is refused as stale and changes nothing.
    pub async fn delete(&self, id: QueueId, handles: &[&str]) -> Result<Vec<Result<()>>> {
        let queue = self.queue(id)?;
        let mut results = Vec::with_capacity(handles.len());
        let mut ops = Vec::new();
        {
            let mut state = queue.state.lock();
            for handle in handles {
                let result = self.check_receipt(id, handle).and_then(|receipt| {
                    match state.messages.get(&receipt.seq) {
                        None => Ok(None),
                        Some(meta) if meta.receive_count > receipt.receive_count => {
                            Err(Error::StaleReceipt)
                        }
                        Some(_) => {
                            state.remove(receipt.seq);
                            Ok(Some(receipt.seq))
                        }
                    }
                });
                results.push(result.map(|removed| {
                    if let Some(seq) = removed {
                        let key = message_key(id, seq).to_vec();
                        ops.push(Op::Delete(Cf::Messages, key.clone()));
                        ops.push(Op::Delete(Cf::State, key));
                    }
                }));
            }
            if !ops.is_empty() {
                ops.push(seq_floor_op(id, state.next_seq));
            }
        }
        self.unless_lease_lost(self.inner.committer.commit(ops, true))
            .await??;
        Ok(results)
    }

    /// Makes an in-flight message visible again after `visibility` from now.
    pub async fn change_visibility(
        &self,
        id: QueueId,
        changes: &[(&str, Duration)],
    ) -> Result<Vec<Result<()>>> {
        let queue = self.queue(id)?;
        let mut results = Vec::with_capacity(changes.len());
        let mut ops = Vec::new();
        let mut any_visible = false;
        {
            let mut state = queue.state.lock();
            let now = now_ms();
            state.promote_due(now);
            for (handle, visibility) in changes {
                let result = self.check_receipt(id, handle).and_then(|receipt| {
                    let meta = state.messages.get(&receipt.seq).ok_or(Error::MessageGone)?;
                    if meta.receive_count > receipt.receive_count {
                        return Err(Error::StaleReceipt);
                    }
                    if meta.phase != Phase::InFlight {
                        return Err(Error::NotInFlight);
                    }
                    state.set_visibility(receipt.seq, *visibility, now);
                    Ok(receipt.seq)
                });
                results.push(result.map(|seq| {
                    any_visible |= visibility.is_zero();
                    let meta = &state.messages[&seq];
                    ops.push(Op::Put(
                        Cf::State,
                        message_key(id, seq).to_vec(),
                        state_of(meta).encode_to_vec(),
                    ));
                }));
            }
        }
        self.inner.committer.commit(ops, false).await?;
        if any_visible {
            queue.visible_notify.notify_waiters();
        }
        Ok(results)
    }
}

/// A message encoded and digested, waiting for the queue's lock.
struct Prepared {
    message_id: String,
    encoded: Vec<u8>,
    message: NewMessage,
    md5_of_body: String,
}

/// What a send writes, and what it took that a failed write gives back.
#[derive(Default)]
struct Write {
    ops: Vec<Op>,
    undo: Undo,
}

#[derive(Default)]
struct Undo {
    /// The messages' sequences and index entries, inserted once the write is applied.
    metas: Vec<(u64, MessageMeta)>,
    dedup: Vec<(String, u64)>,
    send: Option<(IdempotencyKey, u64)>,
}

/// The answer to a send whose idempotency key remembers `first`: the messages it stored take
/// its sequences in order, with the ids the send named or derived from the key (as the first
/// attempt stored them); a message whose deduplication id named an earlier send gets that
/// send's answer, as it did the first time. A send that does not fit what the key stored is
/// not a retry of it.
fn replay(
    state: &QueueState,
    first: SendOnce,
    prepared: &[Prepared],
    now: u64,
) -> Result<Vec<SentMessage>> {
    let stored = first.first_seq..first.first_seq + first.count;
    let mut next = first.first_seq;
    let mut sent = Vec::with_capacity(prepared.len());
    for message in prepared {
        let earlier = Some(message.message.deduplication_id.as_str())
            .filter(|d| !d.is_empty())
            .and_then(|d| state.dedup.get(d, now))
            .filter(|d| !stored.contains(&d.seq));
        let (message_id, sequence) = match earlier {
            Some(earlier) => (earlier.message_id.clone(), earlier.seq),
            None => {
                next += 1;
                // The id the send named, or the one derived from the key: what the first
                // attempt stored.
                (message.message_id.clone(), next - 1)
            }
        };
        sent.push(SentMessage {
            message_id,
            sequence,
            duplicate: true,
            md5_of_body: message.md5_of_body.clone(),
        });
    }
    if next != stored.end {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(sent)
}

/// Makes sent messages receivable once their write is applied, or gives back what the send
/// took if it failed.
fn finish_send(queue: &Queue, id: QueueId, result: Result<()>, undo: Undo) -> Result<()> {
    let mut any_visible = false;
    {
        let mut state = queue.state.lock();
        if let Err(err) = result {
            for (dedup_id, seq) in &undo.dedup {
                state.dedup.forget(dedup_id.as_str(), *seq);
            }
            if let Some((key, seq)) = undo.send {
                state.sends.forget(&key, seq);
            }
            for (seq, meta) in &undo.metas {
                if let Some(group) = &meta.group {
                    state.unreserve(*seq, group);
                }
            }
            return Err(err);
        }
        if state.deleted {
            return Err(Error::QueueNotFound(id));
        }
        let now = now_ms();
        for (seq, meta) in undo.metas {
            any_visible |= meta.visible_at_ms <= now;
            state.insert(seq, meta, now);
        }
    }
    if any_visible {
        queue.visible_notify.notify_waiters();
    }
    Ok(())
}

/// Counts a waiting receive for as long as it waits, even if its caller gives up.
struct WaitingGuard;

impl WaitingGuard {
    fn new() -> Self {
        metrics::WAITING_RECEIVES.inc();
        WaitingGuard
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        metrics::WAITING_RECEIVES.dec();
    }
}

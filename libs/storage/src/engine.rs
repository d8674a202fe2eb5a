//! The engine: opens RocksDB, rebuilds every queue's index, and serves queue operations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prost::Message as _;
use rand::RngCore;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, DB};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commit::{Cf, Committer, Op, Replicator};
use crate::error::{Error, Result};
use crate::keys::{self, dedup_key, message_key, queue_key, seq_floor_key};
use crate::metrics;
use crate::queue::{Dedup, MessageMeta, Phase, Queue, Taken};
use crate::receipt::{Receipt, ReceiptSigner};
use crate::records::{DedupRecord, MessageRecord, QueueRecord, StateRecord};
use crate::wal::WalTrimmer;
use crate::QueueCounts;
use crate::{
    now_ms, DeadLetter, NewMessage, QueueConfig, QueueId, ReceivedMessage, Replication, SentMessage,
};

/// How often retention is enforced and queue depth gauges refreshed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a deduplication id is remembered by default, as in SQS.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub path: PathBuf,
    /// How long a send's deduplication id is remembered.
    pub dedup_window: Duration,
}

impl EngineOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EngineOptions {
            path: path.into(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

/// A handle to the queue engine; clones share it.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// A running move task (`moves.rs`), as the engine tracks it to cancel it.
pub(crate) struct RunningTask {
    pub(crate) source: QueueId,
    pub(crate) cancel: CancellationToken,
    /// Cancelled by the worker when it has stopped and written its final status.
    pub(crate) ended: CancellationToken,
}

pub(crate) struct Inner {
    pub(crate) db: Arc<DB>,
    pub(crate) committer: Committer,
    signer: RwLock<ReceiptSigner>,
    /// Serves queue operations. A replicated engine is active only while its node leads the
    /// cluster; meanwhile its RocksDB follows the log and its in-memory index is not kept.
    active: AtomicBool,
    replicated: bool,
    queues: RwLock<HashMap<QueueId, Arc<Queue>>>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the engine stops serving (or closes): move tasks stop without recording
    /// an end. A new one, a child of `shutdown`, comes with each activation.
    pub(crate) serving: parking_lot::Mutex<CancellationToken>,
    sweeper: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    dedup_window: Duration,
    /// Running message move tasks by id: their source queue and how to cancel them.
    pub(crate) tasks: parking_lot::Mutex<HashMap<String, RunningTask>>,
    /// The move task workers, so closing waits for them.
    pub(crate) workers: TaskTracker,
    /// Held while a queue record is written (create, update, seal).
    record_writes: tokio::sync::Mutex<()>,
    /// Deletes the WAL files RocksDB has archived; stops when the engine is dropped.
    _wal_trimmer: WalTrimmer,
}

impl Engine {
    /// Opens (or creates) the engine at `options.path` and rebuilds every queue's index. Must be
    /// called inside a tokio runtime: it starts the retention sweeper.
    pub fn open(options: EngineOptions) -> Result<Self> {
        let db = Arc::new(open_db(&options.path, false)?);
        let signer = ReceiptSigner::new(load_or_create_receipt_key(&db)?);
        let queues = rebuild(&db, false)?;
        let engine = Self::assemble(options, db, None, signer, queues)?;
        engine.resume_move_tasks()?;
        Ok(engine)
    }

    /// Opens (or creates) a replicated engine: its writes go through `replicator`, and its
    /// RocksDB takes what the cluster's log applies (see [`Engine::apply`]). It serves nothing
    /// until [`Engine::activate`], when its node has become the leader.
    pub fn open_replicated(
        options: EngineOptions,
        replicator: Arc<dyn Replicator>,
    ) -> Result<Self> {
        let db = Arc::new(open_db(&options.path, true)?);
        // The real key is the cluster's, read when the node leads.
        let signer = ReceiptSigner::new([0; 32]);
        Self::assemble(options, db, Some(replicator), signer, HashMap::new())
    }

    fn assemble(
        options: EngineOptions,
        db: Arc<DB>,
        replicator: Option<Arc<dyn Replicator>>,
        signer: ReceiptSigner,
        queues: HashMap<QueueId, Arc<Queue>>,
    ) -> Result<Self> {
        metrics::register();
        let replicated = replicator.is_some();
        let committer = Committer::start(db.clone(), replicator)
            .map_err(|err| Error::Corrupt(format!("cannot start commit thread: {err}")))?;
        let wal_trimmer = WalTrimmer::start(&options.path, "queues")
            .map_err(|err| Error::Corrupt(format!("cannot start WAL trim thread: {err}")))?;
        let shutdown = CancellationToken::new();
        let engine = Engine {
            inner: Arc::new(Inner {
                db,
                committer,
                serving: parking_lot::Mutex::new(shutdown.child_token()),
                signer: RwLock::new(signer),
                active: AtomicBool::new(!replicated),
                replicated,
                queues: RwLock::new(queues),
                shutdown,
                sweeper: parking_lot::Mutex::new(None),
                dedup_window: options.dedup_window,
                tasks: parking_lot::Mutex::new(HashMap::new()),
                workers: TaskTracker::new(),
                record_writes: tokio::sync::Mutex::new(()),
                _wal_trimmer: wal_trimmer,
            }),
        };
        engine.spawn_sweeper();
        Ok(engine)
    }

    /// Starts serving on a replicated engine whose node has just become the leader, once
    /// everything committed before is applied here: rebuilds the index from RocksDB, with every
    /// message that was in flight on the previous leader visible again, and resumes move tasks.
    /// The first leader of a cluster makes the cluster's receipt key.
    pub async fn activate(&self) -> Result<()> {
        let db = self.inner.db.clone();
        let meta = db.cf_handle(keys::CF_META).expect("created at open");
        let key = match db.get_cf(meta, keys::RECEIPT_KEY)? {
            Some(existing) => existing,
            None => {
                let mut key = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                self.inner
                    .committer
                    .commit(
                        vec![Op::Put(Cf::Meta, keys::RECEIPT_KEY.to_vec(), key.clone())],
                        true,
                    )
                    .await?;
                key
            }
        };
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("receipt key has the wrong length".into()))?;
        *self.inner.signer.write() = ReceiptSigner::new(key);
        let queues = tokio::task::spawn_blocking(move || rebuild(&db, true))
            .await
            .map_err(|err| Error::Corrupt(format!("index rebuild failed: {err}")))??;
        *self.inner.queues.write() = queues;
        *self.inner.serving.lock() = self.inner.shutdown.child_token();
        self.inner.active.store(true, Ordering::SeqCst);
        self.resume_move_tasks()?;
        Ok(())
    }

    /// Stops serving: the node no longer leads. Waiting receives end empty, move tasks stop
    /// (the next leader resumes them), and the index is dropped until the next activation.
    pub fn deactivate(&self) {
        if !self.inner.active.swap(false, Ordering::SeqCst) {
            return;
        }
        self.inner.serving.lock().cancel();
        self.inner.tasks.lock().clear();
        let queues = std::mem::take(&mut *self.inner.queues.write());
        for queue in queues.values() {
            queue.visible_notify.notify_waiters();
        }
    }

    /// Whether the engine serves queue operations.
    pub fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::SeqCst)
    }

    fn check_active(&self) -> Result<()> {
        if self.is_active() {
            Ok(())
        } else {
            Err(Error::NotLeader(
                "this node does not lead its cluster".into(),
            ))
        }
    }

    /// Stops background work and flushes pending writes. Later calls fail with `Closed`; once
    /// every handle is dropped, the data directory can be opened again.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let sweeper = self.inner.sweeper.lock().take();
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        self.inner.workers.close();
        self.inner.workers.wait().await;
        self.inner.committer.close();
        for queue in self.inner.queues.read().values() {
            queue.visible_notify.notify_waiters();
        }
    }

    pub(crate) fn queue(&self, id: QueueId) -> Result<Arc<Queue>> {
        self.check_active()?;
        self.inner
            .queues
            .read()
            .get(&id)
            .cloned()
            .ok_or(Error::QueueNotFound(id))
    }

    /// Creates the queue, or updates its config if it exists.
    pub async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        self.create_partition(id, config, 1).await
    }

    /// Creates the queue, or updates its config if it exists, with sequence numbers from
    /// `first_sequence` on: a partition that takes over from one sealed on another cluster
    /// continues its sequence, so sequence numbers keep increasing across a move. A sealed
    /// queue stays sealed.
    pub async fn create_partition(
        &self,
        id: QueueId,
        config: QueueConfig,
        first_sequence: u64,
    ) -> Result<()> {
        // One queue record write at a time, so a config update cannot write back a record
        // read before a concurrent seal and unseal the queue on disk.
        self.check_active()?;
        let _writing = self.inner.record_writes.lock().await;
        let existing = self.inner.queues.read().get(&id).cloned();
        let sealed = existing.as_ref().is_some_and(|q| q.state.lock().sealed);
        let first_sequence = first_sequence.max(1);
        let mut ops = vec![queue_record_op(id, &config, sealed)];
        // Sequences start at 1 anyway; only a partition continuing another needs a floor.
        if first_sequence > 1 {
            ops.push(seq_floor_op(id, first_sequence));
        }
        self.inner.committer.commit(ops, true).await?;
        match existing {
            Some(queue) => {
                let mut state = queue.state.lock();
                // The kind of queue is fixed at creation: its index is built for it.
                let fifo = state.config.fifo;
                state.config = QueueConfig { fifo, ..config };
                state.next_seq = state.next_seq.max(first_sequence);
            }
            None => {
                self.inner
                    .queues
                    .write()
                    .entry(id)
                    .or_insert_with(|| Arc::new(Queue::new(config, first_sequence)));
            }
        }
        Ok(())
    }

    /// Seals the queue: it takes no more sends (they fail with [`Error::Sealed`]) while receives,
    /// deletes and visibility changes go on, so consumers drain it. Used when the queue moves to
    /// another backend cluster. Returns the queue's config and the sequence number its next
    /// message would have had, for the partition that takes over. Sealing again returns the same.
    /// A queue linked to another by a dead-letter policy cannot be sealed: messages move between
    /// linked queues inside one cluster.
    pub async fn seal_queue(&self, id: QueueId) -> Result<(QueueConfig, u64)> {
        let _writing = self.inner.record_writes.lock().await;
        let queue = self.queue(id)?;
        let (config, newly_sealed) = {
            let state = queue.state.lock();
            (state.config.clone(), !state.sealed)
        };
        if newly_sealed {
            if let Some(dead_letter) = config.dead_letter {
                let dlq = self.queue_name(dead_letter.queue);
                return Err(Error::CannotSeal(format!(
                    "queue {} has the dead-letter queue {dlq}; remove its redrive policy first",
                    config.name
                )));
            }
            let sources: Vec<String> = self
                .inner
                .queues
                .read()
                .values()
                .filter_map(|q| {
                    let state = q.state.lock();
                    (state.config.dead_letter.map(|d| d.queue) == Some(id))
                        .then(|| state.config.name.clone())
                })
                .collect();
            if !sources.is_empty() {
                return Err(Error::CannotSeal(format!(
                    "queue {} is the dead-letter queue of {}; remove their redrive policies first",
                    config.name,
                    sources.join(", ")
                )));
            }
            self.inner
                .committer
                .commit(vec![queue_record_op(id, &config, true)], true)
                .await?;
        }
        // Sends that got in before the seal have their sequence numbers already: the next one
        // read under the lock is past all of them.
        let mut state = queue.state.lock();
        state.sealed = true;
        Ok((state.config.clone(), state.next_seq))
    }

    fn queue_name(&self, id: QueueId) -> String {
        self.inner
            .queues
            .read()
            .get(&id)
            .map(|q| q.state.lock().config.name.clone())
            .unwrap_or_else(|| format!("(id {id})"))
    }

    /// Deletes the queue and every message in it.
    pub async fn delete_queue(&self, id: QueueId) -> Result<()> {
        self.check_active()?;
        let Some(queue) = self.inner.queues.write().remove(&id) else {
            return Ok(());
        };
        let name = {
            let mut state = queue.state.lock();
            state.deleted = true;
            state.clear();
            state.config.name.clone()
        };
        queue.visible_notify.notify_waiters();
        for phase in ["visible", "in_flight", "delayed"] {
            let _ = metrics::QUEUE_MESSAGES.remove_label_values(&[&name, phase]);
        }
        self.cancel_tasks_of(id);
        let mut ops = purge_ops(id);
        ops.push(Op::Delete(Cf::Queues, queue_key(id).to_vec()));
        ops.push(Op::Delete(Cf::Meta, seq_floor_key(id).to_vec()));
        let prefix = keys::task_prefix(id);
        let mut end = prefix.clone();
        end.push(0xff);
        ops.push(Op::DeleteRange(Cf::Meta, prefix, end));
        ops.push(Op::DeleteRange(
            Cf::Dedup,
            queue_key(id).to_vec(),
            queue_key(id + 1).to_vec(),
        ));
        self.inner.committer.commit(ops, true).await
    }

    /// Deletes every message of the queue, in flight or not.
    pub async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        let queue = self.queue(id)?;
        let (removed, floor) = {
            let mut state = queue.state.lock();
            (state.clear() as u64, state.next_seq)
        };
        let mut ops = purge_ops(id);
        ops.push(seq_floor_op(id, floor));
        self.inner.committer.commit(ops, true).await?;
        Ok(removed)
    }

    /// Bytes the engine holds: live SST files plus memtables, summed over column families. What
    /// a backend node reports as its storage load.
    pub fn stored_bytes(&self) -> u64 {
        let db = &self.inner.db;
        keys::ALL_CFS
            .iter()
            .filter_map(|name| db.cf_handle(name))
            .map(|cf| {
                [
                    "rocksdb.live-sst-files-size",
                    "rocksdb.cur-size-all-mem-tables",
                ]
                .iter()
                .filter_map(|property| db.property_int_value_cf(&cf, *property).ok().flatten())
                .sum::<u64>()
            })
            .sum()
    }

    /// The directory the engine stores its data in.
    pub fn path(&self) -> &std::path::Path {
        self.inner.db.path()
    }

    pub fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        let queue = self.queue(id)?;
        let mut state = queue.state.lock();
        state.promote_due(now_ms());
        Ok(state.counts())
    }

    /// Stores the messages durably (fsync'd) and returns once they are; then they become
    /// visible (or delayed). All are stored or none is. A message whose deduplication id was
    /// seen within the window stores nothing and gets the first send's answer, once that send is
    /// durable.
    pub async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        let queue = self.queue(id)?;
        let now = now_ms();
        let dedup_expires = now + self.inner.dedup_window.as_millis() as u64;
        // Encoded and digested before taking the queue's lock: reading the body is the
        // expensive part. The digest is stored, so no receive has to compute it again.
        let prepared: Vec<(String, Vec<u8>, NewMessage, String)> = messages
            .into_iter()
            .map(|mut message| {
                let message_id = uuid::Uuid::new_v4().to_string();
                let md5 = crate::md5_of_body(&message.body);
                let record = MessageRecord {
                    message_id: message_id.clone(),
                    body: std::mem::take(&mut message.body),
                    attributes: std::mem::take(&mut message.attributes),
                    group_id: message.group_id.clone(),
                    source_queue: 0,
                    source_queue_name: String::new(),
                    md5_of_body: md5.clone(),
                };
                (message_id, record.encode_to_vec(), message, md5)
            })
            .collect();

        let mut sent = Vec::with_capacity(prepared.len());
        let mut metas = Vec::with_capacity(prepared.len());
        let mut remembered = Vec::new();
        let asynchronous;
        let pending = {
            let mut state = queue.state.lock();
            asynchronous = self.inner.replicated && state.config.replication == Replication::Async;
            if state.deleted {
                return Err(Error::QueueNotFound(id));
            }
            if state.sealed {
                return Err(Error::Sealed(id));
            }
            let mut ops = Vec::with_capacity(prepared.len() * 2);
            for (message_id, encoded, message, md5_of_body) in prepared {
                if !message.deduplication_id.is_empty() {
                    if let Some(first) = state.dedup_lookup(&message.deduplication_id, now) {
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
                let key = message_key(id, seq).to_vec();
                ops.push(Op::Put(Cf::Messages, key.clone(), encoded));
                ops.push(Op::Put(Cf::State, key, record.encode_to_vec()));
                if !message.deduplication_id.is_empty() {
                    let dedup = DedupRecord {
                        message_id: message_id.clone(),
                        sequence: seq,
                        expires_ms: dedup_expires,
                    };
                    ops.push(Op::Put(
                        Cf::Dedup,
                        dedup_key(id, &message.deduplication_id),
                        dedup.encode_to_vec(),
                    ));
                    state.dedup_insert(
                        message.deduplication_id.clone(),
                        Dedup {
                            message_id: message_id.clone(),
                            seq,
                            expires_ms: dedup_expires,
                        },
                    );
                    remembered.push((message.deduplication_id, seq));
                }
                metas.push((seq, meta_of(&record, group)));
                sent.push(SentMessage {
                    message_id,
                    sequence: seq,
                    duplicate: false,
                    md5_of_body,
                });
            }
            // Submitted under the lock, so a duplicate sent after this is acknowledged only once
            // this write is done. Only duplicates: an empty write that waits for the originals.
            let sync = !ops.is_empty();
            self.inner.committer.submit(ops, sync)
        };
        let duplicates = sent.iter().filter(|s| s.duplicate).count();
        if duplicates > 0 {
            metrics::DUPLICATE_SENDS.inc_by(duplicates as u64);
        }
        let result = match pending {
            // Acknowledged once durable in the leader's log; receivable once applied, which is
            // when the payload is in RocksDB to be read.
            Ok(pending) if asynchronous => match pending.durable().await {
                Ok(applied) => {
                    tokio::spawn(async move {
                        let result = applied.wait().await;
                        if let Err(err) = finish_send(&queue, id, result, metas, remembered) {
                            tracing::warn!(error = %err, queue_id = id, "an acknowledged asynchronous send was not replicated");
                        }
                    });
                    return Ok(sent);
                }
                Err(err) => Err(err),
            },
            Ok(pending) => pending.wait().await,
            Err(err) => Err(err),
        };
        finish_send(&queue, id, result, metas, remembered)?;
        Ok(sent)
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
    async fn deliver(
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
        // Delivery state need not be fsync'd, nor even written before the messages go out:
        // losing it only makes a message visible early and its receive count approximate,
        // which at-least-once delivery allows. So a receive does not wait behind the group
        // commit (and its fsync) that carries it. Writes apply in the order they are
        // submitted, so a delete of these messages still lands after their state.
        if !ops.is_empty() {
            drop(self.inner.committer.submit(ops, false)?);
        }
        Ok(delivered)
    }

    /// Checks a receipt handle against the queue's current state.
    fn check_receipt(&self, id: QueueId, handle: &str) -> Result<Receipt> {
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
        self.inner.committer.commit(ops, true).await?;
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

    /// Holds the engine weakly, so dropping the last handle closes RocksDB without waiting for
    /// the sweeper to notice.
    fn spawn_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                if !inner.active.load(Ordering::SeqCst) {
                    continue;
                }
                if let Err(err) = (Engine { inner }).sweep().await {
                    tracing::warn!(error = %err, "retention sweep failed");
                }
            }
        });
        *self.inner.sweeper.lock() = Some(task);
    }

    /// Deletes expired messages and refreshes the depth gauges.
    async fn sweep(&self) -> Result<()> {
        let queues: Vec<(QueueId, Arc<Queue>)> = self
            .inner
            .queues
            .read()
            .iter()
            .map(|(id, q)| (*id, q.clone()))
            .collect();
        let now = now_ms();
        let mut ops = Vec::new();
        for (id, queue) in queues {
            let (expired, counts, name, next_seq) = {
                let mut state = queue.state.lock();
                state.promote_due(now);
                let forgotten = state.take_expired_dedup(now);
                if !forgotten.is_empty() {
                    // Submitted under the lock: a send that reuses an id after this must write
                    // its record after this delete, not before.
                    let deletes = forgotten
                        .iter()
                        .map(|dedup_id| Op::Delete(Cf::Dedup, dedup_key(id, dedup_id)))
                        .collect();
                    drop(self.inner.committer.submit(deletes, false)?);
                }
                (
                    state.take_expired(now),
                    state.counts(),
                    state.config.name.clone(),
                    state.next_seq,
                )
            };
            for (phase, value) in [
                ("visible", counts.visible),
                ("in_flight", counts.in_flight),
                ("delayed", counts.delayed),
            ] {
                metrics::QUEUE_MESSAGES
                    .with_label_values(&[&name, phase])
                    .set(value as i64);
            }
            if !expired.is_empty() {
                tracing::debug!(queue = %name, expired = expired.len(), "retention expired messages");
                metrics::MESSAGES_EXPIRED.inc_by(expired.len() as u64);
                ops.push(seq_floor_op(id, next_seq));
            }
            for seq in expired {
                let key = message_key(id, seq).to_vec();
                ops.push(Op::Delete(Cf::Messages, key.clone()));
                ops.push(Op::Delete(Cf::State, key));
            }
        }
        // Losing an expiry on a crash only means it is redone after restart.
        self.inner.committer.commit(ops, false).await
    }
}

/// Makes sent messages receivable once their write is applied, or forgets what the send
/// reserved if it failed.
fn finish_send(
    queue: &Queue,
    id: QueueId,
    result: Result<()>,
    metas: Vec<(u64, MessageMeta)>,
    remembered: Vec<(String, u64)>,
) -> Result<()> {
    let mut any_visible = false;
    {
        let mut state = queue.state.lock();
        if let Err(err) = result {
            for (dedup_id, seq) in &remembered {
                state.dedup_forget(dedup_id, *seq);
            }
            for (seq, meta) in &metas {
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
        for (seq, meta) in metas {
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

pub(crate) fn meta_of(state: &StateRecord, group: Option<Arc<str>>) -> MessageMeta {
    MessageMeta {
        sent_ms: state.sent_ms,
        visible_at_ms: state.visible_at_ms,
        receive_count: state.receive_count,
        first_receive_ms: state.first_receive_ms,
        phase: Phase::Visible,
        group,
    }
}

pub(crate) fn state_of(meta: &MessageMeta) -> StateRecord {
    StateRecord {
        sent_ms: meta.sent_ms,
        visible_at_ms: meta.visible_at_ms,
        receive_count: meta.receive_count,
        first_receive_ms: meta.first_receive_ms,
        group_id: meta.group.as_deref().unwrap_or_default().to_owned(),
    }
}

/// Writes queue `id`'s record: its config and whether it is sealed.
fn queue_record_op(id: QueueId, config: &QueueConfig, sealed: bool) -> Op {
    let record = QueueRecord {
        name: config.name.clone(),
        retention_ms: config.retention.as_millis() as u64,
        fifo: config.fifo,
        dead_letter_queue: config.dead_letter.map(|d| d.queue).unwrap_or(0),
        max_receive_count: config.dead_letter.map(|d| d.max_receive_count).unwrap_or(0),
        sealed,
        async_replication: config.replication == Replication::Async,
    };
    Op::Put(Cf::Queues, queue_key(id).to_vec(), record.encode_to_vec())
}

fn queue_config(record: QueueRecord) -> QueueConfig {
    QueueConfig {
        name: record.name,
        retention: Duration::from_millis(record.retention_ms),
        fifo: record.fifo,
        dead_letter: (record.dead_letter_queue != 0).then_some(DeadLetter {
            queue: record.dead_letter_queue,
            max_receive_count: record.max_receive_count,
        }),
        replication: Replication::from_async(record.async_replication),
    }
}

pub(crate) fn purge_ops(id: QueueId) -> Vec<Op> {
    let from = message_key(id, 0).to_vec();
    let to = message_key(id + 1, 0).to_vec();
    vec![
        Op::DeleteRange(Cf::Messages, from.clone(), to.clone()),
        Op::DeleteRange(Cf::State, from, to),
    ]
}

pub(crate) fn seq_floor_op(id: QueueId, next_seq: u64) -> Op {
    Op::Merge(
        Cf::Meta,
        seq_floor_key(id).to_vec(),
        next_seq.to_be_bytes().to_vec(),
    )
}

/// The WAL files kept before RocksDB flushes the column families that pin the oldest one.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

/// Opens the engine's RocksDB. A `replicated` engine is written without its WAL (see
/// [`Engine::apply`]), so only its flushes persist it, and they must leave every column family
/// at the same entry of the cluster's log.
fn open_db(path: &Path, replicated: bool) -> Result<DB> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.increase_parallelism(2);
    if replicated {
        crate::background::behind_requests(&mut options)?;
    }
    options.set_atomic_flush(replicated);
    // Messages are deleted soon after they are sent, so the messages column family flushes
    // every few seconds under load while the small ones (delivery state, dedup ids) hardly
    // ever fill; each of them keeps every WAL file since its last flush alive. Without a cap
    // the WAL grew to RocksDB's default of four times all write buffers, over a gigabyte to
    // replay after a crash. Past this cap RocksDB flushes the families that pin the oldest WAL.
    options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    crate::wal::archive_obsolete_wal(&mut options);
    let mut meta = Options::default();
    meta.set_merge_operator_associative("max_u64", keys::max_merge);
    let cfs = vec![
        ColumnFamilyDescriptor::new(keys::CF_QUEUES, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_MESSAGES, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_STATE, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_META, meta),
        ColumnFamilyDescriptor::new(keys::CF_DEDUP, Options::default()),
    ];
    Ok(DB::open_cf_descriptors(&options, path, cfs)?)
}

fn load_or_create_receipt_key(db: &DB) -> Result<[u8; 32]> {
    let cf = db.cf_handle(keys::CF_META).expect("created at open");
    if let Some(existing) = db.get_cf(cf, keys::RECEIPT_KEY)? {
        return existing
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("receipt key has the wrong length".into()));
    }
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    db.put_cf_opt(cf, keys::RECEIPT_KEY, key, &options)?;
    Ok(key)
}

/// Rebuilds every queue's in-memory index from the state records. Records of queues that no
/// longer exist (a delete interrupted by a crash) are removed. With `release_in_flight`, a
/// message in flight is visible at once: it was received from a leader that is gone.
fn rebuild(db: &DB, release_in_flight: bool) -> Result<HashMap<QueueId, Arc<Queue>>> {
    let now = now_ms();
    let meta_cf = db.cf_handle(keys::CF_META).expect("created at open");
    let mut queues = HashMap::new();
    for item in db.iterator_cf(
        db.cf_handle(keys::CF_QUEUES).expect("created at open"),
        IteratorMode::Start,
    ) {
        let (key, value) = item?;
        let id = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("queue key".into()))?,
        );
        let record = QueueRecord::decode(value.as_ref())
            .map_err(|err| Error::Corrupt(format!("queue {id}: {err}")))?;
        let floor = db
            .get_cf(meta_cf, seq_floor_key(id))?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1)
            .max(1);
        let sealed = record.sealed;
        let queue = Queue::new(queue_config(record), floor);
        queue.state.lock().sealed = sealed;
        queues.insert(id, Arc::new(queue));
    }

    let mut orphans: Vec<QueueId> = Vec::new();
    let mut messages = 0u64;
    for item in db.iterator_cf(
        db.cf_handle(keys::CF_STATE).expect("created at open"),
        IteratorMode::Start,
    ) {
        let (key, value) = item?;
        let (id, seq) =
            keys::parse_message_key(&key).ok_or_else(|| Error::Corrupt("state key".into()))?;
        let Some(queue) = queues.get(&id) else {
            if orphans.last() != Some(&id) {
                orphans.push(id);
            }
            continue;
        };
        let mut record = StateRecord::decode(value.as_ref())
            .map_err(|err| Error::Corrupt(format!("state {id}/{seq}: {err}")))?;
        if release_in_flight && record.receive_count > 0 && record.visible_at_ms > now {
            record.visible_at_ms = now;
        }
        let mut state = queue.state.lock();
        state.next_seq = state.next_seq.max(seq + 1);
        let group = state.group(&record.group_id);
        state.insert(seq, meta_of(&record, group), now);
        messages += 1;
    }
    let remembered = rebuild_dedup(db, &queues, now)?;
    for id in orphans {
        tracing::info!(queue_id = id, "removing records of a deleted queue");
        let from = message_key(id, 0);
        let to = message_key(id + 1, 0);
        for cf in [keys::CF_MESSAGES, keys::CF_STATE] {
            db.delete_range_cf(db.cf_handle(cf).expect("created at open"), from, to)?;
        }
    }
    tracing::info!(
        queues = queues.len(),
        messages,
        deduplication_ids = remembered,
        "queue engine rebuilt its index"
    );
    Ok(queues)
}

/// Loads the deduplication ids still within their window; forgets the rest and those of
/// deleted queues. Returns how many it kept.
fn rebuild_dedup(db: &DB, queues: &HashMap<QueueId, Arc<Queue>>, now: u64) -> Result<usize> {
    let cf = db.cf_handle(keys::CF_DEDUP).expect("created at open");
    let mut live: Vec<(u64, QueueId, String, Dedup)> = Vec::new();
    let mut stale = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (key, value) = item?;
        let (id, dedup_id) =
            keys::parse_dedup_key(&key).ok_or_else(|| Error::Corrupt("dedup key".into()))?;
        let record = DedupRecord::decode(value.as_ref())
            .map_err(|err| Error::Corrupt(format!("dedup {id}/{dedup_id}: {err}")))?;
        if record.expires_ms <= now || !queues.contains_key(&id) {
            stale.push(key);
            continue;
        }
        live.push((
            record.expires_ms,
            id,
            dedup_id,
            Dedup {
                message_id: record.message_id,
                seq: record.sequence,
                expires_ms: record.expires_ms,
            },
        ));
    }
    for key in stale {
        db.delete_cf(cf, key)?;
    }
    // Inserted in expiry order, which is the order each queue forgets them in.
    live.sort_by_key(|(expires, ..)| *expires);
    let kept = live.len();
    for (_, id, dedup_id, entry) in live {
        queues[&id].state.lock().dedup_insert(dedup_id, entry);
    }
    Ok(kept)
}

//! The engine: opens RocksDB, rebuilds every queue's index, and serves queue operations.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prost::Message as _;
use rand::RngCore;
use rocksdb::DB;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::commit::{Cf, Committer, Op, Replicator};
use crate::dbstats::DbStats;
use crate::disk::DiskGuard;
use crate::error::{Error, Result};
use crate::keys::{self, dedup_key, message_key, queue_key, send_key, seq_floor_key};
use crate::lease::Lease;
use crate::metrics;
use crate::queue::{MessageMeta, Phase, Queue};
use crate::receipt::ReceiptSigner;
use crate::records::{QueueRecord, StateRecord};
use crate::recovery::{load_or_create_receipt_key, open_db, rebuild};
use crate::wal::WalTrimmer;
use crate::QueueCounts;
use crate::{now_ms, DeadLetter, QueueConfig, QueueId, Replication};
use sluice_api::metrics::queue_label;

/// How often retention is enforced and queue depth gauges refreshed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a deduplication id is remembered by default, as in SQS.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);

/// How long a send's idempotency key is remembered by default: well past the longest a
/// frontend keeps retrying a send (a leader election, then a request timeout).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub path: PathBuf,
    /// How long a send's deduplication id is remembered.
    pub dedup_window: Duration,
    /// How long a send's idempotency key is remembered; no longer than `dedup_window`, since a
    /// retry's answer is partly read from the deduplication ids its send carried.
    pub idempotency_window: Duration,
    /// Sends are refused while less than this many bytes are free on the engine's disk; 0: no
    /// reserve.
    pub min_free_disk_bytes: u64,
}

impl EngineOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EngineOptions {
            path: path.into(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            min_free_disk_bytes: crate::disk::DEFAULT_MIN_FREE_DISK_BYTES,
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
    pub(crate) signer: RwLock<ReceiptSigner>,
    /// Serves queue operations. A replicated engine is active only while its node leads the
    /// cluster; meanwhile its RocksDB follows the log and its in-memory index is not kept.
    pub(crate) active: AtomicBool,
    pub(crate) replicated: bool,
    /// A replicated engine's leader lease; none on an unreplicated one, which needs no other
    /// node to vouch for it.
    pub(crate) lease: Option<Arc<Lease>>,
    pub(crate) queues: RwLock<HashMap<QueueId, Arc<Queue>>>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the engine stops serving (or closes): move tasks stop without recording
    /// an end. A new one, a child of `shutdown`, comes with each activation.
    pub(crate) serving: parking_lot::Mutex<CancellationToken>,
    pub(crate) sweeper: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) dedup_window: Duration,
    pub(crate) idempotency_window: Duration,
    /// Running message move tasks by id: their source queue and how to cancel them.
    pub(crate) tasks: parking_lot::Mutex<HashMap<String, RunningTask>>,
    /// The move task workers, so closing waits for them.
    pub(crate) workers: TaskTracker,
    /// Held while a queue record is written (create, update, seal).
    pub(crate) record_writes: tokio::sync::Mutex<()>,
    /// Deletes the WAL files RocksDB has archived; stops when the engine is dropped.
    pub(crate) _wal_trimmer: WalTrimmer,
    /// Samples RocksDB's state into gauges; stops when the engine is dropped.
    pub(crate) _db_stats: DbStats,
    pub(crate) disk: DiskGuard,
}

impl Engine {
    /// Opens (or creates) the engine at `options.path` and rebuilds every queue's index. Must be
    /// called inside a tokio runtime: it starts the retention sweeper.
    pub fn open(options: EngineOptions) -> Result<Self> {
        let db = Arc::new(open_db(&options.path, false)?);
        let signer = ReceiptSigner::new(load_or_create_receipt_key(&db)?);
        let queues = rebuild(&db, false)?;
        let engine = Self::assemble(options, db, None, None, signer, queues)?;
        engine.resume_move_tasks()?;
        Ok(engine)
    }

    /// Opens (or creates) a replicated engine: its writes go through `replicator`, and its
    /// RocksDB takes what the cluster's log applies (see [`Engine::apply`]). It serves nothing
    /// until [`Engine::activate`], when its node has become the leader, and while it serves it
    /// acknowledges what a majority does not vouch for only while `lease` holds.
    pub fn open_replicated(
        options: EngineOptions,
        replicator: Arc<dyn Replicator>,
        lease: Arc<Lease>,
    ) -> Result<Self> {
        let db = Arc::new(open_db(&options.path, true)?);
        // The real key is the cluster's, read when the node leads.
        let signer = ReceiptSigner::new([0; 32]);
        Self::assemble(
            options,
            db,
            Some(replicator),
            Some(lease),
            signer,
            HashMap::new(),
        )
    }

    fn assemble(
        options: EngineOptions,
        db: Arc<DB>,
        replicator: Option<Arc<dyn Replicator>>,
        lease: Option<Arc<Lease>>,
        signer: ReceiptSigner,
        queues: HashMap<QueueId, Arc<Queue>>,
    ) -> Result<Self> {
        metrics::register();
        let replicated = replicator.is_some();
        let committer = Committer::start(db.clone(), replicator)
            .map_err(|err| Error::Corrupt(format!("cannot start commit thread: {err}")))?;
        let wal_trimmer = WalTrimmer::start(&options.path, "queues")
            .map_err(|err| Error::Corrupt(format!("cannot start WAL trim thread: {err}")))?;
        let db_stats = DbStats::start(
            Arc::downgrade(&db),
            options.path.clone(),
            "queues",
            &keys::ALL_CFS,
        )
        .map_err(|err| Error::Corrupt(format!("cannot start RocksDB stats thread: {err}")))?;
        let shutdown = CancellationToken::new();
        let engine = Engine {
            inner: Arc::new(Inner {
                db,
                committer,
                serving: parking_lot::Mutex::new(shutdown.child_token()),
                signer: RwLock::new(signer),
                active: AtomicBool::new(!replicated),
                replicated,
                lease,
                queues: RwLock::new(queues),
                shutdown,
                sweeper: parking_lot::Mutex::new(None),
                dedup_window: options.dedup_window,
                idempotency_window: options.idempotency_window.min(options.dedup_window),
                tasks: parking_lot::Mutex::new(HashMap::new()),
                workers: TaskTracker::new(),
                record_writes: tokio::sync::Mutex::new(()),
                _wal_trimmer: wal_trimmer,
                _db_stats: db_stats,
                disk: DiskGuard::new(options.path.clone(), options.min_free_disk_bytes),
            }),
        };
        engine.spawn_sweeper();
        Ok(engine)
    }

    /// Starts serving on a replicated engine whose node has just become the leader, once
    /// everything committed before is applied here: rebuilds the index from RocksDB, with every
    /// message of a standard queue that was in flight on the previous leader visible again (a
    /// FIFO queue's deliveries were committed and stay in flight), and resumes move tasks.
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
            self.check_lease()
        } else {
            Err(Error::NotLeader(
                "this node does not lead its cluster".into(),
            ))
        }
    }

    /// Refuses while this node leads without a lease: it has not heard from a majority for so
    /// long that the others may have elected another leader, which it must not contradict.
    /// Checked again right before an acknowledgement no majority vouches for (an asynchronous
    /// send, a receive), since the lease may have run out while the request was under way.
    pub(crate) fn check_lease(&self) -> Result<()> {
        match &self.inner.lease {
            Some(lease) if lease.remaining().is_none() => Err(lease_refusal()),
            _ => Ok(()),
        }
    }

    /// Waits for `work` while this node holds its leader lease (for as long as it takes on a
    /// standalone engine). Past the lease a majority may follow another leader, and a write
    /// waiting for this one's majority may not commit until a partition heals: the caller is
    /// told to try another node instead. `work` is dropped, not undone: a write it waited for
    /// may still commit, which a retry with the same idempotency key (a send) or receipt (a
    /// delete) finds.
    pub(crate) async fn unless_lease_lost<F: std::future::Future>(
        &self,
        work: F,
    ) -> Result<F::Output> {
        let Some(lease) = &self.inner.lease else {
            return Ok(work.await);
        };
        tokio::pin!(work);
        loop {
            let Some(left) = lease.remaining() else {
                return Err(lease_refusal());
            };
            tokio::select! {
                done = &mut work => return Ok(done),
                () = tokio::time::sleep(left) => {}
            }
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
        metrics::touch_queue_counters(&config.name);
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
        sluice_api::metrics::forget_queue_label(&name);
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

    /// How many messages each queue holds, in every state: what a load report weighs queues
    /// by.
    pub fn message_counts(&self) -> Vec<(QueueId, u64)> {
        let queues: Vec<(QueueId, Arc<Queue>)> = self
            .inner
            .queues
            .read()
            .iter()
            .map(|(id, queue)| (*id, queue.clone()))
            .collect();
        queues
            .into_iter()
            .map(|(id, queue)| (id, queue.state.lock().messages.len() as u64))
            .collect()
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
        let mut gauges = Vec::with_capacity(queues.len());
        for (id, queue) in queues {
            let (expired, counts, oldest_sent_ms, name, next_seq) = {
                let mut state = queue.state.lock();
                state.promote_due(now);
                let deletes: Vec<_> = (state.dedup.take_expired(now).iter())
                    .map(|dedup_id| Op::Delete(Cf::Dedup, dedup_key(id, dedup_id)))
                    .chain(
                        (state.sends.take_expired(now).into_iter())
                            .map(|key| Op::Delete(Cf::Dedup, send_key(id, key))),
                    )
                    .collect();
                if !deletes.is_empty() {
                    // Submitted under the lock: a send that reuses an id after this must write
                    // its record after this delete, not before.
                    drop(self.inner.committer.submit(deletes, false)?);
                }
                (
                    state.take_expired(now),
                    state.counts(),
                    state.oldest_sent_ms(),
                    state.config.name.clone(),
                    state.next_seq,
                )
            };
            gauges.push((
                queue_label(&name),
                metrics::QueueGauges {
                    visible: counts.visible,
                    in_flight: counts.in_flight,
                    delayed: counts.delayed,
                    oldest_age_seconds: oldest_sent_ms
                        .map_or(0.0, |sent| now.saturating_sub(sent) as f64 / 1000.0),
                },
            ));
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
        metrics::set_queue_gauges(gauges);
        // Losing an expiry on a crash only means it is redone after restart.
        self.inner.committer.commit(ops, false).await
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

pub(crate) fn queue_config(record: QueueRecord) -> QueueConfig {
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

/// The refusal of a node whose leader lease ran out, counted.
fn lease_refusal() -> Error {
    metrics::LEASE_REFUSALS.inc();
    Error::NotLeader(
        "this node has lost contact with a majority of its cluster (its leader lease ran out); \
         another node may lead now: try it"
            .into(),
    )
}

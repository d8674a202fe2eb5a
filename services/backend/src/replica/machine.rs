//! The state machine is the queue engine's RocksDB: applying an entry writes the batch the
//! leader's engine proposed, together with the machine's own record (last applied entry and
//! membership) in one atomic write. Building a snapshot makes the engine's files hold what was
//! applied, so that the log can be purged; the snapshot a follower installs is every key of the
//! engine as of one moment, read out when that follower needs it.

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use sluice_storage::Engine;

use super::{Member, NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn sm_read(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&err).into()
}

fn sm_write(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&err).into()
}

/// What the state machine keeps of itself beside the queues.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

pub(crate) struct StateMachine {
    engine: Engine,
    /// The spans of entries this node proposed; an entry's apply is a child of its span.
    traces: super::log::Traces,
    applied: Applied,
    /// Whether a snapshot was built or installed since this node started; see
    /// `get_current_snapshot`.
    snapshotted: Arc<AtomicBool>,
}

impl StateMachine {
    pub(crate) fn new(engine: Engine, traces: super::log::Traces) -> anyhow::Result<Self> {
        let applied = decode_applied(engine.applied()?)?;
        Ok(StateMachine {
            engine,
            traces,
            applied,
            snapshotted: Arc::default(),
        })
    }
}

fn decode_applied(bytes: Option<Vec<u8>>) -> bincode::Result<Applied> {
    bytes.map_or(Ok(Applied::default()), |bytes| bincode::deserialize(&bytes))
}

fn snapshot_meta(applied: Applied) -> SnapshotMeta<NodeId, Member> {
    SnapshotMeta {
        last_log_id: applied.last,
        snapshot_id: format!(
            "{}-{}",
            applied.last.map_or(0, |l| l.index),
            sluice_api::now_ms()
        ),
        last_membership: applied.membership,
    }
}

fn join_err(err: tokio::task::JoinError) -> std::io::Error {
    std::io::Error::other(err.to_string())
}

pub(crate) struct SnapshotBuilder {
    engine: Engine,
    snapshotted: Arc<AtomicBool>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Makes the engine's files hold everything applied so far, so that openraft may purge the
    /// log up to it. Nothing is read out: of what this returns openraft keeps the meta only
    /// (its state machine worker, and its start-up, map the snapshot to its meta), and the
    /// data is dumped when a follower needs it. Dumping every key here, on every node at the
    /// same moment, stalled sends for 50 to 110 ms every 10,000 entries, and held a copy of the
    /// whole engine in memory.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let engine = self.engine.clone();
        // The record is read before the flush: every entry it names is then in the flushed
        // memtables. Read after, it could name an entry applied since, which only the log
        // holds, and the log is about to be purged up to it.
        let applied = tokio::task::spawn_blocking(move || {
            let applied = engine.applied()?;
            engine.persist()?;
            Ok::<_, sluice_storage::Error>(applied)
        })
        .await
        .map_err(|err| sm_read(join_err(err)))?
        .map_err(sm_read)?;
        let meta = snapshot_meta(decode_applied(applied).map_err(sm_read)?);
        self.snapshotted.store(true, Ordering::Release);
        tracing::info!(snapshot = %meta.snapshot_id, "persisted the engine for a snapshot");
        super::metrics::SNAPSHOTS_BUILT.inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.applied.last = Some(entry.log_id);
            let batch = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(proposal) => Some(proposal.batch.as_slice()),
                EntryPayload::Membership(membership) => {
                    self.applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    None
                }
            };
            let record = bincode::serialize(&self.applied).map_err(sm_write)?;
            let _apply = match &entry.payload {
                EntryPayload::Normal(proposal) => self
                    .traces
                    .lock()
                    .get(&proposal.token)
                    .map(|parent| tracing::info_span!(parent: parent, "raft.apply").entered()),
                _ => None,
            };
            self.engine.apply(batch, &record).map_err(sm_write)?;
            super::metrics::APPLIED_INDEX.set(entry.log_id.index as i64);
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            snapshotted: self.snapshotted.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let bytes = data.len();
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.restore(&data))
            .await
            .map_err(|err| sm_write(join_err(err)))?
            .map_err(sm_write)?;
        self.applied = Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        if let Some(last) = meta.last_log_id {
            super::metrics::APPLIED_INDEX.set(last.index as i64);
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "installed a snapshot");
        super::metrics::SNAPSHOTS_INSTALLED.inc();
        self.snapshotted.store(true, Ordering::Release);
        Ok(())
    }

    /// A snapshot of the engine as it is now, for a follower whose next entries were purged.
    /// Newer than the last one built, which is fine: its meta names the entry it holds, and
    /// the follower goes on from there with entries the log still has (it was purged only up
    /// to the last snapshot built). None until one was built or installed since start, so that
    /// openraft's start-up, which only wants the meta, does not dump the engine for it.
    ///
    /// openraft waits for this before it applies more entries, so a dump holds up this
    /// leader's writes for as long as it takes; it only happens when a follower fell behind
    /// the log.
    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        if !self.snapshotted.load(Ordering::Acquire) {
            return Ok(None);
        }
        let engine = self.engine.clone();
        let (data, applied) = tokio::task::spawn_blocking(move || engine.dump())
            .await
            .map_err(|err| sm_read(join_err(err)))?
            .map_err(sm_read)?;
        let meta = snapshot_meta(decode_applied(applied).map_err(sm_read)?);
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "dumped a snapshot for a follower");
        super::metrics::SNAPSHOTS_DUMPED.inc();
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

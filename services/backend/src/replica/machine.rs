//! The state machine is the queue engine's RocksDB: applying an entry writes the batch the
//! leader's engine proposed, together with the machine's own record (last applied entry and
//! membership) in one atomic write. A snapshot is every key of the engine as of one moment.

use std::io::Cursor;
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

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Arc<Vec<u8>>,
}

pub(crate) struct StateMachine {
    engine: Engine,
    applied: Applied,
    /// The latest snapshot built or installed here; kept in memory only: after a restart the
    /// next one is built on demand.
    current: Arc<parking_lot::Mutex<Option<StoredSnapshot>>>,
}

impl StateMachine {
    pub(crate) fn new(engine: Engine) -> anyhow::Result<Self> {
        let applied = match engine.applied()? {
            Some(bytes) => bincode::deserialize(&bytes)?,
            None => Applied::default(),
        };
        Ok(StateMachine {
            engine,
            applied,
            current: Arc::default(),
        })
    }
}

pub(crate) struct SnapshotBuilder {
    engine: Engine,
    current: Arc<parking_lot::Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let engine = self.engine.clone();
        // Once this snapshot is built openraft purges the log up to it, but the snapshot is
        // kept in memory only and the engine applies without a WAL: after a crash the engine's
        // files are all that is left of the purged entries, so they go there first.
        let (data, applied) = tokio::task::spawn_blocking(move || {
            let dumped = engine.dump()?;
            engine.persist()?;
            Ok::<_, sluice_storage::Error>(dumped)
        })
        .await
        .map_err(|err| sm_read(std::io::Error::other(err.to_string())))?
        .map_err(sm_read)?;
        let applied: Applied = match applied {
            Some(bytes) => bincode::deserialize(&bytes).map_err(sm_read)?,
            None => Applied::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership,
            snapshot_id: format!(
                "{}-{}",
                applied.last.map_or(0, |l| l.index),
                sluice_common::now_ms()
            ),
        };
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built a snapshot");
        let data = Arc::new(data);
        *self.current.lock() = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.as_ref().clone())),
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
            self.engine.apply(batch, &record).map_err(sm_write)?;
            super::metrics::APPLIED_INDEX.set(entry.log_id.index as i64);
            replies.push(());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            current: self.current.clone(),
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
        let engine = self.engine.clone();
        let restored = data.clone();
        tokio::task::spawn_blocking(move || engine.restore(&restored))
            .await
            .map_err(|err| sm_write(std::io::Error::other(err.to_string())))?
            .map_err(sm_write)?;
        self.applied = Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "installed a snapshot");
        *self.current.lock() = Some(StoredSnapshot {
            meta: meta.clone(),
            data: Arc::new(data),
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.current.lock().as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.as_ref().clone())),
        }))
    }
}

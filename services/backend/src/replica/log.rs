//! The Raft log and vote in a RocksDB of their own (`<data dir>/raft`), beside the engine's.
//! Every append is fsync'd before openraft hears it is flushed: that fsync is what makes a
//! write durable on this node, for SYNC (on a majority) and ASYNC (on the leader) alike.

// openraft's traits return its `StorageError` (over 200 bytes); the helpers here return what
// those traits need rather than box it only to unbox it again.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, Direction, FlushOptions, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use sluice_storage::background;
use sluice_storage::dbstats::{self, DbStats};
use sluice_storage::disk::{fsync_outcome, stop_on_failed_fsync};
use sluice_storage::wal::{self, WalTrimmer};
use tracing::Instrument;

use super::{NodeId, TypeConfig};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
/// The batches of entries truncated from this log, until their ASYNC sends are made again
/// through the leader (`Dropped`).
const CF_DROPPED: &str = "dropped";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// Told once a proposal is durable in this node's log, with its entry's index.
pub(crate) type Durable = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// Proposals of this node waiting to be durable in its log, by their token.
pub(crate) type DurableWaiters = Arc<parking_lot::Mutex<HashMap<u64, Durable>>>;

/// The `raft.replicate` span of each entry this node proposed and that is not applied yet, by
/// proposal token: the log's and the state machine's spans of the entry are its children.
pub(crate) type Traces = Arc<parking_lot::Mutex<HashMap<u64, tracing::Span>>>;

#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<DB>,
    durable: DurableWaiters,
    traces: Traces,
    /// Bytes of entries appended since the node started, for the snapshot schedule.
    appended: Arc<AtomicU64>,
    /// Deletes the log's archived WAL files; stops when the last clone is dropped.
    _wal_trimmer: Arc<WalTrimmer>,
    /// Samples the log's RocksDB into gauges; stops when the last clone is dropped.
    _stats: Arc<DbStats>,
    /// Woken when a truncation kept entries in `CF_DROPPED`.
    dropped: Arc<tokio::sync::Notify>,
}

/// The batches of the entries this node's log dropped: entries a leader appended that no
/// majority took, truncated when the node learns of the leader that replaced it. They may
/// hold ASYNC sends that were acknowledged; `resend.rs` makes those again. Kept in the same
/// fsync'd write that truncates them, so a crash between the two loses none.
#[derive(Clone)]
pub struct Dropped {
    db: Arc<DB>,
    notify: Arc<tokio::sync::Notify>,
}

impl Dropped {
    /// The entries kept, oldest first: by term, then index. Each with the key that forgets it.
    pub fn entries(&self) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.db.cf_handle(CF_DROPPED).expect("created at open");
        let entries = self
            .db
            .iterator_cf(cf, IteratorMode::Start)
            .map(|item| item.map(|(key, batch)| (key.into_vec(), batch.into_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        super::metrics::DROPPED_ENTRIES.set(entries.len() as i64);
        Ok(entries)
    }

    /// Forgets an entry whose sends are made again. Not fsync'd: forgotten again after a crash,
    /// its sends are made once more, and those with an idempotency key are stored once.
    pub fn forget(&self, key: &[u8]) -> anyhow::Result<()> {
        let cf = self.db.cf_handle(CF_DROPPED).expect("created at open");
        self.db.delete_cf(cf, key)?;
        super::metrics::DROPPED_ENTRIES.dec();
        Ok(())
    }

    /// Waits until a truncation keeps entries.
    pub async fn kept(&self) {
        self.notify.notified().await
    }
}

/// A dropped entry's key: its term then its index, so that an older leader's entries come
/// first and a leader's in the order it appended them.
fn dropped_key(log_id: &LogId<NodeId>) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&log_id.leader_id.term.to_be_bytes());
    key[8..].copy_from_slice(&log_id.index.to_be_bytes());
    key
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&err).into()
}

fn write_err(err: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&err).into()
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// The memtable of the log's entries: big enough to hold the entries between two purges at full
/// load, so that a purge removes them before a flush writes them to a file (each purge flushes
/// what is left, see `purge`).
const LOGS_WRITE_BUFFER_BYTES: usize = 256 << 20;

/// The WAL files kept before RocksDB flushes the column families that pin the oldest one. The
/// meta column family hardly ever fills, so without a cap it would keep RocksDB's default of
/// four times all write buffers, over a gigabyte per node, on disk.
const MAX_TOTAL_WAL_BYTES: u64 = 2 * LOGS_WRITE_BUFFER_BYTES as u64;

fn logs_options() -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(LOGS_WRITE_BUFFER_BYTES);
    options
}

impl LogStore {
    pub(crate) fn open(
        path: &Path,
        durable: DurableWaiters,
        traces: Traces,
    ) -> anyhow::Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        wal::archive_obsolete_wal(&mut options);
        background::behind_requests(&mut options)?;
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOGS, logs_options()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_DROPPED, Options::default()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&options, path, cfs)?);
        let stats = DbStats::start(
            Arc::downgrade(&db),
            path.to_owned(),
            "raft",
            &[CF_LOGS, CF_META, CF_DROPPED],
        )?;
        Ok(LogStore {
            db,
            durable,
            traces,
            appended: Arc::default(),
            _wal_trimmer: Arc::new(WalTrimmer::start(path, "raft")?),
            _stats: Arc::new(stats),
            dropped: Arc::default(),
        })
    }

    /// What this log dropped, for the node to send again.
    pub(crate) fn dropped(&self) -> Dropped {
        Dropped {
            db: self.db.clone(),
            notify: self.dropped.clone(),
        }
    }

    /// Counts the bytes of the entries this log appends.
    pub(crate) fn appended(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn logs(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_LOGS).expect("created at open")
    }

    fn meta(&self) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(CF_META).expect("created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        match self.db.get_cf(self.meta(), key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => bincode::deserialize(&bytes).map(Some).map_err(read_err),
        }
    }

    /// A batch that sets `key` of the meta column family to `value`.
    fn meta_batch<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<WriteBatch> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.meta(),
            key,
            bincode::serialize(value).map_err(write_err)?,
        );
        Ok(batch)
    }

    /// Writes the batch fsync'd, off the async runtime: an fsync can take milliseconds.
    async fn write_synced(&self, batch: WriteBatch) -> StorageResult<()> {
        self.off_runtime(move |db| {
            let started = std::time::Instant::now();
            let written = db.write_opt(batch, &synced());
            dbstats::observe_fsync("raft", started);
            // A synced write that fails on I/O may have failed in its fsync, which leaves the
            // log's state on disk unknown: the node stops (`stop_on_failed_fsync`). A full disk
            // is reported instead: restarting would not free it.
            let fsync = match &written {
                Err(err)
                    if err.kind() == rocksdb::ErrorKind::IOError
                        && !err.to_string().contains("No space left") =>
                {
                    Err(err)
                }
                _ => Ok(()),
            };
            if let Err(err) = fsync_outcome("backend::log_fsync_error", fsync) {
                stop_on_failed_fsync("Raft log", &err);
            }
            written
        })
        .await
    }

    /// Runs `write` on a blocking thread.
    async fn off_runtime(
        &self,
        write: impl FnOnce(&DB) -> Result<(), rocksdb::Error> + Send + 'static,
    ) -> StorageResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || write(&db))
            .await
            .map_err(|err| write_err(std::io::Error::other(err.to_string())))?
            .map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        let from = start.to_be_bytes();
        for item in self
            .db
            .iterator_cf(self.logs(), IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("a log key is not 8 bytes")))?,
            );
            if !range.contains(&index) {
                break;
            }
            entries.push(bincode::deserialize(&value).map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last = match self.db.iterator_cf(self.logs(), IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, value) = item.map_err(read_err)?;
                let entry: Entry<TypeConfig> = bincode::deserialize(&value).map_err(read_err)?;
                Some(entry.log_id)
            }
        };
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        super::metrics::PURGED_INDEX.set(purged.map_or(0, |id| id.index) as i64);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_synced(self.meta_batch(VOTE, vote)?).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE)
    }

    // Not fsync'd: a committed index lost in a crash is learned again from the leader.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.db
            .write(self.meta_batch(COMMITTED, &committed)?)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut tokens = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            if let EntryPayload::Normal(proposal) = &entry.payload {
                tokens.push((proposal.token, entry.log_id.index));
            }
            let value = bincode::serialize(&entry).map_err(write_err)?;
            bytes += value.len() as u64;
            batch.put_cf(self.logs(), entry.log_id.index.to_be_bytes(), value);
        }
        // Entries this node proposed in a traced request get spans of their append.
        let parent = tokens
            .iter()
            .find_map(|(token, _)| self.traces.lock().get(token).cloned());
        let written = match parent {
            Some(parent) => {
                let append = tracing::info_span!(parent: &parent, "raft.append", bytes);
                let fsync = tracing::info_span!(parent: &append, "storage.fsync");
                self.write_synced(batch).instrument(fsync).await
            }
            None => self.write_synced(batch).await,
        };
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|err| std::io::Error::other(err.to_string())),
        );
        written?;
        self.appended.fetch_add(bytes, Ordering::Relaxed);
        let mine: Vec<(Durable, u64)> = {
            let mut waiting = self.durable.lock();
            tokens
                .iter()
                .filter_map(|(t, index)| Some((waiting.remove(t)?, *index)))
                .collect()
        };
        if !mine.is_empty() {
            // A leader that dies here holds writes no other node has and nobody was told of.
            fail::fail_point!("backend::after_local_append", |_| std::process::abort());
        }
        for (durable, index) in mine {
            durable(Ok(index));
        }
        Ok(())
    }

    /// Keeps the batches of the truncated entries (`Dropped`) in the same write.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let truncated = self.try_get_log_entries(log_id.index..).await?;
        let dropped = self.db.cf_handle(CF_DROPPED).expect("created at open");
        let mut batch = WriteBatch::default();
        let mut kept = 0;
        for entry in &truncated {
            if let EntryPayload::Normal(proposal) = &entry.payload {
                batch.put_cf(dropped, dropped_key(&entry.log_id), &proposal.batch);
                kept += 1;
            }
        }
        batch.delete_range_cf(
            self.logs(),
            log_id.index.to_be_bytes(),
            u64::MAX.to_be_bytes(),
        );
        self.write_synced(batch).await?;
        if kept > 0 {
            tracing::warn!(
                from = log_id.index,
                entries = truncated.len(),
                kept,
                "truncated entries no majority took; their ASYNC sends go to the leader again"
            );
            super::metrics::DROPPED_ENTRIES_KEPT.inc_by(kept);
            self.dropped.notify_one();
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The purge point and the deletion in one fsync'd write.
        let mut batch = self.meta_batch(PURGED, &log_id)?;
        batch.delete_range_cf(
            self.logs(),
            0u64.to_be_bytes(),
            (log_id.index + 1).to_be_bytes(),
        );
        self.off_runtime(move |db| {
            db.write_opt(batch, &synced())?;
            // A flush now drops the purged entries and writes only those kept past the purge
            // point; one when the memtable fills would write every entry since the last purge,
            // 128 MiB and more at a heavy load. Not waited for: the log is durable in its WAL
            // either way.
            let mut flush = FlushOptions::default();
            flush.set_wait(false);
            db.flush_cf_opt(db.cf_handle(CF_LOGS).expect("created at open"), &flush)
        })
        .await?;
        super::metrics::PURGED_INDEX.set(log_id.index as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::replica::Proposal;

    const ENTRY_BYTES: usize = 64 << 10;

    async fn append(log: &mut LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let entries = indexes.map(|index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                batch: vec![7; ENTRY_BYTES],
                token: index,
            }),
        });
        log.blocking_append(entries).await.unwrap();
    }

    #[tokio::test]
    async fn counts_the_bytes_it_appends_across_a_purge_and_a_reopen_keeps_the_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut log =
            LogStore::open(dir.path(), DurableWaiters::default(), Traces::default()).unwrap();
        let appended = log.appended();

        append(&mut log, 1..=16).await;
        let sixteen = appended.load(Ordering::Relaxed);
        assert!(
            (16 * ENTRY_BYTES as u64..17 * ENTRY_BYTES as u64).contains(&sixteen),
            "16 entries of 64 KiB and their headers: {sixteen}"
        );
        // The schedule measures from its own last snapshot: a purge does not reset the count.
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 10))
            .await
            .unwrap();
        append(&mut log, 17..=32).await;
        assert_eq!(appended.load(Ordering::Relaxed), 2 * sixteen);
        drop(log);

        let mut log =
            LogStore::open(dir.path(), DurableWaiters::default(), Traces::default()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(10));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(32));
        let kept = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(kept.first().map(|e| e.log_id.index), Some(11));
        assert_eq!(kept.len(), 22);
    }
}

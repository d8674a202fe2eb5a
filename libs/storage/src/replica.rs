//! What a replicated engine's state machine needs: applying an entry of the cluster's log, and
//! taking or installing a snapshot of everything the engine holds.

use rocksdb::{FlushOptions, IteratorMode, ReadOptions, WriteBatch, WriteOptions};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::{self, ALL_CFS};

/// Where the state machine keeps its own record (the last applied log entry and the
/// membership), beside the queues, so that both change in one atomic write.
const APPLIED_KEY: &[u8] = b"replica/applied";

impl Engine {
    /// Applies one entry of the cluster's log: `batch` is the write the leader's engine
    /// proposed (a RocksDB `WriteBatch`'s bytes), if the entry carries one, and `applied` the
    /// state machine's record as of this entry.
    ///
    /// Written to the memtable only: the cluster's log is this engine's write-ahead log, and an
    /// entry lost here in a crash is applied again from it. A second WAL would write every
    /// message once more, and fsync all of it at once before each flush (RocksDB syncs the
    /// closed WAL files first), holding up the log's own fsyncs on the same disk. The engine
    /// reaches its files by flushes, atomic across column families, and by [`Engine::persist`]
    /// before the log is purged.
    pub fn apply(&self, batch: Option<&[u8]>, applied: &[u8]) -> Result<()> {
        let db = &self.inner.db;
        let mut write = match batch {
            Some(data) => WriteBatch::from_data(data),
            None => WriteBatch::default(),
        };
        write.put_cf(meta_cf(db), APPLIED_KEY, applied);
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        db.write_opt(write, &options)?;
        Ok(())
    }

    /// Writes everything applied so far to the engine's files, every column family as of the
    /// same entry, and returns once they are fsync'd. The log may then be purged up to the last
    /// entry applied before the call.
    pub fn persist(&self) -> Result<()> {
        let db = &self.inner.db;
        let cfs: Vec<_> = ALL_CFS
            .iter()
            .map(|name| db.cf_handle(name).expect("created at open"))
            .collect();
        let mut options = FlushOptions::default();
        options.set_wait(true);
        db.flush_cfs_opt(&cfs, &options)?;
        Ok(())
    }

    /// The state machine's record as last applied.
    pub fn applied(&self) -> Result<Option<Vec<u8>>> {
        let db = &self.inner.db;
        Ok(db.get_cf(meta_cf(db), APPLIED_KEY)?)
    }

    /// Every key and value the engine holds, as of one moment, and the state machine's record
    /// as of the same moment.
    pub fn dump(&self) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let db = &self.inner.db;
        let snapshot = db.snapshot();
        let mut out = Vec::new();
        for (index, name) in ALL_CFS.iter().enumerate() {
            let cf = db.cf_handle(name).expect("created at open");
            let mut options = ReadOptions::default();
            options.set_snapshot(&snapshot);
            for item in db.iterator_cf_opt(cf, options, IteratorMode::Start) {
                let (key, value) = item?;
                out.push(index as u8);
                put_bytes(&mut out, &key);
                put_bytes(&mut out, &value);
            }
        }
        let applied = snapshot.get_cf(meta_cf(db), APPLIED_KEY)?;
        Ok((out, applied))
    }

    /// Replaces everything the engine holds with `dump`, fsync'd.
    pub fn restore(&self, dump: &[u8]) -> Result<()> {
        let db = &self.inner.db;
        let mut write = WriteBatch::default();
        for name in ALL_CFS {
            let cf = db.cf_handle(name).expect("created at open");
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (key, _) = item?;
                write.delete_cf(cf, key);
            }
        }
        let mut rest = dump;
        while let Some((&index, tail)) = rest.split_first() {
            let name = ALL_CFS
                .get(index as usize)
                .ok_or_else(|| Error::Corrupt(format!("snapshot names column family {index}")))?;
            let (key, tail) = take_bytes(tail)?;
            let (value, tail) = take_bytes(tail)?;
            write.put_cf(db.cf_handle(name).expect("created at open"), key, value);
            rest = tail;
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        db.write_opt(write, &options)?;
        Ok(())
    }
}

fn meta_cf(db: &rocksdb::DB) -> &rocksdb::ColumnFamily {
    db.cf_handle(keys::CF_META).expect("created at open")
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_bytes(input: &[u8]) -> Result<(&[u8], &[u8])> {
    let corrupt = || Error::Corrupt("snapshot is truncated".into());
    let len = input.get(..4).ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
    let bytes = input.get(4..4 + len).ok_or_else(corrupt)?;
    Ok((bytes, &input[4 + len..]))
}

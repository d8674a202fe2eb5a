//! Deletes RocksDB's obsolete WAL files a few MiB at a time.
//!
//! When a flush makes WAL files obsolete, RocksDB unlinks them at once. On a file system mounted
//! with `discard`, as cloud disks often are, unlinking a file trims all of its blocks there and
//! then, and the fsyncs of the live WAL wait behind the trim: each time the WAL cap forced a
//! flush, three or four 64 MiB files went in one go and sends stalled for 30 to 100 ms. RocksDB's
//! own remedy, the SstFileManager's rate-limited deletion in chunks, is not reachable through its
//! C API. So RocksDB is told to move obsolete WAL files into `archive/` instead, and a thread of
//! ours shrinks the oldest archived file by `CHUNK` every `TICK` and removes it once empty:
//! many trims of a few milliseconds each instead of one long one. [`archive_obsolete_wal`] sets
//! a database up for it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::Options;

use crate::metrics;

/// How much of an archived WAL file one step frees.
const CHUNK: u64 = 4 << 20;

/// The pause between steps while files wait: up to 200 MiB/s, more than a disk's fsync'd
/// write rate, so the archive does not grow under load.
const TICK: Duration = Duration::from_millis(20);

/// How often an empty archive is looked at again.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// RocksDB deletes archived WAL files older than this itself, which only happens if the thread
/// is not running (or cannot keep up).
const ARCHIVE_TTL: Duration = Duration::from_secs(3600);

/// Has RocksDB move a database's obsolete WAL files into its archive, for a [`WalTrimmer`],
/// instead of deleting them at once.
pub fn archive_obsolete_wal(options: &mut Options) {
    options.set_wal_ttl_seconds(ARCHIVE_TTL.as_secs());
}

/// The thread deleting one database's archived WAL files; it stops when dropped.
pub struct WalTrimmer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WalTrimmer {
    /// Starts trimming `<db_path>/archive`. `db` names the database in logs and metrics.
    pub fn start(db_path: &Path, db: &'static str) -> io::Result<Self> {
        let archive = db_path.join("archive");
        let trimmed = metrics::WAL_TRIMMED_BYTES.with_label_values(&[db]);
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("wal-trim-{db}"))
            .spawn(move || loop {
                let pause = match trim_step(&archive, CHUNK) {
                    Ok(0) => IDLE_TICK,
                    Ok(freed) => {
                        trimmed.inc_by(freed);
                        TICK
                    }
                    Err(err) => {
                        tracing::warn!(db, error = %err, "cannot trim an archived WAL file");
                        IDLE_TICK
                    }
                };
                match stopped.recv_timeout(pause) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(WalTrimmer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for WalTrimmer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Shrinks the oldest WAL file in `archive` by up to `chunk` bytes, or removes it if that would
/// leave it empty. Returns how many bytes it freed: 0 when there is nothing to trim.
fn trim_step(archive: &Path, chunk: u64) -> io::Result<u64> {
    let Some(oldest) = oldest_wal(archive)? else {
        return Ok(0);
    };
    match shrink_or_remove(&oldest, chunk) {
        // RocksDB's own purge of files past the TTL took it first.
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(0),
        other => other,
    }
}

fn shrink_or_remove(path: &Path, chunk: u64) -> io::Result<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    if len > chunk {
        file.set_len(len - chunk)?;
        return Ok(chunk);
    }
    drop(file);
    std::fs::remove_file(path)?;
    // An empty file still counts as a step, so the next file follows without the idle pause.
    Ok(len.max(1))
}

/// RocksDB names WAL files by a zero-padded number, so the smallest name is the oldest file.
fn oldest_wal(archive: &Path) -> io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(archive) {
        Ok(entries) => entries,
        // RocksDB makes the folder when it archives its first file.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut oldest: Option<PathBuf> = None;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "log")
            && oldest.as_ref().is_none_or(|o| path < *o)
        {
            oldest = Some(path);
        }
    }
    Ok(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, len: usize) {
        std::fs::write(path, vec![7u8; len]).unwrap();
    }

    #[test]
    fn trims_the_oldest_file_in_chunks_then_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        write_file(&archive.join("000012.log"), 10);
        write_file(&archive.join("000009.log"), 25);
        write_file(&archive.join("LOCK"), 3);

        assert_eq!(trim_step(&archive, 10).unwrap(), 10);
        assert_eq!(
            std::fs::metadata(archive.join("000009.log")).unwrap().len(),
            15
        );
        assert_eq!(trim_step(&archive, 10).unwrap(), 10);
        // Five bytes are left: less than a chunk, so the file goes.
        assert_eq!(trim_step(&archive, 10).unwrap(), 5);
        assert!(!archive.join("000009.log").exists());
        assert_eq!(
            std::fs::metadata(archive.join("000012.log")).unwrap().len(),
            10
        );
        assert_eq!(trim_step(&archive, 10).unwrap(), 10);
        assert!(!archive.join("000012.log").exists());
        assert_eq!(trim_step(&archive, 10).unwrap(), 0);
        assert!(archive.join("LOCK").exists(), "only WAL files are touched");
    }

    #[test]
    fn a_missing_archive_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(trim_step(&dir.path().join("archive"), 10).unwrap(), 0);
    }

    /// RocksDB archives a WAL file once a flush makes it obsolete, and the trimmer's thread
    /// empties the archive.
    #[test]
    fn a_database_s_obsolete_wal_is_archived_and_trimmed_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = Options::default();
        options.create_if_missing(true);
        archive_obsolete_wal(&mut options);
        let db = rocksdb::DB::open(&options, dir.path()).unwrap();
        db.put(b"key", vec![1u8; 1 << 20]).unwrap();
        db.flush().unwrap();
        let archive = dir.path().join("archive");
        assert!(
            oldest_wal(&archive).unwrap().is_some(),
            "the flushed WAL file is archived, not deleted"
        );

        let _trimmer = WalTrimmer::start(dir.path(), "test").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while oldest_wal(&archive).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "archive not emptied");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(db.get(b"key").unwrap().map(|v| v.len()), Some(1 << 20));
    }
}

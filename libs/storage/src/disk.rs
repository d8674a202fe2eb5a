//! Keeps a reserve of free disk space: sends are refused with RESOURCE_EXHAUSTED while the file
//! system holding the engine has less than the reserve free, so that receives, deletes (whose
//! tombstones take a few bytes), flushes and the compactions that free space can go on. A disk
//! that RocksDB itself finds full stops every write until it is reopened; refusing sends before
//! that keeps the node serving what frees space, and sends go on by themselves once space is
//! freed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a reading of the free space is used: a send checks a cached figure, not the file
/// system, at most this stale.
const STALE_AFTER: Duration = Duration::from_millis(100);

/// The reserve unless configured: room for a memtable flush and a compaction's output on top of
/// the deletes of a full queue.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 * 1024 * 1024;

pub(crate) struct DiskGuard {
    path: PathBuf,
    reserve: u64,
    origin: Instant,
    /// Bytes free at the last reading, and when it was taken (microseconds since `origin`,
    /// `u64::MAX` before the first).
    free: AtomicU64,
    read_at_us: AtomicU64,
}

impl DiskGuard {
    /// `reserve` 0 turns the guard off.
    pub(crate) fn new(path: PathBuf, reserve: u64) -> Self {
        DiskGuard {
            path,
            reserve,
            origin: Instant::now(),
            free: AtomicU64::new(u64::MAX),
            read_at_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Refuses a write that adds messages while less than the reserve is free.
    pub(crate) fn check(&self) -> Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        let now = self.origin.elapsed().as_micros() as u64;
        let read_at = self.read_at_us.load(Ordering::Acquire);
        let stale =
            read_at == u64::MAX || now.saturating_sub(read_at) > STALE_AFTER.as_micros() as u64;
        // One caller reads the file system; the others use the figure it is replacing.
        if stale
            && self
                .read_at_us
                .compare_exchange(read_at, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.free
                .store(crate::dbstats::disk_free(&self.path), Ordering::Release);
        }
        let free = self.free.load(Ordering::Acquire);
        if free < self.reserve {
            crate::metrics::DISK_FULL_REFUSALS.inc();
            return Err(Error::DiskFull {
                free,
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

/// Ends the process after a failed fsync. What a failed fsync leaves on the disk is unknown (the
/// kernel may have dropped the dirty pages it could not write and report the next fsync as a
/// success), so going on would acknowledge writes as durable that may not be. Restarting
/// recovers from what the disk does hold: the WAL or the cluster's log, and the other members.
/// Aborted rather than exited: no destructor or flush runs against the unknown state.
pub fn stop_on_failed_fsync(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %err, "an fsync of the {what} failed; stopping the node, which restarts from what its disk holds");
    eprintln!("an fsync of the {what} failed: {err}; stopping the node");
    std::process::abort()
}

/// The outcome of an fsync, or an injected failure (fail point `name`, in
/// `sluice-backend-failpoints` only).
pub fn fsync_outcome<E: std::fmt::Display>(
    #[cfg_attr(not(feature = "failpoints"), allow(unused_variables))] name: &str,
    outcome: std::result::Result<(), E>,
) -> std::result::Result<(), String> {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        return Err(format!("injected by fail point {name}"));
    }
    outcome.map_err(|err| err.to_string())
}

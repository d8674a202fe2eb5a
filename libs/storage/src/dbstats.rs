//! What an operator needs to see of a RocksDB database: memtables, compaction debt, write
//! stalls and the free space of its disk, sampled once a second into Prometheus gauges labelled
//! by database (`queues` for the engine, `raft` for a replicated node's log).

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{LazyLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{
    register_counter_vec, register_histogram_vec, register_int_gauge_vec, CounterVec, HistogramVec,
    IntGaugeVec,
};
use rocksdb::DB;

const PERIOD: Duration = Duration::from_secs(1);

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        static $name: LazyLock<IntGaugeVec> = LazyLock::new(|| {
            register_int_gauge_vec!($metric, $help, &["db"]).expect("metric registers once")
        });
    };
}

gauge!(
    MEMTABLE_BYTES,
    "sluice_rocksdb_memtable_bytes",
    "Bytes in the database's memtables, active and waiting to be flushed"
);
gauge!(
    PENDING_COMPACTION_BYTES,
    "sluice_rocksdb_pending_compaction_bytes",
    "Bytes RocksDB estimates compaction must rewrite to bring every level under its target; \
     writes slow down and then stop as it grows"
);
gauge!(
    LIVE_SST_BYTES,
    "sluice_rocksdb_live_sst_bytes",
    "Bytes of the database's live SST files"
);
gauge!(
    RUNNING_COMPACTIONS,
    "sluice_rocksdb_running_compactions",
    "Compactions running now"
);
gauge!(
    RUNNING_FLUSHES,
    "sluice_rocksdb_running_flushes",
    "Memtable flushes running now"
);
gauge!(
    WRITE_STOPPED,
    "sluice_rocksdb_write_stopped",
    "1 while RocksDB stops writes (too many memtables, L0 files or pending compaction bytes)"
);
gauge!(
    DELAYED_WRITE_RATE,
    "sluice_rocksdb_delayed_write_rate_bytes",
    "The rate in bytes per second RocksDB slows writes to while it delays them; 0 when not"
);
gauge!(
    DISK_FREE,
    "sluice_storage_disk_free_bytes",
    "Bytes an unprivileged writer can still use on the file system holding the database"
);
gauge!(
    DISK_SIZE,
    "sluice_storage_disk_size_bytes",
    "Size in bytes of the file system holding the database"
);

static STALL_SECONDS: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "sluice_rocksdb_write_stall_seconds_total",
        "Seconds the database spent with writes stopped or delayed, sampled once a second",
        &["db"]
    )
    .expect("metric registers once")
});

static FSYNC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_storage_fsync_duration_seconds",
        "Time of one fsync of the database's write-ahead log; for the raft log, of one synced \
         append, write and fsync together",
        &["db"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

/// Records one fsync of database `db`.
pub fn observe_fsync(db: &str, started: Instant) {
    FSYNC_DURATION
        .with_label_values(&[db])
        .observe(started.elapsed().as_secs_f64());
}

pub(crate) fn register() {
    for gauge in [
        &MEMTABLE_BYTES,
        &PENDING_COMPACTION_BYTES,
        &LIVE_SST_BYTES,
        &RUNNING_COMPACTIONS,
        &RUNNING_FLUSHES,
        &WRITE_STOPPED,
        &DELAYED_WRITE_RATE,
        &DISK_FREE,
        &DISK_SIZE,
    ] {
        LazyLock::force(gauge);
    }
    LazyLock::force(&STALL_SECONDS);
    LazyLock::force(&FSYNC_DURATION);
}

/// The thread sampling one database; it stops when dropped, or when the database is gone.
pub struct DbStats {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DbStats {
    /// Samples `db`, named `name` in the metrics, whose column families are `cfs` (besides
    /// `default`).
    pub fn start(
        db: Weak<DB>,
        path: PathBuf,
        name: &'static str,
        cfs: &'static [&'static str],
    ) -> std::io::Result<DbStats> {
        register();
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("db-stats-{name}"))
            .spawn(move || loop {
                match db.upgrade() {
                    Some(db) => sample(&db, &path, name, cfs),
                    None => return,
                }
                match stopped.recv_timeout(PERIOD) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(DbStats {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for DbStats {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample(db: &DB, path: &std::path::Path, name: &str, cfs: &[&str]) {
    // Per column family figures add up over the database; a property RocksDB cannot give
    // counts as 0 rather than hiding the series.
    let per_cf = |property: &str| -> u64 {
        let default = db.property_int_value(property).ok().flatten().unwrap_or(0);
        cfs.iter()
            .filter_map(|cf| db.cf_handle(cf))
            .map(|cf| {
                db.property_int_value_cf(&cf, property)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum::<u64>()
            + default
    };
    let whole = |property: &str| db.property_int_value(property).ok().flatten().unwrap_or(0);
    let set = |gauge: &IntGaugeVec, value: u64| {
        gauge
            .with_label_values(&[name])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    set(&MEMTABLE_BYTES, per_cf("rocksdb.cur-size-all-mem-tables"));
    set(
        &PENDING_COMPACTION_BYTES,
        per_cf("rocksdb.estimate-pending-compaction-bytes"),
    );
    set(&LIVE_SST_BYTES, per_cf("rocksdb.live-sst-files-size"));
    set(
        &RUNNING_COMPACTIONS,
        whole("rocksdb.num-running-compactions"),
    );
    set(&RUNNING_FLUSHES, whole("rocksdb.num-running-flushes"));
    let stopped = whole("rocksdb.is-write-stopped");
    let delayed = whole("rocksdb.actual-delayed-write-rate");
    set(&WRITE_STOPPED, stopped.min(1));
    set(&DELAYED_WRITE_RATE, delayed);
    if stopped > 0 || delayed > 0 {
        STALL_SECONDS
            .with_label_values(&[name])
            .inc_by(PERIOD.as_secs_f64());
    } else {
        // The series exists from the first sample, so `rate()` sees it start at 0.
        STALL_SECONDS.with_label_values(&[name]).inc_by(0.0);
    }
    if let Some((free, size)) = disk_space(path) {
        set(&DISK_FREE, free);
        set(&DISK_SIZE, size);
    }
}

/// Bytes an unprivileged writer can still use on the file system that holds `path`, and its
/// size; `None` (logged) when they cannot be read.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    match nix::sys::statvfs::statvfs(path) {
        Ok(stats) => Some((
            stats
                .blocks_available()
                .saturating_mul(stats.fragment_size()),
            stats.blocks().saturating_mul(stats.fragment_size()),
        )),
        Err(err) => {
            tracing::warn!(error = %err, path = %path.display(), "cannot read free disk space");
            None
        }
    }
}

/// Free bytes on the file system that holds `path`; 0 when they cannot be read, which makes a
/// node look full rather than empty.
pub fn disk_free(path: &std::path::Path) -> u64 {
    disk_space(path).map_or(0, |(free, _)| free)
}

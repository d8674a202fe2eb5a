use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

pub(crate) static COMMIT_BATCH_REQUESTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "sluice_storage_commit_batch_requests",
        "Write requests that shared one RocksDB write (and fsync) in the group commit",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
    )
    .expect("metric registers once")
});

pub(crate) static COMMIT_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "sluice_storage_commit_duration_seconds",
        "Time of one group-commit RocksDB write, fsync included when any request needs it",
        prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
    )
    .expect("metric registers once")
});

pub(crate) static COMMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_storage_commits_total",
        "Group-commit RocksDB writes, by whether they were fsync'd",
        &["sync"]
    )
    .expect("metric registers once")
});

pub(crate) static MESSAGES_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_messages_expired_total",
        "Messages deleted because they outlived their queue's retention period"
    )
    .expect("metric registers once")
});

pub(crate) static QUEUE_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_queue_messages",
        "Approximate messages per queue by state (visible, in_flight, delayed)",
        &["queue", "state"]
    )
    .expect("metric registers once")
});

pub(crate) static WAITING_RECEIVES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_storage_waiting_receives",
        "Long-polling receives waiting for a message"
    )
    .expect("metric registers once")
});

pub(crate) static DEAD_LETTER_MOVES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_dead_letter_moves_total",
        "Messages moved to a dead-letter queue after reaching their queue's max receive count"
    )
    .expect("metric registers once")
});

pub(crate) static TASK_MOVES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_task_moves_total",
        "Messages moved out of a queue by message move tasks (dead-letter redrive)"
    )
    .expect("metric registers once")
});

pub(crate) static DUPLICATE_SENDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_duplicate_sends_total",
        "Sends whose deduplication id was seen within the window, so nothing was stored"
    )
    .expect("metric registers once")
});

pub(crate) static MOVE_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_move_failures_total",
        "Dead-letter or task moves that failed; their messages stay in the source queue"
    )
    .expect("metric registers once")
});

pub(crate) static WAL_TRIMMED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_storage_wal_trimmed_bytes_total",
        "Bytes of obsolete RocksDB WAL files deleted, a few MiB at a time, by database",
        &["db"]
    )
    .expect("metric registers once")
});

/// Registers every metric up front, so each is exported (at zero) before its first event.
pub(crate) fn register() {
    LazyLock::force(&COMMIT_BATCH_REQUESTS);
    LazyLock::force(&COMMIT_DURATION);
    LazyLock::force(&COMMITS);
    LazyLock::force(&MESSAGES_EXPIRED);
    LazyLock::force(&QUEUE_MESSAGES);
    LazyLock::force(&WAITING_RECEIVES);
    LazyLock::force(&DEAD_LETTER_MOVES);
    LazyLock::force(&TASK_MOVES);
    LazyLock::force(&DUPLICATE_SENDS);
    LazyLock::force(&MOVE_FAILURES);
    LazyLock::force(&WAL_TRIMMED_BYTES);
}

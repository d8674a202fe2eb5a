use std::sync::LazyLock;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    register_gauge_vec, register_histogram, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, GaugeVec, Histogram, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
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
        "Time of one group commit, from its first request taken to every request in it done: \
         the RocksDB write and the fsync, or on a replicated node the proposal until it is \
         durable in the local log",
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

/// The group commits this process made so far and their summed time in seconds, so a load
/// report can give the mean over its period.
pub fn commit_totals() -> (u64, f64) {
    (
        COMMIT_DURATION.get_sample_count(),
        COMMIT_DURATION.get_sample_sum(),
    )
}

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

static QUEUE_MESSAGES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_queue_messages",
        "Approximate messages per queue by state (visible, in_flight, delayed)",
        &["queue", "state"]
    )
    .expect("metric registers once")
});

static OLDEST_MESSAGE_AGE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_queue_oldest_message_age_seconds",
        "Age of the oldest message stored in each queue, in flight or not (0 when empty)",
        &["queue"]
    )
    .expect("metric registers once")
});

/// Creates the queue's counters at 0, so that the first move Prometheus sees is an increase
/// (a series that first appears at 5 shows no increase to `increase()` or `rate()`).
pub(crate) fn touch_queue_counters(queue: &str) {
    let label = sluice_api::metrics::queue_label(queue);
    DEAD_LETTER_MOVES.with_label_values(&[&label]);
    TASK_MOVES.with_label_values(&[&label]);
}

/// What one queue adds to its label's gauges.
#[derive(Default, Clone, Copy)]
pub(crate) struct QueueGauges {
    pub(crate) visible: u64,
    pub(crate) in_flight: u64,
    pub(crate) delayed: u64,
    pub(crate) oldest_age_seconds: f64,
}

/// The labels the last [`set_queue_gauges`] set, so a label whose queues are all gone is
/// removed instead of showing its last values forever.
static GAUGE_LABELS: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);

/// Sets the per-queue gauges from every queue's figures: queues that share a label (past the
/// label cap) add up, and the oldest age is the oldest among them.
pub(crate) fn set_queue_gauges(queues: impl IntoIterator<Item = (Arc<str>, QueueGauges)>) {
    let mut by_label: HashMap<Arc<str>, QueueGauges> = HashMap::new();
    for (label, gauges) in queues {
        let sum = by_label.entry(label).or_default();
        sum.visible += gauges.visible;
        sum.in_flight += gauges.in_flight;
        sum.delayed += gauges.delayed;
        sum.oldest_age_seconds = sum.oldest_age_seconds.max(gauges.oldest_age_seconds);
    }
    let mut previous = GAUGE_LABELS.lock();
    for gone in previous
        .iter()
        .filter(|label| !by_label.contains_key(*label))
    {
        for state in ["visible", "in_flight", "delayed"] {
            let _ = QUEUE_MESSAGES.remove_label_values(&[gone, state]);
        }
        let _ = OLDEST_MESSAGE_AGE.remove_label_values(&[gone]);
    }
    for (label, gauges) in &by_label {
        for (state, value) in [
            ("visible", gauges.visible),
            ("in_flight", gauges.in_flight),
            ("delayed", gauges.delayed),
        ] {
            QUEUE_MESSAGES
                .with_label_values(&[label, state])
                .set(value as i64);
        }
        OLDEST_MESSAGE_AGE
            .with_label_values(&[label])
            .set(gauges.oldest_age_seconds);
    }
    *previous = by_label.into_keys().collect();
}

pub(crate) static WAITING_RECEIVES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_storage_waiting_receives",
        "Long-polling receives waiting for a message"
    )
    .expect("metric registers once")
});

pub(crate) static DEAD_LETTER_MOVES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_storage_dead_letter_moves_total",
        "Messages moved to a dead-letter queue after reaching their queue's max receive count, \
         by the queue they left",
        &["queue"]
    )
    .expect("metric registers once")
});

pub(crate) static TASK_MOVES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_storage_task_moves_total",
        "Messages moved out of a queue by message move tasks (dead-letter redrive), by that queue",
        &["queue"]
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

pub(crate) static DISK_FULL_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_disk_full_refusals_total",
        "Sends refused because less than the reserve (--min-free-disk-bytes) was free on the \
         engine's disk"
    )
    .expect("metric registers once")
});

pub(crate) static LEASE_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_storage_lease_refusals_total",
        "Requests a leader refused because its lease had run out: it had not heard from a \
         majority of its cluster for long enough that another node may lead"
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
    LazyLock::force(&OLDEST_MESSAGE_AGE);
    LazyLock::force(&WAITING_RECEIVES);
    LazyLock::force(&DEAD_LETTER_MOVES);
    LazyLock::force(&TASK_MOVES);
    LazyLock::force(&DUPLICATE_SENDS);
    LazyLock::force(&LEASE_REFUSALS);
    LazyLock::force(&DISK_FULL_REFUSALS);
    LazyLock::force(&MOVE_FAILURES);
    LazyLock::force(&WAL_TRIMMED_BYTES);
}

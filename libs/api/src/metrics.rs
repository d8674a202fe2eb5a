//! What every service's metrics share: bounded per-queue labels and latency buckets that
//! resolve the range Sluice works in, from a fast fsync to a slow long poll.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// The `queue` label value of every queue past the cap.
pub const OTHER_QUEUES: &str = "_other";

/// The default number of queues that get a label of their own.
pub const DEFAULT_QUEUE_LABELS: usize = 100;

static CAP: AtomicUsize = AtomicUsize::new(DEFAULT_QUEUE_LABELS);
static LABELLED: LazyLock<RwLock<HashSet<Arc<str>>>> = LazyLock::new(Default::default);
static OTHER: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(OTHER_QUEUES));
static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// Sets how many queues get a `queue` label of their own; set once at start-up. Each labelled
/// queue costs every per-queue series, so a fleet of a million queues must not make a million
/// of each: past the cap, queues share the label `_other`.
pub fn set_queue_label_cap(cap: usize) {
    CAP.store(cap, Ordering::Relaxed);
}

/// The `queue` label for `queue`: its own name for the first queues seen, up to the cap, then
/// [`OTHER_QUEUES`]. A queue keeps the label it got for the life of the process.
pub fn queue_label(queue: &str) -> Arc<str> {
    // Requests refused before their queue was known carry no queue.
    if queue.is_empty() {
        return EMPTY.clone();
    }
    if let Some(label) = LABELLED.read().expect("label set lock").get(queue) {
        return label.clone();
    }
    let mut labelled = LABELLED.write().expect("label set lock");
    if let Some(label) = labelled.get(queue) {
        return label.clone();
    }
    if labelled.len() >= CAP.load(Ordering::Relaxed) {
        return OTHER.clone();
    }
    let label: Arc<str> = Arc::from(queue);
    labelled.insert(label.clone());
    label
}

/// Frees `queue`'s label (the queue was deleted), so another queue can have it.
pub fn forget_queue_label(queue: &str) {
    LABELLED.write().expect("label set lock").remove(queue);
}

/// Buckets in seconds for latencies, from 50 µs (an fsync on a fast disk, a cache hit) to 10 s
/// (a stalled disk, a long poll), in 1-2.5-5 steps so each decade reads at a glance.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0, 20.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_past_the_cap_share_one_label_and_a_freed_label_is_reused() {
        set_queue_label_cap(2);
        assert_eq!(&*queue_label("a"), "a");
        assert_eq!(&*queue_label("b"), "b");
        assert_eq!(&*queue_label("c"), OTHER_QUEUES);
        assert_eq!(&*queue_label("a"), "a", "a queue keeps its label");
        forget_queue_label("b");
        assert_eq!(&*queue_label("c"), "c");
        assert_eq!(&*queue_label("b"), OTHER_QUEUES);
    }
}

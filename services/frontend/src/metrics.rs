use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use sluice_api::metrics::queue_label;
use sluice_common::rpc::RpcMetrics;

pub(crate) static RPC: LazyLock<RpcMetrics> = LazyLock::new(|| RpcMetrics {
    requests: &RPC_REQUESTS,
    duration: &RPC_DURATION,
});

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_rpc_requests_total",
        "QueueService requests by method and gRPC code",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_rpc_duration_seconds",
        "QueueService request latency by method (long polls included)",
        &["method"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

static MESSAGES_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_messages_sent_total",
        "Messages stored durably",
        &["queue"]
    )
    .expect("metric registers once")
});

static MESSAGES_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_messages_received_total",
        "Message deliveries",
        &["queue"]
    )
    .expect("metric registers once")
});

static MESSAGES_DELETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_messages_deleted_total",
        "Messages deleted by receipt handle",
        &["queue"]
    )
    .expect("metric registers once")
});

static EMPTY_RECEIVES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_empty_receives_total",
        "Receives that returned no message",
        &["queue"]
    )
    .expect("metric registers once")
});

pub(crate) static CONSUME_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_consume_streams",
        "Consume streams open on this server"
    )
    .expect("metric registers once")
});

static THROTTLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_frontend_throttled_total",
        "Requests refused with RESOURCE_EXHAUSTED (or Consume streams slowed) by the limit they \
         were over: a rate limit (queue_* or caller_*), a bulkhead, memory or a backend cluster's \
         concurrency; queue is empty where no queue was known yet",
        &["reason", "queue"]
    )
    .expect("metric registers once")
});

pub(crate) static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_frontend_in_flight",
        "Requests (and Consume streams) this frontend holds, by bulkhead: sends, short_calls, \
         long_polls, streams",
        &["bulkhead"]
    )
    .expect("metric registers once")
});

pub(crate) static BACKEND_IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_frontend_backend_in_flight",
        "Calls this frontend has in flight to each backend cluster, long polls aside",
        &["cluster"]
    )
    .expect("metric registers once")
});

pub(crate) static BACKEND_CALL_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_frontend_backend_call_duration_seconds",
        "Latency of this frontend's calls to each backend cluster, long polls aside, retries on \
         other nodes included",
        &["cluster"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

pub(crate) static BACKEND_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_frontend_backend_retries_total",
        "Calls to a backend cluster tried again, by why: unavailable (a node down or a cluster \
         electing a leader: the next node is tried), moving (the queue's partition was sealed by \
         a move), placement_changed (the queue is on another cluster now)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub(crate) static BACKEND_CUT_OFF: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_frontend_backend_cut_off_total",
        "Calls given up early because this frontend reached no node of the queue's backend \
         cluster: answered UNAVAILABLE so that the client tries another frontend"
    )
    .expect("metric registers once")
});

static CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_frontend_cache_lookups_total",
        "Lookups in this frontend's caches of what the metadata tier holds (queues, placements, \
         members of backend clusters), by result: hit (fresh), stale (the last value read, \
         served while it is read again), miss (read from the metadata tier before answering)",
        &["cache", "result"]
    )
    .expect("metric registers once")
});

/// Counts one lookup in cache `cache`.
pub(crate) fn cache_lookup(cache: &'static str, result: &'static str) {
    CACHE_LOOKUPS.with_label_values(&[cache, result]).inc();
}

pub(crate) static BACKEND_LIMIT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_frontend_backend_limit",
        "The adaptive cap on calls in flight to each backend cluster: it shrinks while the \
         cluster answers slower than the latency target and grows back as it answers in time",
        &["cluster"]
    )
    .expect("metric registers once")
});

pub(crate) static FRONTENDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_frontend_registered_frontends",
        "Frontends registered in the metadata store, as this one last counted them: each admits \
         this share of the cluster-wide rate limits"
    )
    .expect("metric registers once")
});

/// Counts a request refused by the limit named `reason`.
pub(crate) fn throttled(reason: &str, queue: &str) {
    THROTTLED
        .with_label_values(&[reason, &queue_label(queue)])
        .inc();
}

/// Messages stored durably in `queue`.
pub(crate) fn count_sent(queue: &str, messages: usize) {
    MESSAGES_SENT
        .with_label_values(&[&queue_label(queue)])
        .inc_by(messages as u64);
}

/// Messages deleted from `queue` by receipt handle.
pub(crate) fn count_deleted(queue: &str, messages: usize) {
    MESSAGES_DELETED
        .with_label_values(&[&queue_label(queue)])
        .inc_by(messages as u64);
}

/// One receive's deliveries: an empty one counts as such.
pub(crate) fn count_received(queue: &str, messages: usize) {
    let queue = queue_label(queue);
    if messages == 0 {
        EMPTY_RECEIVES.with_label_values(&[&queue]).inc();
    } else {
        MESSAGES_RECEIVED
            .with_label_values(&[&queue])
            .inc_by(messages as u64);
    }
}

/// Registers every metric up front, so each is exported before its first event.
/// Requests refused for their credentials, by why; `blocked`: the source was over its budget of
/// failed attempts. Never the key id or the secret.
pub(crate) static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_auth_failures_total",
        "Requests refused as unauthenticated, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

pub(crate) static PERMISSION_DENIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_permission_denied_total",
        "Requests refused by the caller's policy, by action",
        &["action"]
    )
    .expect("metric registers once")
});

/// Changes to principals and keys the metadata tier's watch told this frontend of.
pub(crate) static IDENTITY_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_identity_changes_total",
        "Identity changes heard from the metadata tier's watch, by kind (key, principal, reset)",
        &["kind"]
    )
    .expect("metric registers once")
});

pub(crate) fn register() {
    LazyLock::force(&RPC_REQUESTS);
    LazyLock::force(&RPC_DURATION);
    LazyLock::force(&MESSAGES_SENT);
    LazyLock::force(&MESSAGES_RECEIVED);
    LazyLock::force(&MESSAGES_DELETED);
    LazyLock::force(&EMPTY_RECEIVES);
    LazyLock::force(&CONSUME_STREAMS);
    LazyLock::force(&THROTTLED);
    for reason in [
        "missing",
        "malformed",
        "unknown_key",
        "wrong_secret",
        "expired",
        "blocked",
    ] {
        AUTH_FAILURES.with_label_values(&[reason]);
    }
    for action in sluice_api::identity::Action::ALL {
        PERMISSION_DENIED.with_label_values(&[action.as_str()]);
    }
    for kind in ["key", "principal", "reset"] {
        IDENTITY_CHANGES.with_label_values(&[kind]);
    }
    // Alone until a registration counts others.
    FRONTENDS.set(1);
    for cache in ["queues", "placements", "members"] {
        for result in ["hit", "stale", "miss"] {
            CACHE_LOOKUPS.with_label_values(&[cache, result]);
        }
    }
    for reason in ["unavailable", "moving", "placement_changed"] {
        BACKEND_RETRIES.with_label_values(&[reason]);
    }
    LazyLock::force(&BACKEND_CUT_OFF);
    for bulkhead in ["sends", "short_calls", "long_polls", "streams"] {
        IN_FLIGHT.with_label_values(&[bulkhead]);
    }
}

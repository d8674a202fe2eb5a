use std::sync::LazyLock;

use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};
use sluice_common::rpc::RpcMetrics;

pub(crate) static RPC: LazyLock<RpcMetrics> = LazyLock::new(|| RpcMetrics {
    requests: &RPC_REQUESTS,
    duration: &RPC_DURATION,
});

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_backend_requests_total",
        "BackendService requests by method and gRPC code",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_backend_request_duration_seconds",
        "BackendService request latency by method (long polls included)",
        &["method"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

static RESENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let resent = register_int_counter_vec!(
        "sluice_backend_resent_messages_total",
        "Messages of acknowledged ASYNC sends in log entries this node dropped, sent again through the leader, by outcome: stored, duplicate (the leader had them already) or refused (the queue was deleted or moved: lost)",
        &["outcome"]
    )
    .expect("metric registers once");
    for outcome in ["stored", "duplicate", "refused"] {
        resent.with_label_values(&[outcome]);
    }
    resent
});

/// Counts `n` messages of dropped sends by what became of them.
pub(crate) fn resent(outcome: &str, n: u64) {
    RESENT.with_label_values(&[outcome]).inc_by(n);
}

/// Registers the metrics that are not written at start, so that each shows from the start.
pub(crate) fn register() {
    LazyLock::force(&RESENT);
}

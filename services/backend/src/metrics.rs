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

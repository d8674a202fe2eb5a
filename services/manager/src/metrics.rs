use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounterVec, IntGauge,
};
use sluice_common::rpc::RpcMetrics;

pub(crate) static RPC: LazyLock<RpcMetrics> = LazyLock::new(|| RpcMetrics {
    requests: &RPC_REQUESTS,
    duration: &RPC_DURATION,
});

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_manager_requests_total",
        "ManagerService requests by method and gRPC code",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_manager_request_duration_seconds",
        "ManagerService request latency by method",
        &["method"],
        prometheus::exponential_buckets(0.0001, 2.0, 20).expect("valid buckets")
    )
    .expect("metric registers once")
});

pub(crate) static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_manager_is_leader",
        "1 while this manager is the elected leader"
    )
    .expect("metric registers once")
});

pub(crate) static PLACEMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_manager_placements_total",
        "Queues this manager placed, by cluster",
        &["cluster"]
    )
    .expect("metric registers once")
});

/// Queue moves by step: `sealed` (the old partition sealed and the new one opened),
/// `removed` (a drained sealed partition removed).
pub(crate) static MOVES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_manager_queue_moves_total",
        "Queue move steps completed by this manager, by step",
        &["step"]
    )
    .expect("metric registers once")
});

pub(crate) static SEALED_PARTITIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_manager_sealed_partitions",
        "Sealed queue partitions still draining, as the leader last saw them"
    )
    .expect("metric registers once")
});

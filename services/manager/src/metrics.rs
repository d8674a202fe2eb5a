use std::sync::LazyLock;

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, GaugeVec, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};

use sluice_common::rpc::RpcMetrics;

use crate::policy::{ClusterState, Limits};

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
        sluice_api::metrics::latency_buckets()
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

static CLUSTER_UTILIZATION: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_manager_cluster_utilization",
        "Each backend cluster's load as the leader manager sees it, by resource: \
         messages_per_second (in and out), bytes_stored, disk_free_bytes, queues; only the \
         leader exports it",
        &["cluster", "resource"]
    )
    .expect("metric registers once")
});

static CLUSTER_ACCEPTING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_manager_cluster_accepting",
        "1 while a backend cluster takes new queues: it has a live node and is inside every \
         high-water mark",
        &["cluster"]
    )
    .expect("metric registers once")
});

static HIGH_WATER: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_manager_high_water",
        "The configured high-water marks, by resource (the same names as \
         sluice_manager_cluster_utilization; disk_free_bytes is a low-water mark); absent when \
         not set",
        &["resource"]
    )
    .expect("metric registers once")
});

/// Exports the clusters' utilization and the marks they are held against.
pub(crate) fn export_clusters(clusters: &[ClusterState], limits: &Limits) {
    forget_clusters();
    for cluster in clusters {
        let load = &cluster.load;
        for (resource, value) in [
            (
                "messages_per_second",
                load.messages_in_per_second + load.messages_out_per_second,
            ),
            ("bytes_stored", load.bytes_stored as f64),
            ("disk_free_bytes", load.disk_free_bytes as f64),
            ("queues", cluster.queue_count as f64),
        ] {
            CLUSTER_UTILIZATION
                .with_label_values(&[&cluster.name, resource])
                .set(value);
        }
        CLUSTER_ACCEPTING
            .with_label_values(&[&cluster.name])
            .set(i64::from(crate::policy::refusal(cluster, limits).is_none()));
    }
    for (resource, mark) in [
        ("messages_per_second", limits.max_messages_per_second),
        ("bytes_stored", limits.max_bytes_stored.map(|v| v as f64)),
        (
            "disk_free_bytes",
            limits.min_disk_free_bytes.map(|v| v as f64),
        ),
    ] {
        if let Some(mark) = mark {
            HIGH_WATER.with_label_values(&[resource]).set(mark);
        }
    }
}

/// Drops the utilization series: a manager that is not the leader has no view to show, and a
/// cluster that is gone must not linger.
pub(crate) fn forget_clusters() {
    CLUSTER_UTILIZATION.reset();
    CLUSTER_ACCEPTING.reset();
    HIGH_WATER.reset();
}

/// Exports the counters before their first event, so the first shows as an increase.
pub(crate) fn register() {
    LazyLock::force(&RPC_REQUESTS);
    LazyLock::force(&RPC_DURATION);
    for step in ["sealed", "removed"] {
        MOVES.with_label_values(&[step]);
    }
    LazyLock::force(&SEALED_PARTITIONS);
    LazyLock::force(&IS_LEADER);
}

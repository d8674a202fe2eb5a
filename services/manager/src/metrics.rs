use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, GaugeVec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use sluice_common::rpc::RpcMetrics;

use crate::policy::{ClusterState, Limits, ScoreConfig};
use crate::rebalance::Plan;

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

static WATCH_EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_manager_watch_events_total",
        "Changes heard on this manager's etcd watches (clusters' nodes and load, placements)"
    )
    .expect("metric registers once")
});

static WATCH_RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_manager_watch_restarts_total",
        "etcd watches that broke (etcd restarted or compacted past them) and were started again \
         from a fresh snapshot"
    )
    .expect("metric registers once")
});

/// The counters the manager's watches feed.
pub(crate) const WATCHES: sluice_metastore::watch::WatchCounters =
    sluice_metastore::watch::WatchCounters {
        events: &WATCH_EVENTS,
        restarts: &WATCH_RESTARTS,
    };

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
        "Sealed queue partitions still draining (or kept for their deduplication ids), as the leader last saw them; 0 on the other managers"
    )
    .expect("metric registers once")
});

static CLUSTER_UTILIZATION: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_manager_cluster_utilization",
        "Each backend cluster's load as the leader manager sees it, by resource: \
         messages_per_second and bytes_per_second (the leader's, in and out), cpu (the \
         leader's share of its cores), commit_seconds (the slowest member's mean), bytes_stored \
         (the fullest member), disk_free_bytes (the least free), queues; only the leader exports \
         it",
        &["cluster", "resource"]
    )
    .expect("metric registers once")
});

static CLUSTER_SCORE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_manager_cluster_score",
        "Each backend cluster's score (part total) and its parts (cpu, messages, bytes, storage, \
         latency), each a share of its configured capacity; absent while the cluster's load is \
         unknown; only the leader exports it",
        &["cluster", "part"]
    )
    .expect("metric registers once")
});

static CLUSTER_LOAD_KNOWN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "sluice_manager_cluster_load_known",
        "1 while every member of a backend cluster reports its load in time; 0 while one is \
         missing, silent or stale (the cluster then takes no new queues)",
        &["cluster"]
    )
    .expect("metric registers once")
});

static CLUSTER_HOT_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "sluice_manager_cluster_hot_seconds",
        "How long a backend cluster's score has been over the fleet's mean by the rebalance \
         threshold; 0 when it is not",
        &["cluster"]
    )
    .expect("metric registers once")
});

static MEAN_SCORE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "sluice_manager_mean_score",
        "The mean score of the backend clusters whose load is known, as the leader last saw it; 0 on the other managers"
    )
    .expect("metric registers once")
});

/// Rebalancer decisions: `moved`, `refused` (a dead-letter link holds the queue),
/// `move_failed`, and why a hot cluster shed less than it should (`budget_spent`,
/// `no_destination`, `no_movable_queue`; counted when the reason first appears).
pub(crate) static REBALANCE_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_manager_rebalance_decisions_total",
        "Rebalancer decisions by kind: moved, refused, move_failed, budget_spent, \
         no_destination, no_movable_queue",
        &["decision"]
    )
    .expect("metric registers once")
});

/// Changes of queues' active partitions: `added`, `retired`, `refused` (the queue has a
/// dead-letter queue, or is one), `failed` (tried again later).
pub(crate) static SPREAD_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_manager_partition_changes_total",
        "Changes of queues' active partitions by kind: added, retired, refused, failed",
        &["change"]
    )
    .expect("metric registers once")
});

pub(crate) static SPREAD_QUEUES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_manager_spread_queues",
        "Queues with more than one active partition, as the leader last saw them; 0 on the other managers"
    )
    .expect("metric registers once")
});

pub(crate) static REBALANCE_PAUSED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_manager_rebalance_paused",
        "1 while an operator has paused the rebalancer (sluice admin rebalance pause), on the leader; 0 on the other managers"
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

/// Exports the clusters' utilization, scores, and the marks they are held against.
pub(crate) fn export_clusters(clusters: &[ClusterState], limits: &Limits, config: &ScoreConfig) {
    forget_utilization();
    for cluster in clusters {
        let load = &cluster.load;
        for (resource, value) in [
            ("messages_per_second", load.messages_per_second()),
            ("bytes_per_second", load.bytes_per_second()),
            ("cpu", load.cpu),
            ("commit_seconds", load.commit_seconds),
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
        CLUSTER_LOAD_KNOWN
            .with_label_values(&[&cluster.name])
            .set(i64::from(cluster.unknown.is_none()));
        if cluster.unknown.is_none() {
            let score = crate::policy::score(load, config);
            for (part, value) in [
                ("total", score.total),
                ("cpu", score.cpu),
                ("messages", score.messages),
                ("bytes", score.bytes),
                ("storage", score.storage),
                ("latency", score.latency),
            ] {
                CLUSTER_SCORE
                    .with_label_values(&[&cluster.name, part])
                    .set(value);
            }
        }
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

/// Drops the leader's series: a manager that is not the leader has no view to show, and a
/// cluster that is gone must not linger. The leader's plain gauges go to zero, so a manager
/// that lost the leadership does not go on showing what it last saw (dashboards take the
/// maximum over the managers).
pub(crate) fn forget_leader_view() {
    forget_utilization();
    CLUSTER_HOT_SECONDS.reset();
    MEAN_SCORE.set(0.0);
    REBALANCE_PAUSED.set(0);
    SPREAD_QUEUES.set(0);
    SEALED_PARTITIONS.set(0);
}

/// The series `export_clusters` makes; the rebalancer's own (`export_balance`) stay, so a
/// scrape between the two finds both.
fn forget_utilization() {
    CLUSTER_UTILIZATION.reset();
    CLUSTER_ACCEPTING.reset();
    CLUSTER_LOAD_KNOWN.reset();
    CLUSTER_SCORE.reset();
    HIGH_WATER.reset();
}

/// Exports the rebalancer's view: the mean score and how long each cluster has been hot.
pub(crate) fn export_balance(plan: &Plan) {
    MEAN_SCORE.set(plan.mean);
    CLUSTER_HOT_SECONDS.reset();
    for (name, (_, hot_ms)) in &plan.clusters {
        CLUSTER_HOT_SECONDS
            .with_label_values(&[name])
            .set(*hot_ms as f64 / 1000.0);
    }
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
    for decision in [
        "moved",
        "refused",
        "move_failed",
        "budget_spent",
        "no_destination",
        "no_movable_queue",
    ] {
        REBALANCE_DECISIONS.with_label_values(&[decision]);
    }
    LazyLock::force(&REBALANCE_PAUSED);
    for change in ["added", "retired", "refused", "failed"] {
        SPREAD_CHANGES.with_label_values(&[change]);
    }
    LazyLock::force(&SPREAD_QUEUES);
    LazyLock::force(&MEAN_SCORE);
    LazyLock::force(&WATCH_EVENTS);
    LazyLock::force(&WATCH_RESTARTS);
}

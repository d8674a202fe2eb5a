use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};
use sluice_common::rpc::RpcMetrics;

pub(crate) static RPC: LazyLock<RpcMetrics> = LazyLock::new(|| RpcMetrics {
    requests: &RPC_REQUESTS,
    duration: &RPC_DURATION,
});

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_metadata_requests_total",
        "MetadataService requests by method and gRPC code",
        &["method", "code"]
    )
    .expect("metric registers once")
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_metadata_request_duration_seconds",
        "MetadataService request latency by method",
        &["method"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

pub(crate) static CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_cache_hits_total",
        "Reads of owned records served from the cache"
    )
    .expect("metric registers once")
});

pub(crate) static CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_cache_misses_total",
        "Reads of owned records that went to etcd"
    )
    .expect("metric registers once")
});

pub(crate) static FORWARDS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_forwards_total",
        "Requests forwarded to the owner of their key"
    )
    .expect("metric registers once")
});

pub(crate) static FORWARD_FALLBACKS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_forward_fallbacks_total",
        "Requests served from etcd because their owner could not be reached"
    )
    .expect("metric registers once")
});

pub(crate) static RING_MEMBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_metadata_ring_members",
        "Metadata nodes on this node's view of the ring"
    )
    .expect("metric registers once")
});

/// Registers every metric now, so `/metrics` shows each from the start (at zero), not only after
/// its first use.
pub(crate) static WATCH_EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_watch_events_total",
        "Changes heard on this node's etcd watches (queues, placements, identity, ring)"
    )
    .expect("metric registers once")
});

/// The counters every watch of this node feeds.
pub(crate) const WATCHES: sluice_metastore::watch::WatchCounters =
    sluice_metastore::watch::WatchCounters {
        events: &WATCH_EVENTS,
        restarts: &WATCH_RESTARTS,
    };

pub(crate) static WATCH_RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_metadata_watch_restarts_total",
        "etcd watches that broke (etcd restarted or compacted past them) and were started again \
         from a fresh snapshot"
    )
    .expect("metric registers once")
});

pub(crate) fn register() {
    LazyLock::force(&RPC);
    for counter in [
        &CACHE_HITS,
        &CACHE_MISSES,
        &FORWARDS,
        &FORWARD_FALLBACKS,
        &WATCH_EVENTS,
        &WATCH_RESTARTS,
    ] {
        LazyLock::force(counter);
    }
    LazyLock::force(&RING_MEMBERS);
}

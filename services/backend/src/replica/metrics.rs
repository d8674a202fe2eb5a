//! Prometheus metrics of a node's replica (DESIGN section 10).

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_int_counter, register_int_gauge, Gauge, IntCounter, IntGauge,
};

/// `metric!(IntGauge, NAME, "sluice_...", "help")` registers an `IntGauge`, a `Gauge` or an
/// `IntCounter` the first time it is used.
macro_rules! metric {
    (IntGauge, $($rest:tt)*) => {
        metric!(@ IntGauge, register_int_gauge, $($rest)*);
    };
    (Gauge, $($rest:tt)*) => {
        metric!(@ Gauge, register_gauge, $($rest)*);
    };
    (IntCounter, $($rest:tt)*) => {
        metric!(@ IntCounter, register_int_counter, $($rest)*);
    };
    (@ $ty:ident, $register:ident, $name:ident, $metric:literal, $help:literal) => {
        pub(crate) static $name: LazyLock<$ty> =
            LazyLock::new(|| $register!($metric, $help).expect("metric registers once"));
    };
}

metric!(
    IntGauge,
    IS_LEADER,
    "sluice_backend_raft_leader",
    "1 while this node leads its cluster and serves"
);
metric!(
    IntGauge,
    APPLIED_INDEX,
    "sluice_backend_raft_applied_index",
    "The last log index applied to this node's engine"
);
metric!(
    IntGauge,
    LAST_LOG_INDEX,
    "sluice_backend_raft_last_log_index",
    "The last index in this node's log"
);
metric!(
    IntGauge,
    PURGED_INDEX,
    "sluice_backend_raft_purged_index",
    "The last index purged from this node's log, which its engine's files hold from then on"
);
metric!(
    IntGauge,
    ASYNC_MAX_LAG,
    "sluice_backend_replication_async_max_lag_entries",
    "The most entries the leader's log may run ahead of a majority before acknowledgements of ASYNC sends wait (--async-max-lag-entries; 0: no bound): what a leader crash can lose of them"
);
metric!(
    IntGauge,
    ASYNC_HELD,
    "sluice_backend_replication_async_held_entries",
    "On the leader: entries durable in its log whose acknowledgements wait for a majority to catch up to within the bound"
);
metric!(
    IntCounter,
    ASYNC_WAITS,
    "sluice_backend_replication_async_waits_total",
    "Entries whose acknowledgements waited because the leader's log had run the bound ahead of a majority: backpressure on ASYNC sends"
);
metric!(
    Gauge,
    LEASE_REMAINING,
    "sluice_backend_raft_lease_remaining_seconds",
    "How long this node's leader lease still holds: it acknowledges what no majority vouches for (asynchronous sends, receives) only while this is above 0; 0 on a follower"
);
metric!(
    IntGauge,
    MAY_STAND,
    "sluice_backend_raft_may_stand",
    "1 while this node may stand for election: it has run long enough to hear from a leader and reaches a majority of the voters (a node cut off does not stand, so that its return does not depose the leader)"
);
metric!(
    IntCounter,
    EARLY_ELECTIONS,
    "sluice_backend_raft_early_elections_total",
    "Elections this follower stood for as soon as its silent leader's lease on the voters ran out, ahead of openraft's own timer"
);
metric!(
    IntGauge,
    TERM,
    "sluice_backend_raft_term",
    "The Raft term this node is in"
);
metric!(
    IntGauge,
    LAG_ENTRIES,
    "sluice_backend_replication_lag_entries",
    "On the leader: entries of its log not yet on a majority; what a leader crash could lose of ASYNC sends"
);

metric!(
    Gauge,
    LAG_SECONDS,
    "sluice_backend_replication_lag_seconds",
    "On the leader: how long entries have been waiting to reach a majority (0 when none wait)"
);

metric!(
    IntCounter,
    PROPOSALS,
    "sluice_backend_raft_proposals_total",
    "Log entries this node proposed, each a group commit of its engine"
);
metric!(
    IntCounter,
    DROPPED_ENTRIES_KEPT,
    "sluice_backend_raft_dropped_entries_total",
    "Entries truncated from this node's log because no majority took them (a deposed leader's), kept so that their ASYNC sends are made again through the leader"
);
metric!(
    IntGauge,
    DROPPED_ENTRIES,
    "sluice_backend_raft_dropped_entries",
    "Truncated entries whose ASYNC sends are still to be made again through the leader"
);
metric!(
    IntCounter,
    SNAPSHOTS_BUILT,
    "sluice_backend_raft_snapshots_built_total",
    "Snapshots built: each flushes the engine so that the log can be purged up to it"
);
metric!(
    IntCounter,
    SNAPSHOTS_DUMPED,
    "sluice_backend_raft_snapshots_dumped_total",
    "Snapshots read out of this node's engine for a follower that fell behind the log"
);
metric!(
    IntCounter,
    SNAPSHOTS_INSTALLED,
    "sluice_backend_raft_snapshots_installed_total",
    "Snapshots from the leader that replaced this node's engine"
);

/// Registers every metric, so that each shows from the start.
pub(crate) fn register() {
    for gauge in [
        &IS_LEADER,
        &APPLIED_INDEX,
        &LAST_LOG_INDEX,
        &PURGED_INDEX,
        &TERM,
        &LAG_ENTRIES,
        &ASYNC_MAX_LAG,
        &ASYNC_HELD,
        &MAY_STAND,
        &DROPPED_ENTRIES,
    ] {
        LazyLock::force(gauge);
    }
    LazyLock::force(&LAG_SECONDS);
    LazyLock::force(&LEASE_REMAINING);
    for counter in [
        &EARLY_ELECTIONS,
        &ASYNC_WAITS,
        &DROPPED_ENTRIES_KEPT,
        &PROPOSALS,
        &SNAPSHOTS_BUILT,
        &SNAPSHOTS_DUMPED,
        &SNAPSHOTS_INSTALLED,
    ] {
        LazyLock::force(counter);
    }
}

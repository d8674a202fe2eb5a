//! Prometheus metrics of a node's replica (DESIGN section 10).

use std::sync::LazyLock;

use prometheus::{
    register_gauge, register_int_counter, register_int_gauge, Gauge, IntCounter, IntGauge,
};

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        pub(crate) static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("metric registers once"));
    };
}

gauge!(
    IS_LEADER,
    "sluice_backend_raft_leader",
    "1 while this node leads its cluster and serves"
);
gauge!(
    APPLIED_INDEX,
    "sluice_backend_raft_applied_index",
    "The last log index applied to this node's engine"
);
gauge!(
    LAST_LOG_INDEX,
    "sluice_backend_raft_last_log_index",
    "The last index in this node's log"
);
gauge!(
    PURGED_INDEX,
    "sluice_backend_raft_purged_index",
    "The last index purged from this node's log, which its engine's files hold from then on"
);
gauge!(
    TERM,
    "sluice_backend_raft_term",
    "The Raft term this node is in"
);
gauge!(
    LAG_ENTRIES,
    "sluice_backend_replication_lag_entries",
    "On the leader: entries of its log not yet on a majority; what a leader crash could lose of ASYNC sends"
);

pub(crate) static LAG_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "sluice_backend_replication_lag_seconds",
        "On the leader: how long entries have been waiting to reach a majority (0 when none wait)"
    )
    .expect("metric registers once")
});

pub(crate) static PROPOSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_backend_raft_proposals_total",
        "Log entries this node proposed, each a group commit of its engine"
    )
    .expect("metric registers once")
});

/// Registers every metric, so that each shows from the start.
pub(crate) fn register() {
    for gauge in [
        &IS_LEADER,
        &APPLIED_INDEX,
        &LAST_LOG_INDEX,
        &PURGED_INDEX,
        &TERM,
        &LAG_ENTRIES,
    ] {
        LazyLock::force(gauge);
    }
    LazyLock::force(&LAG_SECONDS);
    LazyLock::force(&PROPOSALS);
}

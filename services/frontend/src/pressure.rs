//! Backend pressure at the edge: an adaptive cap on the calls a frontend has in flight to each
//! backend cluster (AIMD on latency). While a cluster answers within the target its cap grows by
//! one with each call, up to the configured maximum; a call slower than the target (a slow disk,
//! a commit backlog, a cluster electing a leader) halves it, at most once per `DECREASE_EVERY`,
//! down to a floor. Past its cap a call is refused at once with RESOURCE_EXHAUSTED instead of
//! queueing behind the slow ones until clients time out, and the clusters that answer in time
//! keep their own caps. Long polls are not capped here (they are slow on purpose; their
//! bulkhead bounds them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_api::{Error, Result};

use crate::metrics;

/// How often a cap can be halved: the slow calls of one burst halve it once.
const DECREASE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PressureOpts {
    /// A backend call slower than this (milliseconds) says its cluster is overloaded.
    pub latency_target_ms: u64,
    /// The smallest cap on calls in flight to one cluster.
    pub min_calls: usize,
}

impl Default for PressureOpts {
    fn default() -> Self {
        PressureOpts {
            latency_target_ms: 500,
            min_calls: 8,
        }
    }
}

struct State {
    limit: f64,
    in_flight: usize,
    last_decrease: Option<Instant>,
}

/// One cluster's cap, and its gauges (looked up once, not on every call).
struct ClusterLimit {
    state: Mutex<State>,
    in_flight: prometheus::IntGauge,
    limit: prometheus::IntGauge,
    duration: prometheus::Histogram,
}

/// The caps of every cluster a frontend calls.
pub(crate) struct Pressure {
    target: Duration,
    decrease_every: Duration,
    min: f64,
    max: f64,
    clusters: Mutex<HashMap<String, Arc<ClusterLimit>>>,
}

/// A call in flight to a cluster; when dropped it gives its place back and its latency
/// adjusts the cluster's cap.
pub(crate) struct Slot {
    limit: Arc<ClusterLimit>,
    started: Instant,
    target: Duration,
    decrease_every: Duration,
    min: f64,
    max: f64,
}

impl Pressure {
    pub(crate) fn new(opts: &PressureOpts, max_calls: usize) -> Self {
        let max = max_calls.max(1) as f64;
        Pressure {
            target: Duration::from_millis(opts.latency_target_ms.max(1)),
            decrease_every: DECREASE_EVERY,
            min: (opts.min_calls.max(1) as f64).min(max),
            max,
            clusters: Mutex::new(HashMap::new()),
        }
    }

    /// The cap of a cluster not called before.
    fn add(&self, cluster: &str) -> Arc<ClusterLimit> {
        self.clusters
            .lock()
            .entry(cluster.to_owned())
            .or_insert_with(|| {
                let limit = metrics::BACKEND_LIMIT.with_label_values(&[cluster]);
                limit.set(self.max as i64);
                Arc::new(ClusterLimit {
                    in_flight: metrics::BACKEND_IN_FLIGHT.with_label_values(&[cluster]),
                    limit,
                    duration: metrics::BACKEND_CALL_DURATION.with_label_values(&[cluster]),
                    state: Mutex::new(State {
                        limit: self.max,
                        in_flight: 0,
                        last_decrease: None,
                    }),
                })
            })
            .clone()
    }

    /// A place for a call to `cluster`, or RESOURCE_EXHAUSTED if its cap is reached.
    pub(crate) fn enter(&self, cluster: &str) -> Result<Slot> {
        let found = self.clusters.lock().get(cluster).cloned();
        let limit = match found {
            Some(limit) => limit,
            None => self.add(cluster),
        };
        {
            let mut state = limit.state.lock();
            let cap = state.limit.floor() as usize;
            if state.in_flight >= cap {
                drop(state);
                metrics::throttled("backend_pressure", "");
                return Err(Error::Throttled {
                    message: format!(
                        "throttled: backend cluster {cluster} is answering slowly; this frontend \
                         holds {cap} calls in flight to it, its limit for now; retry after {} ms",
                        self.target.as_millis()
                    ),
                    retry_after: self.target,
                });
            }
            state.in_flight += 1;
            limit.in_flight.set(state.in_flight as i64);
        }
        Ok(Slot {
            limit,
            started: Instant::now(),
            target: self.target,
            decrease_every: self.decrease_every,
            min: self.min,
            max: self.max,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let now = Instant::now();
        let took = now.duration_since(self.started);
        self.limit.duration.observe(took.as_secs_f64());
        let slow = took > self.target;
        let mut state = self.limit.state.lock();
        state.in_flight -= 1;
        if slow {
            let due = state
                .last_decrease
                .is_none_or(|at| now.duration_since(at) >= self.decrease_every);
            if due {
                state.limit = (state.limit / 2.0).max(self.min);
                state.last_decrease = Some(now);
            }
        } else {
            state.limit = (state.limit + 1.0).min(self.max);
        }
        self.limit.in_flight.set(state.in_flight as i64);
        self.limit.limit.set(state.limit.floor() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_call(pressure: &Pressure, cluster: &str) {
        let mut slot = pressure.enter(cluster).unwrap();
        slot.started -= Duration::from_secs(1);
    }

    #[test]
    fn a_slow_cluster_is_capped_down_and_refused_early_while_others_are_not() {
        let opts = PressureOpts {
            latency_target_ms: 100,
            min_calls: 2,
        };
        let pressure = Pressure::new(&opts, 16);
        // Each slow call halves the cap once per period: 16, 8, 4, 2 and no lower.
        for expected in [8.0, 4.0, 2.0, 2.0] {
            slow_call(&pressure, "a");
            pressure.clusters.lock()["a"].state.lock().last_decrease = None;
            assert_eq!(pressure.clusters.lock()["a"].state.lock().limit, expected);
        }
        let held = [pressure.enter("a").unwrap(), pressure.enter("a").unwrap()];
        let err = pressure.enter("a").err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("backend cluster a"), "{err}");
        // Cluster b answers in time: all sixteen places.
        let b: Vec<_> = (0..16).map(|_| pressure.enter("b").unwrap()).collect();
        assert!(pressure.enter("b").is_err());
        // Calls in time win the places back, one each: the two held, then three more.
        drop((held, b));
        for _ in 0..3 {
            drop(pressure.enter("a").unwrap());
        }
        assert_eq!(pressure.clusters.lock()["a"].state.lock().limit, 7.0);
    }

    #[test]
    fn slow_calls_of_one_burst_halve_the_cap_once() {
        let mut pressure = Pressure::new(&PressureOpts::default(), 64);
        pressure.decrease_every = Duration::from_secs(3600);
        for _ in 0..10 {
            slow_call(&pressure, "a");
        }
        assert_eq!(pressure.clusters.lock()["a"].state.lock().limit, 32.0);
    }
}

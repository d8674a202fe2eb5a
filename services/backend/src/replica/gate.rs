//! Bounded ASYNC: an ASYNC send is acknowledged once its entry is durable in the leader's own
//! log, but only while at most `max_lag` entries of that log are not yet applied (so not yet on
//! a majority). Past that, acknowledgements wait here until the followers catch up: the sends
//! feel backpressure, and what a leader's crash can lose of acknowledged ASYNC sends is bounded
//! by `max_lag` entries (each a group commit), a figure the operator sets
//! (`--async-max-lag-entries`) and `sluice_backend_replication_async_held_entries` shows at work.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use sluice_storage::Completion;

use super::metrics;

pub(crate) struct AsyncGate {
    max_lag: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The highest log index known applied here.
    applied: u64,
    /// Acknowledgements held back, by the index of their entry.
    held: BTreeMap<u64, Vec<Completion>>,
}

impl AsyncGate {
    /// `max_lag` 0 holds nothing back: ASYNC is then acknowledged as soon as it is durable here.
    pub(crate) fn new(max_lag: u64) -> Self {
        metrics::ASYNC_MAX_LAG.set(max_lag as i64);
        AsyncGate {
            max_lag,
            state: Mutex::default(),
        }
    }

    /// The entry at `index` is durable here: tells `durable` now if the log is within the bound
    /// with it, or once the applied index has come close enough.
    pub(crate) fn durable(&self, index: u64, durable: Completion) {
        let mut state = self.state.lock();
        if self.max_lag == 0 || index <= state.applied + self.max_lag {
            drop(state);
            durable(Ok(()));
            return;
        }
        state.held.entry(index).or_default().push(durable);
        metrics::ASYNC_HELD.set(state.held.len() as i64);
        metrics::ASYNC_WAITS.inc();
    }

    /// Everything up to `applied` is applied here: releases what is now within the bound.
    pub(crate) fn applied(&self, applied: u64) {
        let released = {
            let mut state = self.state.lock();
            state.applied = state.applied.max(applied);
            let limit = state.applied + self.max_lag;
            let kept = state.held.split_off(&(limit + 1));
            let released = std::mem::replace(&mut state.held, kept);
            metrics::ASYNC_HELD.set(state.held.len() as i64);
            released
        };
        for durable in released.into_values().flatten() {
            durable(Ok(()));
        }
    }

    /// This node stopped leading: what it holds back will not be acknowledged here. The entries
    /// may still commit under the next leader, where a frontend's retry finds them.
    pub(crate) fn fail_all(&self, reason: &str) {
        let held = std::mem::take(&mut self.state.lock().held);
        metrics::ASYNC_HELD.set(0);
        for durable in held.into_values().flatten() {
            durable(Err(reason.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the completions were told: each entry's index and whether it was a success.
    type Seen = Arc<Mutex<Vec<(u64, bool)>>>;

    fn recorder() -> (Seen, impl Fn(u64) -> Completion) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let make = {
            let seen = seen.clone();
            move |index: u64| -> Completion {
                let seen = seen.clone();
                Box::new(move |result: Result<(), String>| {
                    seen.lock().unwrap().push((index, result.is_ok()))
                })
            }
        };
        (seen, make)
    }

    #[test]
    fn holds_acknowledgements_past_the_bound_until_the_majority_catches_up() {
        let gate = AsyncGate::new(2);
        let (seen, completion) = recorder();
        for index in 1..=5 {
            gate.durable(index, completion(index));
        }
        assert_eq!(*seen.lock().unwrap(), vec![(1, true), (2, true)]);
        gate.applied(2);
        assert_eq!(seen.lock().unwrap().len(), 4, "3 and 4 are within 2 of 2");
        gate.fail_all("stopped leading");
        assert_eq!(seen.lock().unwrap().last(), Some(&(5, false)));
    }

    #[test]
    fn zero_holds_nothing_back() {
        let gate = AsyncGate::new(0);
        let (seen, completion) = recorder();
        gate.durable(1_000, completion(1_000));
        assert_eq!(*seen.lock().unwrap(), vec![(1_000, true)]);
    }
}

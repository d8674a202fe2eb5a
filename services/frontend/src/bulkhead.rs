//! Bulkheads: each kind of work has its own cap on what a frontend holds in flight, so work
//! that waits (long polls, Consume streams) can never take the places of work that is quick
//! (sends, deletes). Long polls and streams are also capped per caller, so one caller cannot
//! take them all, and the bytes of sends in flight are capped, so a flood of large sends is
//! refused instead of growing the process. Over a cap a request is refused at once with
//! RESOURCE_EXHAUSTED: nothing queues up behind a full bulkhead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_api::{Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;
use crate::throttle::Caller;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadOpts {
    /// Sends (single and batch) in flight at most.
    pub max_sends: usize,
    /// Receives that do not wait, deletes, visibility changes and queue administration in
    /// flight at most.
    pub max_short_calls: usize,
    /// Receives that wait for messages (long polls) in flight at most.
    pub max_long_polls: usize,
    /// Consume streams open at most.
    pub max_streams: usize,
    /// Long polls one caller has in flight at most.
    pub max_long_polls_per_caller: usize,
    /// Consume streams one caller has open at most.
    pub max_streams_per_caller: usize,
    /// Bytes of messages (bodies and attributes) in sends in flight at most.
    pub max_send_bytes_in_flight: usize,
}

impl Default for BulkheadOpts {
    fn default() -> Self {
        BulkheadOpts {
            max_sends: 4096,
            max_short_calls: 4096,
            max_long_polls: 10_000,
            max_streams: 10_000,
            max_long_polls_per_caller: 1000,
            max_streams_per_caller: 1000,
            max_send_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

impl BulkheadOpts {
    pub fn check(&self) -> Result<()> {
        for (field, value) in [
            ("bulkheads.max_sends", self.max_sends),
            ("bulkheads.max_short_calls", self.max_short_calls),
            ("bulkheads.max_long_polls", self.max_long_polls),
            ("bulkheads.max_streams", self.max_streams),
            (
                "bulkheads.max_long_polls_per_caller",
                self.max_long_polls_per_caller,
            ),
            (
                "bulkheads.max_streams_per_caller",
                self.max_streams_per_caller,
            ),
        ] {
            if value == 0 || value > Semaphore::MAX_PERMITS {
                return Err(Error::invalid(
                    field,
                    format!("{value} is outside 1 to {}", Semaphore::MAX_PERMITS),
                ));
            }
        }
        // One largest batch must fit, or it could never be sent.
        let batch = sluice_api::limits::MAX_BATCH_ENTRIES
            * sluice_api::limits::MAX_MAX_MESSAGE_BYTES as usize;
        if self.max_send_bytes_in_flight < batch
            || self.max_send_bytes_in_flight > u32::MAX as usize
        {
            return Err(Error::invalid(
                "bulkheads.max_send_bytes_in_flight",
                format!("must be {batch} (one largest batch) to {}", u32::MAX),
            ));
        }
        Ok(())
    }
}

/// A kind of work with its own bulkhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Sends,
    Short,
    LongPolls,
    Streams,
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Sends => "sends",
            Lane::Short => "short_calls",
            Lane::LongPolls => "long_polls",
            Lane::Streams => "streams",
        }
    }

    /// When a refused request might pass: quick work frees its places within milliseconds, a
    /// long poll or stream holds its place for seconds.
    fn retry_after(self) -> Duration {
        match self {
            Lane::Sends | Lane::Short => Duration::from_millis(50),
            Lane::LongPolls | Lane::Streams => Duration::from_secs(1),
        }
    }
}

/// How many long polls and streams each caller holds.
type Held = Arc<Mutex<HashMap<(Lane, Caller), usize>>>;

pub(crate) struct Bulkheads {
    opts: BulkheadOpts,
    /// Each lane's in-flight gauge, by `Lane as usize`.
    gauges: [prometheus::IntGauge; 4],
    sends: Arc<Semaphore>,
    short: Arc<Semaphore>,
    long_polls: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    send_bytes: Arc<Semaphore>,
    held: Held,
}

/// A place in a bulkhead, given back when dropped.
pub(crate) struct Pass {
    lane: Lane,
    gauge: prometheus::IntGauge,
    _permit: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
    caller: Option<(Caller, Held)>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some((caller, held)) = self.caller.take() {
            let mut held = held.lock();
            let key = (self.lane, caller);
            if let Some(count) = held.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&key);
                }
            }
        }
    }
}

impl Bulkheads {
    pub(crate) fn new(opts: BulkheadOpts) -> Self {
        let semaphore = |n: usize| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        let gauge = |lane: Lane| metrics::IN_FLIGHT.with_label_values(&[lane.name()]);
        Bulkheads {
            gauges: [
                gauge(Lane::Sends),
                gauge(Lane::Short),
                gauge(Lane::LongPolls),
                gauge(Lane::Streams),
            ],
            sends: semaphore(opts.max_sends),
            short: semaphore(opts.max_short_calls),
            long_polls: semaphore(opts.max_long_polls),
            streams: semaphore(opts.max_streams),
            send_bytes: semaphore(opts.max_send_bytes_in_flight),
            held: Arc::default(),
            opts,
        }
    }

    fn full(&self, lane: Lane, queue: &str, reason: &str, what: String) -> Error {
        metrics::throttled(reason, queue);
        let retry_after = lane.retry_after();
        Error::Throttled {
            message: format!(
                "throttled: {what}; retry after {} ms",
                retry_after.as_millis()
            ),
            retry_after,
        }
    }

    /// A place for quick work on `queue` ("" for none).
    pub(crate) fn short(&self, queue: &str) -> Result<Pass> {
        self.enter(Lane::Short, queue, None, 0)
    }

    /// A place for a send of `bytes` to `queue`.
    pub(crate) fn send(&self, queue: &str, bytes: usize) -> Result<Pass> {
        self.enter(Lane::Sends, queue, None, bytes)
    }

    /// A place for a long poll of `caller` on `queue`.
    pub(crate) fn long_poll(&self, caller: &Caller, queue: &str) -> Result<Pass> {
        self.enter(Lane::LongPolls, queue, Some(caller), 0)
    }

    /// A place for a Consume stream of `caller` on `queue`.
    pub(crate) fn stream(&self, caller: &Caller, queue: &str) -> Result<Pass> {
        self.enter(Lane::Streams, queue, Some(caller), 0)
    }

    fn enter(
        &self,
        lane: Lane,
        queue: &str,
        caller: Option<&Caller>,
        bytes: usize,
    ) -> Result<Pass> {
        let (semaphore, cap, per_caller) = match lane {
            Lane::Sends => (&self.sends, self.opts.max_sends, 0),
            Lane::Short => (&self.short, self.opts.max_short_calls, 0),
            Lane::LongPolls => (
                &self.long_polls,
                self.opts.max_long_polls,
                self.opts.max_long_polls_per_caller,
            ),
            Lane::Streams => (
                &self.streams,
                self.opts.max_streams,
                self.opts.max_streams_per_caller,
            ),
        };
        let permit = semaphore.clone().try_acquire_owned().map_err(|_| {
            self.full(
                lane,
                queue,
                &format!("bulkhead_{}", lane.name()),
                format!(
                    "this frontend has {cap} {} in flight, its limit",
                    lane.name().replace('_', " ")
                ),
            )
        })?;
        let bytes = if bytes > 0 {
            let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
            Some(
                self.send_bytes
                    .clone()
                    .try_acquire_many_owned(bytes)
                    .map_err(|_| {
                        self.full(
                            lane,
                            queue,
                            "memory",
                            format!(
                                "this frontend holds sends of {} bytes in flight, its limit",
                                self.opts.max_send_bytes_in_flight
                            ),
                        )
                    })?,
            )
        } else {
            None
        };
        let caller = match caller {
            Some(caller) => {
                let mut held = self.held.lock();
                let count = held.entry((lane, caller.clone())).or_default();
                if *count >= per_caller {
                    drop(held);
                    return Err(self.full(
                        lane,
                        queue,
                        &format!("caller_{}", lane.name()),
                        format!(
                            "caller {:?} has {per_caller} {} on this frontend, its limit",
                            caller.as_str(),
                            lane.name().replace('_', " ")
                        ),
                    ));
                }
                *count += 1;
                Some((caller.clone(), self.held.clone()))
            }
            None => None,
        };
        let gauge = self.gauges[lane as usize].clone();
        gauge.inc();
        Ok(Pass {
            lane,
            gauge,
            _permit: permit,
            _bytes: bytes,
            caller,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> BulkheadOpts {
        BulkheadOpts {
            max_sends: 2,
            max_short_calls: 2,
            max_long_polls: 3,
            max_streams: 3,
            max_long_polls_per_caller: 2,
            max_streams_per_caller: 2,
            max_send_bytes_in_flight: 10 * 1024 * 1024,
        }
    }

    #[test]
    fn waiting_work_does_not_take_the_places_of_quick_work() {
        let bulkheads = Bulkheads::new(small());
        let (a, b, c) = (Caller::from("a"), Caller::from("b"), Caller::from("c"));
        let polls = [
            bulkheads.long_poll(&a, "q").unwrap(),
            bulkheads.long_poll(&b, "q").unwrap(),
            bulkheads.long_poll(&c, "q").unwrap(),
        ];
        let err = bulkheads.long_poll(&c, "q").err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("3 long polls in flight"), "{err}");
        // Every long poll place is taken; sends and deletes still pass.
        let _send = bulkheads.send("q", 100).unwrap();
        let _short = bulkheads.short("q").unwrap();
        drop(polls);
        bulkheads.long_poll(&c, "q").unwrap();
    }

    #[test]
    fn one_caller_holds_at_most_its_share_of_long_polls_and_streams() {
        let bulkheads = Bulkheads::new(small());
        let noisy = Caller::from("noisy");
        let held = [
            bulkheads.stream(&noisy, "q").unwrap(),
            bulkheads.stream(&noisy, "q").unwrap(),
        ];
        let err = bulkheads.stream(&noisy, "q").err().unwrap();
        let Error::Throttled { retry_after, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*retry_after, Duration::from_secs(1));
        assert!(
            err.to_string().contains("caller \"noisy\" has 2 streams"),
            "{err}"
        );
        bulkheads.stream(&Caller::from("quiet"), "q").unwrap();
        drop(held);
        bulkheads.stream(&noisy, "q").unwrap();
        assert!(
            bulkheads.held.lock().is_empty(),
            "counts go when the places do"
        );
    }

    #[test]
    fn sends_beyond_the_bytes_in_flight_are_refused() {
        let bulkheads = Bulkheads::new(small());
        let big = bulkheads.send("q", 6 * 1024 * 1024).unwrap();
        let err = bulkheads.send("q", 6 * 1024 * 1024).err().unwrap();
        assert!(err.to_string().contains("bytes in flight"), "{err}");
        drop(big);
        bulkheads.send("q", 6 * 1024 * 1024).unwrap();
    }

    #[test]
    fn settings_are_checked() {
        BulkheadOpts::default().check().unwrap();
        let err = BulkheadOpts {
            max_send_bytes_in_flight: 1024,
            ..BulkheadOpts::default()
        }
        .check()
        .unwrap_err();
        assert!(
            err.to_string().contains("max_send_bytes_in_flight"),
            "{err}"
        );
    }
}

//! What a benchmark run does, read from a small TOML file in the manner of the OpenMessaging
//! Benchmark's workloads: the same file drives every system, so only the driver differs.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Bytes at the front of every message body: the intended send time, in microseconds since the
/// Unix epoch, so consumers can measure end-to-end latency without a side channel.
pub const TIMESTAMP_BYTES: usize = 8;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Short name used in reports and file names.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Queues, each with its own producers and consumers.
    #[serde(default = "one")]
    pub queues: usize,
    #[serde(default = "one")]
    pub producers_per_queue: usize,
    #[serde(default = "one")]
    pub consumers_per_queue: usize,
    /// Body size in bytes, at least `TIMESTAMP_BYTES`.
    #[serde(default = "kib")]
    pub message_size: usize,
    /// Messages per send request.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Messages per second over all producers. 0 finds the maximum rate the consumers keep up
    /// with (see `stats::RateControl`); without consumers, 0 sends as fast as acknowledgements
    /// allow.
    #[serde(default)]
    pub rate: u64,
    /// Send requests a producer keeps in flight at once. Every system gets the same window, so
    /// none wins by pipelining more than another.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Load before measuring starts, so connections, caches and JIT-like warm-ups settle.
    #[serde(default = "default_warmup", with = "humantime_serde")]
    pub warmup: Duration,
    /// Measured load.
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// When positive, producers first fill the queues with this many messages (over all queues)
    /// while no consumer runs; then the consumers drain them and the drain is measured instead
    /// of `warmup` and `duration`.
    #[serde(default)]
    pub backlog: u64,
    /// A noisy neighbour: the workload runs alone, then again beside another caller that sends
    /// to a queue of its own as fast as it can (Sluice only; each names itself as a caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noisy: Option<Noisy>,
}

/// The noisy neighbour of a workload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Noisy {
    /// Producers of the noisy caller, each with `max_in_flight` send requests in flight.
    pub producers: usize,
    pub max_in_flight: usize,
}

fn one() -> usize {
    1
}

fn kib() -> usize {
    1024
}

fn default_in_flight() -> usize {
    8
}

fn default_warmup() -> Duration {
    Duration::from_secs(5)
}

fn default_duration() -> Duration {
    Duration::from_secs(30)
}

/// Largest message a workload may ask for: the smallest limit among the systems compared
/// (Sluice's and NATS's default, 1 MiB).
pub const MAX_MESSAGE_SIZE: usize = 1024 * 1024;

impl Workload {
    pub fn load(path: &Path) -> anyhow::Result<Workload> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read workload {}", path.display()))?;
        let workload: Workload = toml::from_str(&text)
            .with_context(|| format!("workload {} is not valid", path.display()))?;
        workload
            .validate()
            .with_context(|| format!("workload {}", path.display()))?;
        Ok(workload)
    }

    /// Checks every field, naming the first one out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.queues >= 1, "queues must be at least 1");
        anyhow::ensure!(
            self.producers_per_queue >= 1 || self.backlog == 0,
            "producers_per_queue must be at least 1 to fill a backlog"
        );
        anyhow::ensure!(
            (TIMESTAMP_BYTES..=MAX_MESSAGE_SIZE).contains(&self.message_size),
            "message_size must be {TIMESTAMP_BYTES} to {MAX_MESSAGE_SIZE} bytes, not {}",
            self.message_size
        );
        anyhow::ensure!(
            (1..=10).contains(&self.batch_size),
            "batch_size must be 1 to 10 (a Sluice batch holds at most 10), not {}",
            self.batch_size
        );
        anyhow::ensure!(self.max_in_flight >= 1, "max_in_flight must be at least 1");
        anyhow::ensure!(
            !self.duration.is_zero() || self.backlog > 0,
            "duration must be positive"
        );
        if let Some(noisy) = &self.noisy {
            anyhow::ensure!(
                noisy.producers >= 1 && noisy.max_in_flight >= 1,
                "noisy.producers and noisy.max_in_flight must be at least 1"
            );
            anyhow::ensure!(
                self.backlog == 0,
                "a noisy neighbour runs beside a timed workload, not a backlog"
            );
        }
        anyhow::ensure!(
            self.rate == 0 || self.rate >= self.producers() as u64,
            "rate {} is below one message a second per producer ({} producers)",
            self.rate,
            self.producers()
        );
        Ok(())
    }

    pub fn producers(&self) -> usize {
        self.queues * self.producers_per_queue
    }

    pub fn consumers(&self) -> usize {
        self.queues * self.consumers_per_queue
    }

    /// The time between two send requests of one producer at the workload's rate; `None` at
    /// maximum rate.
    /// Whether producers follow the rate consumers keep up with (no fixed rate, no backlog to
    /// fill): the latencies of such a run are not corrected for coordinated omission, since a
    /// producer far behind its schedule starts again from the present.
    pub fn adaptive(&self) -> bool {
        self.rate == 0 && self.backlog == 0 && self.consumers_per_queue > 0
    }

    pub fn send_interval(&self) -> Option<Duration> {
        (self.rate > 0).then(|| {
            crate::stats::request_interval(self.rate as f64, self.producers(), self.batch_size)
        })
    }

    /// Queue names for a run, distinct per workload so runs do not share state.
    pub fn queue_names(&self, prefix: &str) -> Vec<String> {
        (0..self.queues)
            .map(|i| format!("{prefix}-{}-{i}", self.name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Workload> {
        let workload: Workload = toml::from_str(text)?;
        workload.validate()?;
        Ok(workload)
    }

    #[test]
    fn every_shipped_workload_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let workload = Workload::load(&path).unwrap();
                assert!(!workload.description.is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(
            seen >= 5,
            "expected workloads (a) to (e) in {}",
            dir.display()
        );
    }

    #[test]
    fn defaults_fill_what_a_file_leaves_out() {
        let w = parse("name = \"x\"").unwrap();
        assert_eq!(w.queues, 1);
        assert_eq!(w.message_size, 1024);
        assert_eq!(w.rate, 0);
        assert_eq!(w.send_interval(), None);
        assert_eq!(w.duration, Duration::from_secs(30));
        assert_eq!(w.queue_names("bench"), vec!["bench-x-0"]);
    }

    #[test]
    fn the_rate_is_split_over_producers_and_batches() {
        let w = parse(
            "name = \"b\"\nqueues = 2\nproducers_per_queue = 2\nbatch_size = 10\nrate = 4000\n",
        )
        .unwrap();
        // 1,000 msgs/s per producer in batches of 10: one request every 10 ms.
        assert_eq!(w.send_interval(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("name = \"x\"\nbatch_size = 11", "batch_size"),
            ("name = \"x\"\nmessage_size = 4", "message_size"),
            ("name = \"x\"\nqueues = 0", "queues"),
            ("name = \"x\"\nmax_in_flight = 0", "max_in_flight"),
            ("name = \"x\"\nproducers_per_queue = 4\nrate = 2", "rate"),
            ("name = \"x\"\nwarmup = \"soon\"", "warmup"),
            ("name = \"x\"\nqueus = 2", "queus"),
        ];
        for (text, field) in cases {
            let error = format!("{:#}", parse(text).unwrap_err());
            assert!(error.contains(field), "{text:?} gave {error:?}");
        }
    }
}

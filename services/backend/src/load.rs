//! The node's load report (docs/placement.md): what the manager weighs clusters and queues by.
//! Every node reports its own CPU, commit time, disk and bytes stored; the leader also reports
//! its rates and its busiest and largest queues, since it serves every request of its cluster.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_api::cluster::{self, LoadReport, QueueLoad};
use sluice_api::QueueId;
use sluice_storage::Engine;

use crate::local::{QueueTraffic, Traffic};
use crate::replica::Replica;

/// What a node reads its load from.
#[derive(Clone)]
pub(crate) struct LoadSource {
    pub engine: Engine,
    pub traffic: Arc<Traffic>,
    pub replica: Option<Replica>,
    pub node: String,
    pub period: Duration,
}

/// The counters at the previous report, so the next one gives rates over its period.
struct Baseline {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    cpu_seconds: f64,
    commits: (u64, f64),
}

pub(crate) struct LoadProbe {
    source: LoadSource,
    last: Baseline,
}

impl LoadProbe {
    pub fn new(source: LoadSource) -> Self {
        source.traffic.take_queues();
        let last = baseline(&source.traffic);
        LoadProbe { source, last }
    }

    /// The load since the last sample (or since the probe was made).
    pub fn sample(&mut self) -> LoadReport {
        let now = baseline(&self.source.traffic);
        let seconds = now.at.duration_since(self.last.at).as_secs_f64().max(1e-3);
        let rate = |now: u64, last: u64| now.saturating_sub(last) as f64 / seconds;
        let commits = now.commits.0.saturating_sub(self.last.commits.0);
        let commit_seconds = if commits == 0 {
            0.0
        } else {
            (now.commits.1 - self.last.commits.1).max(0.0) / commits as f64
        };
        let (disk_free_bytes, disk_total_bytes) =
            sluice_storage::dbstats::disk_space(self.source.engine.path()).unwrap_or((0, 0));
        let (leader, members) = match &self.source.replica {
            Some(replica) => (replica.is_leader(), replica.member_names()),
            None => (true, vec![self.source.node.clone()]),
        };
        let traffic = self.source.traffic.take_queues();
        let bytes_stored = self.source.engine.stored_bytes();
        let queues = if leader {
            self.queues(traffic, seconds, bytes_stored)
        } else {
            Vec::new()
        };
        let report = LoadReport {
            messages_in_per_second: rate(now.messages_in, self.last.messages_in),
            messages_out_per_second: rate(now.messages_out, self.last.messages_out),
            bytes_in_per_second: rate(now.bytes_in, self.last.bytes_in),
            bytes_out_per_second: rate(now.bytes_out, self.last.bytes_out),
            bytes_stored,
            disk_free_bytes,
            disk_total_bytes,
            cpu_cores_used: (now.cpu_seconds - self.last.cpu_seconds).max(0.0) / seconds,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            commit_seconds,
            leader,
            members,
            period_ms: self.source.period.as_millis() as u64,
            queues,
            reported_at_ms: sluice_api::now_ms(),
        };
        self.last = now;
        report
    }

    /// The busiest queues over the period and the largest ones, each once.
    fn queues(
        &self,
        traffic: HashMap<QueueId, (QueueTraffic, Option<u64>)>,
        seconds: f64,
        bytes_stored: u64,
    ) -> Vec<QueueLoad> {
        let counts = self.source.engine.message_counts();
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        // A queue with no sends since the node started weighs the node's mean message.
        let node_mean = bytes_stored.checked_div(total).unwrap_or(0);
        let loads: Vec<QueueLoad> = counts
            .into_iter()
            .map(|(id, messages)| {
                let (t, mean) = traffic.get(&id).copied().unwrap_or_default();
                let mean = mean.unwrap_or(node_mean);
                QueueLoad {
                    queue_id: id,
                    messages_in_per_second: t.messages_in as f64 / seconds,
                    messages_out_per_second: t.messages_out as f64 / seconds,
                    bytes_in_per_second: t.bytes_in as f64 / seconds,
                    bytes_out_per_second: t.bytes_out as f64 / seconds,
                    messages,
                    bytes_stored: messages.saturating_mul(mean),
                }
            })
            .collect();
        cluster::top_queues(loads, cluster::REPORTED_QUEUES)
    }
}

fn baseline(traffic: &Traffic) -> Baseline {
    Baseline {
        at: Instant::now(),
        messages_in: traffic.messages_in.load(Ordering::Relaxed),
        messages_out: traffic.messages_out.load(Ordering::Relaxed),
        bytes_in: traffic.bytes_in.load(Ordering::Relaxed),
        bytes_out: traffic.bytes_out.load(Ordering::Relaxed),
        cpu_seconds: cpu_seconds(),
        commits: sluice_storage::commit_totals(),
    }
}

/// CPU time this process has used, user and system, in seconds; 0 if it cannot be read.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |usage| {
        let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        seconds(usage.user_time()) + seconds(usage.system_time())
    })
}

/// Writes the node's load under `key`, held by `lease`, every period; the caller stops it when
/// the lease is lost.
pub(crate) async fn report(
    mut client: etcd_client::Client,
    lease: i64,
    key: String,
    source: LoadSource,
) {
    let period = source.period;
    let mut probe = LoadProbe::new(source);
    // The first report goes out at once, so a new node's cluster has a known load.
    loop {
        // Off the runtime's threads: the sample reads RocksDB's properties, the file system's
        // size and every queue's count.
        let sampled = tokio::task::spawn_blocking(move || {
            let report = probe.sample();
            (probe, report)
        })
        .await;
        let report;
        (probe, report) = sampled.expect("sampling the load does not panic");
        let value = serde_json::to_vec(&report).expect("a load report serializes");
        let options = etcd_client::PutOptions::new().with_lease(lease);
        if let Err(err) = client.put(key.clone(), value, Some(options)).await {
            tracing::warn!(error = %err, "cannot write the load report");
        }
        tokio::time::sleep(period).await;
    }
}

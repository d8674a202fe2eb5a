//! How the manager weighs clusters (docs/placement.md): a cluster's load from its nodes'
//! reports, one score from that load, and where a new queue goes (the lowest-scoring cluster
//! that is under its high-water marks). Pure functions over a snapshot, so the rules are tested
//! on their own and the simulation runs the very same code.

use std::time::Duration;

use sluice_api::cluster::{LoadReport, NodeRecord, Placement, QueueLoad};
use sluice_api::{Error, QueueId, Result};

/// Scores within one step of each other count as equal, so that report noise does not decide:
/// within a step the cluster with fewer queues wins.
pub const SCORE_STEP: f64 = 0.02;

/// A cluster as the manager sees it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub name: String,
    /// Nodes whose lease holds.
    pub nodes: Vec<NodeRecord>,
    pub load: ClusterLoad,
    /// Why the cluster's load is not known (a member missing, a report stale or absent);
    /// `None` when every member reported in time. A cluster whose load is unknown takes no new
    /// queues and gives none to the rebalancer.
    pub unknown: Option<String>,
    /// The leader's busiest and largest queues.
    pub queues: Vec<QueueLoad>,
    pub queue_count: u64,
}

/// A cluster's load, from its members' latest reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterLoad {
    /// The leader's rates: it serves every request of its cluster.
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
    /// The leader's CPU use as a share of its cores.
    pub cpu: f64,
    /// The slowest member's mean commit time over its last period, seconds.
    pub commit_seconds: f64,
    /// The fullest member's bytes stored, and the least free disk of any member: replicas hold
    /// the same data, so the cluster is as full as its fullest node.
    pub bytes_stored: u64,
    pub disk_free_bytes: u64,
}

impl ClusterLoad {
    pub fn messages_per_second(&self) -> f64 {
        self.messages_in_per_second + self.messages_out_per_second
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_in_per_second + self.bytes_out_per_second
    }
}

/// One member's latest report and how long ago the manager heard it.
#[derive(Debug, Clone, Copy)]
pub struct Heard<'a> {
    pub node: &'a str,
    pub report: &'a LoadReport,
    pub age: Duration,
}

/// A cluster's state from its live nodes and their reports. A member that some report lists
/// but that has no live registration, a live node without a report, and a report older than
/// `stale_after` each make the load unknown: a silent node may be the full or the busy one.
pub fn aggregate(
    name: &str,
    nodes: Vec<NodeRecord>,
    heard: &[Heard<'_>],
    queue_count: u64,
    stale_after: Duration,
) -> ClusterState {
    let mut unknown = Vec::new();
    let mut members: Vec<&str> = heard
        .iter()
        .flat_map(|h| h.report.members.iter().map(String::as_str))
        .chain(nodes.iter().map(|n| n.node.as_str()))
        .collect();
    members.sort_unstable();
    members.dedup();
    for member in &members {
        match heard.iter().find(|h| h.node == *member) {
            _ if !nodes.iter().any(|n| n.node == *member) => {
                unknown.push(format!("member {member} has no live registration"))
            }
            None => unknown.push(format!("member {member} has not reported its load")),
            Some(h) if h.age > stale_after => unknown.push(format!(
                "member {member} last reported {:.0} s ago",
                h.age.as_secs_f64()
            )),
            Some(_) => {}
        }
    }
    let live: Vec<&Heard<'_>> = heard
        .iter()
        .filter(|h| nodes.iter().any(|n| n.node == h.node))
        .collect();
    // While an election runs no report may claim the lead; the busiest member stands in.
    let leader = live.iter().find(|h| h.report.leader).or_else(|| {
        live.iter().max_by(|a, b| {
            let rate =
                |h: &Heard<'_>| h.report.messages_in_per_second + h.report.messages_out_per_second;
            rate(a).total_cmp(&rate(b))
        })
    });
    let mut load = ClusterLoad::default();
    if let Some(leader) = leader {
        let r = &leader.report;
        load.messages_in_per_second = r.messages_in_per_second;
        load.messages_out_per_second = r.messages_out_per_second;
        load.bytes_in_per_second = r.bytes_in_per_second;
        load.bytes_out_per_second = r.bytes_out_per_second;
        load.cpu = r.cpu_cores_used / f64::from(r.cores.max(1));
    }
    load.commit_seconds = live
        .iter()
        .map(|h| h.report.commit_seconds)
        .fold(0.0, f64::max);
    load.bytes_stored = live
        .iter()
        .map(|h| h.report.bytes_stored)
        .max()
        .unwrap_or(0);
    load.disk_free_bytes = live
        .iter()
        .map(|h| h.report.disk_free_bytes)
        .min()
        .unwrap_or(0);
    ClusterState {
        name: name.to_owned(),
        nodes,
        load,
        unknown: (!unknown.is_empty()).then(|| unknown.join("; ")),
        queues: leader.map(|l| l.report.queues.clone()).unwrap_or_default(),
        queue_count,
    }
}

/// How a cluster's score is made: each part is a share of a capacity, and the score is the
/// weighted mean of the parts. Weights of 0 leave a part out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScoreConfig {
    pub weight_cpu: f64,
    pub weight_messages: f64,
    pub weight_bytes: f64,
    pub weight_storage: f64,
    pub weight_latency: f64,
    /// Messages per second (in and out) one cluster's leader is taken to handle at full load.
    pub capacity_messages_per_second: f64,
    /// Message bytes per second (in and out) at full load.
    pub capacity_bytes_per_second: f64,
    /// Bytes stored on a node at full load.
    pub capacity_bytes_stored: u64,
    /// The commit time counted as full load, seconds.
    pub capacity_commit_seconds: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            weight_cpu: 1.0,
            weight_messages: 1.0,
            weight_bytes: 1.0,
            weight_storage: 0.5,
            weight_latency: 0.5,
            capacity_messages_per_second: 40_000.0,
            capacity_bytes_per_second: 100e6,
            capacity_bytes_stored: 500 << 30,
            capacity_commit_seconds: 0.05,
        }
    }
}

impl ScoreConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let weights = [
            ("weight_cpu", self.weight_cpu),
            ("weight_messages", self.weight_messages),
            ("weight_bytes", self.weight_bytes),
            ("weight_storage", self.weight_storage),
            ("weight_latency", self.weight_latency),
        ];
        for (name, weight) in weights {
            anyhow::ensure!(
                weight.is_finite() && weight >= 0.0,
                "{name} must be a number of at least 0, not {weight}"
            );
        }
        anyhow::ensure!(
            weights.iter().map(|(_, w)| w).sum::<f64>() > 0.0,
            "at least one score weight must be above 0"
        );
        for (name, capacity) in [
            (
                "capacity_messages_per_second",
                self.capacity_messages_per_second,
            ),
            ("capacity_bytes_per_second", self.capacity_bytes_per_second),
            ("capacity_bytes_stored", self.capacity_bytes_stored as f64),
            ("capacity_commit_seconds", self.capacity_commit_seconds),
        ] {
            anyhow::ensure!(
                capacity.is_finite() && capacity > 0.0,
                "{name} must be above 0, not {capacity}"
            );
        }
        Ok(())
    }

    fn weight_sum(&self) -> f64 {
        self.weight_cpu
            + self.weight_messages
            + self.weight_bytes
            + self.weight_storage
            + self.weight_latency
    }
}

/// A cluster's score and its parts, each a share of its capacity (1.0 is full load).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Score {
    pub total: f64,
    pub cpu: f64,
    pub messages: f64,
    pub bytes: f64,
    pub storage: f64,
    pub latency: f64,
}

pub fn score(load: &ClusterLoad, config: &ScoreConfig) -> Score {
    let cpu = load.cpu;
    let messages = load.messages_per_second() / config.capacity_messages_per_second;
    let bytes = load.bytes_per_second() / config.capacity_bytes_per_second;
    let storage = load.bytes_stored as f64 / config.capacity_bytes_stored as f64;
    let latency = load.commit_seconds / config.capacity_commit_seconds;
    let total = (config.weight_cpu * cpu
        + config.weight_messages * messages
        + config.weight_bytes * bytes
        + config.weight_storage * storage
        + config.weight_latency * latency)
        / config.weight_sum();
    Score {
        total,
        cpu,
        messages,
        bytes,
        storage,
        latency,
    }
}

/// What queue `queue` adds to the score of the cluster it is on: its own rates and bytes, and
/// the CPU and commit time of the cluster in proportion to its share of the messages.
pub fn queue_score(queue: &QueueLoad, cluster: &ClusterLoad, config: &ScoreConfig) -> f64 {
    let share = match cluster.messages_per_second() {
        total if total > 0.0 => (queue.messages_per_second() / total).min(1.0),
        _ => 0.0,
    };
    let part = score(cluster, config);
    (config.weight_cpu * part.cpu * share
        + config.weight_messages * queue.messages_per_second()
            / config.capacity_messages_per_second
        + config.weight_bytes * queue.bytes_per_second() / config.capacity_bytes_per_second
        + config.weight_storage * queue.bytes_stored as f64 / config.capacity_bytes_stored as f64
        + config.weight_latency * part.latency * share)
        / config.weight_sum()
}

/// High-water marks: a cluster past any of them takes no new queues.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_bytes_stored: Option<u64>,
    pub max_messages_per_second: Option<f64>,
    pub min_disk_free_bytes: Option<u64>,
}

/// Why `cluster` takes no new queues, or `None` if it does.
pub fn refusal(cluster: &ClusterState, limits: &Limits) -> Option<String> {
    let load = &cluster.load;
    let rate = load.messages_per_second();
    if cluster.nodes.is_empty() {
        return Some("no live node".into());
    }
    if let Some(unknown) = &cluster.unknown {
        return Some(format!("load unknown: {unknown}"));
    }
    if let Some(max) = limits
        .max_bytes_stored
        .filter(|max| load.bytes_stored > *max)
    {
        return Some(format!(
            "a node stores {} bytes, over the high-water mark of {max}",
            load.bytes_stored
        ));
    }
    if let Some(max) = limits.max_messages_per_second.filter(|max| rate > *max) {
        return Some(format!(
            "{rate:.0} messages/s, over the high-water mark of {max}"
        ));
    }
    if let Some(min) = limits
        .min_disk_free_bytes
        .filter(|min| load.disk_free_bytes < *min)
    {
        return Some(format!(
            "a node has {} bytes of disk free, under the low-water mark of {min}",
            load.disk_free_bytes
        ));
    }
    None
}

/// The cluster a new queue should go to, or `None` if none accepts queues.
pub fn choose<'a>(
    clusters: &'a [ClusterState],
    limits: &Limits,
    config: &ScoreConfig,
) -> Option<&'a ClusterState> {
    let eligible: Vec<(&ClusterState, f64)> = clusters
        .iter()
        .filter(|c| refusal(c, limits).is_none())
        .map(|c| (c, score(&c.load, config).total))
        .collect();
    // A band above the lowest score rather than steps of a grid: two scores a hair apart on
    // either side of a step's edge would otherwise not count as equal.
    let lowest = eligible.iter().map(|(_, s)| *s).reduce(f64::min)?;
    eligible
        .into_iter()
        .filter(|(_, s)| *s <= lowest + SCORE_STEP)
        .map(|(c, _)| c)
        .min_by(|a, b| {
            a.queue_count
                .cmp(&b.queue_count)
                .then(a.load.bytes_stored.cmp(&b.load.bytes_stored))
                .then(a.name.cmp(&b.name))
        })
}

/// The cluster for a new queue: with `colocate`, the cluster of that queue (whose placement
/// `partner` is, if it has one), so that messages can move between the two (a dead-letter
/// queue and its source); otherwise the policy's choice among `clusters`.
pub fn cluster_for(
    colocate: Option<(QueueId, Option<Placement>)>,
    clusters: &[ClusterState],
    limits: &Limits,
    config: &ScoreConfig,
) -> Result<String> {
    if let Some((partner, placement)) = colocate {
        return placement
            .map(|p| p.cluster)
            .ok_or_else(|| Error::not_found(format!("placement of queue id {partner}")));
    }
    choose(clusters, limits, config)
        .map(|c| c.name.clone())
        .ok_or_else(|| {
            Error::ResourceExhausted(format!(
                "no backend cluster takes new queues: {}",
                describe_refusals(clusters, limits)
            ))
        })
}

/// Why each cluster takes no new queues.
fn describe_refusals(clusters: &[ClusterState], limits: &Limits) -> String {
    if clusters.is_empty() {
        return "none is registered".into();
    }
    clusters
        .iter()
        .map(|c| format!("{}: {}", c.name, refusal(c, limits).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cluster: &str, node: &str) -> NodeRecord {
        NodeRecord {
            cluster: cluster.into(),
            node: node.into(),
            url: format!("http://{node}"),
        }
    }

    fn cluster(name: &str, rate: f64, queues: u64, bytes: u64) -> ClusterState {
        ClusterState {
            name: name.into(),
            nodes: vec![node(name, &format!("{name}1"))],
            load: ClusterLoad {
                messages_in_per_second: rate,
                bytes_stored: bytes,
                disk_free_bytes: 1 << 40,
                ..Default::default()
            },
            queue_count: queues,
            ..Default::default()
        }
    }

    fn report(members: &[&str], leader: bool, rate: f64, bytes: u64, free: u64) -> LoadReport {
        LoadReport {
            messages_in_per_second: rate,
            bytes_stored: bytes,
            disk_free_bytes: free,
            cpu_cores_used: 0.5,
            cores: 2,
            commit_seconds: if leader { 0.004 } else { 0.009 },
            leader,
            members: members.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    fn heard<'a>(node: &'a str, report: &'a LoadReport, age_ms: u64) -> Heard<'a> {
        Heard {
            node,
            report,
            age: Duration::from_millis(age_ms),
        }
    }

    const STALE: Duration = Duration::from_secs(10);

    #[test]
    fn a_cluster_is_as_full_as_its_fullest_node_and_as_busy_as_its_leader() {
        let members = ["a1", "a2", "a3"];
        let nodes = members.iter().map(|m| node("a", m)).collect();
        let reports = [
            report(&members, false, 0.0, 900, 5 << 30),
            report(&members, true, 700.0, 1000, 80 << 30),
            report(&members, false, 0.0, 800, 1 << 30),
        ];
        let heard = [
            heard("a1", &reports[0], 100),
            heard("a2", &reports[1], 100),
            heard("a3", &reports[2], 100),
        ];
        let state = aggregate("a", nodes, &heard, 4, STALE);
        assert_eq!(state.unknown, None);
        assert_eq!(
            state.load.messages_in_per_second, 700.0,
            "the leader's rate"
        );
        assert_eq!(state.load.bytes_stored, 1000, "the most any node stores");
        assert_eq!(state.load.disk_free_bytes, 1 << 30, "the least free disk");
        assert_eq!(state.load.commit_seconds, 0.009, "the slowest commit");
        assert_eq!(
            state.load.cpu, 0.25,
            "the leader's cores used over its cores"
        );
        let limits = Limits {
            min_disk_free_bytes: Some(2 << 30),
            ..Limits::default()
        };
        let refused = refusal(&state, &limits).expect("one node is nearly full");
        assert!(refused.contains("disk free"), "{refused}");
    }

    #[test]
    fn a_missing_silent_or_stale_member_makes_the_load_unknown() {
        let members = ["a1", "a2", "a3"];
        let all = || members.iter().map(|m| node("a", m)).collect::<Vec<_>>();
        let leading = report(&members, true, 10.0, 0, 1 << 40);
        let following = report(&members, false, 10.0, 0, 1 << 40);
        let fresh = |n: &'static str| heard(n, if n == "a1" { &leading } else { &following }, 100);

        let gone: Vec<_> = all().into_iter().filter(|n| n.node != "a3").collect();
        let state = aggregate("a", gone, &[fresh("a1"), fresh("a2")], 0, STALE);
        let why = refusal(&state, &Limits::default()).expect("a member is missing");
        assert!(why.contains("a3 has no live registration"), "{why}");

        let state = aggregate("a", all(), &[fresh("a1"), fresh("a2")], 0, STALE);
        assert!(state.unknown.unwrap().contains("a3 has not reported"));

        let old = report(&members, false, 0.0, 0, 1 << 40);
        let stale = heard("a3", &old, 12_000);
        let state = aggregate("a", all(), &[fresh("a1"), fresh("a2"), stale], 0, STALE);
        assert!(state.unknown.unwrap().contains("a3 last reported 12 s ago"));

        let state = aggregate(
            "a",
            all(),
            &[fresh("a1"), fresh("a2"), fresh("a3")],
            0,
            STALE,
        );
        assert_eq!(state.unknown, None);
        assert_eq!(refusal(&state, &Limits::default()), None);
    }

    #[test]
    fn the_score_is_the_weighted_mean_of_the_parts() {
        let config = ScoreConfig {
            capacity_messages_per_second: 1000.0,
            capacity_bytes_per_second: 1e6,
            capacity_bytes_stored: 1000,
            capacity_commit_seconds: 0.1,
            ..ScoreConfig::default()
        };
        let load = ClusterLoad {
            messages_in_per_second: 300.0,
            messages_out_per_second: 200.0,
            bytes_in_per_second: 1e5,
            cpu: 0.4,
            commit_seconds: 0.02,
            bytes_stored: 100,
            ..Default::default()
        };
        let s = score(&load, &config);
        let parts = [s.cpu, s.messages, s.bytes, s.storage, s.latency];
        for (part, expected) in parts.into_iter().zip([0.4, 0.5, 0.1, 0.1, 0.2]) {
            assert!((part - expected).abs() < 1e-12, "{parts:?}");
        }
        let expected = (0.4 + 0.5 + 0.1 + 0.5 * 0.1 + 0.5 * 0.2) / 4.0;
        assert!((s.total - expected).abs() < 1e-12, "{}", s.total);

        // A queue with 40% of the messages takes 40% of the CPU and commit parts with it.
        let queue = QueueLoad {
            messages_in_per_second: 200.0,
            bytes_in_per_second: 5e4,
            bytes_stored: 50,
            ..Default::default()
        };
        let q = queue_score(&queue, &load, &config);
        let expected = (0.4 * 0.4 + 0.2 + 0.05 + 0.5 * 0.05 + 0.5 * 0.2 * 0.4) / 4.0;
        assert!((q - expected).abs() < 1e-12, "{q}");
    }

    #[test]
    fn lowest_score_then_fewest_queues() {
        let none = Limits::default();
        let config = ScoreConfig {
            capacity_messages_per_second: 1000.0,
            ..ScoreConfig::default()
        };
        let clusters = [cluster("a", 450.0, 1, 0), cluster("b", 20.0, 9, 0)];
        assert_eq!(choose(&clusters, &none, &config).unwrap().name, "b");
        let clusters = [cluster("a", 50.0, 1, 0), cluster("b", 20.0, 9, 0)];
        assert_eq!(
            choose(&clusters, &none, &config).unwrap().name,
            "a",
            "same step: fewer queues"
        );
        // Scores 0.0175 and 0.0225, either side of a multiple of the step: still equal.
        let clusters = [cluster("a", 70.0, 9, 0), cluster("b", 90.0, 1, 0)];
        assert_eq!(
            choose(&clusters, &none, &config).unwrap().name,
            "b",
            "within a step of the lowest: fewer queues"
        );
        let clusters = [cluster("a", 0.0, 3, 0), cluster("b", 0.0, 3, 0)];
        assert_eq!(
            choose(&clusters, &none, &config).unwrap().name,
            "a",
            "ties by name"
        );
    }

    #[test]
    fn clusters_past_a_mark_unknown_or_without_nodes_take_nothing() {
        let limits = Limits {
            max_bytes_stored: Some(1000),
            max_messages_per_second: Some(5000.0),
            min_disk_free_bytes: Some(1 << 30),
        };
        let config = ScoreConfig::default();
        let full = cluster("a", 0.0, 0, 1001);
        assert!(refusal(&full, &limits)
            .unwrap()
            .contains("1001 bytes, over"));
        let busy = cluster("b", 6000.0, 0, 0);
        assert!(refusal(&busy, &limits).unwrap().contains("messages/s"));
        let mut low_disk = cluster("c", 0.0, 0, 0);
        low_disk.load.disk_free_bytes = 1;
        assert!(refusal(&low_disk, &limits).unwrap().contains("disk free"));
        let mut dead = cluster("d", 0.0, 0, 0);
        dead.nodes.clear();
        assert_eq!(refusal(&dead, &limits).unwrap(), "no live node");
        let mut silent = cluster("e", 0.0, 0, 0);
        silent.unknown = Some("member e2 has not reported its load".into());
        assert!(refusal(&silent, &limits)
            .unwrap()
            .starts_with("load unknown"));
        let ok = cluster("f", 10.0, 50, 10);
        let all = [full, busy, low_disk, dead, silent, ok];
        assert_eq!(choose(&all, &limits, &config).unwrap().name, "f");
        assert!(choose(&all[..5], &limits, &config).is_none());
    }
}

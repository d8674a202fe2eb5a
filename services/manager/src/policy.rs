//! Where a new queue goes: the least-utilized healthy cluster that is under its high-water
//! marks. Pure functions over a snapshot of the clusters, so the rule is tested on its own.

use sluice_api::cluster::{LoadReport, NodeRecord, Placement};
use sluice_api::{Error, QueueId, Result};

/// Message rates within one step of each other count as equal, so that report noise does not
/// decide: within a step the cluster with fewer queues wins.
pub const RATE_STEP: f64 = 100.0;

/// A cluster as etcd shows it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub name: String,
    /// Nodes whose lease holds.
    pub nodes: Vec<NodeRecord>,
    /// The live nodes' latest reports, summed.
    pub load: LoadReport,
    pub queue_count: u64,
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
    let rate = load.messages_in_per_second + load.messages_out_per_second;
    if cluster.nodes.is_empty() {
        return Some("no live node".into());
    }
    if let Some(max) = limits
        .max_bytes_stored
        .filter(|max| load.bytes_stored > *max)
    {
        return Some(format!(
            "{} bytes stored, over the high-water mark of {max}",
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
            "{} bytes of disk free, under the low-water mark of {min}",
            load.disk_free_bytes
        ));
    }
    None
}

/// The cluster a new queue should go to, or `None` if none accepts queues.
pub fn choose<'a>(clusters: &'a [ClusterState], limits: &Limits) -> Option<&'a ClusterState> {
    clusters
        .iter()
        .filter(|c| refusal(c, limits).is_none())
        .min_by(|a, b| {
            let step = |c: &ClusterState| {
                ((c.load.messages_in_per_second + c.load.messages_out_per_second) / RATE_STEP)
                    .floor()
            };
            step(a)
                .total_cmp(&step(b))
                .then(a.queue_count.cmp(&b.queue_count))
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
) -> Result<String> {
    if let Some((partner, placement)) = colocate {
        return placement
            .map(|p| p.cluster)
            .ok_or_else(|| Error::not_found(format!("placement of queue id {partner}")));
    }
    choose(clusters, limits)
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

    fn cluster(name: &str, rate: f64, queues: u64, bytes: u64) -> ClusterState {
        ClusterState {
            name: name.into(),
            nodes: vec![NodeRecord {
                cluster: name.into(),
                node: format!("{name}1"),
                url: "http://x".into(),
            }],
            load: LoadReport {
                messages_in_per_second: rate,
                bytes_stored: bytes,
                disk_free_bytes: 1 << 40,
                ..Default::default()
            },
            queue_count: queues,
        }
    }

    #[test]
    fn least_loaded_then_fewest_queues() {
        let none = Limits::default();
        let clusters = [cluster("a", 450.0, 1, 0), cluster("b", 20.0, 9, 0)];
        assert_eq!(
            choose(&clusters, &none).unwrap().name,
            "b",
            "lower rate step"
        );
        let clusters = [cluster("a", 50.0, 1, 0), cluster("b", 20.0, 9, 0)];
        assert_eq!(
            choose(&clusters, &none).unwrap().name,
            "a",
            "same step: fewer queues"
        );
        let clusters = [cluster("a", 0.0, 3, 0), cluster("b", 0.0, 3, 0)];
        assert_eq!(choose(&clusters, &none).unwrap().name, "a", "ties by name");
    }

    #[test]
    fn clusters_past_a_mark_or_without_nodes_take_nothing() {
        let limits = Limits {
            max_bytes_stored: Some(1000),
            max_messages_per_second: Some(5000.0),
            min_disk_free_bytes: Some(1 << 30),
        };
        let full = cluster("a", 0.0, 0, 1001);
        assert!(refusal(&full, &limits)
            .unwrap()
            .contains("1001 bytes stored"));
        let busy = cluster("b", 6000.0, 0, 0);
        assert!(refusal(&busy, &limits).unwrap().contains("messages/s"));
        let mut low_disk = cluster("c", 0.0, 0, 0);
        low_disk.load.disk_free_bytes = 1;
        assert!(refusal(&low_disk, &limits).unwrap().contains("disk free"));
        let mut dead = cluster("d", 0.0, 0, 0);
        dead.nodes.clear();
        assert_eq!(refusal(&dead, &limits).unwrap(), "no live node");
        let ok = cluster("e", 10.0, 50, 10);
        let all = [full, busy, low_disk, dead, ok];
        assert_eq!(choose(&all, &limits).unwrap().name, "e");
        assert!(choose(&all[..4], &limits).is_none());
    }
}

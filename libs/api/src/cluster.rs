//! The shared vocabulary of the distributed deployment: where each tier keeps its records in
//! etcd, and what those records hold (docs/etcd-keys.md lists them). Every key is relative to a
//! root prefix such as `/sluice/`.

use serde::{Deserialize, Serialize};

/// The default root prefix of Sluice's keys in etcd.
pub const DEFAULT_ETCD_ROOT: &str = "/sluice/";

/// Under this prefix: `<cluster>/nodes/<node>` and `<cluster>/load/<node>`.
pub fn clusters_prefix(root: &str) -> String {
    format!("{root}clusters/")
}

/// Says a backend node is alive and where it listens; held by the node's lease.
pub fn node_key(root: &str, cluster: &str, node: &str) -> String {
    format!("{root}clusters/{cluster}/nodes/{node}")
}

/// A backend node's latest load report; held by the node's lease.
pub fn load_key(root: &str, cluster: &str, node: &str) -> String {
    format!("{root}clusters/{cluster}/load/{node}")
}

/// Says a frontend is running; held by a lease it renews through the metadata tier. Frontends
/// count these to take their share of the cluster-wide rate limits.
pub fn frontend_key(root: &str, frontend: &str) -> String {
    format!("{root}frontends/{frontend}")
}

/// The etcd election the managers campaign in.
pub fn manager_election(root: &str) -> String {
    format!("{root}manager/election")
}

/// Whether the leader manager's rebalancer is paused: `{"paused": true}`. Kept in etcd so a
/// pause outlives a change of leader.
pub fn rebalance_key(root: &str) -> String {
    format!("{root}manager/rebalance")
}

/// The value under [`rebalance_key`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RebalanceSwitch {
    pub paused: bool,
}

/// A queue's record (id, attributes), owned by the metadata tier.
pub fn queue_record_key(root: &str, name: &str) -> String {
    format!("{root}queues/{name}")
}

/// The counter queue ids are taken from.
pub const QUEUE_ID_COUNTER: &str = "ids/queue";

/// The key prefix and the key to list after, for queue names starting with `prefix` after
/// `start_after` (empty: from the first).
pub fn queue_list_range(root: &str, prefix: &str, start_after: &str) -> (String, String) {
    let after = if start_after.is_empty() {
        String::new()
    } else {
        queue_record_key(root, start_after)
    };
    (queue_record_key(root, prefix), after)
}

/// The queue name in a key under [`queue_record_key`]`(root, "")`.
pub fn queue_name_of<'a>(root: &str, key: &'a str) -> &'a str {
    let prefix_len = root.len() + "queues/".len();
    key.get(prefix_len..).unwrap_or_default()
}

/// Under this prefix, `<queue id>`: a queue's data key, sealed under the master key.
pub fn data_keys_prefix(root: &str) -> String {
    format!("{root}datakeys/")
}

pub fn data_key_key(root: &str, queue_id: u64) -> String {
    format!("{root}datakeys/{queue_id:020}")
}

/// Principals and access keys live under this prefix; the frontends' caches follow it.
pub fn identity_prefix(root: &str) -> String {
    format!("{root}identity/")
}

pub fn principal_key(root: &str, name: &str) -> String {
    format!("{root}identity/principals/{name}")
}

pub fn access_key_key(root: &str, id: &str) -> String {
    format!("{root}identity/keys/{id}")
}

/// Under this prefix, `<queue id>`: the cluster a queue was placed on.
pub fn placements_prefix(root: &str) -> String {
    format!("{root}placements/")
}

pub fn placement_key(root: &str, queue_id: u64) -> String {
    format!("{root}placements/{queue_id:020}")
}

/// Under this prefix, `<queue id>`: an empty key for each queue with a move under way or a
/// sealed partition still draining, so the leader finds them without listing every placement.
pub fn moves_prefix(root: &str) -> String {
    format!("{root}moves/")
}

pub fn move_key(root: &str, queue_id: u64) -> String {
    format!("{root}moves/{queue_id:020}")
}

/// The value under [`node_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub cluster: String,
    pub node: String,
    /// Where `BackendService` answers, e.g. `http://127.0.0.1:7080`.
    pub url: String,
}

/// The value under [`load_key`]: what one node saw over its last report period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub bytes_stored: u64,
    pub disk_free_bytes: u64,
    pub reported_at_ms: u64,
    /// Message bytes (bodies and attributes) stored and delivered per second.
    #[serde(default)]
    pub bytes_in_per_second: f64,
    #[serde(default)]
    pub bytes_out_per_second: f64,
    /// CPU time the node's process used per second of the period, in cores.
    #[serde(default)]
    pub cpu_cores_used: f64,
    /// Cores the process may run on.
    #[serde(default)]
    pub cores: u32,
    /// Mean time of the period's group commits (write and fsync, or proposal until durable),
    /// seconds; 0 when the node committed nothing.
    #[serde(default)]
    pub commit_seconds: f64,
    /// Size of the file system that holds the data directory.
    #[serde(default)]
    pub disk_total_bytes: u64,
    /// The node led its cluster's Raft group when it reported (an unreplicated node always
    /// does): its rates are the cluster's, since the leader serves every request.
    #[serde(default)]
    pub leader: bool,
    /// The cluster's members as this node knows them, so that a member that stopped reporting
    /// shows as missing rather than as absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// How often the node reports, so a reader can tell a stale report.
    #[serde(default)]
    pub period_ms: u64,
    /// The leader only: its busiest and its largest queues, so the manager can choose which to
    /// move by what each takes away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueLoad>,
}

/// One queue's share of a node's load over a report period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueLoad {
    pub queue_id: u64,
    pub messages_in_per_second: f64,
    pub messages_out_per_second: f64,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
    /// Messages stored now.
    pub messages: u64,
    /// An estimate: the queue's messages times their mean size (the queue's own sends since the
    /// node started, else the node's stored bytes per message).
    pub bytes_stored: u64,
}

/// The busiest queues a leader's report names, and as many of the largest: enough for the
/// manager to find moves that close a gap, few enough that a report stays small with
/// thousands of queues on the node.
pub const REPORTED_QUEUES: usize = 32;

/// The queues a leader's load report names: its `n` busiest (messages in and out) and its `n`
/// largest of the rest (bytes stored), each once, leaving out queues with neither messages nor
/// traffic.
pub fn top_queues(mut loads: Vec<QueueLoad>, n: usize) -> Vec<QueueLoad> {
    loads.sort_by(|a, b| b.messages_per_second().total_cmp(&a.messages_per_second()));
    let mut rest = loads.split_off(loads.len().min(n));
    rest.sort_by_key(|q| std::cmp::Reverse(q.bytes_stored));
    rest.truncate(n);
    loads.extend(rest.into_iter().filter(|q| q.messages > 0));
    loads.retain(|q| q.messages > 0 || q.messages_per_second() > 0.0);
    loads
}

impl QueueLoad {
    pub fn messages_per_second(&self) -> f64 {
        self.messages_in_per_second + self.messages_out_per_second
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_in_per_second + self.bytes_out_per_second
    }
}

/// The value under [`placement_key`]: where a queue's partitions live. A queue has one active
/// partition, which takes every send; moving the queue (`sluice admin place`) seals the active
/// partition and opens the next one on another cluster. A sealed partition takes no sends;
/// consumers drain it, and the leader manager removes it once it is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub queue: String,
    /// The cluster of the active partition.
    pub cluster: String,
    pub placed_at_ms: u64,
    /// The active partition's number: 0 at first, one more with each move. Receipt handles
    /// name the partition they came from, so they keep working across a move.
    #[serde(default)]
    pub partition: u32,
    /// Partitions sealed by moves and not yet drained, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<SealedPartition>,
    /// Set while a move to this cluster is under way; the leader manager finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<String>,
    /// When the queue last moved, so the rebalancer leaves a queue that just moved alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedPartition {
    pub partition: u32,
    pub cluster: String,
    pub sealed_at_ms: u64,
    /// A FIFO queue delivers from its new partition only once the sealed ones are empty, so
    /// each group stays in send order across the move.
    #[serde(default)]
    pub fifo: bool,
}

impl Placement {
    /// Whether the leader has work left on this placement: a move to finish or a sealed
    /// partition to remove.
    pub fn unsettled(&self) -> bool {
        self.moving_to.is_some() || !self.sealed.is_empty()
    }

    /// A queue's first placement.
    pub fn new(queue: impl Into<String>, cluster: impl Into<String>) -> Self {
        Placement {
            queue: queue.into(),
            cluster: cluster.into(),
            placed_at_ms: crate::now_ms(),
            partition: 0,
            sealed: Vec::new(),
            moving_to: None,
            moved_at_ms: None,
        }
    }

    /// The cluster holding partition `partition`, if it is the active or a sealed one.
    pub fn cluster_of(&self, partition: u32) -> Option<&str> {
        if partition == self.partition {
            return Some(&self.cluster);
        }
        self.sealed
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.cluster.as_str())
    }
}

/// What a key under [`clusters_prefix`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterKey<'a> {
    Node { cluster: &'a str, node: &'a str },
    Load { cluster: &'a str, node: &'a str },
}

/// Parses a full key under [`clusters_prefix`]; `None` for anything else.
pub fn parse_cluster_key<'a>(root: &str, key: &'a str) -> Option<ClusterKey<'a>> {
    let rest = key.strip_prefix(root)?.strip_prefix("clusters/")?;
    let mut parts = rest.split('/');
    let (cluster, kind, node) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || cluster.is_empty() || node.is_empty() {
        return None;
    }
    match kind {
        "nodes" => Some(ClusterKey::Node { cluster, node }),
        "load" => Some(ClusterKey::Load { cluster, node }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_parse_back() {
        let root = DEFAULT_ETCD_ROOT;
        let key = node_key(root, "a", "a1");
        assert_eq!(
            parse_cluster_key(root, &key),
            Some(ClusterKey::Node {
                cluster: "a",
                node: "a1"
            })
        );
        let key = load_key(root, "b", "b2");
        assert_eq!(
            parse_cluster_key(root, &key),
            Some(ClusterKey::Load {
                cluster: "b",
                node: "b2"
            })
        );
        assert_eq!(parse_cluster_key(root, "/sluice/clusters/a/other/x"), None);
        // A placement written before partitions existed reads as partition 0.
        let old: Placement =
            serde_json::from_str(r#"{"queue":"q","cluster":"a","placed_at_ms":1}"#).unwrap();
        assert_eq!((old.partition, old.cluster_of(0)), (0, Some("a")));
        assert_eq!(old.cluster_of(1), None);
        assert_eq!(parse_cluster_key(root, "/sluice/queues/a"), None);
        assert!(
            placement_key(root, 7) < placement_key(root, 10),
            "ids sort numerically"
        );
    }
}

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
/// partition, or several on different clusters when it is bigger than one (`spread`); sends go
/// to the active ones. Moving the queue (`sluice admin place`) seals the active partition and
/// opens the next one on another cluster. A sealed partition takes no sends; consumers drain
/// it, and the leader manager removes it once it is empty.
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
    /// When the queue last moved or changed its partitions, so the rebalancer leaves a queue
    /// that just moved alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_at_ms: Option<u64>,
    /// The active partitions besides the one above, each on a cluster of its own, when the
    /// queue is bigger than one cluster: sends spread over all active partitions, receives
    /// take from all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<SpreadPartition>,
    /// Set when the queue first spread: partitions numbered from here on are stored under
    /// their own id ([`storage_id`]), so one cluster can hold an active partition of the queue
    /// next to a sealed one. Partitions before it are stored under the queue's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_from: Option<u32>,
    /// The share of sends the active partition above takes, relative to the spread ones'
    /// weights (its cluster's headroom when the manager last weighed); 1 when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Set while the leader manager changes the queue's partitions; it finishes the change.
    /// The manager's own record: frontends do not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resize>,
}

/// A change of a queue's active partitions the leader manager has decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Resize {
    /// Opens another active partition on this cluster.
    Add(String),
    /// Retires this active partition: it takes no more sends and drains.
    Retire(u32),
}

/// An active partition of a queue spread over several clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpreadPartition {
    pub partition: u32,
    pub cluster: String,
    /// The share of sends it takes, relative to the other active partitions' weights.
    pub weight: f64,
    pub opened_at_ms: u64,
}

/// Where one partition of a queue is, and the id its cluster stores it under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route<'a> {
    pub partition: u32,
    pub cluster: &'a str,
    pub storage: u64,
    pub weight: f64,
    pub sealed: bool,
}

/// Queue ids stay below this, so that a partition's own storage id can hold the queue's id.
pub const MAX_QUEUE_ID: u64 = (1 << 40) - 1;

/// Set in the storage id of a partition stored under an id of its own.
const OWN_ID: u64 = 1 << 63;

/// The id a cluster stores partition `partition` of queue `id` under: the queue's id, or for
/// a partition numbered from `spread_from` on, an id of its own made of both numbers.
pub fn storage_id(id: u64, partition: u32, spread_from: Option<u32>) -> u64 {
    if spread_from.is_some_and(|from| partition >= from) {
        OWN_ID | (u64::from(partition) << 40) | (id & MAX_QUEUE_ID)
    } else {
        id
    }
}

/// The queue a storage id belongs to (the inverse of [`storage_id`]).
pub fn queue_of_storage(storage: u64) -> u64 {
    if storage & OWN_ID != 0 {
        storage & MAX_QUEUE_ID
    } else {
        storage
    }
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
    /// Whether the leader has work left on this placement: a move to finish, a sealed
    /// partition to remove, or spread partitions to weigh and retire once the queue cools.
    pub fn unsettled(&self) -> bool {
        self.moving_to.is_some()
            || self.resize.is_some()
            || !self.sealed.is_empty()
            || !self.spread.is_empty()
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
            spread: Vec::new(),
            spread_from: None,
            weight: None,
            resize: None,
        }
    }

    /// The active partitions of queue `id`: the first one above, then the spread ones.
    pub fn active(&self, id: u64) -> Vec<Route<'_>> {
        let first = Route {
            partition: self.partition,
            cluster: &self.cluster,
            storage: storage_id(id, self.partition, self.spread_from),
            weight: self.weight.unwrap_or(1.0),
            sealed: false,
        };
        std::iter::once(first)
            .chain(self.spread.iter().map(|p| Route {
                partition: p.partition,
                cluster: &p.cluster,
                storage: storage_id(id, p.partition, self.spread_from),
                weight: p.weight,
                sealed: false,
            }))
            .collect()
    }

    /// The sealed partitions of queue `id`, oldest first.
    pub fn sealed_routes(&self, id: u64) -> impl Iterator<Item = Route<'_>> {
        self.sealed.iter().map(move |p| Route {
            partition: p.partition,
            cluster: &p.cluster,
            storage: storage_id(id, p.partition, self.spread_from),
            weight: 0.0,
            sealed: true,
        })
    }

    /// Partition `partition` of queue `id`, if it is an active or a sealed one.
    pub fn locate(&self, id: u64, partition: u32) -> Option<Route<'_>> {
        self.active(id)
            .into_iter()
            .chain(self.sealed_routes(id))
            .find(|r| r.partition == partition)
    }

    /// The number the queue's next new partition takes: past every partition it has had.
    pub fn next_partition(&self) -> u32 {
        let spread = self.spread.iter().map(|p| p.partition);
        let sealed = self.sealed.iter().map(|p| p.partition);
        spread.chain(sealed).fold(self.partition, u32::max) + 1
    }

    /// Whether queue `id` keeps a partition (active or sealed) on `cluster` under the queue's
    /// own id, which a new partition there could not share.
    pub fn holds_queue_id_on(&self, id: u64, cluster: &str) -> bool {
        self.active(id)
            .into_iter()
            .chain(self.sealed_routes(id))
            .any(|r| r.cluster == cluster && r.storage == id)
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
        assert_eq!(
            old.locate(9, 0).map(|r| (r.cluster, r.storage)),
            Some(("a", 9))
        );
        assert_eq!(old.locate(9, 1), None);
        assert_eq!(parse_cluster_key(root, "/sluice/queues/a"), None);
        assert!(
            placement_key(root, 7) < placement_key(root, 10),
            "ids sort numerically"
        );
    }

    #[test]
    fn partitions_of_a_spread_queue_have_ids_of_their_own() {
        let mut placement = Placement::new("q", "a");
        placement.sealed.push(SealedPartition {
            partition: 0,
            cluster: "a".into(),
            sealed_at_ms: 1,
            fifo: false,
        });
        placement.partition = 1;
        placement.cluster = "b".into();
        assert_eq!(placement.next_partition(), 2);
        placement.spread_from = Some(2);
        placement.spread.push(SpreadPartition {
            partition: 2,
            cluster: "a".into(),
            weight: 0.5,
            opened_at_ms: 2,
        });
        let active = placement.active(7);
        assert_eq!(active.len(), 2);
        assert_eq!((active[0].cluster, active[0].storage), ("b", 7));
        // Cluster a holds the sealed partition 0 under the queue's id and the active 2 under
        // its own.
        assert_eq!(active[1].cluster, "a");
        assert_ne!(active[1].storage, 7);
        assert_eq!(queue_of_storage(active[1].storage), 7);
        assert_ne!(active[1].storage, storage_id(7, 3, Some(2)));
        assert!(placement.holds_queue_id_on(7, "a"));
        assert!(placement.holds_queue_id_on(7, "b"));
        assert!(!placement.holds_queue_id_on(7, "c"));
        let sealed = placement.locate(7, 0).unwrap();
        assert!(sealed.sealed);
        assert_eq!(sealed.storage, 7);
        assert_eq!(placement.locate(7, 2).unwrap().weight, 0.5);
        assert_eq!(placement.next_partition(), 3);
        assert_eq!(queue_of_storage(MAX_QUEUE_ID), MAX_QUEUE_ID);
    }
}

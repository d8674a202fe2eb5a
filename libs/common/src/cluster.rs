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

/// The etcd election the managers campaign in.
pub fn manager_election(root: &str) -> String {
    format!("{root}manager/election")
}

/// Under this prefix, `<queue id>`: the cluster a queue was placed on.
pub fn placements_prefix(root: &str) -> String {
    format!("{root}placements/")
}

pub fn placement_key(root: &str, queue_id: u64) -> String {
    format!("{root}placements/{queue_id:020}")
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
}

/// The value under [`placement_key`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub queue: String,
    pub cluster: String,
    pub placed_at_ms: u64,
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
        assert_eq!(parse_cluster_key(root, "/sluice/queues/a"), None);
        assert!(
            placement_key(root, 7) < placement_key(root, 10),
            "ids sort numerically"
        );
    }
}

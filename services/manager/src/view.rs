//! Reads the clusters' state from etcd: live nodes, their load reports, and how many queues
//! each cluster holds.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};
use sluice_api::cluster::{self, ClusterKey, LoadReport, NodeRecord, Placement};

use crate::policy::ClusterState;

/// Every cluster with a live node or a placement, by name. A node's key and load report vanish
/// with its lease, so what is listed is alive.
pub async fn read_clusters(client: &Client, root: &str) -> anyhow::Result<Vec<ClusterState>> {
    let mut kv = client.kv_client();
    let prefix = GetOptions::new().with_prefix();
    let listed = kv
        .get(cluster::clusters_prefix(root), Some(prefix.clone()))
        .await?;
    let mut clusters: BTreeMap<String, ClusterState> = BTreeMap::new();
    for kv in listed.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        match cluster::parse_cluster_key(root, key) {
            Some(ClusterKey::Node { cluster, .. }) => {
                match serde_json::from_slice::<NodeRecord>(kv.value()) {
                    Ok(node) => entry(&mut clusters, cluster).nodes.push(node),
                    Err(err) => tracing::warn!(key, error = %err, "unreadable node record"),
                }
            }
            Some(ClusterKey::Load { cluster, .. }) => {
                match serde_json::from_slice::<LoadReport>(kv.value()) {
                    Ok(report) => {
                        let load = &mut entry(&mut clusters, cluster).load;
                        load.messages_in_per_second += report.messages_in_per_second;
                        load.messages_out_per_second += report.messages_out_per_second;
                        load.bytes_stored += report.bytes_stored;
                        load.disk_free_bytes += report.disk_free_bytes;
                        load.reported_at_ms = load.reported_at_ms.max(report.reported_at_ms);
                    }
                    Err(err) => tracing::warn!(key, error = %err, "unreadable load report"),
                }
            }
            None => {}
        }
    }
    let placements = kv
        .get(cluster::placements_prefix(root), Some(prefix))
        .await?;
    for kv in placements.kvs() {
        match serde_json::from_slice::<Placement>(kv.value()) {
            Ok(placement) => entry(&mut clusters, &placement.cluster).queue_count += 1,
            Err(err) => {
                tracing::warn!(key = ?kv.key_str(), error = %err, "unreadable placement")
            }
        }
    }
    Ok(clusters.into_values().collect())
}

fn entry<'a>(clusters: &'a mut BTreeMap<String, ClusterState>, name: &str) -> &'a mut ClusterState {
    clusters
        .entry(name.to_owned())
        .or_insert_with(|| ClusterState {
            name: name.to_owned(),
            ..Default::default()
        })
}

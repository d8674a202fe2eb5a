//! Placement over a metadata store in the same process, for `sluice standalone`: the leader
//! manager's rule (`policy::cluster_for`) over clusters the caller knows, each placement
//! written once with a create-if-absent. One process places here, so there is no leadership
//! to fence with, and no etcd to read the clusters from.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_api::cluster::{self, Placement};
use sluice_api::{Error, PlacementDirectory, QueueId, Result};
use sluice_metastore::MetaStore;

use crate::metrics;
use crate::policy::{self, ClusterState, Limits, ScoreConfig};

pub struct StorePlacements {
    store: Arc<dyn MetaStore>,
    clusters: Vec<ClusterState>,
    limits: Limits,
}

impl StorePlacements {
    /// Places queues on `clusters`, under `limits`.
    pub fn new(store: Arc<dyn MetaStore>, clusters: Vec<ClusterState>, limits: Limits) -> Self {
        StorePlacements {
            store,
            clusters,
            limits,
        }
    }

    async fn read(&self, id: QueueId) -> Result<Option<(Placement, u64)>> {
        let key = placement_key(id)?;
        let Some(stored) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let placement = serde_json::from_slice(&stored.value)
            .map_err(|err| Error::Internal(format!("placement {key} is corrupt: {err}")))?;
        Ok(Some((placement, stored.revision)))
    }
}

fn placement_key(id: QueueId) -> Result<String> {
    if id == 0 {
        return Err(Error::invalid("queue_id", "must not be 0"));
    }
    Ok(cluster::placement_key("", id))
}

#[async_trait]
impl PlacementDirectory for StorePlacements {
    async fn placement(&self, id: QueueId) -> Result<Option<(Placement, u64)>> {
        self.read(id).await
    }

    async fn place(
        &self,
        id: QueueId,
        queue: &str,
        colocate_with: Option<QueueId>,
    ) -> Result<String> {
        sluice_api::limits::queue_name("queue", queue)?;
        let key = placement_key(id)?;
        if let Some((placed, _)) = self.read(id).await? {
            return Ok(placed.cluster);
        }
        let colocate = match colocate_with {
            None => None,
            Some(partner) => Some((partner, self.read(partner).await?.map(|(p, _)| p))),
        };
        let cluster = policy::cluster_for(
            colocate,
            &self.clusters,
            &self.limits,
            &ScoreConfig::default(),
        )?;
        let value =
            serde_json::to_vec(&Placement::new(queue, &cluster)).expect("a placement serializes");
        if self.store.create(&key, value).await?.is_some() {
            metrics::PLACEMENTS.with_label_values(&[&cluster]).inc();
            tracing::info!(queue, queue_id = id, cluster = %cluster, "queue placed");
            return Ok(cluster);
        }
        // Another placement of this queue won the create.
        self.read(id)
            .await?
            .map(|(placed, _)| placed.cluster)
            .ok_or_else(|| Error::Unavailable("the queue's placement changed meanwhile".into()))
    }

    async fn delete_placement(&self, id: QueueId, revision: u64) -> Result<bool> {
        Ok(self.store.delete(&placement_key(id)?, revision).await?)
    }

    async fn cluster_nodes(&self, cluster: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .clusters
            .iter()
            .filter(|c| c.name == cluster)
            .flat_map(|c| c.nodes.iter().map(|n| (n.node.clone(), n.url.clone())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::cluster::NodeRecord;
    use sluice_metastore::EmbeddedStore;

    use super::*;
    use crate::policy::ClusterLoad;

    fn cluster(name: &str, bytes_stored: u64) -> ClusterState {
        ClusterState {
            name: name.into(),
            nodes: vec![NodeRecord {
                cluster: name.into(),
                node: format!("{name}1"),
                url: format!("http://{name}1"),
            }],
            load: ClusterLoad {
                bytes_stored,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn placements(dir: &std::path::Path, clusters: Vec<ClusterState>) -> StorePlacements {
        let limits = Limits {
            max_bytes_stored: Some(100),
            ..Limits::default()
        };
        StorePlacements::new(
            Arc::new(EmbeddedStore::open(dir).unwrap()),
            clusters,
            limits,
        )
    }

    #[tokio::test]
    async fn places_once_by_the_policy_and_next_to_a_partner() {
        let dir = tempfile::tempdir().unwrap();
        // `a` is past the high-water mark of 100 bytes stored: `b` takes the queue.
        let store = placements(dir.path(), vec![cluster("a", 500), cluster("b", 0)]);
        assert_eq!(store.place(7, "q7", None).await.unwrap(), "b");
        let (placed, revision) = store.placement(7).await.unwrap().unwrap();
        assert_eq!(
            (placed.queue.as_str(), placed.cluster.as_str()),
            ("q7", "b")
        );
        // Placed once: asking again answers the same cluster and writes nothing.
        assert_eq!(store.place(7, "q7", None).await.unwrap(), "b");
        assert_eq!(store.placement(7).await.unwrap().unwrap().1, revision);

        assert_eq!(store.place(8, "dlq-user", Some(7)).await.unwrap(), "b");
        let missing = store.place(9, "q9", Some(42)).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
        assert!(missing.to_string().contains("queue id 42"), "{missing}");
        assert!(store.placement(9).await.unwrap().is_none());

        assert!(!store.delete_placement(7, revision + 1).await.unwrap());
        assert!(store.delete_placement(7, revision).await.unwrap());
        assert!(store.placement(7).await.unwrap().is_none());
        assert_eq!(
            store.cluster_nodes("b").await.unwrap(),
            [("b1".to_owned(), "http://b1".to_owned())]
        );
    }

    #[tokio::test]
    async fn refuses_bad_input_and_full_clusters_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = placements(dir.path(), vec![cluster("a", 500)]);
        let full = store.place(1, "q1", None).await.unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full}");
        assert!(
            full.to_string().contains("a: a node stores 500 bytes"),
            "{full}"
        );
        let zero = store.place(0, "q0", None).await.unwrap_err();
        assert_eq!(zero.code(), tonic::Code::InvalidArgument, "{zero}");
        assert!(zero.to_string().contains("queue_id"), "{zero}");
        let bad_name = store.place(2, "no spaces", None).await.unwrap_err();
        assert_eq!(bad_name.code(), tonic::Code::InvalidArgument, "{bad_name}");
        for id in [1, 2] {
            assert!(store.placement(id).await.unwrap().is_none());
        }
    }
}

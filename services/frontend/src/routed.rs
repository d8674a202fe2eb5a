//! The backend tier as a frontend of the distributed deployment sees it: each queue lives on the
//! backend cluster the managers placed it on, and each call goes to a live node of that cluster.
//! Placements are cached for good (a queue does not move yet); cluster membership briefly.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sluice_backend::{ClientOptions, QueueBackend, RemoteBackend};
use sluice_common::cluster::Placement;
use sluice_common::{Error, Result};
use sluice_metadata::MetadataClient;
use sluice_metastore::MetaStore;
use sluice_storage::{
    MoveTask, NewMessage, QueueConfig, QueueCounts, QueueId, ReceivedMessage, SentMessage,
};
use tokio::sync::Semaphore;

/// How long a cluster's node list is trusted before it is read again.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(2);

pub struct RoutedBackend {
    metadata: Arc<MetadataClient>,
    placements: moka::sync::Cache<QueueId, String>,
    members: moka::sync::Cache<String, Arc<Vec<String>>>,
    /// Each cluster's last node list read, kept past its TTL: used at once while a background
    /// read refreshes it, so a stalled metadata tier does not hold up calls to known clusters.
    known_members: Arc<Mutex<HashMap<String, Arc<Vec<String>>>>>,
    refreshing: Arc<Mutex<std::collections::HashSet<String>>>,
    nodes: Mutex<HashMap<String, RemoteBackend>>,
    /// Calls to backends in flight at most, apart from the limit toward the metadata tier, so a
    /// slow metadata tier does not hold back sends to queues whose routes are cached.
    in_flight: Semaphore,
    next: std::sync::atomic::AtomicUsize,
}

impl RoutedBackend {
    pub fn new(metadata: Arc<MetadataClient>, max_in_flight: usize) -> Self {
        RoutedBackend {
            metadata,
            placements: moka::sync::Cache::new(1_000_000),
            members: moka::sync::Cache::builder()
                .time_to_live(MEMBERSHIP_TTL)
                .build(),
            known_members: Arc::default(),
            refreshing: Arc::default(),
            nodes: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The cluster queue `id` lives on.
    async fn cluster_of(&self, id: QueueId) -> Result<String> {
        if let Some(cluster) = self.placements.get(&id) {
            return Ok(cluster);
        }
        let key = format!("placements/{id:020}");
        let placed = self
            .metadata
            .get(&key)
            .await?
            .ok_or_else(|| Error::not_found("queue"))?;
        let placement: Placement = serde_json::from_slice(&placed.value)
            .map_err(|err| Error::Internal(format!("placement {key} is corrupt: {err}")))?;
        self.placements.insert(id, placement.cluster.clone());
        Ok(placement.cluster)
    }

    /// A client of a live node of `cluster`; nodes take turns.
    async fn node(&self, cluster: &str) -> Result<RemoteBackend> {
        let urls = match self.members.get(cluster) {
            Some(urls) => urls,
            None => {
                let known = self.known_members.lock().get(cluster).cloned();
                match known {
                    Some(urls) => {
                        self.refresh_members(cluster);
                        urls
                    }
                    None => {
                        read_members(&self.metadata, &self.members, &self.known_members, cluster)
                            .await?
                    }
                }
            }
        };
        if urls.is_empty() {
            return Err(Error::Unavailable(format!(
                "backend cluster {cluster} has no live node"
            )));
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &urls[turn % urls.len()];
        let mut nodes = self.nodes.lock();
        if let Some(node) = nodes.get(url) {
            return Ok(node.clone());
        }
        let node = RemoteBackend::new(url, ClientOptions::default())?;
        nodes.insert(url.clone(), node.clone());
        Ok(node)
    }

    /// Reads `cluster`'s node list again in the background, once at a time per cluster.
    fn refresh_members(&self, cluster: &str) {
        if !self.refreshing.lock().insert(cluster.to_owned()) {
            return;
        }
        let (metadata, members, known, refreshing) = (
            self.metadata.clone(),
            self.members.clone(),
            self.known_members.clone(),
            self.refreshing.clone(),
        );
        let cluster = cluster.to_owned();
        tokio::spawn(async move {
            if let Err(err) = read_members(&metadata, &members, &known, &cluster).await {
                tracing::warn!(cluster = %cluster, error = %err, "cannot refresh the cluster's nodes; using the last list read");
            }
            refreshing.lock().remove(&cluster);
        });
    }

    /// The node to call for queue `id`, with a slot among the calls in flight.
    async fn route(
        &self,
        id: QueueId,
    ) -> Result<(RemoteBackend, tokio::sync::SemaphorePermit<'_>)> {
        let cluster = self.cluster_of(id).await?;
        let node = self.node(&cluster).await?;
        let permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("shutting down".into()))?;
        Ok((node, permit))
    }

    /// Refuses to link two queues that live on different clusters: messages move between a
    /// queue and its dead-letter queue (or a redrive's destination) inside one cluster.
    async fn same_cluster(&self, id: QueueId, other: QueueId, what: &str) -> Result<()> {
        let (mine, theirs) = (self.cluster_of(id).await?, self.cluster_of(other).await?);
        if mine != theirs {
            return Err(Error::FailedPrecondition(format!(
                "the {what} is on backend cluster {theirs} and this queue on {mine}; messages \
                 do not move between clusters yet"
            )));
        }
        Ok(())
    }
}

/// Reads `cluster`'s live nodes from the metadata tier into both caches.
async fn read_members(
    metadata: &MetadataClient,
    members: &moka::sync::Cache<String, Arc<Vec<String>>>,
    known: &Mutex<HashMap<String, Arc<Vec<String>>>>,
    cluster: &str,
) -> Result<Arc<Vec<String>>> {
    let urls: Arc<Vec<String>> = Arc::new(
        metadata
            .cluster_nodes(cluster)
            .await?
            .into_iter()
            .map(|(_, url)| url)
            .collect(),
    );
    members.insert(cluster.to_owned(), urls.clone());
    known.lock().insert(cluster.to_owned(), urls.clone());
    Ok(urls)
}

#[async_trait]
impl QueueBackend for RoutedBackend {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        if self.placements.get(&id).is_none() {
            let colocate = config.dead_letter.map(|d| d.queue);
            let cluster = self.metadata.place(id, &config.name, colocate).await?;
            self.placements.insert(id, cluster);
        }
        if let Some(dead_letter) = config.dead_letter {
            self.same_cluster(id, dead_letter.queue, "dead-letter queue")
                .await?;
        }
        let (node, _permit) = self.route(id).await?;
        node.create_queue(id, config).await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        let (node, _permit) = self.route(id).await?;
        node.delete_queue(id).await?;
        // The queue no longer counts toward its cluster's placements.
        let key = format!("placements/{id:020}");
        if let Some(placed) = self.metadata.get(&key).await? {
            self.metadata.delete(&key, placed.revision).await?;
        }
        self.placements.invalidate(&id);
        Ok(())
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        let (node, _permit) = self.route(id).await?;
        node.purge_queue(id).await
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        let (node, _permit) = self.route(id).await?;
        node.counts(id).await
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        let (node, _permit) = self.route(id).await?;
        node.send(id, messages).await
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let (node, _permit) = self.route(id).await?;
        node.receive(id, max, visibility, wait).await
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        let (node, _permit) = self.route(id).await?;
        node.delete(id, handles).await
    }

    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>> {
        let (node, _permit) = self.route(id).await?;
        node.change_visibility(id, changes).await
    }

    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        if let Some(destination) = destination {
            self.same_cluster(source, destination, "destination")
                .await?;
        }
        let (node, _permit) = self.route(source).await?;
        node.start_move_task(source, destination, max_per_second)
            .await
    }

    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        let (node, _permit) = self.route(source).await?;
        node.list_move_tasks(source).await
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        let (node, _permit) = self.route(source).await?;
        node.cancel_move_task(source, task).await
    }
}

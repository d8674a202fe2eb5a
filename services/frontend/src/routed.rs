//! The backend tier as a frontend of the distributed deployment sees it: each queue lives on the
//! backend cluster the managers placed it on, and each call goes to a live node of that cluster.
//!
//! A queue moved to another cluster (`sluice admin place`) has one active partition, which takes
//! every send, and sealed partitions that consumers drain: receives take from the sealed ones
//! first, and a receipt handle names its partition so deletes reach the right cluster. A queue
//! bigger than one cluster has several active partitions on different clusters: sends spread
//! over them (`spread`), receives take from all of them in turn, and a long poll waits on all.
//! The placement is cached briefly; a call that finds it stale (a sealed or a removed
//! partition) reads it again at once and runs again.

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use parking_lot::Mutex;
use sluice_api::cluster::{self, Placement};
use sluice_api::{
    Error, FirstSend, IdempotencyKey, MoveTask, NewMessage, PlacementDirectory, QueueBackend,
    QueueConfig, QueueCounts, QueueId, ReceivedMessage, Result, SentMessage,
};
use sluice_client::{BackendClient, BackendClientOptions, LeaderHint};

use crate::metrics;
use crate::pressure::{Pressure, PressureOpts, Slot};
use crate::refresh::Refreshing;

mod receive;
mod send;

/// Queues whose placements a frontend keeps (a few hundred bytes each); past it the least used
/// are read again from the metadata tier when next needed.
const MAX_PLACEMENTS: u64 = 100_000;

/// Clusters whose node lists a frontend keeps.
const MAX_CLUSTERS: u64 = 1_000;

/// How long a cluster's node list is trusted before it is read again.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(2);

/// How long a queue's placement is trusted before it is read again: bounds how long this
/// frontend keeps receiving only from a partition another frontend has seen sealed.
const PLACEMENT_TTL: Duration = Duration::from_secs(1);

/// How long a send refused by a sealed partition keeps looking for the new one: a move is a
/// few writes, but one interrupted by a manager failover waits for the next leader.
const MOVE_WAIT: Duration = Duration::from_secs(10);

/// How long a call that found no serving node keeps trying the cluster's other nodes: covers
/// a leader election (a few seconds) and a dead node's lease running out of etcd (5 s).
const FAILOVER_WAIT: Duration = Duration::from_secs(8);

/// How long a call keeps trying once this frontend reaches none of the cluster's nodes: it is
/// then likely cut off itself, and the client does better through another frontend.
const CUT_OFF_WAIT: Duration = Duration::from_millis(500);

pub struct RoutedBackend {
    directory: Arc<dyn PlacementDirectory>,
    placements: Refreshing<QueueId, Arc<Placement>>,
    members: Refreshing<String, Arc<Vec<String>>>,
    nodes: Mutex<std::collections::HashMap<String, Arc<dyn QueueBackend>>>,
    /// A cluster whose node runs in this process (standalone), called without the network.
    local: Option<(String, Arc<dyn QueueBackend>)>,
    /// Each cluster's leader as its nodes last named it; calls go straight there.
    leaders: Mutex<std::collections::HashMap<String, LeaderHint>>,
    /// Calls in flight to each cluster at most, adapted to how fast it answers; apart from the
    /// metadata tier, so a slow metadata tier does not hold back sends to queues whose routes
    /// are cached.
    pressure: Pressure,
    next: std::sync::atomic::AtomicUsize,
}

/// Reads queue `id`'s placement.
async fn read_placement(
    directory: Arc<dyn PlacementDirectory>,
    id: QueueId,
) -> Result<Arc<Placement>> {
    let (placement, _) = directory
        .placement(id)
        .await?
        .ok_or_else(|| Error::not_found("queue"))?;
    Ok(Arc::new(placement))
}

/// Reads `cluster`'s live nodes.
async fn read_members(
    directory: Arc<dyn PlacementDirectory>,
    cluster: String,
) -> Result<Arc<Vec<String>>> {
    Ok(Arc::new(
        directory
            .cluster_nodes(&cluster)
            .await?
            .into_iter()
            .map(|(_, url)| url)
            .collect(),
    ))
}

/// A receipt handle as clients see it: the engine's handle, prefixed with its partition's
/// number after a move (`3.<handle>`). The engine's handles are URL-safe base64, without dots.
fn tag(partition: u32, handle: String) -> String {
    if partition == 0 {
        handle
    } else {
        format!("{partition}.{handle}")
    }
}

fn untag(handle: &str) -> Result<(u32, &str)> {
    match handle.split_once('.') {
        None => Ok((0, handle)),
        Some((partition, rest)) => partition
            .parse()
            .map(|partition| (partition, rest))
            .map_err(|_| Error::invalid("receipt_handle", "is garbled")),
    }
}

impl RoutedBackend {
    /// Routes over `directory`, with at most `max_calls` calls in flight to one cluster (fewer
    /// while it is slow, as `pressure` says).
    pub fn new(
        directory: Arc<dyn PlacementDirectory>,
        max_calls: usize,
        pressure: &PressureOpts,
    ) -> Self {
        RoutedBackend {
            directory,
            local: None,
            placements: Refreshing::new("placements", PLACEMENT_TTL, MAX_PLACEMENTS),
            members: Refreshing::new("members", MEMBERSHIP_TTL, MAX_CLUSTERS),
            nodes: Mutex::new(std::collections::HashMap::new()),
            leaders: Mutex::new(std::collections::HashMap::new()),
            pressure: Pressure::new(pressure, max_calls),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Calls to `cluster` go to `backend`, in this process: `sluice standalone`'s node.
    pub fn with_local(mut self, cluster: &str, backend: Arc<dyn QueueBackend>) -> Self {
        self.local = Some((cluster.to_owned(), backend));
        self
    }

    /// Whether `cluster`'s node runs in this process.
    fn is_local(&self, cluster: &str) -> bool {
        self.local
            .as_ref()
            .is_some_and(|(local, _)| local == cluster)
    }

    /// Where queue `id`'s partitions are.
    async fn placement(&self, id: QueueId) -> Result<Arc<Placement>> {
        let directory = self.directory.clone();
        self.placements
            .get(&id, move |id| read_placement(directory, id))
            .await
    }

    async fn reload_placement(&self, id: QueueId) -> Result<Arc<Placement>> {
        let directory = self.directory.clone();
        self.placements
            .reload(&id, move |id| read_placement(directory, id))
            .await
    }

    /// A live node of `cluster`; nodes take turns.
    async fn node(&self, cluster: &str) -> Result<Arc<dyn QueueBackend>> {
        if let Some((local, backend)) = &self.local {
            if local == cluster {
                return Ok(backend.clone());
            }
        }
        let directory = self.directory.clone();
        let urls = self
            .members
            .get(&cluster.to_owned(), move |cluster| {
                read_members(directory, cluster)
            })
            .await?;
        if urls.is_empty() {
            return Err(Error::Unavailable(format!(
                "backend cluster {cluster} has no live node"
            )));
        }
        let hint = self
            .leaders
            .lock()
            .entry(cluster.to_owned())
            .or_default()
            .clone();
        let mut nodes = self.nodes.lock();
        // A node a call could not reach lately is passed over while another may serve.
        let reachable = |url: &String| nodes.get(url).is_none_or(|node| !node.unreachable());
        let leader = hint
            .lock()
            .clone()
            .filter(|url| urls.contains(url) && reachable(url));
        let url = match &leader {
            Some(url) => url,
            None => {
                let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let candidates: Vec<&String> = urls.iter().filter(|url| reachable(url)).collect();
                if candidates.is_empty() {
                    &urls[turn % urls.len()]
                } else {
                    candidates[turn % candidates.len()]
                }
            }
        };
        if let Some(node) = nodes.get(url) {
            return Ok(node.clone());
        }
        let node: Arc<dyn QueueBackend> = Arc::new(BackendClient::with_leader_hint(
            url,
            BackendClientOptions::default(),
            hint,
        )?);
        nodes.insert(url.clone(), node.clone());
        Ok(node)
    }

    /// Whether every node of `cluster` failed to answer this frontend lately (each has a
    /// client, and each is marked unreachable).
    async fn reaches_no_node(&self, cluster: &str) -> bool {
        if self.is_local(cluster) {
            return false;
        }
        let directory = self.directory.clone();
        let Ok(urls) = self
            .members
            .get(&cluster.to_owned(), move |cluster| {
                read_members(directory, cluster)
            })
            .await
        else {
            return false;
        };
        let nodes = self.nodes.lock();
        !urls.is_empty()
            && urls
                .iter()
                .all(|url| nodes.get(url).is_some_and(|node| node.unreachable()))
    }

    /// A node of `cluster`, with a place among the calls in flight to it.
    async fn on(&self, cluster: &str) -> Result<(Arc<dyn QueueBackend>, Slot)> {
        let slot = self.pressure.enter(cluster)?;
        Ok((self.node(cluster).await?, slot))
    }

    /// Runs `op` on queue `id`'s placement. The cached placement may be stale: a partition
    /// sealed by a move refuses sends (ABORTED), and one drained and removed since answers
    /// NOT_FOUND. Either way the placement is read again and `op` runs again on it: after
    /// ABORTED with backoff until the move is written (for up to `MOVE_WAIT`), after NOT_FOUND
    /// only if the placement changed; otherwise the queue really is gone. UNAVAILABLE (a node
    /// down, a cluster electing a leader) is tried again on the cluster's next node, with
    /// backoff for up to `FAILOVER_WAIT`.
    async fn with_placement<T, F, Fut>(&self, id: QueueId, op: F) -> Result<T>
    where
        F: Fn(Arc<Placement>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut placement = self.placement(id).await?;
        let mut pauses = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(500))
            .without_max_times()
            .with_total_delay(Some(MOVE_WAIT))
            .build();
        let mut failover = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(20))
            // Short: the other nodes answer at once while the cluster elects, and a send should
            // go through within a pause of the new leader serving.
            .with_max_delay(Duration::from_millis(200))
            .without_max_times()
            .with_total_delay(Some(FAILOVER_WAIT))
            .build();
        // Since when every node of the cluster has been out of this frontend's reach.
        let mut cut_off_since: Option<std::time::Instant> = None;
        loop {
            match op(placement.clone()).await {
                Err(Error::Unavailable(reason)) => {
                    if self.reaches_no_node(&placement.cluster).await {
                        let since = *cut_off_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() >= CUT_OFF_WAIT {
                            metrics::BACKEND_CUT_OFF.inc();
                            return Err(Error::Unavailable(format!(
                                "this frontend reaches no node of backend cluster {}; another \
                                 frontend may ({reason})",
                                placement.cluster
                            )));
                        }
                    } else {
                        cut_off_since = None;
                    }
                    let Some(pause) = failover.next() else {
                        return Err(Error::Unavailable(reason));
                    };
                    tracing::debug!(%reason, ?pause, "backend unavailable; trying another node");
                    metrics::BACKEND_RETRIES
                        .with_label_values(&["unavailable"])
                        .inc();
                    tokio::time::sleep(pause).await;
                }
                Err(Error::Aborted(reason)) => {
                    let Some(pause) = pauses.next() else {
                        return Err(Error::Unavailable(format!(
                            "the queue is moving to another backend cluster; retry ({reason})"
                        )));
                    };
                    metrics::BACKEND_RETRIES
                        .with_label_values(&["moving"])
                        .inc();
                    tokio::time::sleep(pause).await;
                    placement = self.reload_placement(id).await?;
                }
                Err(Error::NotFound { what }) => {
                    let fresh = self.reload_placement(id).await?;
                    if fresh == placement {
                        return Err(Error::NotFound { what });
                    }
                    metrics::BACKEND_RETRIES
                        .with_label_values(&["placement_changed"])
                        .inc();
                    placement = fresh;
                }
                other => return other,
            }
        }
    }

    /// Refuses to link two queues that live on different clusters: messages move between a
    /// queue and its dead-letter queue (or a redrive's destination) inside one cluster. Returns
    /// the id `other` is stored under there, which the link names.
    async fn same_cluster(&self, id: QueueId, other: QueueId, what: &str) -> Result<QueueId> {
        let (mine, theirs) = (self.placement(id).await?, self.placement(other).await?);
        if let Some(spread) = [&mine, &theirs].into_iter().find(|p| !p.spread.is_empty()) {
            return Err(Error::FailedPrecondition(format!(
                "queue {} is spread over several backend clusters; messages do not move between \
                 clusters, so it cannot be linked to another queue until it shrinks to one",
                spread.queue
            )));
        }
        if mine.cluster != theirs.cluster {
            return Err(Error::FailedPrecondition(format!(
                "the {what} is on backend cluster {} and this queue on {}; messages do not move \
                 between clusters",
                theirs.cluster, mine.cluster
            )));
        }
        Ok(cluster::storage_id(
            other,
            theirs.partition,
            theirs.spread_from,
        ))
    }

    /// Deletes (`visibility` is `None`) or changes the visibility of messages by their receipt
    /// handles, each at the partition its handle names. One result per entry, in order.
    async fn by_partition(
        &self,
        id: QueueId,
        mut placement: Arc<Placement>,
        entries: &[(String, Duration)],
        delete: bool,
    ) -> Result<Vec<Result<()>>> {
        let mut results: Vec<Option<Result<()>>> = vec![None; entries.len()];
        let mut groups: BTreeMap<u32, Vec<(usize, String, Duration)>> = BTreeMap::new();
        for (i, (handle, visibility)) in entries.iter().enumerate() {
            match untag(handle) {
                Ok((partition, raw)) => {
                    groups
                        .entry(partition)
                        .or_default()
                        .push((i, raw.to_owned(), *visibility))
                }
                Err(err) => results[i] = Some(Err(err)),
            }
        }
        for (partition, group) in groups {
            if placement.locate(id, partition).is_none() && partition >= placement.next_partition()
            {
                // A handle from a partition this frontend has not seen yet.
                placement = self.reload_placement(id).await?;
            }
            let outcome = match placement.locate(id, partition) {
                Some(route) => {
                    let (node, _slot) = self.on(route.cluster).await?;
                    let call = if delete {
                        node.delete(
                            route.storage,
                            group.iter().map(|(_, h, _)| h.clone()).collect(),
                        )
                        .await
                    } else {
                        node.change_visibility(
                            route.storage,
                            group.iter().map(|(_, h, v)| (h.clone(), *v)).collect(),
                        )
                        .await
                    };
                    match call {
                        Err(Error::NotFound { .. }) if route.sealed => None,
                        other => Some(other?),
                    }
                }
                None if partition < placement.next_partition() => None,
                None => {
                    let err = Error::invalid("receipt_handle", "names no partition of this queue");
                    Some(group.iter().map(|_| Err(err.clone())).collect())
                }
            };
            // `None`: the partition was drained and removed, so every message it held was
            // deleted: deleting again succeeds (as for any deleted message), changing the
            // visibility does not.
            let outcome = outcome.unwrap_or_else(|| {
                group
                    .iter()
                    .map(|_| {
                        if delete {
                            Ok(())
                        } else {
                            Err(Error::not_found("message (deleted or expired)"))
                        }
                    })
                    .collect()
            });
            for ((i, _, _), result) in group.iter().zip(outcome) {
                results[*i] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("entry without a result".into()))))
            .collect())
    }
}

#[async_trait]
impl QueueBackend for RoutedBackend {
    async fn create_queue(&self, id: QueueId, config: QueueConfig) -> Result<()> {
        match self.placement(id).await {
            Ok(_) => {}
            Err(Error::NotFound { .. }) => {
                let colocate = config.dead_letter.map(|d| d.queue);
                self.directory.place(id, &config.name, colocate).await?;
                self.reload_placement(id).await?;
            }
            Err(err) => return Err(err),
        }
        let mut config = config;
        if let Some(dead_letter) = &mut config.dead_letter {
            dead_letter.queue = self
                .same_cluster(id, dead_letter.queue, "dead-letter queue")
                .await?;
        }
        // Only the active partitions: a sealed one keeps the config it was sealed with, and it
        // cannot take a dead-letter policy (its cluster may not hold the dead-letter queue).
        let config = &config;
        self.with_placement(id, |placement| async move {
            for route in placement.active(id) {
                let (node, _slot) = self.on(route.cluster).await?;
                node.create_queue(route.storage, config.clone()).await?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_queue(&self, id: QueueId) -> Result<()> {
        let placement = self.reload_placement(id).await?;
        for route in placement.sealed_routes(id).chain(placement.active(id)) {
            let (node, _slot) = self.on(route.cluster).await?;
            match node.delete_queue(route.storage).await {
                Err(Error::NotFound { .. }) if route.sealed => {}
                other => other?,
            }
        }
        // The queue no longer counts toward its cluster's placements.
        if let Some((_, revision)) = self.directory.placement(id).await? {
            self.directory.delete_placement(id, revision).await?;
        }
        self.placements.forget(&id);
        Ok(())
    }

    async fn purge_queue(&self, id: QueueId) -> Result<u64> {
        self.with_placement(id, |placement| async move {
            let mut purged = 0;
            for route in placement.sealed_routes(id).chain(placement.active(id)) {
                let (node, _slot) = self.on(route.cluster).await?;
                match node.purge_queue(route.storage).await {
                    Ok(n) => purged += n,
                    Err(Error::NotFound { .. }) if route.sealed => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(purged)
        })
        .await
    }

    async fn counts(&self, id: QueueId) -> Result<QueueCounts> {
        self.with_placement(id, |placement| async move {
            let active = placement.active(id);
            let mut counts = self.partition_counts(&active[0]).await?;
            for route in active[1..].iter().copied().chain(placement.sealed_routes(id)) {
                // Counts are approximate anyway: a partition other than the first that cannot
                // be asked right now does not make the whole answer fail.
                let more = match self.partition_counts(&route).await {
                    Ok(more) => more,
                    Err(err) => {
                        tracing::warn!(queue_id = id, cluster = %route.cluster, error = %err, "cannot count a partition");
                        continue;
                    }
                };
                counts.visible += more.visible;
                counts.in_flight += more.in_flight;
                counts.delayed += more.delayed;
            }
            Ok(counts)
        })
        .await
    }

    async fn send(&self, id: QueueId, messages: Vec<NewMessage>) -> Result<Vec<SentMessage>> {
        self.send_with(id, None, messages).await
    }

    async fn send_idempotent(
        &self,
        id: QueueId,
        key: IdempotencyKey,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        self.send_with(id, Some(key), messages).await
    }

    /// Across every partition of the queue, active and sealed.
    async fn deduplicated(&self, id: QueueId, ids: Vec<String>) -> Result<Vec<Option<FirstSend>>> {
        let ids = &ids;
        self.with_placement(id, |placement| async move {
            let mut found: Vec<Option<FirstSend>> = vec![None; ids.len()];
            for route in placement
                .active(id)
                .into_iter()
                .chain(placement.sealed_routes(id))
            {
                let (node, _slot) = self.on(route.cluster).await?;
                match node.deduplicated(route.storage, ids.clone()).await {
                    Ok(here) => {
                        for (slot, first) in found.iter_mut().zip(here) {
                            if slot.is_none() {
                                *slot = first;
                            }
                        }
                    }
                    Err(Error::NotFound { .. }) if route.sealed => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(found)
        })
        .await
    }

    async fn receive(
        &self,
        id: QueueId,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.with_placement(id, |placement| async move {
            self.receive_on(id, &placement, max, visibility, wait).await
        })
        .await
    }

    async fn delete(&self, id: QueueId, handles: Vec<String>) -> Result<Vec<Result<()>>> {
        let entries: Vec<_> = handles.into_iter().map(|h| (h, Duration::ZERO)).collect();
        let entries = &entries;
        self.with_placement(id, |placement| async move {
            self.by_partition(id, placement, entries, true).await
        })
        .await
    }

    async fn change_visibility(
        &self,
        id: QueueId,
        changes: Vec<(String, Duration)>,
    ) -> Result<Vec<Result<()>>> {
        let changes = &changes;
        self.with_placement(id, |placement| async move {
            self.by_partition(id, placement, changes, false).await
        })
        .await
    }

    async fn start_move_task(
        &self,
        source: QueueId,
        destination: Option<QueueId>,
        max_per_second: Option<NonZeroU32>,
    ) -> Result<String> {
        let destination = match destination {
            Some(destination) => Some(
                self.same_cluster(source, destination, "destination")
                    .await?,
            ),
            None => None,
        };
        self.with_placement(source, |placement| async move {
            let (node, _slot) = self.on(&placement.cluster).await?;
            let source = cluster::storage_id(source, placement.partition, placement.spread_from);
            node.start_move_task(source, destination, max_per_second)
                .await
        })
        .await
    }

    async fn list_move_tasks(&self, source: QueueId) -> Result<Vec<MoveTask>> {
        self.with_placement(source, |placement| async move {
            let (node, _slot) = self.on(&placement.cluster).await?;
            let source = cluster::storage_id(source, placement.partition, placement.spread_from);
            node.list_move_tasks(source).await
        })
        .await
    }

    async fn cancel_move_task(&self, source: QueueId, task: String) -> Result<MoveTask> {
        let task = &task;
        self.with_placement(source, |placement| async move {
            let (node, _slot) = self.on(&placement.cluster).await?;
            let source = cluster::storage_id(source, placement.partition, placement.spread_from);
            node.cancel_move_task(source, task.clone()).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_handles_name_their_partition() {
        assert_eq!(tag(0, "abc-_".into()), "abc-_");
        assert_eq!(untag("abc-_").unwrap(), (0, "abc-_"));
        let tagged = tag(3, "abc-_".into());
        assert_eq!(tagged, "3.abc-_");
        assert_eq!(untag(&tagged).unwrap(), (3, "abc-_"));
        let garbled = untag("x.abc").unwrap_err();
        assert_eq!(garbled.code(), tonic::Code::InvalidArgument);
    }
}

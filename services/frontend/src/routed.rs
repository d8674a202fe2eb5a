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
use sluice_api::cluster::{self, Placement, Route};
use sluice_api::{
    Error, FirstSend, IdempotencyKey, MoveTask, NewMessage, PlacementDirectory, QueueBackend,
    QueueConfig, QueueCounts, QueueId, ReceivedMessage, Result, SentMessage,
};
use sluice_client::{BackendClient, BackendClientOptions, LeaderHint};

use crate::metrics;
use crate::pressure::{Pressure, PressureOpts, Slot};
use crate::refresh::Refreshing;
use crate::spread;

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

/// How long after a queue moved or changed its partitions a send with deduplication ids asks
/// the other partitions first whether they stored them: the backends' default deduplication
/// window.
const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;

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

fn tagged(partition: u32, messages: Vec<ReceivedMessage>) -> Vec<ReceivedMessage> {
    if partition == 0 {
        return messages;
    }
    messages
        .into_iter()
        .map(|mut m| {
            m.receipt_handle = tag(partition, std::mem::take(&mut m.receipt_handle));
            m
        })
        .collect()
}

/// The messages at `indices`, each named by its place in the whole send (as the backend would
/// name it from `key` had the send gone whole), so a part keeps the ids of the whole.
fn part_of(messages: &[NewMessage], indices: &[usize], key: IdempotencyKey) -> Vec<NewMessage> {
    indices
        .iter()
        .map(|&i| {
            let mut message = messages[i].clone();
            if message.message_id.is_empty() {
                message.message_id = key.message_id(i);
            }
            message
        })
        .collect()
}

fn total(counts: &QueueCounts) -> u64 {
    counts.visible + counts.in_flight + counts.delayed
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

    /// Sends with the caller's idempotency key, if any. Every attempt over the network carries
    /// one key: an attempt whose answer was lost (the leader died after commit, the connection
    /// broke) may have stored the messages, and the key makes the backend answer the next
    /// attempt with what the first one stored. A node in this process loses no answer, so a
    /// send there needs no key of its own, nor the engine's work of remembering it.
    async fn send_with(
        &self,
        id: QueueId,
        key: Option<IdempotencyKey>,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<SentMessage>> {
        let messages = &messages;
        let network_key = key.unwrap_or_else(IdempotencyKey::random);
        self.with_placement(id, |placement| async move {
            let mut answered = self.answered_elsewhere(id, &placement, messages).await;
            let remaining: Vec<usize> = (0..messages.len())
                .filter(|&i| answered[i].is_none())
                .collect();
            let routes = placement.active(id);
            let sent = match routes.as_slice() {
                _ if remaining.is_empty() => Vec::new(),
                [route] if remaining.len() == messages.len() => {
                    let (node, _slot) = self.on(route.cluster).await?;
                    let sent = if key.is_none() && self.is_local(route.cluster) {
                        node.send(route.storage, messages.clone()).await?
                    } else {
                        node.send_idempotent(route.storage, network_key, messages.clone())
                            .await?
                    };
                    remaining.iter().copied().zip(sent).collect()
                }
                [route] => {
                    let (node, _slot) = self.on(route.cluster).await?;
                    let part = part_of(messages, &remaining, network_key);
                    let sent = node
                        .send_idempotent(route.storage, network_key.part(&remaining), part)
                        .await?;
                    remaining.iter().copied().zip(sent).collect()
                }
                routes => {
                    self.send_spread(routes, network_key, messages, &remaining)
                        .await?
                }
            };
            for (i, message) in sent {
                answered[i] = Some(message);
            }
            answered
                .into_iter()
                .map(|s| {
                    s.ok_or_else(|| Error::Internal("a partition answered fewer messages".into()))
                })
                .collect()
        })
        .await
    }

    /// The messages of a send that another partition of the queue already stored by their
    /// deduplication ids, answered as duplicates from there: a client's retry (a new request
    /// with the same deduplication ids) after a move or a change of the queue's partitions
    /// must not be stored again where the ids now route. Asked only within the deduplication
    /// window after such a change, of the partitions sealed in that window and, when the
    /// queue has several active ones, of those. A partition that cannot be asked is passed
    /// over with a warning: the send goes on rather than fail.
    async fn answered_elsewhere(
        &self,
        id: QueueId,
        placement: &Placement,
        messages: &[NewMessage],
    ) -> Vec<Option<SentMessage>> {
        let mut answers: Vec<Option<SentMessage>> = vec![None; messages.len()];
        let now = sluice_api::now_ms();
        let recent = |at: u64| now.saturating_sub(at) < DEDUP_WINDOW_MS;
        if !placement.moved_at_ms.is_some_and(recent) {
            return answers;
        }
        let mut routes: Vec<Route<'_>> = placement
            .sealed_routes(id)
            .zip(&placement.sealed)
            .filter(|(_, p)| recent(p.sealed_at_ms))
            .map(|(route, _)| route)
            .collect();
        let active = placement.active(id);
        if active.len() > 1 {
            routes.extend(active);
        }
        for route in routes {
            let asked: Vec<usize> = (0..messages.len())
                .filter(|&i| answers[i].is_none() && !messages[i].deduplication_id.is_empty())
                .collect();
            if asked.is_empty() {
                break;
            }
            let ids = asked
                .iter()
                .map(|&i| messages[i].deduplication_id.clone())
                .collect();
            let found = match self.on(route.cluster).await {
                Ok((node, _slot)) => node.deduplicated(route.storage, ids).await,
                Err(err) => Err(err),
            };
            match found {
                Ok(found) => {
                    for (i, first) in asked.into_iter().zip(found) {
                        answers[i] = first.map(|first| SentMessage {
                            message_id: first.message_id,
                            sequence: first.sequence,
                            duplicate: true,
                            md5_of_body: match messages[i].md5_of_body.as_str() {
                                "" => sluice_api::md5_of_body(&messages[i].body),
                                given => given.to_owned(),
                            },
                        });
                    }
                }
                // A sealed partition drained and removed since the placement was read.
                Err(Error::NotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(queue_id = id, cluster = %route.cluster, error = %err, "cannot ask a partition for a send's deduplication ids; sending on");
                }
            }
        }
        answers
    }

    /// Sends the messages at `remaining` to a queue with several active partitions: each part
    /// of the send to the partition `spread::split` routes it to, all parts at once. A part's
    /// key is derived from the send's and its messages' places in it, and so are the message
    /// ids, so a retry of the whole send (after one part failed) is answered by each partition
    /// with what it stored. Returns each message's place with its answer.
    async fn send_spread(
        &self,
        routes: &[Route<'_>],
        key: IdempotencyKey,
        messages: &[NewMessage],
        remaining: &[usize],
    ) -> Result<Vec<(usize, SentMessage)>> {
        let parts: Vec<(usize, Vec<usize>)> = spread::split(routes, messages, key)
            .into_iter()
            .map(|(route, indices)| {
                let indices: Vec<usize> = indices
                    .into_iter()
                    .filter(|i| remaining.contains(i))
                    .collect();
                (route, indices)
            })
            .filter(|(_, indices)| !indices.is_empty())
            .collect();
        let calls = parts.iter().map(|(route, indices)| {
            let route = routes[*route];
            let batch = part_of(messages, indices, key);
            let part_key = key.part(indices);
            async move {
                let (node, _slot) = self.on(route.cluster).await?;
                node.send_idempotent(route.storage, part_key, batch).await
            }
        });
        let answers = futures::future::join_all(calls).await;
        let mut sent = Vec::with_capacity(remaining.len());
        for ((_, indices), answer) in parts.iter().zip(answers) {
            sent.extend(indices.iter().copied().zip(answer?));
        }
        Ok(sent)
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

    /// Receives from one partition.
    async fn receive_from(
        &self,
        route: &Route<'_>,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        // A long poll is slow on purpose: its bulkhead bounds it, not the cluster's cap.
        let (node, _slot) = if wait.is_zero() {
            let (node, slot) = self.on(route.cluster).await?;
            (node, Some(slot))
        } else {
            (self.node(route.cluster).await?, None)
        };
        Ok(tagged(
            route.partition,
            node.receive(route.storage, max, visibility, wait).await?,
        ))
    }

    /// What a partition holds; nothing if it is sealed and gone (drained and removed since the
    /// placement was read).
    async fn partition_counts(&self, route: &Route<'_>) -> Result<QueueCounts> {
        let (node, _slot) = self.on(route.cluster).await?;
        match node.counts(route.storage).await {
            Err(Error::NotFound { .. }) if route.sealed => Ok(QueueCounts::default()),
            other => other,
        }
    }

    /// Receives from the active partitions of a spread queue: each in turn without waiting,
    /// starting from a different one each call so that no partition is drained before the
    /// others; then, if none had a message and the caller waits, a long poll on all of them at
    /// once, answered by the first that gets a message.
    async fn receive_spread(
        &self,
        id: QueueId,
        routes: &[Route<'_>],
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut got = Vec::new();
        let (mut failures, mut failed) = (0, None);
        for k in 0..routes.len() {
            let route = &routes[(start + k) % routes.len()];
            match self
                .receive_from(route, max - got.len(), visibility, Duration::ZERO)
                .await
            {
                Ok(messages) => got.extend(messages),
                Err(err) => {
                    if matches!(err, Error::NotFound { .. }) {
                        self.placements.expire(&id);
                    }
                    // One cluster out of reach does not stop the others' messages.
                    tracing::debug!(queue_id = id, cluster = %route.cluster, error = %err, "cannot receive from a partition");
                    failures += 1;
                    failed = Some(err);
                }
            }
            if got.len() >= max {
                break;
            }
        }
        if let Some(err) = failed.filter(|_| failures == routes.len()) {
            return Err(err);
        }
        if !got.is_empty() || wait.is_zero() {
            return Ok(got);
        }
        let mut polls = Vec::with_capacity(routes.len());
        for route in routes {
            let node = self.node(route.cluster).await?;
            let (storage, partition) = (route.storage, route.partition);
            polls.push(Box::pin(async move {
                let got = node.receive(storage, max, visibility, wait).await;
                (node, storage, partition, got)
            }));
        }
        let (mut failures, mut failed) = (0, None);
        while !polls.is_empty() {
            let ((_, _, partition, got), _, rest) = futures::future::select_all(polls).await;
            polls = rest;
            match got {
                Ok(messages) if !messages.is_empty() => {
                    // The polls still waiting are not cancelled: one may have taken messages
                    // and be writing that down, and cancelled then it would leave them in
                    // flight until their visibility timeout, holding their FIFO groups. They
                    // run to their end, and what they take is made visible again at once.
                    if !polls.is_empty() {
                        tokio::spawn(async move {
                            for (node, storage, _, got) in futures::future::join_all(polls).await {
                                let Ok(late) = got else { continue };
                                if late.is_empty() {
                                    continue;
                                }
                                let released = late
                                    .into_iter()
                                    .map(|m| (m.receipt_handle, Duration::ZERO))
                                    .collect();
                                if let Err(err) = node.change_visibility(storage, released).await {
                                    tracing::warn!(queue_id = id, error = %err, "cannot make messages a late long poll took visible again; they return when their visibility timeout ends");
                                }
                            }
                        });
                    }
                    return Ok(tagged(partition, messages));
                }
                Ok(_) => {}
                Err(err) => {
                    failures += 1;
                    failed = Some(err);
                }
            }
        }
        match failed.filter(|_| failures == routes.len()) {
            Some(err) => Err(err),
            None => Ok(Vec::new()),
        }
    }

    /// Receives from `placement`'s partitions: the sealed ones first; a FIFO queue holds its
    /// active partition back while a sealed one still holds messages.
    async fn receive_on(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        if placement.sealed.iter().any(|p| p.fifo) {
            return self
                .receive_fifo(id, placement, max, visibility, wait)
                .await;
        }
        let sealed: Vec<Route<'_>> = placement.sealed_routes(id).collect();
        let got = self
            .receive_each(id, &sealed, max, visibility, false)
            .await?;
        if !got.is_empty() {
            return Ok(got);
        }
        self.receive_active(id, placement, max, visibility, wait)
            .await
    }

    /// Receives from `routes` in turn without waiting, up to `max` in all. A sealed partition
    /// gone since the placement was read gives nothing. Another error is the answer if
    /// `strict` (a FIFO queue must not skip a partition, or its groups would go out of order);
    /// otherwise it is logged and the partition passed over.
    async fn receive_each(
        &self,
        id: QueueId,
        routes: &[Route<'_>],
        max: usize,
        visibility: Duration,
        strict: bool,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut got = Vec::new();
        for route in routes {
            match self
                .receive_from(route, max - got.len(), visibility, Duration::ZERO)
                .await
            {
                Ok(messages) => got.extend(messages),
                Err(Error::NotFound { .. }) if route.sealed => self.placements.expire(&id),
                Err(err) if strict => return Err(err),
                Err(err) => {
                    tracing::warn!(queue_id = id, cluster = %route.cluster, error = %err, "cannot receive from a sealed partition; receiving from the others")
                }
            }
            if got.len() >= max {
                break;
            }
        }
        Ok(got)
    }

    /// Receives from a FIFO queue with sealed partitions. Partitions sealed together (by one
    /// move or one change of partitions) are a generation; every message of a generation was
    /// sent before any of the next, so each generation is drained before the next one, and
    /// the active partitions come last. A partition must not be skipped, or its groups would
    /// go out of order: an error is the answer.
    async fn receive_fifo(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut generations: BTreeMap<u64, Vec<Route<'_>>> = BTreeMap::new();
        for (route, sealed) in placement.sealed_routes(id).zip(&placement.sealed) {
            generations
                .entry(sealed.sealed_at_ms)
                .or_default()
                .push(route);
        }
        for routes in generations.values() {
            let got = self.receive_each(id, routes, max, visibility, true).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            // Messages in flight (or delayed) hold their groups in this generation: wait on it.
            for route in routes {
                if total(&self.partition_counts(route).await?) > 0 {
                    return self.receive_from(route, max, visibility, wait).await;
                }
            }
        }
        self.receive_active(id, placement, max, visibility, wait)
            .await
    }

    async fn receive_active(
        &self,
        id: QueueId,
        placement: &Placement,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        match placement.active(id).as_slice() {
            [route] => self.receive_from(route, max, visibility, wait).await,
            routes => self.receive_spread(id, routes, max, visibility, wait).await,
        }
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

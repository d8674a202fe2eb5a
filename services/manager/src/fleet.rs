//! The manager's picture of the fleet, kept in memory and up to date by two etcd watches: the
//! clusters' live nodes and load reports, and every queue's placement. Placing a queue or
//! planning moves reads this picture instead of listing etcd each time, and the age of each
//! load report is measured on the manager's own clock, so a node whose clock is off cannot
//! pass a stale report for a fresh one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Event, EventType, KeyValue};
use parking_lot::RwLock;
use sluice_api::cluster::{self, ClusterKey, LoadReport, NodeRecord, Placement};
use sluice_api::{Error, QueueId, Result};
use sluice_metastore::watch::Follower;
use tokio::sync::watch;

use crate::policy::{self, ClusterState, Heard};

/// How long a caller waits for the first snapshots of a manager that just started.
const FIRST_READ: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    nodes: BTreeMap<(String, String), NodeRecord>,
    /// Each report with when this manager heard it.
    reports: BTreeMap<(String, String), (LoadReport, Instant)>,
    placements: HashMap<QueueId, Placement>,
    /// Active partitions per cluster.
    counts: HashMap<String, u64>,
    /// Queues with more than one active partition, or a change of partitions under way.
    spread: BTreeSet<QueueId>,
}

/// The shared picture; cheap to clone.
#[derive(Clone)]
pub(crate) struct Fleet {
    state: Arc<RwLock<State>>,
    /// Set once both prefixes have been read.
    ready: watch::Sender<(bool, bool)>,
}

impl Fleet {
    pub fn new() -> Self {
        Fleet {
            state: Arc::default(),
            ready: watch::Sender::new((false, false)),
        }
    }

    /// Waits until the first snapshots are in.
    pub async fn ready(&self) -> Result<()> {
        let mut ready = self.ready.subscribe();
        let read = tokio::time::timeout(FIRST_READ, ready.wait_for(|(c, p)| *c && *p))
            .await
            .is_ok_and(|waited| waited.is_ok());
        match read {
            true => Ok(()),
            false => Err(Error::Unavailable(
                "the manager has not read the clusters and placements from etcd yet; retry".into(),
            )),
        }
    }

    /// Every cluster with a live node or a placement, by name.
    pub fn clusters(&self, stale_after: Duration) -> Vec<ClusterState> {
        let state = self.state.read();
        let now = Instant::now();
        let mut names: Vec<&str> = state
            .nodes
            .keys()
            .chain(state.reports.keys())
            .map(|(cluster, _)| cluster.as_str())
            .chain(state.counts.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let nodes = in_cluster(&state.nodes, name)
                    .map(|(_, n)| n.clone())
                    .collect();
                let heard: Vec<Heard<'_>> = in_cluster(&state.reports, name)
                    .map(|(node, (report, at))| Heard {
                        node,
                        report,
                        age: now.duration_since(*at),
                    })
                    .collect();
                let count = state.counts.get(name).copied().unwrap_or(0);
                policy::aggregate(name, nodes, &heard, count, stale_after)
            })
            .collect()
    }

    /// Takes in a placement this manager just wrote, before its watch brings it: the next
    /// placement counts it. The watch's copy of it changes nothing more.
    pub fn note_placement(&self, id: QueueId, placement: Placement) {
        self.state.write().insert_placement(id, placement);
    }

    pub fn placement(&self, id: QueueId) -> Option<Placement> {
        self.state.read().placements.get(&id).cloned()
    }

    /// The queues spread over several clusters or changing their partitions, with their
    /// placements.
    pub fn spread_queues(&self) -> Vec<(QueueId, Placement)> {
        let state = self.state.read();
        state
            .spread
            .iter()
            .filter_map(|id| Some((*id, state.placements.get(id)?.clone())))
            .collect()
    }

    /// The follower of `clusters/`.
    pub fn clusters_follower(&self, root: &str) -> impl Follower {
        ClustersFollower {
            fleet: self.clone(),
            root: root.to_owned(),
        }
    }

    /// The follower of `placements/`.
    pub fn placements_follower(&self) -> impl Follower {
        PlacementsFollower {
            fleet: self.clone(),
        }
    }
}

/// The entries of `cluster`'s nodes in a map keyed by (cluster, node), with their node names.
fn in_cluster<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    cluster: &'a str,
) -> impl Iterator<Item = (&'a str, &'a V)> {
    map.range((cluster.to_owned(), String::new())..)
        .take_while(move |((c, _), _)| c == cluster)
        .map(|((_, node), v)| (node.as_str(), v))
}

struct ClustersFollower {
    fleet: Fleet,
    root: String,
}

impl ClustersFollower {
    fn put(&self, state: &mut State, kv: &KeyValue, now: Instant) {
        let Ok(key) = kv.key_str() else { return };
        match cluster::parse_cluster_key(&self.root, key) {
            Some(ClusterKey::Node { cluster, node }) => {
                match serde_json::from_slice::<NodeRecord>(kv.value()) {
                    Ok(record) => {
                        state.nodes.insert((cluster.into(), node.into()), record);
                    }
                    Err(err) => tracing::warn!(key, error = %err, "unreadable node record"),
                }
            }
            Some(ClusterKey::Load { cluster, node }) => {
                match serde_json::from_slice::<LoadReport>(kv.value()) {
                    Ok(report) => {
                        state
                            .reports
                            .insert((cluster.into(), node.into()), (report, now));
                    }
                    Err(err) => tracing::warn!(key, error = %err, "unreadable load report"),
                }
            }
            None => {}
        }
    }

    fn delete(&self, state: &mut State, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        match cluster::parse_cluster_key(&self.root, key) {
            Some(ClusterKey::Node { cluster, node }) => {
                state.nodes.remove(&(cluster.into(), node.into()));
            }
            Some(ClusterKey::Load { cluster, node }) => {
                state.reports.remove(&(cluster.into(), node.into()));
            }
            None => {}
        }
    }
}

impl Follower for ClustersFollower {
    fn snapshot(&mut self, kvs: &[KeyValue]) {
        let now = Instant::now();
        {
            let mut state = self.fleet.state.write();
            state.nodes.clear();
            state.reports.clear();
            for kv in kvs {
                self.put(&mut state, kv, now);
            }
        }
        self.fleet
            .ready
            .send_modify(|(clusters, _)| *clusters = true);
    }

    fn event(&mut self, event: &Event) {
        let Some(kv) = event.kv() else { return };
        let mut state = self.fleet.state.write();
        match event.event_type() {
            EventType::Put => self.put(&mut state, kv, Instant::now()),
            EventType::Delete => self.delete(&mut state, kv),
        }
    }
}

struct PlacementsFollower {
    fleet: Fleet,
}

/// The queue id at the end of a placement key.
fn queue_id_of(kv: &KeyValue) -> Option<QueueId> {
    kv.key_str().ok()?.rsplit('/').next()?.parse().ok()
}

impl State {
    fn put_placement(&mut self, kv: &KeyValue) {
        let Some(id) = queue_id_of(kv) else { return };
        match serde_json::from_slice::<Placement>(kv.value()) {
            Ok(placement) => self.insert_placement(id, placement),
            Err(err) => tracing::warn!(key = ?kv.key_str(), error = %err, "unreadable placement"),
        }
    }

    fn insert_placement(&mut self, id: QueueId, placement: Placement) {
        for route in placement.active(id) {
            *self.counts.entry(route.cluster.to_owned()).or_default() += 1;
        }
        if placement.spread.is_empty() && placement.resize.is_none() {
            self.spread.remove(&id);
        } else {
            self.spread.insert(id);
        }
        if let Some(old) = self.placements.insert(id, placement) {
            self.uncount(id, &old);
        }
    }

    fn remove_placement(&mut self, id: QueueId) {
        self.spread.remove(&id);
        if let Some(old) = self.placements.remove(&id) {
            self.uncount(id, &old);
        }
    }

    fn uncount(&mut self, id: QueueId, placement: &Placement) {
        for route in placement.active(id) {
            if let Some(count) = self.counts.get_mut(route.cluster) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.counts.remove(route.cluster);
                }
            }
        }
    }
}

impl Follower for PlacementsFollower {
    fn snapshot(&mut self, kvs: &[KeyValue]) {
        {
            let mut state = self.fleet.state.write();
            state.placements.clear();
            state.counts.clear();
            state.spread.clear();
            for kv in kvs {
                state.put_placement(kv);
            }
        }
        self.fleet
            .ready
            .send_modify(|(_, placements)| *placements = true);
    }

    fn event(&mut self, event: &Event) {
        let Some(kv) = event.kv() else { return };
        let mut state = self.fleet.state.write();
        match event.event_type() {
            EventType::Put => state.put_placement(kv),
            EventType::Delete => {
                if let Some(id) = queue_id_of(kv) {
                    state.remove_placement(id);
                }
            }
        }
    }
}

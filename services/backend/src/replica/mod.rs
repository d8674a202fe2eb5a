//! Replication inside a backend cluster: one Raft group (openraft) per cluster, whose log
//! carries the engine's group-commit batches. The leader's engine serves every queue
//! operation; the followers' engines follow the log in RocksDB and take over when elected.
//! See docs/replication.md for the design and its safety argument.

mod formation;
mod gate;
mod identity;
mod lease;
mod log;
mod machine;
pub(crate) mod metrics;
mod network;
mod reach;
mod server;
mod snapshots;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use rand::RngCore;
use sluice_api::{Error, Result};
use sluice_proto::v1 as pb;
use sluice_storage::{Completion, Engine, EngineOptions, Lease, Replicator};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Span;

pub use log::Dropped;
pub use network::MAX_RAFT_MESSAGE_BYTES;
pub use server::ClusterServiceImpl;

pub type NodeId = u64;

/// A member of the cluster as the log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node's name in its cluster, e.g. `a1`.
    pub name: String,
    /// Its gRPC URL.
    pub url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.url)
    }
}

/// One log entry's data: a write batch of the leader's engine.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    #[serde(with = "serde_bytes")]
    pub batch: Vec<u8>,
    /// Names the proposal on the node that made it, so its log can say when it is durable.
    pub token: u64,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = Member,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How a node joins its cluster when its log is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A cluster of this node alone.
    Alone,
    /// The cluster of these members: formed with them if none of them has a log yet, joined
    /// (or rejoined, replacing the member of this node's name) if it runs (see `formation`).
    Members(Vec<Member>),
    /// Nothing: an operator adds the node to a running cluster (`sluice admin cluster add-node`).
    Join,
}

/// This node's replica: its Raft, and the engine that Raft feeds.
#[derive(Clone)]
pub struct Replica {
    pub raft: Raft,
    pub engine: Engine,
    pub me: Member,
    id: NodeId,
    /// Set when the node stops on purpose: it no longer takes the lead (see `hand_over`).
    stepping_down: Arc<AtomicBool>,
    /// When this node last heard from a leader, as a follower.
    pub(crate) leader_contact: Arc<lease::LeaderContact>,
    /// The entries its log truncated, whose ASYNC sends `resend.rs` makes again.
    pub dropped: Dropped,
}

/// Hands the engine's batches to Raft in order (see `propose_loop`).
struct RaftReplicator {
    proposals: mpsc::UnboundedSender<(Proposal, Completion)>,
    durable: log::DurableWaiters,
    /// Holds back what a durable entry lets go on while the log runs too far ahead of a
    /// majority (bounded ASYNC).
    gate: Arc<gate::AsyncGate>,
    traces: log::Traces,
    next_token: AtomicU64,
}

impl Replicator for RaftReplicator {
    fn propose(&self, batch: Vec<u8>, durable: Completion, applied: Completion, span: Span) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let gate = self.gate.clone();
        self.durable.lock().insert(
            token,
            Box::new(move |result| match result {
                Ok(index) => gate.durable(index, durable),
                Err(err) => durable(Err(err)),
            }),
        );
        if !span.is_none() {
            // From the proposal until the entry is applied on this node (after a majority has
            // it); `propose_loop` ends it.
            let replicate = tracing::info_span!(parent: &span, "raft.replicate");
            self.traces.lock().insert(token, replicate);
        }
        if let Err(mpsc::error::SendError((_, applied))) =
            self.proposals.send((Proposal { batch, token }, applied))
        {
            if let Some(durable) = self.durable.lock().remove(&token) {
                durable(Err("the node is shutting down".into()));
            }
            self.traces.lock().remove(&token);
            applied(Err("the node is shutting down".into()));
        }
    }
}

/// Also the length of a leader's lease in openraft: voters refuse other candidates this long
/// after its last heartbeat (`lease.rs`).
const ELECTION_TIMEOUT_MAX_MS: u64 = 1000;
/// How long a stopping leader waits for its successor to catch up, and then to lead.
const HAND_OVER_WAIT: Duration = Duration::from_secs(5);

/// The Raft id of the running node `member` says it is, from its own status.
async fn raft_id_of(member: &Member) -> Result<NodeId> {
    let unreachable = |err: String| {
        Error::Unavailable(format!(
            "cannot reach node {} at {} to learn its Raft id: {err}",
            member.name, member.url
        ))
    };
    let mut client = network::client(&member.url).map_err(|err| unreachable(err.to_string()))?;
    let status = client
        .status(pb::ClusterStatusRequest {})
        .await
        .map_err(|status| unreachable(status.message().to_owned()))?
        .into_inner();
    if status.node != member.name {
        return Err(Error::FailedPrecondition(format!(
            "the node at {} is named {:?}, not {:?}",
            member.url, status.node, member.name
        )));
    }
    if status.raft_id == 0 {
        return Err(Error::FailedPrecondition(format!(
            "node {} runs a version that does not report its Raft id; upgrade it first",
            member.name
        )));
    }
    Ok(status.raft_id)
}

fn raft_config(cluster: &str, snapshot_logs: u64) -> anyhow::Result<Arc<Config>> {
    let config = Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 100,
        // A failover takes one to two of these: a follower waits out the dead leader's lease,
        // then its own timeout. A leader merely slow for this long on a busy machine causes an
        // election too, which costs a moment of unavailability, not data.
        election_timeout_min: 500,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        max_payload_entries: 16,
        // `snapshots::run` asks for them, each node at its own turn.
        snapshot_policy: SnapshotPolicy::Never,
        // Entries a follower just behind a snapshot can still get from the log.
        max_in_snapshot_log_to_keep: snapshot_logs.min(1_000),
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// How a node's replica runs.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// The cluster's name.
    pub cluster: String,
    /// Entries applied between two snapshots of the engine.
    pub snapshot_logs: u64,
    /// How many entries the leader's log may run ahead of a majority before acknowledgements of
    /// durable entries (ASYNC sends) wait; 0: no bound.
    pub async_max_lag_entries: u64,
}

impl Replica {
    /// Opens the engine and the log under `data_dir` and starts this node's Raft.
    pub async fn start(
        data_dir: &Path,
        engine_options: EngineOptions,
        options: ReplicaOptions,
        me: Member,
        bootstrap: Bootstrap,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Replica> {
        metrics::register();
        let ReplicaOptions {
            cluster,
            snapshot_logs,
            async_max_lag_entries,
        } = options;
        let durable: log::DurableWaiters = Arc::default();
        let traces: log::Traces = Arc::default();
        let (proposals, proposed) = mpsc::unbounded_channel();
        let gate = Arc::new(gate::AsyncGate::new(async_max_lag_entries));
        let replicator = Arc::new(RaftReplicator {
            proposals,
            gate: gate.clone(),
            durable: durable.clone(),
            traces: traces.clone(),
            next_token: AtomicU64::new(rand::rngs::OsRng.next_u64() >> 1),
        });
        let raft_dir = data_dir.join("raft");
        let id = identity::load_or_create(data_dir, &me.name, raft_dir.exists())?;
        let lease = Arc::new(Lease::default());
        let engine = Engine::open_replicated(engine_options, replicator, lease.clone())
            .context("cannot open the queue engine")?;
        let log = log::LogStore::open(&raft_dir, durable.clone(), traces.clone())
            .context("cannot open the raft log")?;
        let appended = log.appended();
        let dropped = log.dropped();
        let machine = machine::StateMachine::new(engine.clone(), traces.clone())?;
        let raft = Raft::new(
            id,
            raft_config(&cluster, snapshot_logs)?,
            network::Factory,
            log,
            machine,
        )
        .await
        .context("cannot start raft")?;
        // Not on its own timer until the gate below has seen the others (`reach` says why).
        raft.runtime_config().elect(false);
        let replica = Replica {
            raft,
            engine,
            me,
            id,
            stepping_down: Arc::default(),
            leader_contact: Arc::default(),
            dropped,
        };
        tokio::spawn(propose_loop(
            replica.raft.clone(),
            proposed,
            durable,
            traces,
        ));
        tokio::spawn(snapshots::run(
            replica.raft.clone(),
            id,
            snapshot_logs,
            appended,
            shutdown.clone(),
        ));
        tokio::spawn(lease::keep(
            replica.raft.clone(),
            id,
            lease,
            shutdown.clone(),
        ));
        tokio::spawn(reach::gate_elections(
            replica.raft.clone(),
            id,
            replica.leader_contact.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(replica.clone().lead(gate, shutdown.clone()));
        if !replica.raft.is_initialized().await? {
            match bootstrap {
                Bootstrap::Join => {}
                Bootstrap::Alone => {
                    replica
                        .initialize([(replica.id, replica.me.clone())].into())
                        .await?
                }
                // In the background: the others ask this node's status to form the cluster,
                // so it must serve while it waits for them.
                Bootstrap::Members(members) => {
                    tokio::spawn(formation::run(replica.clone(), members, shutdown));
                }
            }
        }
        Ok(replica)
    }

    async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> anyhow::Result<()> {
        tracing::info!(members = members.len(), "initializing the cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Activates the engine while this node leads and has applied everything committed before
    /// its term; deactivates it when the node stops leading.
    /// Also releases the ASYNC acknowledgements `gate` holds as the applied index moves.
    async fn lead(self, gate: Arc<gate::AsyncGate>, shutdown: CancellationToken) {
        let mut metrics = self.raft.metrics();
        let mut lag = Lag::default();
        loop {
            let (leading, term) = {
                let m = metrics.borrow_and_update();
                lag.observe(&m);
                let leading = m.state == ServerState::Leader && m.current_leader == Some(self.id);
                if leading {
                    gate.applied(m.last_applied.map_or(0, |l| l.index));
                } else {
                    gate.fail_all("this node stopped leading its cluster");
                }
                (leading, m.current_term)
            };
            metrics::IS_LEADER.set(i64::from(leading && self.engine.is_active()));
            let stepping_down = self.stepping_down.load(Ordering::SeqCst);
            if leading && !stepping_down && !self.engine.is_active() {
                match self.raft.ensure_linearizable().await {
                    Ok(_) => match self.engine.activate().await {
                        Ok(()) => tracing::info!(term, "leading the cluster; serving"),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot start serving; retrying");
                            self.engine.deactivate();
                        }
                    },
                    Err(err) => tracing::info!(error = %err, "elected, but not confirmed yet"),
                }
            } else if (!leading || stepping_down) && self.engine.is_active() {
                tracing::info!(term, "no longer leading the cluster");
                self.engine.deactivate();
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.engine.deactivate();
                    return;
                }
                changed = metrics.changed() => if changed.is_err() { return },
                // Retries an activation that failed even if nothing changes.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Returns once this node has applied everything its cluster's leader had applied when
    /// asked, or once it serves as the leader itself.
    pub async fn caught_up(&self) {
        loop {
            if self.engine.is_active() {
                return;
            }
            if let Some(leader) = self.leader().filter(|l| l.name != self.me.name) {
                if let Ok(mut client) = network::client(&leader.url) {
                    if let Ok(status) = client.status(pb::ClusterStatusRequest {}).await {
                        let target = status.into_inner().applied_index;
                        let reached = self
                            .raft
                            .wait(Some(Duration::from_secs(30)))
                            .applied_index_at_least(Some(target), "catching up")
                            .await;
                        if reached.is_ok() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's member record, if this node knows one other than itself.
    pub fn leader(&self) -> Option<Member> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// The names of the cluster's members, as this node knows them.
    pub fn member_names(&self) -> Vec<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(_, member)| member.name.clone())
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.id)
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> pb::ClusterStatus {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader = m
            .current_leader
            .and_then(|id| membership.get_node(&id).cloned())
            .unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, member)| pb::ClusterMember {
                name: member.name.clone(),
                url: member.url.clone(),
                raft_id: *id,
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|log_id| log_id.index),
            })
            .collect();
        pb::ClusterStatus {
            node: self.me.name.clone(),
            leader: leader.name,
            leader_url: leader.url,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            serving: self.engine.is_active(),
            members,
            raft_id: self.id,
        }
    }

    /// Adds `member`, which must be running: as a learner until it has caught up, then as a
    /// voter. A member of the same name with another id (the node before it lost its volume)
    /// leaves in the same joint change, so the cluster never needs more nodes than it had.
    /// Leader only; adding a member again changes nothing.
    pub async fn add_node(&self, member: Member) -> Result<()> {
        let id = raft_id_of(&member).await?;
        let (voters, replaced) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let replaced: BTreeSet<NodeId> = membership
                .nodes()
                .filter(|(other, node)| node.name == member.name && **other != id)
                .map(|(other, _)| *other)
                .collect();
            (membership.voter_ids().collect::<BTreeSet<_>>(), replaced)
        };
        if voters.contains(&id) && replaced.is_empty() {
            return Ok(());
        }
        if !replaced.is_empty() {
            tracing::info!(name = %member.name, new = id, old = ?replaced, "replacing a member that came back on an empty volume");
        }
        self.raft
            .add_learner(id, member, true)
            .await
            .map_err(membership_error)?;
        let mut next: BTreeSet<NodeId> = voters.difference(&replaced).copied().collect();
        next.insert(id);
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(next), false)
            .await
            .map_err(membership_error)?;
        // A replaced member that was only a learner is not a voter the change above removed.
        let learners: BTreeSet<NodeId> = replaced.difference(&voters).copied().collect();
        if !learners.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(learners), false)
                .await
                .map_err(membership_error)?;
        }
        Ok(())
    }

    /// Removes the member named `name`. Leader only.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        let ids: BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(_, node)| node.name == name)
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return Err(Error::not_found(format!("cluster member {name:?}")));
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(ids), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Before a planned stop: if this node leads, it stops serving, waits (a bounded time) for
    /// the voter furthest ahead to hold its whole log, stops its heartbeats and asks that voter
    /// to campaign, then waits for a new leader. A rolling restart so costs one election with a
    /// chosen, caught-up winner instead of a leader vanishing mid-write.
    pub async fn hand_over(&self) {
        self.stepping_down.store(true, Ordering::SeqCst);
        if !self.is_leader() {
            return;
        }
        self.engine.deactivate();
        let (successor, last) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let matched = |id: &NodeId| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|log_id| log_id.index)
            };
            let successor = membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .max_by_key(|id| matched(id))
                .and_then(|id| Some((id, membership.get_node(&id)?.clone())));
            (successor, m.last_log_index)
        };
        let Some((successor, member)) = successor else {
            return;
        };
        let caught_up = self
            .raft
            .wait(Some(HAND_OVER_WAIT))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&successor).cloned().flatten())
                        .map(|log_id| log_id.index);
                    matched >= last
                },
                "the successor holds the whole log",
            )
            .await;
        if caught_up.is_err() {
            tracing::warn!(successor = %member, "the successor did not catch up in time; stopping anyway");
        }
        self.raft.runtime_config().heartbeat(false);
        let asked = match network::client(&member.url) {
            Ok(mut client) => client
                .campaign(pb::CampaignRequest {})
                .await
                .map_err(|status| status.to_string()),
            Err(err) => Err(err.to_string()),
        };
        if let Err(err) = asked {
            tracing::warn!(successor = %member, error = %err, "cannot ask the successor to campaign");
        }
        let me = self.id;
        let handed = self
            .raft
            .wait(Some(HAND_OVER_WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != me),
                "another node leads",
            )
            .await;
        match handed {
            Ok(_) => tracing::info!(successor = %member, "handed the lead over"),
            Err(_) => tracing::warn!(successor = %member, "no new leader yet; stopping anyway"),
        }
    }

    /// Stands for election once the stopping leader's lease has lapsed on the other voters, and
    /// again until this node leads or the attempts run out; returns at once.
    pub fn campaign(&self) {
        let raft = self.raft.clone();
        tokio::spawn(async move {
            let term = raft.metrics().borrow().current_term;
            // The voters refuse a candidate while they still honour the old leader's lease,
            // which runs for the longest election timeout after its last heartbeat.
            tokio::time::sleep(Duration::from_millis(ELECTION_TIMEOUT_MAX_MS)).await;
            for _ in 0..10 {
                let elected = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow();
                    m.current_term > term && m.current_leader.is_some()
                };
                // This node or another: either way the cluster has a new leader.
                if elected {
                    return;
                }
                if let Err(err) = raft.trigger().elect().await {
                    tracing::warn!(error = %err, "cannot stand for election");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    pub async fn shutdown(&self) {
        self.engine.deactivate();
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(error = %err, "raft did not stop cleanly");
        }
    }
}

/// Tracks the leader's replication lag for its metrics: how many entries of its log are not
/// yet committed and applied, and since when some have been waiting.
#[derive(Default)]
struct Lag {
    /// An entry not yet applied, and when it was first seen: once it is applied, the next one
    /// waiting takes its place, so the age is that of (about) the oldest entry waiting.
    oldest: Option<(u64, std::time::Instant)>,
}

impl Lag {
    fn observe(&mut self, m: &openraft::RaftMetrics<NodeId, Member>) {
        let last = m.last_log_index.unwrap_or(0);
        metrics::LAST_LOG_INDEX.set(last as i64);
        metrics::TERM.set(m.current_term as i64);
        if m.state != ServerState::Leader {
            metrics::LAG_ENTRIES.set(0);
            metrics::LAG_SECONDS.set(0.0);
            self.oldest = None;
            return;
        }
        // A leader applies an entry right after a majority holds it, so what it has not
        // applied bounds what it holds alone.
        let applied = m.last_applied.map_or(0, |log_id| log_id.index);
        let behind = last.saturating_sub(applied);
        metrics::LAG_ENTRIES.set(behind as i64);
        if self.oldest.is_some_and(|(index, _)| index <= applied) {
            self.oldest = None;
        }
        if behind > 0 && self.oldest.is_none() {
            self.oldest = Some((applied + 1, std::time::Instant::now()));
        }
        let age = self
            .oldest
            .map_or(0.0, |(_, seen)| seen.elapsed().as_secs_f64());
        metrics::LAG_SECONDS.set(age);
    }
}

fn membership_error(
    err: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>,
) -> Error {
    use openraft::error::{ClientWriteError, RaftError};
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Error::Unavailable("this node does not lead its cluster".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            Error::FailedPrecondition(err.to_string())
        }
        RaftError::Fatal(err) => Error::Unavailable(err.to_string()),
    }
}

/// Proposes the engine's batches in the order the engine made them, without waiting for one to
/// commit before proposing the next; each proposal's waiters hear when it is applied.
async fn propose_loop(
    raft: Raft,
    mut proposed: mpsc::UnboundedReceiver<(Proposal, Completion)>,
    durable: log::DurableWaiters,
    traces: log::Traces,
) {
    while let Some((proposal, applied)) = proposed.recv().await {
        let token = proposal.token;
        metrics::PROPOSALS.inc();
        let durable = durable.clone();
        let traces = traces.clone();
        match raft.client_write_ff(proposal).await {
            Ok(response) => {
                tokio::spawn(async move {
                    let result = match response.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(_) => Err("raft stopped".to_owned()),
                    };
                    if result.is_ok() {
                        // Committed on a majority and applied, but nobody was told yet.
                        fail::fail_point!("backend::after_commit_before_reply", |_| {
                            std::process::abort()
                        });
                        // A slow cluster, as a slow disk makes one: each write answers this
                        // many milliseconds late (`return(MS)`).
                        #[cfg(feature = "failpoints")]
                        if let Some(Some(delay)) = fail::eval("backend::commit_delay_ms", |ms| {
                            ms.and_then(|ms| ms.parse::<u64>().ok())
                        }) {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                    }
                    if let Some(durable) = durable.lock().remove(&token) {
                        // Applied before this node's log said it was durable (it always says
                        // so first on a leader): index 0, which no bound holds back.
                        durable(result.clone().map(|()| 0));
                    }
                    traces.lock().remove(&token);
                    applied(result);
                });
            }
            Err(fatal) => {
                if let Some(durable) = durable.lock().remove(&token) {
                    durable(Err(fatal.to_string()));
                }
                traces.lock().remove(&token);
                applied(Err(fatal.to_string()));
            }
        }
    }
}

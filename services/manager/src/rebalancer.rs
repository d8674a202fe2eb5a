//! The leader's rebalancer: every interval it scores the clusters from the fleet picture, plans
//! with `rebalance::plan`, and carries the moves out with the seal-and-drain move. Each
//! decision is logged with its reason and counted in `sluice_manager_rebalance_decisions_total`.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use etcd_client::{Txn, TxnOp};
use sluice_api::cluster::{self, RebalanceSwitch};
use sluice_api::{Error, QueueId, Result};
use sluice_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::rebalance::{self, Budget, Hysteresis, Plan, RebalanceOpts};
use crate::service::{etcd, ManagerServiceImpl};
use crate::spread::{self, Change};
use sluice_api::cluster::Resize;

/// A queue whose move was refused (a dead-letter link holds it to its cluster) is not tried
/// again for this long, ms.
const REFUSED_REST_MS: u64 = 60 * 60_000;

/// What the rebalancer remembers between rounds.
pub(crate) struct Rebalancer {
    epoch: Instant,
    hysteresis: Hysteresis,
    budget: Budget,
    /// Queues whose move was refused, until when (on the epoch's clock).
    refused: HashMap<QueueId, u64>,
    /// The notes last logged, so a standing one is logged once rather than every round.
    noted: BTreeSet<String>,
}

impl Default for Rebalancer {
    fn default() -> Self {
        Rebalancer {
            epoch: Instant::now(),
            hysteresis: Hysteresis::default(),
            budget: Budget::default(),
            refused: HashMap::new(),
            noted: BTreeSet::new(),
        }
    }
}

impl Rebalancer {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl ManagerServiceImpl {
    /// Whether the rebalancer is paused, as etcd says.
    pub(crate) async fn paused(&self) -> Result<bool> {
        let key = cluster::rebalance_key(&self.root);
        let got = self.client.kv_client().get(key, None).await.map_err(etcd)?;
        Ok(got
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<RebalanceSwitch>(kv.value()).ok())
            .is_some_and(|switch| switch.paused))
    }

    /// Pauses or resumes the rebalancer, for whichever manager leads.
    pub(crate) async fn set_paused(&self, paused: bool) -> Result<()> {
        let fence = self
            .leadership
            .fence()
            .ok_or_else(|| Error::Unavailable("lost the manager leadership; retry".into()))?;
        let value = serde_json::to_vec(&RebalanceSwitch { paused }).expect("serializes");
        let txn = Txn::new().when([fence]).and_then([TxnOp::put(
            cluster::rebalance_key(&self.root),
            value,
            None,
        )]);
        let written = self.client.kv_client().txn(txn).await.map_err(etcd)?;
        if !written.succeeded() {
            return Err(Error::Unavailable(
                "lost the manager leadership; retry".into(),
            ));
        }
        metrics::REBALANCE_PAUSED.set(i64::from(paused));
        tracing::info!(
            paused,
            "rebalancer {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }

    /// The plan the rebalancer would carry out now, and the moves the budget allows.
    pub(crate) fn plan_now(&self) -> (Plan, usize) {
        let clusters = self.fleet.clusters(self.stale_after);
        let (scores, mean) = rebalance::scores(&clusters, &self.score);
        let mut state = self.rebalancer.lock();
        let now = state.now_ms();
        let hot_for =
            state
                .hysteresis
                .observe(&scores, mean, self.rebalance.rebalance_threshold, now);
        let budget = state
            .budget
            .available(self.rebalance.rebalance_moves_per_minute, now);
        let wall = sluice_api::now_ms();
        let rest = self.rebalance.rebalance_queue_rest_ms;
        let refused = &state.refused;
        let movable = |on: &str, id: QueueId| -> std::result::Result<String, String> {
            if cluster::queue_of_storage(id) != id {
                return Err(format!(
                    "partition of queue id {} is one of several; they retire as the queue cools",
                    cluster::queue_of_storage(id)
                ));
            }
            let placement = self
                .fleet
                .placement(id)
                .ok_or_else(|| format!("queue id {id} has no placement"))?;
            if placement.cluster != on {
                return Err(format!(
                    "{} is on {} now",
                    placement.queue, placement.cluster
                ));
            }
            if placement.unsettled() {
                return Err(format!(
                    "{} is moving, draining or spread over clusters",
                    placement.queue
                ));
            }
            if placement
                .moved_at_ms
                .is_some_and(|at| wall.saturating_sub(at) < rest)
            {
                return Err(format!("{} moved recently", placement.queue));
            }
            if refused.get(&id).is_some_and(|until| now < *until) {
                return Err(format!("{} is held by a dead-letter link", placement.queue));
            }
            Ok(placement.queue)
        };
        let plan = rebalance::plan(
            &clusters,
            &hot_for,
            &movable,
            &self.limits,
            &self.score,
            &self.rebalance,
            budget,
        );
        metrics::export_balance(&plan);
        (plan, budget)
    }

    /// The changes of queues' partitions the leader would make now.
    pub(crate) fn spread_plan(&self) -> Vec<Change> {
        let clusters = self.fleet.clusters(self.stale_after);
        let rates = spread::rates(&clusters);
        let one = self.spread.partition_share * self.score.capacity_messages_per_second;
        let mut candidates = self.fleet.spread_queues();
        metrics::SPREAD_QUEUES.set(
            candidates
                .iter()
                .filter(|(_, p)| !p.spread.is_empty())
                .count() as i64,
        );
        for (id, rate) in &rates {
            if *rate > one && !candidates.iter().any(|(c, _)| c == id) {
                if let Some(placement) = self.fleet.placement(*id) {
                    candidates.push((*id, placement));
                }
            }
        }
        {
            // A queue that refused a change (a dead-letter link) is left alone a while.
            let state = self.rebalancer.lock();
            let now = state.now_ms();
            candidates.retain(|(id, _)| state.refused.get(id).is_none_or(|until| now >= *until));
        }
        spread::plan(
            &clusters,
            &rates,
            &candidates,
            &self.limits,
            &self.score,
            &self.spread,
            self.rebalance.rebalance_queue_rest_ms,
            sluice_api::now_ms(),
        )
    }

    /// Carries out the partition changes planned now, within the move budget, and weighs the
    /// spread queues' partitions again.
    async fn spread_round(&self) {
        for change in self.spread_plan() {
            let available = {
                let mut state = self.rebalancer.lock();
                let now = state.now_ms();
                let available = state
                    .budget
                    .available(self.rebalance.rebalance_moves_per_minute, now);
                if available > 0 {
                    state.budget.spend(now);
                }
                available
            };
            if available == 0 {
                break;
            }
            let (id, resize) = match &change {
                Change::Add { queue_id, to, .. } => (*queue_id, Resize::Add(to.clone())),
                Change::Retire {
                    queue_id,
                    partition,
                    ..
                } => (*queue_id, Resize::Retire(*partition)),
            };
            tracing::info!("rebalancer: {}", describe_change(&change));
            match self.resize(id, resize).await {
                Ok(_) => {}
                Err(err @ Error::FailedPrecondition(_)) => {
                    metrics::SPREAD_CHANGES
                        .with_label_values(&["refused"])
                        .inc();
                    tracing::info!(queue_id = id, error = %err, "rebalancer: the queue cannot change its partitions");
                    let mut state = self.rebalancer.lock();
                    let until = state.now_ms() + REFUSED_REST_MS;
                    state.refused.insert(id, until);
                }
                Err(err) => {
                    metrics::SPREAD_CHANGES.with_label_values(&["failed"]).inc();
                    tracing::warn!(queue_id = id, error = %err, "rebalancer: cannot change the queue's partitions; the next round plans again");
                }
            }
        }
        let clusters = self.fleet.clusters(self.stale_after);
        for (id, placement) in self.fleet.spread_queues() {
            if placement.resize.is_some() || placement.spread.is_empty() {
                continue;
            }
            if let Some(weights) = spread::reweigh(id, &placement, &clusters, &self.score) {
                if let Err(err) = self.reweigh(id, &weights).await {
                    tracing::warn!(queue_id = id, error = %err, "cannot weigh the queue's partitions again");
                }
            }
        }
    }

    /// One round of the leader: plans, then starts the planned moves one after another.
    async fn rebalance_round(&self) -> Result<()> {
        if self.paused().await? {
            metrics::REBALANCE_PAUSED.set(1);
            // Still scored, so dashboards and the dry run show what would happen.
            self.plan_now();
            return Ok(());
        }
        metrics::REBALANCE_PAUSED.set(0);
        let (plan, _) = self.plan_now();
        {
            let mut state = self.rebalancer.lock();
            let notes: BTreeSet<String> = plan.notes.iter().map(|(_, n)| n.clone()).collect();
            for (kind, note) in &plan.notes {
                if !state.noted.contains(note) {
                    metrics::REBALANCE_DECISIONS
                        .with_label_values(&[kind])
                        .inc();
                    tracing::info!(decision = kind, "rebalancer: {note}");
                }
            }
            state.noted = notes;
        }
        let mut shed = BTreeSet::new();
        for planned in &plan.moves {
            {
                let mut state = self.rebalancer.lock();
                let now = state.now_ms();
                state.budget.spend(now);
            }
            tracing::info!(queue = %planned.queue, from = %planned.from, to = %planned.to, reason = %planned.reason, "rebalancer: moving a queue");
            match self.move_queue(&planned.queue, &planned.to).await {
                Ok(_) => {
                    metrics::REBALANCE_DECISIONS
                        .with_label_values(&["moved"])
                        .inc();
                    shed.insert(planned.from.clone());
                }
                Err(err @ Error::FailedPrecondition(_)) => {
                    metrics::REBALANCE_DECISIONS
                        .with_label_values(&["refused"])
                        .inc();
                    tracing::info!(queue = %planned.queue, error = %err, "rebalancer: the move was refused; leaving the queue where it is");
                    let mut state = self.rebalancer.lock();
                    let until = state.now_ms() + REFUSED_REST_MS;
                    state.refused.insert(planned.queue_id, until);
                }
                Err(err) => {
                    metrics::REBALANCE_DECISIONS
                        .with_label_values(&["move_failed"])
                        .inc();
                    tracing::warn!(queue = %planned.queue, error = %err, "rebalancer: the move failed; the next round plans again");
                }
            }
        }
        {
            let mut state = self.rebalancer.lock();
            let now = state.now_ms();
            for cluster in shed {
                state.hysteresis.shed(&cluster, now);
            }
            state.refused.retain(|_, until| *until > now);
        }
        self.spread_round().await;
        Ok(())
    }
}

/// One planned change of a queue's partitions, in words.
pub(crate) fn describe_change(change: &Change) -> String {
    match change {
        Change::Add {
            queue, to, reason, ..
        } => {
            format!("queue {queue} spreads to cluster {to}: {reason}")
        }
        Change::Retire {
            queue,
            partition,
            cluster,
            reason,
            ..
        } => format!(
            "queue {queue} retires its partition {partition} on cluster {cluster}: {reason}"
        ),
    }
}

/// The answer to a Rebalance request.
pub(crate) fn describe(
    plan: &Plan,
    paused: bool,
    budget: usize,
    opts: &RebalanceOpts,
) -> pb::RebalanceResponse {
    pb::RebalanceResponse {
        paused,
        mean_score: plan.mean,
        threshold: opts.rebalance_threshold,
        sustain_seconds: opts.rebalance_sustain_ms as f64 / 1000.0,
        clusters: plan
            .clusters
            .iter()
            .map(|(name, (score, hot_ms))| pb::ClusterBalance {
                name: name.clone(),
                score: *score,
                hot_for_seconds: *hot_ms as f64 / 1000.0,
            })
            .collect(),
        moves: plan
            .moves
            .iter()
            .map(|m| pb::PlannedMove {
                queue: m.queue.clone(),
                queue_id: m.queue_id,
                from: m.from.clone(),
                to: m.to.clone(),
                score: m.load,
                reason: m.reason.clone(),
            })
            .collect(),
        notes: plan.notes.iter().map(|(_, n)| n.clone()).collect(),
        budget: budget as u32,
    }
}

/// While this manager leads, runs a rebalancing round every interval, until `shutdown`.
pub(crate) async fn run(service: ManagerServiceImpl, shutdown: CancellationToken) {
    let interval = std::time::Duration::from_millis(service.rebalance.rebalance_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if service.leadership.fence().is_none() || service.fleet.ready().await.is_err() {
            continue;
        }
        if let Err(err) = service.rebalance_round().await {
            tracing::warn!(error = %err, "rebalancer: cannot run a round; trying again later");
        }
    }
}

//! Automatic rebalancing (docs/placement.md): a cluster whose score stays above the fleet's
//! mean by more than a threshold for a sustained period sheds queues to the coolest clusters,
//! with the seal-and-drain move, until it is back under the threshold. As Pulsar's
//! `ThresholdShedder` does, it sheds to a margin below the threshold (so it does not bounce
//! straight back), and picks the queues whose load best closes the gap rather than the biggest
//! (so it does not push the hot spot onto another cluster). Moves are rate-limited, and a queue
//! that moved recently stays where it is.
//!
//! The planning here is pure, over a snapshot and a clock in milliseconds, so the simulation
//! (`sluice-manager simulate`) runs the same code as the leader.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sluice_api::cluster::QueueLoad;
use sluice_api::QueueId;

use crate::policy::{self, ClusterState, Limits, ScoreConfig};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RebalanceOpts {
    /// How far above the fleet's mean score a cluster is hot.
    pub rebalance_threshold: f64,
    /// How long a cluster must stay hot before it sheds, ms.
    pub rebalance_sustain_ms: u64,
    /// Moves the leader starts in any minute, at most.
    pub rebalance_moves_per_minute: u32,
    /// A queue that moved is not moved again for this long, ms.
    pub rebalance_queue_rest_ms: u64,
    /// How often the leader looks, ms.
    pub rebalance_interval_ms: u64,
}

impl Default for RebalanceOpts {
    fn default() -> Self {
        RebalanceOpts {
            rebalance_threshold: 0.10,
            rebalance_sustain_ms: 60_000,
            rebalance_moves_per_minute: 6,
            rebalance_queue_rest_ms: 10 * 60_000,
            rebalance_interval_ms: 5_000,
        }
    }
}

impl RebalanceOpts {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rebalance_threshold.is_finite() && self.rebalance_threshold > 0.0,
            "rebalance_threshold must be above 0, not {}",
            self.rebalance_threshold
        );
        anyhow::ensure!(
            self.rebalance_interval_ms > 0,
            "rebalance_interval_ms must be at least 1"
        );
        Ok(())
    }
}

/// One move the plan makes.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub queue_id: QueueId,
    pub queue: String,
    pub from: String,
    pub to: String,
    /// The score the queue takes from `from` to `to`.
    pub load: f64,
    pub reason: String,
}

/// What the rebalancer would do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The mean score of the clusters whose load is known.
    pub mean: f64,
    /// Each cluster's score (`None`: load unknown) and how long it has been hot, ms.
    pub clusters: BTreeMap<String, (Option<f64>, u64)>,
    pub moves: Vec<Move>,
    /// Why a hot cluster sheds less than it should: a kind (`budget_spent`, `no_destination`,
    /// `no_movable_queue`) and the reason.
    pub notes: Vec<(&'static str, String)>,
}

/// Whether queue `id` on `cluster` may move now: its name, or why not.
pub type Movable<'a> = dyn Fn(&str, QueueId) -> Result<String, String> + 'a;

/// How long each cluster has been hot (over the mean by the threshold), on the caller's clock.
#[derive(Debug, Default)]
pub struct Hysteresis {
    since: HashMap<String, u64>,
}

impl Hysteresis {
    /// Records which clusters are hot at `now_ms`; returns how long each has been, ms.
    pub fn observe(
        &mut self,
        scores: &BTreeMap<String, Option<f64>>,
        mean: f64,
        threshold: f64,
        now_ms: u64,
    ) -> HashMap<String, u64> {
        self.since.retain(|name, _| {
            scores
                .get(name)
                .copied()
                .flatten()
                .is_some_and(|s| s > mean + threshold)
        });
        for (name, score) in scores {
            if score.is_some_and(|s| s > mean + threshold) {
                self.since.entry(name.clone()).or_insert(now_ms);
            }
        }
        self.since
            .iter()
            .map(|(name, since)| (name.clone(), now_ms.saturating_sub(*since)))
            .collect()
    }

    /// A cluster that shed starts its sustained period again, so the next round waits for
    /// reports that show the moves.
    pub fn shed(&mut self, cluster: &str, now_ms: u64) {
        if let Some(since) = self.since.get_mut(cluster) {
            *since = now_ms;
        }
    }
}

/// Moves started in the last minute, for the budget.
#[derive(Debug, Default)]
pub struct Budget {
    started: VecDeque<u64>,
}

impl Budget {
    /// Moves that may start at `now_ms`.
    pub fn available(&mut self, per_minute: u32, now_ms: u64) -> usize {
        while self
            .started
            .front()
            .is_some_and(|at| now_ms.saturating_sub(*at) >= 60_000)
        {
            self.started.pop_front();
        }
        (per_minute as usize).saturating_sub(self.started.len())
    }

    pub fn spend(&mut self, now_ms: u64) {
        self.started.push_back(now_ms);
    }
}

/// The scores of `clusters` (`None` where the load is unknown) and the mean of the known ones.
pub fn scores(
    clusters: &[ClusterState],
    config: &ScoreConfig,
) -> (BTreeMap<String, Option<f64>>, f64) {
    let scores: BTreeMap<String, Option<f64>> = clusters
        .iter()
        .map(|c| {
            let known = c.unknown.is_none() && !c.nodes.is_empty();
            (
                c.name.clone(),
                known.then(|| policy::score(&c.load, config).total),
            )
        })
        .collect();
    let known: Vec<f64> = scores.values().flatten().copied().collect();
    let mean = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    (scores, mean)
}

/// The moves that bring every cluster hot for `opts.rebalance_sustain_ms` back under the
/// threshold, at most `budget` of them.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    clusters: &[ClusterState],
    hot_for: &HashMap<String, u64>,
    movable: &Movable<'_>,
    limits: &Limits,
    config: &ScoreConfig,
    opts: &RebalanceOpts,
    budget: usize,
) -> Plan {
    let (scores, mean) = scores(clusters, config);
    let threshold = opts.rebalance_threshold;
    let mut plan = Plan {
        mean,
        clusters: scores
            .iter()
            .map(|(name, score)| {
                let hot = hot_for.get(name).copied().unwrap_or(0);
                (name.clone(), (*score, hot))
            })
            .collect(),
        ..Plan::default()
    };
    let mut projected: HashMap<&str, f64> = scores
        .iter()
        .filter_map(|(name, score)| score.map(|s| (name.as_str(), s)))
        .collect();
    if projected.len() < 2 {
        return plan;
    }
    let mut hot: Vec<&ClusterState> = clusters
        .iter()
        .filter(|c| {
            projected
                .get(c.name.as_str())
                .is_some_and(|s| *s > mean + threshold)
        })
        .filter(|c| {
            hot_for
                .get(&c.name)
                .is_some_and(|ms| *ms >= opts.rebalance_sustain_ms)
        })
        .collect();
    hot.sort_by(|a, b| projected[b.name.as_str()].total_cmp(&projected[a.name.as_str()]));
    // Destinations: known, under every high-water mark.
    let destinations: Vec<&ClusterState> = clusters
        .iter()
        .filter(|c| projected.contains_key(c.name.as_str()))
        .filter(|c| policy::refusal(c, limits).is_none())
        .collect();
    for cluster in hot {
        let name = cluster.name.as_str();
        let score = projected[name];
        // Shed to half the threshold over the mean, so the cluster does not bounce back.
        let mut gap = score - (mean + threshold / 2.0);
        let mut candidates: Vec<(QueueLoad, String, f64)> = Vec::new();
        let mut resting = 0;
        for queue in &cluster.queues {
            match movable(name, queue.queue_id) {
                Ok(queue_name) => {
                    let load = policy::queue_score(queue, &cluster.load, config);
                    if load > 0.0 {
                        candidates.push((queue.clone(), queue_name, load));
                    }
                }
                Err(_) => resting += 1,
            }
        }
        let mut moved_any = false;
        while gap > 0.0 && !candidates.is_empty() {
            if plan.moves.len() >= budget {
                plan.notes.push((
                    "budget_spent",
                    format!(
                        "{name}: the budget of {} moves a minute is spent; {gap:.3} of its \
                         score is left to shed",
                        opts.rebalance_moves_per_minute
                    ),
                ));
                break;
            }
            // The queue whose load is nearest the gap: moving the biggest instead could make
            // its destination the next hot cluster.
            let best = candidates
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| (a.2 - gap).abs().total_cmp(&(b.2 - gap).abs()))
                .map(|(i, _)| i)
                .expect("candidates is not empty");
            let (queue, queue_name, load) = candidates.swap_remove(best);
            let to = destinations
                .iter()
                .filter(|d| d.name != name)
                .filter(|d| projected[d.name.as_str()] + load <= mean + threshold)
                .min_by(|a, b| {
                    projected[a.name.as_str()]
                        .total_cmp(&projected[b.name.as_str()])
                        .then(a.name.cmp(&b.name))
                });
            let Some(to) = to else {
                plan.notes.push((
                    "no_destination",
                    format!(
                        "{name}: no cluster can take queue {queue_name} (score {load:.3}) \
                         without going over the threshold"
                    ),
                ));
                continue;
            };
            plan.moves.push(Move {
                queue_id: queue.queue_id,
                queue: queue_name,
                from: name.to_owned(),
                to: to.name.clone(),
                load,
                reason: format!(
                    "{name} scores {score:.3}, over the mean {mean:.3} by more than {threshold} \
                     for {:.0} s; the queue takes {load:.3} of the {:.3} to shed",
                    hot_for.get(name).copied().unwrap_or(0) as f64 / 1000.0,
                    gap.max(0.0)
                ),
            });
            *projected.get_mut(name).expect("known") -= load;
            *projected.get_mut(to.name.as_str()).expect("known") += load;
            gap -= load;
            moved_any = true;
        }
        if !moved_any && gap > 0.0 && candidates.is_empty() && plan.moves.len() < budget {
            plan.notes.push((
                "no_movable_queue",
                format!(
                    "{name}: hot, but none of its reported queues can move ({resting} moved \
                     recently, are moving, or are held by a dead-letter link)"
                ),
            ));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use sluice_api::cluster::NodeRecord;

    use super::*;
    use crate::policy::ClusterLoad;

    fn config() -> ScoreConfig {
        ScoreConfig {
            weight_cpu: 0.0,
            weight_messages: 1.0,
            weight_bytes: 0.0,
            weight_storage: 0.0,
            weight_latency: 0.0,
            capacity_messages_per_second: 1000.0,
            ..ScoreConfig::default()
        }
    }

    fn cluster(name: &str, queues: &[(QueueId, f64)]) -> ClusterState {
        let queues: Vec<QueueLoad> = queues
            .iter()
            .map(|(id, rate)| QueueLoad {
                queue_id: *id,
                messages_in_per_second: *rate,
                ..Default::default()
            })
            .collect();
        ClusterState {
            name: name.into(),
            nodes: vec![NodeRecord {
                cluster: name.into(),
                node: format!("{name}1"),
                url: String::new(),
            }],
            load: ClusterLoad {
                messages_in_per_second: queues.iter().map(|q| q.messages_in_per_second).sum(),
                disk_free_bytes: 1 << 40,
                ..Default::default()
            },
            queue_count: queues.len() as u64,
            queues,
            ..Default::default()
        }
    }

    fn opts() -> RebalanceOpts {
        RebalanceOpts {
            rebalance_threshold: 0.1,
            rebalance_sustain_ms: 1000,
            ..RebalanceOpts::default()
        }
    }

    fn any(_: &str, id: QueueId) -> Result<String, String> {
        Ok(format!("q{id}"))
    }

    /// The plan with cluster a hot for long enough and a budget of 10.
    fn plan_hot_a(clusters: &[ClusterState], movable: &Movable<'_>, limits: &Limits) -> Plan {
        let hot = HashMap::from([("a".to_owned(), 5000)]);
        plan(clusters, &hot, movable, limits, &config(), &opts(), 10)
    }

    #[test]
    fn sheds_the_queues_that_best_close_the_gap_to_the_coolest_cluster() {
        // a: 0.9, b: 0.1, c: 0.2; mean 0.4; a sheds to 0.45, a gap of 0.45.
        let clusters = [
            cluster("a", &[(1, 500.0), (2, 250.0), (3, 100.0), (4, 50.0)]),
            cluster("b", &[(5, 100.0)]),
            cluster("c", &[(6, 200.0)]),
        ];
        let limits = Limits::default();
        let plan = plan_hot_a(&clusters, &any, &limits);
        assert!((plan.mean - 0.4).abs() < 1e-9);
        let moved: Vec<(&str, &str)> = plan
            .moves
            .iter()
            .map(|m| (m.queue.as_str(), m.to.as_str()))
            .collect();
        // q1 (0.5) is nearest the gap but would take b to 0.6, over 0.5: q2 (0.25) goes to b
        // (0.35), then q3 (0.1) and q4 (0.05) to c, the coolest each time.
        assert_eq!(moved, [("q2", "b"), ("q3", "c"), ("q4", "c")]);
        assert!(
            plan.notes.iter().any(|(_, n)| n.contains("q1")),
            "{:?}",
            plan.notes
        );
        for m in &plan.moves {
            assert!(m.reason.contains("a scores 0.900"), "{}", m.reason);
        }
    }

    #[test]
    fn a_cluster_sheds_only_after_staying_hot_and_within_the_budget() {
        let clusters = [
            cluster("a", &[(1, 300.0), (2, 300.0), (3, 300.0)]),
            cluster("b", &[]),
        ];
        let limits = Limits::default();
        let (scores, mean) = scores(&clusters, &config());
        let mut hysteresis = Hysteresis::default();
        let hot_for = hysteresis.observe(&scores, mean, 0.1, 10_000);
        assert_eq!(hot_for["a"], 0);
        let early = plan(&clusters, &hot_for, &any, &limits, &config(), &opts(), 10);
        assert!(early.moves.is_empty(), "not hot for long enough");
        let hot_for = hysteresis.observe(&scores, mean, 0.1, 11_000);
        let planned = plan(&clusters, &hot_for, &any, &limits, &config(), &opts(), 1);
        assert_eq!(planned.moves.len(), 1);
        assert_eq!(planned.notes[0].0, "budget_spent");

        hysteresis.shed("a", 11_000);
        let hot_for = hysteresis.observe(&scores, mean, 0.1, 11_500);
        assert_eq!(hot_for["a"], 500, "shedding starts the period again");

        let mut budget = Budget::default();
        assert_eq!(budget.available(2, 0), 2);
        budget.spend(0);
        budget.spend(30_000);
        assert_eq!(budget.available(2, 59_999), 0);
        assert_eq!(budget.available(2, 60_000), 1);
    }

    #[test]
    fn unknown_refusing_and_resting_clusters_and_queues_are_left_alone() {
        let mut silent = cluster("b", &[]);
        silent.unknown = Some("member b2 has not reported its load".into());
        let mut full = cluster("c", &[]);
        full.load.disk_free_bytes = 0;
        let clusters = [cluster("a", &[(1, 300.0), (2, 300.0)]), silent, full];
        let limits = Limits {
            min_disk_free_bytes: Some(1),
            ..Limits::default()
        };
        // Known: a (0.6) and c (0.0), mean 0.3: a is hot but c is past a mark.
        let planned = plan_hot_a(&clusters, &any, &limits);
        assert!(planned.moves.is_empty());
        assert_eq!(planned.clusters["b"].0, None);

        let resting = |_: &str, id: QueueId| -> Result<String, String> {
            Err(format!("queue {id} moved a minute ago"))
        };
        let clusters = [cluster("a", &[(1, 300.0), (2, 300.0)]), cluster("b", &[])];
        let planned = plan_hot_a(&clusters, &resting, &limits);
        assert!(planned.moves.is_empty());
        assert!(
            planned.notes[0].1.contains("2 moved recently"),
            "{:?}",
            planned.notes
        );
    }
}

//! Queues bigger than one cluster (docs/placement.md): a queue whose messages per second per
//! active partition pass `partition_share` of a cluster's message capacity gets another active
//! partition on the coolest cluster that holds none of it; one that has cooled so far that one
//! partition fewer would carry less than half that share retires its newest partition. Each
//! active partition's weight, the share of sends the frontends route to it, is its cluster's
//! headroom (one less its score).
//!
//! Pure, over the fleet picture and a wall clock, like the rebalancer's plan.

use std::collections::HashMap;

use sluice_api::cluster::{self, Placement};
use sluice_api::QueueId;

use crate::policy::{self, ClusterState, Limits, ScoreConfig};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SpreadOpts {
    /// A queue gets another partition when its messages per second (in and out) per active
    /// partition pass this share of `capacity_messages_per_second`; 0 turns spreading off.
    pub partition_share: f64,
    /// Active partitions one queue has at most.
    pub max_partitions: u32,
}

impl Default for SpreadOpts {
    fn default() -> Self {
        // The simulation's setting (docs/placement.md): partitions of up to a quarter of a
        // cluster leave its hottest cluster well further over the mean.
        SpreadOpts {
            partition_share: 0.1,
            max_partitions: 8,
        }
    }
}

impl SpreadOpts {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.partition_share),
            "partition_share must be from 0 to 1, not {}",
            self.partition_share
        );
        anyhow::ensure!(
            self.max_partitions >= 1,
            "max_partitions must be at least 1"
        );
        Ok(())
    }
}

/// A change the plan makes to one queue's partitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add {
        queue_id: QueueId,
        queue: String,
        to: String,
        reason: String,
    },
    Retire {
        queue_id: QueueId,
        queue: String,
        partition: u32,
        cluster: String,
        reason: String,
    },
}

/// Each queue's messages per second (in and out) over all its partitions, from the leaders'
/// reports of their busiest queues.
pub fn rates(clusters: &[ClusterState]) -> HashMap<QueueId, f64> {
    let mut rates = HashMap::new();
    for cluster in clusters {
        for queue in &cluster.queues {
            *rates
                .entry(cluster::queue_of_storage(queue.queue_id))
                .or_default() += queue.messages_per_second();
        }
    }
    rates
}

/// What to change, for the queues in `candidates` (the busy ones and those already spread).
/// A queue that changed its partitions or moved within `rest_ms` of `now_ms` is left alone,
/// and so is one with a partition on a cluster whose load is unknown.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    clusters: &[ClusterState],
    rates: &HashMap<QueueId, f64>,
    candidates: &[(QueueId, Placement)],
    limits: &Limits,
    config: &ScoreConfig,
    opts: &SpreadOpts,
    rest_ms: u64,
    now_ms: u64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if opts.partition_share <= 0.0 {
        return changes;
    }
    let share = opts.partition_share * config.capacity_messages_per_second;
    let by_name: HashMap<&str, &ClusterState> =
        clusters.iter().map(|c| (c.name.as_str(), c)).collect();
    // Clusters that took a partition in this plan, so two hot queues do not both land on one.
    let mut taken: HashMap<String, u32> = HashMap::new();
    for (id, placement) in candidates {
        if placement.moving_to.is_some() || placement.resize.is_some() {
            continue;
        }
        if placement
            .moved_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < rest_ms)
        {
            continue;
        }
        let active = placement.active(*id);
        let known = active.iter().all(|r| {
            by_name
                .get(r.cluster)
                .is_some_and(|c| c.unknown.is_none() && !c.nodes.is_empty())
        });
        if !known {
            continue;
        }
        let n = active.len() as f64;
        let rate = rates.get(id).copied().unwrap_or(0.0);
        if rate / n > share && active.len() < opts.max_partitions as usize {
            let destination = clusters
                .iter()
                .filter(|c| !active.iter().any(|r| r.cluster == c.name))
                .filter(|c| policy::refusal(c, limits).is_none())
                .min_by(|a, b| {
                    let key = |c: &ClusterState| {
                        (
                            taken.get(&c.name).copied().unwrap_or(0),
                            policy::score(&c.load, config).total,
                        )
                    };
                    let (ta, sa) = key(a);
                    let (tb, sb) = key(b);
                    ta.cmp(&tb).then(sa.total_cmp(&sb))
                });
            if let Some(to) = destination {
                *taken.entry(to.name.clone()).or_default() += 1;
                changes.push(Change::Add {
                    queue_id: *id,
                    queue: placement.queue.clone(),
                    to: to.name.clone(),
                    reason: format!(
                        "{rate:.0} messages/s over {} partition(s) is more than {share:.0} per \
                         partition (partition_share {} of {} messages/s)",
                        active.len(),
                        opts.partition_share,
                        config.capacity_messages_per_second
                    ),
                });
            }
        } else if active.len() > 1 && rate < share * (n - 1.0) / 2.0 {
            let newest = placement
                .spread
                .iter()
                .max_by_key(|p| p.partition)
                .expect("more than one active partition");
            changes.push(Change::Retire {
                queue_id: *id,
                queue: placement.queue.clone(),
                partition: newest.partition,
                cluster: newest.cluster.clone(),
                reason: format!(
                    "{rate:.0} messages/s fits in {} partition(s) at less than half of {share:.0} \
                     each",
                    active.len() - 1
                ),
            });
        }
    }
    changes
}

/// The weight an active partition on `cluster` gets: the cluster's headroom, at least 0.05 so
/// a full cluster still takes a little and its queues' order of sends is not starved.
pub fn headroom(cluster: Option<&ClusterState>, config: &ScoreConfig) -> f64 {
    let score = cluster
        .filter(|c| c.unknown.is_none())
        .map(|c| policy::score(&c.load, config).total)
        .unwrap_or(0.5);
    (1.0 - score).clamp(0.05, 1.0)
}

/// New weights for `placement`'s active partitions if any is off its cluster's headroom by
/// more than 0.1, so the placement is written again only when it matters.
pub fn reweigh(
    id: QueueId,
    placement: &Placement,
    clusters: &[ClusterState],
    config: &ScoreConfig,
) -> Option<Vec<(u32, f64)>> {
    let weights: Vec<(u32, f64, f64)> = placement
        .active(id)
        .iter()
        .map(|r| {
            let cluster = clusters.iter().find(|c| c.name == r.cluster);
            (r.partition, r.weight, headroom(cluster, config))
        })
        .collect();
    weights
        .iter()
        .any(|(_, now, wanted)| (now - wanted).abs() > 0.1)
        .then(|| weights.into_iter().map(|(p, _, w)| (p, w)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_api::cluster::{NodeRecord, QueueLoad, SpreadPartition};

    fn cluster(name: &str, rate: f64, queues: Vec<QueueLoad>) -> ClusterState {
        ClusterState {
            name: name.into(),
            nodes: vec![NodeRecord {
                cluster: name.into(),
                node: format!("{name}1"),
                url: String::new(),
            }],
            load: policy::ClusterLoad {
                messages_in_per_second: rate,
                ..Default::default()
            },
            unknown: None,
            queues,
            queue_count: 1,
        }
    }

    fn queue(id: QueueId, rate: f64) -> QueueLoad {
        QueueLoad {
            queue_id: id,
            messages_in_per_second: rate,
            messages: 1,
            ..Default::default()
        }
    }

    fn config() -> ScoreConfig {
        ScoreConfig {
            capacity_messages_per_second: 1000.0,
            ..ScoreConfig::default()
        }
    }

    #[test]
    fn a_queue_past_its_share_gets_a_partition_on_the_coolest_other_cluster() {
        let opts = SpreadOpts {
            partition_share: 0.25,
            max_partitions: 3,
        };
        let clusters = vec![
            cluster("a", 400.0, vec![queue(1, 300.0), queue(2, 100.0)]),
            cluster("b", 200.0, vec![]),
            cluster("c", 100.0, vec![]),
        ];
        let rates = rates(&clusters);
        let candidates = vec![
            (1, Placement::new("hot", "a")),
            (2, Placement::new("warm", "a")),
        ];
        let plan = plan(
            &clusters,
            &rates,
            &candidates,
            &Limits::default(),
            &config(),
            &opts,
            60_000,
            1_000_000,
        );
        assert_eq!(plan.len(), 1, "{plan:?}");
        let Change::Add { queue_id, to, .. } = &plan[0] else {
            panic!("{plan:?}")
        };
        assert_eq!((*queue_id, to.as_str()), (1, "c"));
    }

    #[test]
    fn a_spread_queue_that_cooled_retires_its_newest_partition_and_one_that_rests_waits() {
        let opts = SpreadOpts {
            partition_share: 0.25,
            max_partitions: 8,
        };
        let mut placement = Placement::new("q", "a");
        placement.spread_from = Some(1);
        for (partition, cluster) in [(1, "b"), (2, "c")] {
            placement.spread.push(SpreadPartition {
                partition,
                cluster: cluster.into(),
                weight: 1.0,
                opened_at_ms: 0,
            });
        }
        // 600 messages/s over three partitions: two would carry 300 each, more than half of
        // the share of 250: it stays.
        let storage = cluster::storage_id(7, 2, Some(1));
        let busy = vec![
            cluster("a", 200.0, vec![queue(7, 200.0)]),
            cluster("b", 200.0, vec![]),
            cluster("c", 400.0, vec![queue(storage, 400.0)]),
        ];
        let candidates = vec![(7, placement.clone())];
        let run = |clusters: &[ClusterState], candidates: &[(QueueId, Placement)]| {
            plan(
                clusters,
                &rates(clusters),
                candidates,
                &Limits::default(),
                &config(),
                &opts,
                60_000,
                1_000_000,
            )
        };
        assert_eq!(run(&busy, &candidates), vec![]);
        let cool = vec![
            cluster("a", 100.0, vec![queue(7, 100.0)]),
            cluster("b", 0.0, vec![]),
            cluster("c", 0.0, vec![]),
        ];
        let plan = run(&cool, &candidates);
        assert!(
            matches!(&plan[..], [Change::Retire { partition: 2, cluster, .. }] if cluster == "c"),
            "{plan:?}"
        );
        placement.moved_at_ms = Some(990_000);
        assert_eq!(run(&cool, &[(7, placement.clone())]), vec![]);
        // A cluster of the queue whose load is unknown: nothing is decided.
        placement.moved_at_ms = None;
        let mut unknown = cool.clone();
        unknown[1].unknown = Some("b1 is missing".into());
        assert_eq!(run(&unknown, &[(7, placement)]), vec![]);
    }

    #[test]
    fn weights_follow_headroom_and_change_only_when_far_off() {
        let config = config();
        let mut placement = Placement::new("q", "a");
        placement.spread_from = Some(1);
        placement.spread.push(SpreadPartition {
            partition: 1,
            cluster: "b".into(),
            weight: 1.0,
            opened_at_ms: 0,
        });
        let clusters = vec![cluster("a", 0.0, vec![]), cluster("b", 0.0, vec![])];
        assert_eq!(reweigh(3, &placement, &clusters, &config), None);
        // Cluster b's messages part at 0.8 of capacity.
        let clusters = vec![cluster("a", 0.0, vec![]), cluster("b", 800.0, vec![])];
        let weights = reweigh(3, &placement, &clusters, &config).expect("b is far off");
        assert_eq!(weights[0], (0, 1.0));
        assert!(weights[1].1 < 0.9, "{weights:?}");
    }
}

//! `sluice-manager simulate`: the manager's own placement and rebalancing functions
//! (`policy::aggregate`, `policy::choose`, `rebalance::plan`, `Hysteresis`, `Budget`) over a
//! simulated fleet, hour after simulated hour, to see how balanced a large fleet stays and what
//! that costs in moves. docs/placement.md describes the model and quotes a full-size run.
//!
//! The model, kept simple on purpose:
//! - Queue rates follow Zipf's law over a random ranking, scaled so the mean cluster's messages
//!   part is `mean_load`. A queue whose rate passes `partition_share` of a cluster's capacity is
//!   split into partitions of equal rate, each placed on its own.
//! - Each hour, every queue's rate drifts (a mean-reverting random walk of its logarithm), a few
//!   queues spike fourfold for six hours, the whole fleet follows a daily cycle, and a share of
//!   the queues is deleted and replaced by new ones, placed by `policy::choose`.
//! - Consumers keep up: each queue delivers what it receives, and holds a backlog of some
//!   seconds of its rate. CPU follows the messages part, and commit time grows with its square.
//! - A cluster's report is its leader's, as a backend node makes it; the rebalancer runs every
//!   `round_seconds`, and a move takes effect at once (its bytes stored count as data moved:
//!   they drain from the old cluster).
//! - Clusters are added (empty) and lost (their queues placed again by `policy::choose`) at the
//!   hours given.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_api::cluster::{self, LoadReport, NodeRecord, QueueLoad};
use sluice_api::QueueId;

use crate::policy::{self, ClusterState, Heard, Limits, ScoreConfig};
use crate::rebalance::{self, Budget, Hysteresis, RebalanceOpts};

/// What the simulation is run with.
#[derive(Debug, Clone)]
pub struct SimOpts {
    pub clusters: usize,
    pub queues: usize,
    pub hours: u32,
    pub zipf_exponent: f64,
    /// The mean cluster's messages part (in and out over the capacity).
    pub mean_load: f64,
    pub round_seconds: u64,
    pub seed: u64,
    /// The largest share of a cluster's message capacity one partition carries.
    pub partition_share: f64,
    /// (hour, clusters) added empty at that hour.
    pub add: Vec<(u32, usize)>,
    /// (hour, clusters) lost at that hour.
    pub lose: Vec<(u32, usize)>,
    /// The share of queues deleted and replaced by new ones each hour.
    pub churn_per_hour: f64,
    pub score: ScoreConfig,
    pub rebalance: RebalanceOpts,
    pub limits: Limits,
}

impl SimOpts {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.clusters >= 2, "clusters must be at least 2");
        anyhow::ensure!(self.queues >= 1, "queues must be at least 1");
        anyhow::ensure!(self.hours >= 1, "hours must be at least 1");
        anyhow::ensure!(self.round_seconds >= 1, "round_seconds must be at least 1");
        anyhow::ensure!(
            self.mean_load > 0.0 && self.mean_load.is_finite(),
            "mean_load must be above 0"
        );
        anyhow::ensure!(
            self.partition_share > 0.0 && self.partition_share <= 1.0,
            "partition_share must be above 0 and at most 1"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.churn_per_hour),
            "churn_per_hour must be at least 0 and under 1"
        );
        let lost: usize = self.lose.iter().map(|(_, n)| n).sum();
        let added: usize = self.add.iter().map(|(_, n)| n).sum();
        anyhow::ensure!(
            lost + 2 <= self.clusters + added,
            "losing {lost} clusters leaves fewer than 2"
        );
        self.score.validate()?;
        self.rebalance.validate()
    }
}

/// One simulated hour.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HourRow {
    pub hour: u32,
    pub clusters: usize,
    pub mean_score: f64,
    /// The highest score over the mean score, at the hour's end and at its worst round.
    pub max_over_mean: f64,
    pub worst_max_over_mean: f64,
    pub moves: u64,
    pub bytes_moved: f64,
    /// Queues placed: new ones, and those of lost clusters.
    pub placed: u64,
}

/// The whole run, and its last day (or all of it, if shorter).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub partitions: usize,
    pub steady_hours: u32,
    pub steady_median_max_over_mean: f64,
    pub steady_worst_max_over_mean: f64,
    pub steady_moves_per_hour: f64,
    pub steady_bytes_moved_per_hour: f64,
    pub total_moves: u64,
}

/// One partition of a queue.
struct Unit {
    cluster: usize,
    /// Messages in per second before drift, spikes and the daily cycle.
    base: f64,
    /// The logarithm of the drift factor.
    level: f64,
    spike_until: u32,
    /// Messages in per second now.
    rate: f64,
    size: f64,
    backlog_seconds: f64,
    moved_at_ms: Option<u64>,
    /// Split off a queue too big for one cluster: not deleted by churn.
    partitioned: bool,
}

impl Unit {
    fn load(&self, id: usize) -> QueueLoad {
        let messages = self.rate * self.backlog_seconds;
        QueueLoad {
            queue_id: id as QueueId + 1,
            messages_in_per_second: self.rate,
            messages_out_per_second: self.rate,
            bytes_in_per_second: self.rate * self.size,
            bytes_out_per_second: self.rate * self.size,
            messages: messages as u64,
            bytes_stored: (messages * self.size) as u64,
        }
    }
}

struct Cluster {
    name: String,
    alive: bool,
    units: Vec<usize>,
    /// Messages in per second, bytes per second (in and out), bytes stored.
    rate: f64,
    bytes_rate: f64,
    stored: f64,
    dirty: bool,
}

struct Fleet<'a> {
    opts: &'a SimOpts,
    units: Vec<Unit>,
    clusters: Vec<Cluster>,
    /// Each cluster's state as the manager sees it, by cluster index.
    states: Vec<ClusterState>,
    /// The rate of the ranks' Zipf law at rank 1.
    top_rate: f64,
    rng: StdRng,
}

/// Messages in per second of one cluster at full load.
fn capacity_in(config: &ScoreConfig) -> f64 {
    config.capacity_messages_per_second / 2.0
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller: two uniforms make one standard normal.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl<'a> Fleet<'a> {
    fn new(opts: &'a SimOpts) -> Self {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let harmonic: f64 = (1..=opts.queues)
            .map(|k| (k as f64).powf(-opts.zipf_exponent))
            .sum();
        let total = opts.mean_load * capacity_in(&opts.score) * opts.clusters as f64;
        let top_rate = total / harmonic;
        let cap = opts.partition_share * capacity_in(&opts.score);
        let mut units = Vec::with_capacity(opts.queues);
        for rank in 1..=opts.queues {
            let rate = top_rate * (rank as f64).powf(-opts.zipf_exponent);
            let parts = (rate / cap).ceil().max(1.0) as usize;
            for _ in 0..parts {
                let cluster = rng.gen_range(0..opts.clusters);
                units.push(new_unit(&mut rng, rate / parts as f64, cluster, parts > 1));
            }
        }
        let clusters = (0..opts.clusters).map(empty_cluster).collect();
        let mut fleet = Fleet {
            opts,
            units,
            clusters,
            states: vec![ClusterState::default(); opts.clusters],
            top_rate,
            rng,
        };
        for id in 0..fleet.units.len() {
            let cluster = fleet.units[id].cluster;
            fleet.clusters[cluster].units.push(id);
        }
        fleet.drift(0);
        fleet
    }

    fn cap(&self) -> f64 {
        self.opts.partition_share * capacity_in(&self.opts.score)
    }

    /// An hour passes: rates drift and spike, the fleet follows its daily cycle.
    fn drift(&mut self, hour: u32) {
        let daily = 1.0 + 0.3 * (2.0 * std::f64::consts::PI * f64::from(hour) / 24.0).sin();
        let cap = self.cap();
        for unit in &mut self.units {
            unit.level = 0.9 * unit.level + 0.2 * normal(&mut self.rng);
            if self.rng.gen::<f64>() < 0.0005 {
                unit.spike_until = hour + 6;
            }
            let spike = if hour < unit.spike_until { 4.0 } else { 1.0 };
            // Past the partition share the manager would add a partition; the model caps it.
            unit.rate = (unit.base * unit.level.exp() * spike * daily).min(cap);
        }
        self.sum_all();
    }

    fn sum_all(&mut self) {
        for c in 0..self.clusters.len() {
            self.sum(c);
        }
    }

    /// Recomputes cluster `c`'s totals and its state.
    fn sum(&mut self, c: usize) {
        let cluster = &mut self.clusters[c];
        let (mut rate, mut bytes_rate, mut stored) = (0.0, 0.0, 0.0);
        for id in &cluster.units {
            let u = &self.units[*id];
            rate += u.rate;
            bytes_rate += 2.0 * u.rate * u.size;
            stored += u.rate * u.backlog_seconds * u.size;
        }
        cluster.rate = rate;
        cluster.bytes_rate = bytes_rate;
        cluster.stored = stored;
        cluster.dirty = true;
    }

    /// Brings the states of the clusters that changed up to date, through the manager's own
    /// aggregation of a leader's report.
    fn refresh(&mut self) {
        let config = &self.opts.score;
        for (c, cluster) in self.clusters.iter_mut().enumerate() {
            if !cluster.dirty {
                continue;
            }
            cluster.dirty = false;
            if !cluster.alive {
                self.states[c] = ClusterState {
                    name: cluster.name.clone(),
                    ..ClusterState::default()
                };
                continue;
            }
            let loads = cluster
                .units
                .iter()
                .map(|id| self.units[*id].load(*id))
                .collect();
            let messages_part = 2.0 * cluster.rate / config.capacity_messages_per_second;
            let report = LoadReport {
                messages_in_per_second: cluster.rate,
                messages_out_per_second: cluster.rate,
                bytes_in_per_second: cluster.bytes_rate / 2.0,
                bytes_out_per_second: cluster.bytes_rate / 2.0,
                bytes_stored: cluster.stored as u64,
                disk_free_bytes: 1 << 50,
                disk_total_bytes: 1 << 51,
                cpu_cores_used: 0.8 * messages_part,
                cores: 1,
                commit_seconds: 0.002 + 0.03 * messages_part * messages_part,
                leader: true,
                members: vec![cluster.name.clone()],
                period_ms: 2000,
                queues: cluster::top_queues(loads, cluster::REPORTED_QUEUES),
                reported_at_ms: 0,
            };
            let node = NodeRecord {
                cluster: cluster.name.clone(),
                node: cluster.name.clone(),
                url: String::new(),
            };
            let heard = [Heard {
                node: &cluster.name,
                report: &report,
                age: Duration::ZERO,
            }];
            self.states[c] = policy::aggregate(
                &cluster.name,
                vec![node],
                &heard,
                cluster.units.len() as u64,
                Duration::from_secs(10),
            );
        }
    }

    fn move_unit(&mut self, id: usize, to: usize) {
        let from = self.units[id].cluster;
        let units = &mut self.clusters[from].units;
        if let Some(at) = units.iter().position(|u| *u == id) {
            units.swap_remove(at);
        }
        self.clusters[to].units.push(id);
        self.units[id].cluster = to;
        self.sum(from);
        self.sum(to);
    }

    /// Places unit `id` with the manager's placement rule; false if no cluster takes it.
    fn place(&mut self, id: usize) -> bool {
        let Some(chosen) = policy::choose(&self.states, &self.opts.limits, &self.opts.score) else {
            return false;
        };
        let to = cluster_index(&chosen.name);
        let load = self.units[id].load(id);
        // The placement shows in the state at once, as the next report would show it.
        let state = &mut self.states[to];
        state.load.messages_in_per_second += load.messages_in_per_second;
        state.load.messages_out_per_second += load.messages_out_per_second;
        state.load.bytes_in_per_second += load.bytes_in_per_second;
        state.load.bytes_out_per_second += load.bytes_out_per_second;
        state.load.bytes_stored += load.bytes_stored;
        state.queue_count += 1;
        self.move_unit(id, to);
        true
    }

    /// Deletes a share of the queues and places as many new ones.
    fn churn(&mut self) -> u64 {
        let count = (self.units.len() as f64 * self.opts.churn_per_hour) as usize;
        let mut placed = 0;
        for _ in 0..count {
            let id = self.rng.gen_range(0..self.units.len());
            if self.units[id].partitioned {
                continue;
            }
            let rank = self.rng.gen_range(1..=self.opts.queues);
            let rate =
                (self.top_rate * (rank as f64).powf(-self.opts.zipf_exponent)).min(self.cap());
            let cluster = self.units[id].cluster;
            self.units[id] = new_unit(&mut self.rng, rate, cluster, false);
            if self.place(id) {
                placed += 1;
            }
        }
        placed
    }

    fn add_clusters(&mut self, count: usize) {
        for _ in 0..count {
            let c = self.clusters.len();
            self.clusters.push(empty_cluster(c));
            self.states.push(ClusterState::default());
        }
    }

    /// Loses `count` live clusters; their queues are placed again. Returns how many were.
    fn lose_clusters(&mut self, count: usize) -> u64 {
        let mut placed = 0;
        for _ in 0..count {
            let alive: Vec<usize> = (0..self.clusters.len())
                .filter(|c| self.clusters[*c].alive)
                .collect();
            let lost = alive[self.rng.gen_range(0..alive.len())];
            self.clusters[lost].alive = false;
            self.clusters[lost].dirty = true;
            self.refresh();
            for id in self.clusters[lost].units.clone() {
                if self.place(id) {
                    placed += 1;
                }
            }
        }
        placed
    }
}

fn new_unit(rng: &mut StdRng, rate: f64, cluster: usize, partitioned: bool) -> Unit {
    Unit {
        cluster,
        base: rate,
        level: 0.0,
        spike_until: 0,
        rate,
        // About 1 KiB a message, and some seconds of backlog, both spread over queues.
        size: 1024.0 * (0.5 * normal(rng)).exp(),
        backlog_seconds: 30.0 * normal(rng).exp(),
        moved_at_ms: None,
        partitioned,
    }
}

fn empty_cluster(c: usize) -> Cluster {
    Cluster {
        name: cluster_name(c),
        alive: true,
        units: Vec::new(),
        rate: 0.0,
        bytes_rate: 0.0,
        stored: 0.0,
        dirty: true,
    }
}

fn cluster_name(c: usize) -> String {
    format!("c{c:05}")
}

fn cluster_index(name: &str) -> usize {
    name[1..].parse().expect("a simulated cluster's name")
}

/// Runs the simulation; `progress` hears each hour as it ends.
pub fn run(opts: &SimOpts, mut progress: impl FnMut(&HourRow)) -> (Vec<HourRow>, Summary) {
    let mut fleet = Fleet::new(opts);
    let mut hysteresis = Hysteresis::default();
    let mut budget = Budget::default();
    let rounds_per_hour = (3600 / opts.round_seconds).max(1);
    let rest = opts.rebalance.rebalance_queue_rest_ms;
    let mut rows = Vec::new();
    let mut total_moves = 0;
    for hour in 0..opts.hours {
        let mut row = HourRow {
            hour: hour + 1,
            ..HourRow::default()
        };
        if hour > 0 {
            fleet.drift(hour);
        }
        for (_, count) in opts.add.iter().filter(|(at, _)| *at == hour) {
            fleet.add_clusters(*count);
        }
        for (_, count) in opts.lose.iter().filter(|(at, _)| *at == hour) {
            row.placed += fleet.lose_clusters(*count);
        }
        fleet.refresh();
        row.placed += fleet.churn();
        for round in 0..rounds_per_hour {
            let now = (u64::from(hour) * rounds_per_hour + round) * opts.round_seconds * 1000;
            fleet.refresh();
            let (scores, mean) = rebalance::scores(&fleet.states, &opts.score);
            let hot_for =
                hysteresis.observe(&scores, mean, opts.rebalance.rebalance_threshold, now);
            let allowed = budget.available(opts.rebalance.rebalance_moves_per_minute, now);
            let units = &fleet.units;
            let movable = |on: &str, id: QueueId| -> Result<String, String> {
                let unit = &units[id as usize - 1];
                if cluster_name(unit.cluster) != on {
                    return Err("moved".into());
                }
                if unit
                    .moved_at_ms
                    .is_some_and(|at| now.saturating_sub(at) < rest)
                {
                    return Err("moved recently".into());
                }
                Ok(format!("q{id}"))
            };
            let plan = rebalance::plan(
                &fleet.states,
                &hot_for,
                &movable,
                &opts.limits,
                &opts.score,
                &opts.rebalance,
                allowed,
            );
            for planned in &plan.moves {
                let id = planned.queue_id as usize - 1;
                row.bytes_moved += fleet.units[id].load(id).bytes_stored as f64;
                fleet.units[id].moved_at_ms = Some(now);
                fleet.move_unit(id, cluster_index(&planned.to));
                budget.spend(now);
                hysteresis.shed(&planned.from, now);
                row.moves += 1;
            }
            let max = scores.values().flatten().copied().fold(0.0, f64::max);
            let ratio = if mean > 0.0 { max / mean } else { 1.0 };
            row.worst_max_over_mean = row.worst_max_over_mean.max(ratio);
            row.max_over_mean = ratio;
            row.mean_score = mean;
        }
        row.clusters = fleet.clusters.iter().filter(|c| c.alive).count();
        total_moves += row.moves;
        progress(&row);
        rows.push(row);
    }
    let steady: Vec<&HourRow> = rows.iter().rev().take(24).collect();
    let mut ratios: Vec<f64> = steady.iter().map(|r| r.max_over_mean).collect();
    ratios.sort_by(f64::total_cmp);
    let hours = steady.len() as f64;
    let summary = Summary {
        partitions: fleet.units.len(),
        steady_hours: steady.len() as u32,
        steady_median_max_over_mean: ratios[ratios.len() / 2],
        steady_worst_max_over_mean: steady
            .iter()
            .map(|r| r.worst_max_over_mean)
            .fold(0.0, f64::max),
        steady_moves_per_hour: steady.iter().map(|r| r.moves as f64).sum::<f64>() / hours,
        steady_bytes_moved_per_hour: steady.iter().map(|r| r.bytes_moved).sum::<f64>() / hours,
        total_moves,
    };
    (rows, summary)
}

/// Draws the run: `<stem>-balance.png` (the highest score over the mean, at each hour's end and
/// at its worst round) and `<stem>-moves.png` (moves an hour).
pub fn plot(rows: &[HourRow], stem: &std::path::Path) -> anyhow::Result<()> {
    use sluice_chart::{line_chart, BLACK, BLUE, RED};
    let path = |suffix: &str| {
        let mut name = stem.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let points = |f: fn(&HourRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (f64::from(r.hour), f(r))).collect()
    };
    line_chart(
        &path("-balance.png"),
        "simulated fleet: the hottest cluster's score over the mean",
        "simulated hours",
        "max / mean score",
        &[
            ("at the hour's end", BLUE, points(|r| r.max_over_mean)),
            (
                "worst round of the hour",
                RED,
                points(|r| r.worst_max_over_mean),
            ),
            ("goal 1.15", BLACK, points(|_| 1.15)),
        ],
        false,
    )?;
    line_chart(
        &path("-moves.png"),
        "simulated fleet: queue moves",
        "simulated hours",
        "moves / hour",
        &[("moves", BLUE, points(|r| r.moves as f64))],
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small() -> SimOpts {
        SimOpts {
            clusters: 20,
            queues: 5_000,
            hours: 30,
            zipf_exponent: 1.0,
            mean_load: 0.5,
            round_seconds: 60,
            seed: 7,
            partition_share: 0.1,
            add: vec![(10, 4)],
            lose: vec![(20, 3)],
            churn_per_hour: 0.005,
            score: ScoreConfig::default(),
            rebalance: RebalanceOpts {
                rebalance_threshold: 0.03,
                rebalance_sustain_ms: 5 * 60_000,
                rebalance_moves_per_minute: 10,
                rebalance_queue_rest_ms: 60 * 60_000,
                rebalance_interval_ms: 60_000,
            },
            limits: Limits::default(),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let opts = SimOpts {
            hours: 3,
            ..small()
        };
        assert_eq!(run(&opts, |_| {}), run(&opts, |_| {}));
    }

    #[test]
    fn a_small_fleet_is_brought_into_balance_and_kept_there_with_bounded_moves() {
        let opts = small();
        opts.validate().unwrap();
        let (rows, summary) = run(&opts, |_| {});
        assert_eq!(rows.len(), 30);
        let first = &rows[0];
        assert!(
            first.worst_max_over_mean > 1.3,
            "a random placement of Zipf rates starts out of balance: {first:?}"
        );
        assert_eq!(rows[12].clusters, 24, "4 clusters added at hour 10");
        assert_eq!(rows[25].clusters, 21, "3 clusters lost at hour 20");
        assert!(
            rows[20].placed > 0,
            "the lost clusters' queues were placed again"
        );
        assert!(
            summary.steady_median_max_over_mean <= 1.15,
            "{summary:?}\n{rows:#?}"
        );
        // At most the budget, and well under it once balanced.
        assert!(rows.iter().all(|r| r.moves <= 10 * 60), "{rows:#?}");
        assert!(
            summary.steady_moves_per_hour < 20.0,
            "{summary:?}\n{rows:#?}"
        );

        // Without moves the same fleet stays out of balance: the balance is the rebalancer's.
        let frozen = SimOpts {
            rebalance: RebalanceOpts {
                rebalance_moves_per_minute: 0,
                ..opts.rebalance.clone()
            },
            ..opts
        };
        let (_, still) = run(&frozen, |_| {});
        assert_eq!(still.total_moves, 0);
        assert!(still.steady_median_max_over_mean > 1.3, "{still:?}");
    }
}

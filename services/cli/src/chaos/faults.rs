//! The faults a chaos run makes on the processes it started, and the order they come in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::probe::{current_leader, leading_manager};
use super::report::Ledger;
use super::ChaosArgs;
use crate::dev::Parts;

/// What happens on the schedule.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(super) enum Fault {
    /// Every fault below in turn, in an order shuffled anew each round.
    Mix,
    /// SIGKILL a backend node (8 times in 10, half of those the leader), a frontend or a
    /// metadata node, and start it again after --down-for.
    Kill,
    /// Cut the backend leader off the network for --partition-for.
    Partition,
    /// Cut a backend follower off the network for --partition-for.
    PartitionFollower,
    /// Cut the backend leader off its peers only for --partition-for: frontends and etcd
    /// still reach it (an asymmetric partition).
    PartitionPeers,
    /// Cut a frontend off every backend node for --partition-for; clients still reach it.
    PartitionFrontend,
    /// Freeze the backend leader (SIGSTOP) for --pause-for, then let it go on (SIGCONT).
    Pause,
    /// SIGKILL a member of the 3-member etcd cluster and start it again after --down-for.
    Etcd,
    /// SIGKILL the leading manager and start it again after --down-for.
    Manager,
    /// Stop a part of any tier (etcd, backend, metadata, manager, frontend) as a rolling
    /// upgrade does (SIGTERM, waiting for it to exit) and start it again at once.
    Restart,
}

/// Every fault a mix takes turns with.
const MIXED: [Fault; 9] = [
    Fault::Kill,
    Fault::Partition,
    Fault::PartitionFollower,
    Fault::PartitionPeers,
    Fault::PartitionFrontend,
    Fault::Pause,
    Fault::Etcd,
    Fault::Manager,
    Fault::Restart,
];

impl Fault {
    /// Whether the backend nodes must run in network namespaces of their own for it.
    pub(super) fn needs_netns(self) -> bool {
        matches!(
            self,
            Fault::Mix
                | Fault::Partition
                | Fault::PartitionFollower
                | Fault::PartitionPeers
                | Fault::PartitionFrontend
        )
    }

    /// How long after it starts the fault is over.
    pub(super) fn outage(self, args: &ChaosArgs) -> Duration {
        match self {
            Fault::Partition
            | Fault::PartitionFollower
            | Fault::PartitionPeers
            | Fault::PartitionFrontend => args.partition_for,
            Fault::Pause => args.pause_for,
            Fault::Kill | Fault::Etcd | Fault::Manager => args.down_for,
            // A restart's stop is as long as the part takes to drain; the schedule leaves room.
            Fault::Restart | Fault::Mix => args.down_for,
        }
    }
}

/// Which fault comes next: the one asked for, or for a mix each kind once per round, so that
/// a run of 9 faults or more has made every kind.
pub(super) struct Schedule {
    fault: Fault,
    round: Vec<Fault>,
}

impl Schedule {
    pub(super) fn new(fault: Fault) -> Schedule {
        Schedule {
            fault,
            round: Vec::new(),
        }
    }

    pub(super) fn next(&mut self, rng: &mut StdRng) -> Fault {
        if self.fault != Fault::Mix {
            return self.fault;
        }
        if self.round.is_empty() {
            self.round = MIXED.to_vec();
            self.round.shuffle(rng);
        }
        self.round.pop().expect("refilled")
    }
}

/// The deployment this run started, and where to read who leads.
pub(super) struct Target {
    pub(super) parts: Arc<Mutex<Parts>>,
    /// The backend nodes' admin addresses, in node order.
    pub(super) backends: Vec<String>,
    /// The managers' admin addresses, in manager order.
    pub(super) managers: Vec<String>,
    pub(super) started: Instant,
}

impl Target {
    fn say(&self, what: std::fmt::Arguments) {
        eprintln!(
            "chaos: {:>5.1}s {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Makes `fault` and undoes it (starts again, joins again, lets go on); counts it in
    /// `faults` under its kind and notes when it began in `ledger`.
    pub(super) async fn inject(
        &self,
        fault: Fault,
        args: &ChaosArgs,
        rng: &mut StdRng,
        faults: &mut HashMap<&'static str, u32>,
        ledger: &Mutex<Ledger>,
    ) -> anyhow::Result<()> {
        let began = Instant::now();
        let label = match fault {
            Fault::Kill => self.kill_any(args, rng).await?,
            Fault::Partition | Fault::PartitionFollower | Fault::PartitionPeers => {
                self.partition(fault, args, rng).await?
            }
            Fault::PartitionFrontend => {
                let f = rng.gen_range(0..usize::from(crate::dev::FRONTENDS));
                self.say(format_args!(
                    "cutting frontend-{} off the backends for {:?}",
                    f + 1,
                    args.partition_for
                ));
                let cut = |on: bool| {
                    let parts = self.parts.lock().expect("not poisoned");
                    let netns = parts.netns.as_ref().expect("set up for partitions");
                    netns.cut_frontend_from_backends(f, on)
                };
                cut(true)?;
                tokio::time::sleep(args.partition_for).await;
                cut(false)?;
                self.say(format_args!("frontend-{} joined again", f + 1));
                Some("partition_frontend")
            }
            Fault::Pause => self.pause(args).await?,
            Fault::Etcd => {
                let member = rng.gen_range(0..crate::dev::ETCD_MEMBERS);
                let name = crate::dev::etcd_name(member);
                self.kill_and_restart(&name, args.down_for).await?;
                Some("etcd")
            }
            Fault::Manager => {
                let leading = leading_manager(&self.managers).await?;
                let n = leading.unwrap_or_else(|| rng.gen_range(0..self.managers.len()));
                if leading.is_none() {
                    self.say(format_args!("no manager leads; killing one at random"));
                }
                self.kill_and_restart(&format!("manager-{}", n + 1), args.down_for)
                    .await?;
                Some("manager_leader")
            }
            Fault::Restart => {
                self.restart_any(rng).await?;
                Some("restart")
            }
            Fault::Mix => unreachable!("the schedule picks a fault of the mix"),
        };
        if let Some(label) = label {
            *faults.entry(label).or_default() += 1;
            let mut ledger = ledger.lock().expect("not poisoned");
            ledger.faults.push((began, label));
        }
        Ok(())
    }

    /// SIGKILLs a part of a kind [`pick_part`] picks and starts it again.
    async fn kill_any(
        &self,
        args: &ChaosArgs,
        rng: &mut StdRng,
    ) -> anyhow::Result<Option<&'static str>> {
        let kind = pick_part(rng, false);
        // Half the backend kills go to the leader: a failover is what is worth proving. The
        // leader is looked up for the other half too, since a node picked at random may be it.
        let leader = if kind == "backend" {
            current_leader(&self.backends)
                .await?
                .map(|n| format!("backend-a{}", n + 1))
        } else {
            None
        };
        let aim_at_leader = leader.is_some() && rng.gen_bool(0.5);
        let name = {
            let parts = self.parts.lock().expect("not poisoned");
            let candidates: Vec<&str> = parts
                .parts
                .iter()
                .filter(|part| part.kind == kind)
                .filter(|part| !aim_at_leader || leader.as_ref() == Some(&part.name))
                .map(|part| part.name.as_str())
                .collect();
            candidates[rng.gen_range(0..candidates.len())].to_owned()
        };
        self.kill_and_restart(&name, args.down_for).await?;
        // Counted as a leader kill whenever it was one: an ASYNC run may lose what the leader
        // had not replicated, and the loss is judged against these.
        Ok(Some(if leader.as_ref() == Some(&name) {
            "leader"
        } else {
            kind
        }))
    }

    /// SIGKILLs the part named `name`, and starts it again after `down_for`.
    async fn kill_and_restart(&self, name: &str, down_for: Duration) -> anyhow::Result<()> {
        let index = self.parts.lock().expect("not poisoned").index_of(name)?;
        self.say(format_args!("SIGKILL {name}"));
        self.blocking(move |parts| parts.kill(index)).await?;
        tokio::time::sleep(down_for).await;
        self.blocking(move |parts| parts.restart(index))
            .await
            .with_context(|| format!("cannot start {name} again"))?;
        self.say(format_args!("{name} is back"));
        Ok(())
    }

    /// Stops a part of any tier as an upgrade does and starts it again at once.
    async fn restart_any(&self, rng: &mut StdRng) -> anyhow::Result<()> {
        let (index, name) = {
            let parts = self.parts.lock().expect("not poisoned");
            let index = rng.gen_range(0..parts.parts.len());
            (index, parts.parts[index].name.clone())
        };
        self.say(format_args!(
            "restarting {name} (SIGTERM, then started again)"
        ));
        self.blocking(move |parts| {
            parts.stop(index);
            parts.restart(index)
        })
        .await
        .with_context(|| format!("cannot start {name} again"))?;
        self.say(format_args!("{name} is back"));
        Ok(())
    }

    /// Cuts the leader, a follower or the leader's links to its peers for --partition-for.
    async fn partition(
        &self,
        fault: Fault,
        args: &ChaosArgs,
        rng: &mut StdRng,
    ) -> anyhow::Result<Option<&'static str>> {
        let Some(leader) = self.leader().await? else {
            self.say(format_args!("no leader; no partition this time"));
            return Ok(None);
        };
        let node = match fault {
            Fault::PartitionFollower => {
                let followers: Vec<usize> =
                    (0..self.backends.len()).filter(|&n| n != leader).collect();
                followers[rng.gen_range(0..followers.len())]
            }
            _ => leader,
        };
        let (what, label) = match fault {
            Fault::PartitionFollower => ("the follower", "partition_follower"),
            Fault::PartitionPeers => ("from its peers only, the leader", "partition_peers"),
            _ => ("the leader", "partition"),
        };
        self.say(format_args!(
            "cutting off {what} a{} for {:?}",
            node + 1,
            args.partition_for
        ));
        let cut = |on: bool| -> anyhow::Result<()> {
            let parts = self.parts.lock().expect("not poisoned");
            let netns = parts.netns.as_ref().expect("set up for partitions");
            if fault == Fault::PartitionPeers {
                netns.cut_from_peers(node, on)
            } else {
                netns.cut(node, on)
            }
        };
        cut(true)?;
        tokio::time::sleep(args.partition_for).await;
        cut(false)?;
        self.say(format_args!("a{} joined again", node + 1));
        Ok(Some(label))
    }

    /// Freezes the leader for --pause-for.
    async fn pause(&self, args: &ChaosArgs) -> anyhow::Result<Option<&'static str>> {
        let Some(leader) = self.leader().await? else {
            self.say(format_args!("no leader to pause"));
            return Ok(None);
        };
        let index = self
            .parts
            .lock()
            .expect("not poisoned")
            .index_of(&format!("backend-a{}", leader + 1))?;
        self.say(format_args!(
            "SIGSTOP the leader a{} for {:?}",
            leader + 1,
            args.pause_for
        ));
        self.parts
            .lock()
            .expect("not poisoned")
            .pause(index, true)?;
        tokio::time::sleep(args.pause_for).await;
        self.parts
            .lock()
            .expect("not poisoned")
            .pause(index, false)?;
        self.say(format_args!("SIGCONT a{}", leader + 1));
        Ok(Some("pause"))
    }

    /// The backend node that leads, waiting up to 10 s for one: right after a fault the
    /// cluster may still be electing, and a fault aimed at the leader should not be skipped.
    async fn leader(&self) -> anyhow::Result<Option<usize>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(leader) = current_leader(&self.backends).await? {
                return Ok(Some(leader));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `f` on the parts on a blocking thread: starting and stopping processes waits.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Parts) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let parts = self.parts.clone();
        tokio::task::spawn_blocking(move || f(&mut parts.lock().expect("not poisoned"))).await?
    }
}

/// Backend nodes are what replication is about; the other tiers get a turn too, etcd and the
/// managers only `with_control_plane` (a run of its own kills those in faults of their own).
pub(super) fn pick_part(rng: &mut StdRng, with_control_plane: bool) -> &'static str {
    match rng.gen_range(0..10) {
        0 => "frontend",
        1 => "metadata",
        2 if with_control_plane => "etcd",
        3 if with_control_plane => "manager",
        _ => "backend",
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_mix_makes_every_kind_of_fault_once_in_each_round_of_nine() {
        let mut schedule = Schedule::new(Fault::Mix);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..3 {
            let mut round: Vec<Fault> = (0..MIXED.len()).map(|_| schedule.next(&mut rng)).collect();
            round.sort_by_key(|f| *f as u8);
            assert_eq!(round, MIXED);
        }
    }

    #[test]
    fn a_single_fault_is_always_that_fault() {
        let mut schedule = Schedule::new(Fault::Pause);
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..20).all(|_| schedule.next(&mut rng) == Fault::Pause));
    }
}

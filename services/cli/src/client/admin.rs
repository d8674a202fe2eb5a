//! The operators' commands: backend clusters, placements and queue moves through the managers,
//! the membership of a replicated cluster through its nodes, and principals, access keys and
//! policies through a frontend.

use anyhow::anyhow;
use clap::Subcommand;
use serde_json::json;
use sluice_proto::v1 as pb;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

use super::failed;
use super::identity::{self, GrantArgs, KeyCommand, PolicyCommand, PrincipalCommand};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Each backend cluster's live nodes, load, score and its parts, queue count, and whether
    /// it takes new queues.
    Clusters {
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// The leader manager's rebalancer: with --dry-run (the default) the moves it would start
    /// now; `pause` and `resume` stop and restart it.
    Rebalance {
        #[arg(value_enum, default_value_t = RebalanceAction::Plan)]
        action: RebalanceAction,
        /// Show the plan without moving anything (what `plan` does; accepted for clarity).
        #[arg(long)]
        dry_run: bool,
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// Move QUEUE to backend cluster CLUSTER: its partition where it is now is sealed (no new
    /// sends) and drained by consumers, then removed; new sends go to CLUSTER at once.
    Place {
        queue: String,
        #[arg(long)]
        cluster: String,
        /// Wait until consumers have drained the sealed partition (the manager removes it once
        /// its deduplication ids have expired, sealed_keep_ms after the seal).
        #[arg(long)]
        wait: bool,
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// Where QUEUE's partitions are and how many messages each holds.
    Placement {
        queue: String,
        /// Any manager's gRPC URL.
        #[arg(long, env = "SLUICE_MANAGER", default_value = "http://127.0.0.1:7090")]
        manager: String,
    },
    /// The replicated nodes of one backend cluster: who leads, who has caught up, and changes
    /// to its membership. Any node of the cluster takes these.
    #[command(subcommand)]
    Cluster(ClusterAdmin),
    /// Principals: the callers access keys stand for (through the --endpoint frontend).
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Access keys: create, list, revoke and rotate (through the --endpoint frontend).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Allow a principal actions on the queues matching a pattern.
    Grant(GrantArgs),
    /// Take actions on exactly that pattern out of a principal's policy.
    Revoke(GrantArgs),
    /// Show policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The master key that seals queues' data keys and access keys' secrets.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RebalanceAction {
    /// Show the moves the rebalancer would start now.
    Plan,
    /// Stop starting moves (moves under way finish).
    Pause,
    /// Start moving again.
    Resume,
}

#[derive(Subcommand)]
pub enum MasterKeyCommand {
    /// Re-wrap every data key and secret under the frontends' current master key (the first
    /// line of their key file). Run it once every frontend has the new key file with the old
    /// key still in it; then the old key can go. Messages are not rewritten.
    Rotate,
}

#[derive(Subcommand)]
pub enum ClusterAdmin {
    /// The cluster's members, its leader, and how far each node has the log.
    Status {
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
    /// Add node NAME, started with `sluice-backend --join`, reachable at --url: it catches up
    /// as a learner first, then becomes a voting member. Returns once it votes.
    AddNode {
        name: String,
        /// The new node's gRPC URL.
        #[arg(long)]
        url: String,
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
    /// Remove member NAME from the cluster; it no longer receives the log and can be stopped.
    RemoveNode {
        name: String,
        /// Any node of the cluster (its gRPC URL).
        #[arg(long, env = "SLUICE_BACKEND", default_value = "http://127.0.0.1:7080")]
        node: String,
    },
}

fn print_clusters(json_out: bool, listed: &pb::ListClustersResponse) {
    if json_out {
        let clusters: Vec<_> = listed
            .clusters
            .iter()
            .map(|c| {
                let load = c.load.unwrap_or_default();
                let score = c.score.map(|s| {
                    json!({
                        "total": s.total, "cpu": s.cpu, "messages": s.messages,
                        "bytes": s.bytes, "storage": s.storage, "latency": s.latency,
                    })
                });
                json!({
                    "name": c.name,
                    "nodes": c.nodes.iter().map(|n| json!({"node": n.node, "url": n.url})).collect::<Vec<_>>(),
                    "messages_in_per_second": load.messages_in_per_second,
                    "messages_out_per_second": load.messages_out_per_second,
                    "bytes_in_per_second": load.bytes_in_per_second,
                    "bytes_out_per_second": load.bytes_out_per_second,
                    "cpu": load.cpu,
                    "commit_seconds": load.commit_seconds,
                    "bytes_stored": load.bytes_stored,
                    "disk_free_bytes": load.disk_free_bytes,
                    "score": score,
                    "unknown": c.unknown,
                    "queue_count": c.queue_count,
                    "accepting": c.accepting,
                    "reason": c.reason,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "leader": listed.leader, "clusters": clusters })
        );
        return;
    }
    let leader = if listed.leader.is_empty() {
        "none"
    } else {
        listed.leader.as_str()
    };
    println!("leader manager: {leader}");
    println!(
        "{:<12} {:>5} {:>7} {:>10} {:>10} {:>5} {:>9} {:>14} {:>16} {:>7}  new queues",
        "cluster",
        "nodes",
        "score",
        "in msg/s",
        "out msg/s",
        "cpu",
        "commit",
        "bytes stored",
        "disk free",
        "queues"
    );
    for c in &listed.clusters {
        let load = c.load.unwrap_or_default();
        let accepting = if c.accepting {
            "yes".to_owned()
        } else {
            format!("no: {}", c.reason)
        };
        let score = c
            .score
            .map_or("?".to_owned(), |s| format!("{:.3}", s.total));
        println!(
            "{:<12} {:>5} {:>7} {:>10.0} {:>10.0} {:>4.0}% {:>7.1}ms {:>14} {:>16} {:>7}  {accepting}",
            c.name,
            c.nodes.len(),
            score,
            load.messages_in_per_second,
            load.messages_out_per_second,
            load.cpu * 100.0,
            load.commit_seconds * 1000.0,
            load.bytes_stored,
            load.disk_free_bytes,
            c.queue_count
        );
        match c.score {
            Some(s) => println!(
                "  score parts: cpu {:.3}  messages {:.3}  bytes {:.3}  storage {:.3}  latency {:.3}",
                s.cpu, s.messages, s.bytes, s.storage, s.latency
            ),
            None => println!("  load unknown: {}", c.unknown),
        }
        for n in &c.nodes {
            println!("  {} {}", n.node, n.url);
        }
    }
}

fn print_rebalance(json_out: bool, plan: &pb::RebalanceResponse) {
    if json_out {
        let clusters: Vec<_> = plan
            .clusters
            .iter()
            .map(
                |c| json!({"name": c.name, "score": c.score, "hot_for_seconds": c.hot_for_seconds}),
            )
            .collect();
        let moves: Vec<_> = plan
            .moves
            .iter()
            .map(|m| {
                json!({
                    "queue": m.queue, "queue_id": m.queue_id, "from": m.from, "to": m.to,
                    "score": m.score, "reason": m.reason,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "paused": plan.paused, "mean_score": plan.mean_score, "threshold": plan.threshold,
                "sustain_seconds": plan.sustain_seconds, "budget": plan.budget,
                "clusters": clusters, "moves": moves, "notes": plan.notes,
            })
        );
        return;
    }
    println!(
        "rebalancer: {}; mean score {:.3}; hot above {:.3} for {:.0} s; {} moves allowed now",
        if plan.paused { "paused" } else { "running" },
        plan.mean_score,
        plan.mean_score + plan.threshold,
        plan.sustain_seconds,
        plan.budget
    );
    for c in &plan.clusters {
        let score = c.score.map_or("unknown".to_owned(), |s| format!("{s:.3}"));
        let hot = if c.hot_for_seconds > 0.0 {
            format!("  hot for {:.0} s", c.hot_for_seconds)
        } else {
            String::new()
        };
        println!("  {:<12} {score}{hot}", c.name);
    }
    if plan.moves.is_empty() {
        println!("no moves planned");
    }
    for m in &plan.moves {
        println!(
            "move {} from {} to {} (score {:.3}): {}",
            m.queue, m.from, m.to, m.score, m.reason
        );
    }
    for note in &plan.notes {
        println!("note: {note}");
    }
}

fn print_placement(json_out: bool, placement: &pb::QueuePlacement) {
    if json_out {
        let partitions: Vec<_> = placement
            .partitions
            .iter()
            .map(|p| {
                let counts = p.counts.map(|c| {
                    json!({"visible": c.visible, "in_flight": c.in_flight, "delayed": c.delayed})
                });
                json!({
                    "partition": p.partition,
                    "cluster": p.cluster,
                    "sealed": p.sealed,
                    "weight": p.weight,
                    "counts": counts,
                    "error": p.error,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "queue": placement.queue,
                "queue_id": placement.queue_id,
                "moving_to": placement.moving_to,
                "partitions": partitions,
            })
        );
        return;
    }
    println!("queue {} (id {})", placement.queue, placement.queue_id);
    if !placement.moving_to.is_empty() {
        println!("moving to {}", placement.moving_to);
    }
    for p in &placement.partitions {
        let state = if p.sealed {
            "sealed, draining".to_owned()
        } else {
            format!("active, weight {:.2}", p.weight)
        };
        let counts = match p.counts {
            Some(c) => format!(
                "{} visible, {} in flight, {} delayed",
                c.visible, c.in_flight, c.delayed
            ),
            None => format!("counts unavailable: {}", p.error),
        };
        println!(
            "  partition {} on {}: {state}; {counts}",
            p.partition, p.cluster
        );
    }
}

async fn manager_client(manager: &str) -> anyhow::Result<ManagerServiceClient<Channel>> {
    let channel = sluice_common::tls::channel(manager, None, |endpoint| endpoint)
        .map_err(|err| anyhow!("cannot reach the manager at {manager}: {err:#}"))?;
    Ok(ManagerServiceClient::new(channel))
}

async fn cluster_client(node: &str) -> anyhow::Result<ClusterServiceClient<Channel>> {
    let channel = sluice_common::tls::channel(node, None, |endpoint| endpoint)
        .map_err(|err| anyhow!("cannot reach the backend node at {node}: {err:#}"))?;
    Ok(ClusterServiceClient::new(channel))
}

fn print_cluster(json_out: bool, status: &pb::ClusterStatus) {
    if json_out {
        let members: Vec<_> = status
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "url": m.url,
                    "voter": m.voter,
                    "matched_index": m.matched_index,
                })
            })
            .collect();
        let out = serde_json::json!({
            "node": status.node,
            "leader": status.leader,
            "leader_url": status.leader_url,
            "term": status.term,
            "last_log_index": status.last_log_index,
            "applied_index": status.applied_index,
            "serving": status.serving,
            "members": members,
        });
        println!("{out}");
        return;
    }
    println!("leader   {} ({})", status.leader, status.leader_url);
    println!(
        "asked    {}: term {}, log {}, applied {}",
        status.node, status.term, status.last_log_index, status.applied_index
    );
    for m in &status.members {
        let role = if m.voter { "voter" } else { "learner" };
        let matched = m
            .matched_index
            .map_or(String::new(), |i| format!("  has log to {i}"));
        println!("  {:<8} {:<8} {}{matched}", m.name, role, m.url);
    }
}

/// Runs an admin command. Clusters and placements are the managers' (or a backend cluster's
/// nodes'), over the operators' certificate; principals, keys and policies go to `endpoint`, a
/// frontend, with an access key that holds the admin action.
pub async fn run_admin(
    endpoint: &str,
    json_out: bool,
    command: AdminCommand,
) -> anyhow::Result<()> {
    match command {
        AdminCommand::Principal(command) => {
            identity::principal(endpoint, json_out, command).await?
        }
        AdminCommand::Key(command) => identity::key(endpoint, json_out, command).await?,
        AdminCommand::Grant(args) => {
            identity::policy_change(endpoint, json_out, true, args).await?
        }
        AdminCommand::Revoke(args) => {
            identity::policy_change(endpoint, json_out, false, args).await?
        }
        AdminCommand::Policy(command) => identity::policy(endpoint, json_out, command).await?,
        AdminCommand::MasterKey(MasterKeyCommand::Rotate) => {
            identity::rotate_master_key(endpoint, json_out).await?
        }
        AdminCommand::Cluster(command) => {
            let (node, status) = match command {
                ClusterAdmin::Status { node } => {
                    let status = cluster_client(&node)
                        .await?
                        .status(pb::ClusterStatusRequest {})
                        .await;
                    (node, status)
                }
                ClusterAdmin::AddNode { name, url, node } => {
                    let status = cluster_client(&node)
                        .await?
                        .add_node(pb::AddNodeRequest { name, url })
                        .await;
                    (node, status)
                }
                ClusterAdmin::RemoveNode { name, node } => {
                    let status = cluster_client(&node)
                        .await?
                        .remove_node(pb::RemoveNodeRequest { name })
                        .await;
                    (node, status)
                }
            };
            let status = status.map_err(|status| failed(&node, status))?.into_inner();
            print_cluster(json_out, &status);
        }
        AdminCommand::Place {
            queue,
            cluster,
            wait,
            manager,
        } => {
            let mut client = manager_client(&manager).await?;
            let mut placement = client
                .move_queue(pb::MoveQueueRequest {
                    queue: queue.clone(),
                    cluster,
                })
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            // The sealed partitions drain as consumers delete.
            let drained = |p: &pb::PartitionInfo| {
                !p.sealed
                    || p.counts
                        .is_some_and(|c| c.visible + c.in_flight + c.delayed == 0)
            };
            while wait && !placement.partitions.iter().all(drained) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                placement = client
                    .get_placement(pb::GetPlacementRequest {
                        queue: queue.clone(),
                    })
                    .await
                    .map_err(|status| failed(&manager, status))?
                    .into_inner();
            }
            print_placement(json_out, &placement);
        }
        AdminCommand::Placement { queue, manager } => {
            let placement = manager_client(&manager)
                .await?
                .get_placement(pb::GetPlacementRequest { queue })
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            print_placement(json_out, &placement);
        }
        AdminCommand::Rebalance {
            action,
            dry_run,
            manager,
        } => {
            use pb::rebalance_request::Action;
            let action = match action {
                RebalanceAction::Plan => Action::Plan,
                RebalanceAction::Pause | RebalanceAction::Resume if dry_run => {
                    return Err(anyhow!("--dry-run only goes with plan"));
                }
                RebalanceAction::Pause => Action::Pause,
                RebalanceAction::Resume => Action::Resume,
            };
            let plan = manager_client(&manager)
                .await?
                .rebalance(pb::RebalanceRequest {
                    action: action.into(),
                })
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            print_rebalance(json_out, &plan);
        }
        AdminCommand::Clusters { manager } => {
            let mut client = manager_client(&manager).await?;
            let listed = client
                .list_clusters(pb::ListClustersRequest {})
                .await
                .map_err(|status| failed(&manager, status))?
                .into_inner();
            print_clusters(json_out, &listed);
        }
    }
    Ok(())
}

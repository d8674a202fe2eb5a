//! How a node with an empty log given its cluster's members (`--peers`) finds its place, with
//! no operator: on Kubernetes the members are a StatefulSet's stable names, and a pod may start
//! on a fresh volume for three reasons that look alike from inside it.
//!
//! - **A new cluster**: no member has a log. Once every member answers and none has one, the
//!   first member listed proposes the cluster, with the Raft id each member reported (ids are
//!   made per data directory, see `identity`); the others wait for its log.
//! - **A member back on an empty volume** (its node was lost): some member runs the cluster,
//!   whose membership has this node's name under another id. This node asks to be added; the
//!   leader catches it up as a learner and replaces the old member with it in one change.
//! - **A new member** (the StatefulSet was scaled up): the same, with no member to replace.
//!
//! A node never proposes a cluster while any member is unreachable or has a log, so a node that
//! lost its volume while the others were down waits for them rather than starting a second
//! cluster beside the first.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::{network, Member, NodeId, Replica};

/// How often a node waiting to form or join its cluster looks again.
const RETRY: Duration = Duration::from_millis(500);
/// How long one member may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a node stands after one look at its members.
#[derive(Debug, PartialEq)]
enum Step {
    /// It belongs to the running cluster, or has just joined it or proposed it.
    Done,
    /// Nothing to do yet, for this reason.
    Wait(String),
}

/// Looks at the members until this node belongs to a cluster (or the node stops).
pub(super) async fn run(replica: Replica, members: Vec<Member>, shutdown: CancellationToken) {
    let mut last = String::new();
    loop {
        if replica.raft.is_initialized().await.unwrap_or(false) {
            return;
        }
        // Each reason is logged once when it changes, not every half second.
        match step(&replica, &members).await {
            Ok(Step::Done) => return,
            Ok(Step::Wait(why)) => {
                if why != last {
                    tracing::info!(reason = %why, "waiting to form or join the cluster");
                    last = why;
                }
            }
            Err(err) => {
                let why = format!("{err:#}");
                if why != last {
                    tracing::warn!(error = %why, "cannot join the cluster yet; retrying");
                    last = why;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn step(replica: &Replica, members: &[Member]) -> anyhow::Result<Step> {
    let mut ids: BTreeMap<NodeId, Member> = [(replica.id, replica.me.clone())].into();
    let mut silent = Vec::new();
    for member in members.iter().filter(|m| m.name != replica.me.name) {
        let status = match ask_status(member).await {
            Ok(status) => status,
            Err(err) => {
                silent.push(format!("{} ({err})", member.name));
                continue;
            }
        };
        anyhow::ensure!(
            status.node == member.name,
            "the member at {} is named {:?}, not {:?}; check --peers",
            member.url,
            status.node,
            member.name
        );
        if status.members.is_empty() {
            ids.insert(status.raft_id, member.clone());
            continue;
        }
        // The cluster runs.
        if status.members.iter().any(|m| m.raft_id == replica.id) {
            return Ok(Step::Wait(format!(
                "a member of the running cluster; waiting for its leader's log (via {})",
                member.name
            )));
        }
        tracing::info!(via = %member.name, "asking the running cluster to add this node");
        let mut client = network::client(&member.url)?;
        client
            .add_node(pb::AddNodeRequest {
                name: replica.me.name.clone(),
                url: replica.me.url.clone(),
            })
            .await
            .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?;
        tracing::info!("added to the running cluster");
        return Ok(Step::Done);
    }
    if !silent.is_empty() {
        return Ok(Step::Wait(format!(
            "no member has a log yet and these do not answer: {}",
            silent.join(", ")
        )));
    }
    if members.first().map(|m| &m.name) != Some(&replica.me.name) {
        return Ok(Step::Wait(format!(
            "a new cluster; its first member {} proposes it",
            members.first().map_or("", |m| m.name.as_str())
        )));
    }
    anyhow::ensure!(
        ids.len() == members.len(),
        "two members reported the same Raft id; their data directories are copies"
    );
    replica.initialize(ids).await?;
    Ok(Step::Done)
}

async fn ask_status(member: &Member) -> anyhow::Result<pb::ClusterStatus> {
    let mut client = network::client(&member.url)?;
    let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
    request.set_timeout(ASK_TIMEOUT);
    let status = client
        .status(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    Ok(status.into_inner())
}

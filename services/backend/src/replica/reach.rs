//! Elections only where they can be won, and soon. openraft 0.9 has no pre-vote: a node cut
//! off from the others stands for election again and again, each time with a higher term, and
//! when it is back that term makes the leader step down for an election the returning node
//! cannot win (its log is behind), a second or so of unavailability for nothing. A restarted
//! node stands at once in the same way, before it has heard from the leader that is there.
//! And its own timer is slow to replace a leader that is gone: a node that once saw a longer
//! log than its own while it stood waits two election timeouts more at every later election,
//! until it stands again, and the first node to stand may be one whose log is behind, which
//! the others refuse, splitting the vote.
//!
//! So, with the other voters' status asked every 200 ms:
//! - a node of a cluster of several voters stands on openraft's timer only once it has reached
//!   a majority of the voters, itself included, for longer than a leader's lease (so that a
//!   leader that is there is heard from first), and only while it still does. Kept from
//!   standing, such a node loses nothing: it could not have been elected.
//! - a follower that may stand and has not heard from its leader for longer than the voters'
//!   lease (plus a random part, so that two followers rarely stand at once) stands at once,
//!   unless a voter it reaches has a longer log (that one should win, and will stand) or leads.
//!   openraft's timer stays on behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use sluice_proto::v1 as pb;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::lease::LeaderContact;
use super::{metrics, network, NodeId, Raft, ELECTION_TIMEOUT_MAX_MS};

/// How often the decisions are made.
const TICK: Duration = Duration::from_millis(25);

/// How often the other voters are asked, in ticks (200 ms).
const PROBE_EVERY_TICKS: u32 = 8;

/// How long a voter counts as reached after it last answered.
const REACHED_FOR: Duration = Duration::from_millis(1_000);

/// How long a voter has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// How long a node reaches a majority before it may stand: a leader that is there is heard
/// from first.
const SETTLE: Duration = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS + 500);

/// The voters refuse every candidate for `ELECTION_TIMEOUT_MAX_MS` after they last heard from
/// the leader (openraft's lease on the voters, which the leader's own lease counts on); a
/// follower stands this much later than that, plus up to `CAMPAIGN_JITTER`.
const CAMPAIGN_MARGIN: Duration = Duration::from_millis(150);
const CAMPAIGN_JITTER_MS: u64 = 400;

/// Whether a node that has reached a majority of the voters (itself included) for `reaching`
/// (`None`: it does not reach one now) may stand for election among `voters`.
fn may_stand(reaching: Option<Duration>, voters: usize) -> bool {
    voters <= 1 || reaching.is_some_and(|reaching| reaching >= SETTLE)
}

/// How long a follower waits out its leader's silence before it stands: a new draw each time.
fn campaign_after() -> Duration {
    Duration::from_millis(ELECTION_TIMEOUT_MAX_MS)
        + CAMPAIGN_MARGIN
        + Duration::from_millis(rand::thread_rng().gen_range(0..CAMPAIGN_JITTER_MS))
}

/// What each other voter last answered, and when.
type Answers = Arc<Mutex<HashMap<NodeId, (Instant, pb::ClusterStatus)>>>;

/// Turns this node's elections on and off as [`may_stand`] says, and stands early as the
/// module says, until `shutdown`.
pub(super) async fn gate_elections(
    raft: Raft,
    id: NodeId,
    contact: Arc<LeaderContact>,
    shutdown: CancellationToken,
) {
    // Since when this node has reached a majority without a break.
    let mut reaching_since: Option<Instant> = None;
    let mut clients: HashMap<String, ClusterServiceClient<Channel>> = HashMap::new();
    let answers: Answers = Arc::default();
    let mut standing = None;
    let mut wait = campaign_after();
    let mut stood_at: Option<Instant> = None;
    for tick in 0u32.. {
        let (voters, leader, last_log_index) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voters: Vec<(NodeId, String)> = membership
                .voter_ids()
                .filter_map(|voter| {
                    let url = membership.get_node(&voter)?.url.clone();
                    Some((voter, url))
                })
                .collect();
            (
                voters,
                metrics.current_leader,
                metrics.last_log_index.unwrap_or(0),
            )
        };
        if tick % PROBE_EVERY_TICKS == 0 {
            for (voter, url) in voters.iter().filter(|(voter, _)| *voter != id) {
                let client = match clients.get(url) {
                    Some(client) => client.clone(),
                    None => match network::client(url) {
                        Ok(client) => clients.entry(url.clone()).or_insert(client).clone(),
                        Err(_) => continue,
                    },
                };
                let (voter, answers) = (*voter, answers.clone());
                tokio::spawn(async move {
                    if let Some(status) = status_of(client).await {
                        answers.lock().insert(voter, (Instant::now(), status));
                    }
                });
            }
        }
        let fresh: Vec<pb::ClusterStatus> = {
            let answers = answers.lock();
            voters
                .iter()
                .filter(|(voter, _)| *voter != id)
                .filter_map(|(voter, _)| answers.get(voter))
                .filter(|(at, _)| at.elapsed() < REACHED_FOR)
                .map(|(_, status)| status.clone())
                .collect()
        };
        let reached = 1 + fresh.len();
        if reached * 2 > voters.len() {
            reaching_since.get_or_insert_with(Instant::now);
        } else {
            reaching_since = None;
        }
        let stand = may_stand(reaching_since.map(|since| since.elapsed()), voters.len());
        if standing != Some(stand) {
            tracing::info!(
                stand,
                reached,
                voters = voters.len(),
                "this node {} for election",
                if stand { "may stand" } else { "does not stand" }
            );
            raft.runtime_config().elect(stand);
            metrics::MAY_STAND.set(i64::from(stand));
            standing = Some(stand);
        }
        let silence = contact.silence();
        if silence.is_some_and(|silence| silence < wait / 2) {
            // The leader is heard from: the next silence gets a new draw.
            stood_at = None;
        }
        let overdue = silence.is_some_and(|silence| silence >= wait)
            && stood_at.is_none_or(|at| at.elapsed() >= wait);
        if stand && voters.len() > 1 && leader != Some(id) && overdue {
            let behind = fresh
                .iter()
                .any(|status| status.last_log_index > last_log_index || status.serving);
            if !behind {
                tracing::info!(
                    silence_ms = silence.map_or(0, |s| s.as_millis() as u64),
                    "the leader is silent: standing for election"
                );
                if let Err(err) = raft.trigger().elect().await {
                    tracing::warn!(error = %err, "cannot stand for election");
                }
                metrics::EARLY_ELECTIONS.inc();
                stood_at = Some(Instant::now());
                wait = campaign_after();
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// What the voter behind `client` answers about itself, if it answers in time.
async fn status_of(mut client: ClusterServiceClient<Channel>) -> Option<pb::ClusterStatus> {
    // A test's partition (`sluice-backend-failpoints`, SIGUSR1) cuts these too.
    fail::fail_point!("backend::raft_cut", |_| None);
    let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, client.status(request)).await;
    Some(answer.ok()?.ok()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_stands_only_once_it_has_reached_a_majority_for_a_lease() {
        let settled = SETTLE + Duration::from_millis(1);
        assert!(may_stand(Some(settled), 3));
        assert!(!may_stand(None, 3), "cut off");
        assert!(
            !may_stand(Some(Duration::from_millis(100)), 3),
            "just started, or just back from a partition"
        );
        assert!(may_stand(None, 1), "a cluster of one");
    }

    #[test]
    fn a_follower_stands_after_the_voters_lease_and_before_openrafts_timer() {
        for _ in 0..100 {
            let after = campaign_after();
            assert!(after > Duration::from_millis(ELECTION_TIMEOUT_MAX_MS));
            assert!(after < Duration::from_millis(ELECTION_TIMEOUT_MAX_MS + 600));
        }
    }
}

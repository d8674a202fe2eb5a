//! The `ClusterService` server: Raft messages from the other nodes, and membership changes,
//! which any node takes and hands to the leader.

use sluice_api::{Error, Result};
use sluice_proto::v1 as pb;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use sluice_proto::v1::cluster_service_server::ClusterService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{network, Member, Replica};

#[derive(Clone)]
pub struct ClusterServiceImpl {
    replica: Replica,
}

impl ClusterServiceImpl {
    pub fn new(replica: Replica) -> Self {
        ClusterServiceImpl { replica }
    }

    /// The leader's client, when another node leads.
    fn leader_client(&self) -> Result<Option<ClusterServiceClient<Channel>>> {
        if self.replica.is_leader() {
            return Ok(None);
        }
        let leader = self
            .replica
            .leader()
            .ok_or_else(|| Error::Unavailable("the cluster has no leader yet; retry".into()))?;
        network::client(&leader.url)
            .map(Some)
            .map_err(|err| Error::Internal(format!("leader URL {:?}: {err}", leader.url)))
    }
}

type Answer = std::result::Result<Response<pb::RaftMessage>, Status>;

/// What a node cut off by a test's partition (`backend::raft_cut`) answers its peers.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn cut() -> Status {
    Status::unavailable("cut off by fail point backend::raft_cut")
}

// The fail points' closures return a `tonic::Status`, as the handlers do.
#[allow(clippy::result_large_err)]
#[tonic::async_trait]
impl ClusterService for ClusterServiceImpl {
    async fn append_entries(&self, request: Request<pb::RaftMessage>) -> Answer {
        fail::fail_point!("backend::raft_cut", |_| Err(cut()));
        self.replica.leader_contact.heard();
        // A follower with a slow disk or link: each append reaches its log this many
        // milliseconds late (`return(MS)`); only followers take appends.
        #[cfg(feature = "failpoints")]
        if let Some(Some(delay)) = fail::eval("backend::follower_append_delay_ms", |ms| {
            ms.and_then(|ms| ms.parse::<u64>().ok())
        }) {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let rpc = network::decode(request.into_inner(), self.replica.id)?;
        let answer = self.replica.raft.append_entries(rpc).await;
        Ok(Response::new(network::encode(&answer)?))
    }

    async fn vote(&self, request: Request<pb::RaftMessage>) -> Answer {
        fail::fail_point!("backend::raft_cut", |_| Err(cut()));
        let rpc = network::decode(request.into_inner(), self.replica.id)?;
        let answer = self.replica.raft.vote(rpc).await;
        Ok(Response::new(network::encode(&answer)?))
    }

    async fn install_snapshot(&self, request: Request<pb::RaftMessage>) -> Answer {
        fail::fail_point!("backend::raft_cut", |_| Err(cut()));
        let rpc = network::decode(request.into_inner(), self.replica.id)?;
        let answer = self.replica.raft.install_snapshot(rpc).await;
        Ok(Response::new(network::encode(&answer)?))
    }

    async fn status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> std::result::Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.replica.status()))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> std::result::Result<Response<pb::ClusterStatus>, Status> {
        if let Some(mut leader) = self.leader_client()? {
            return leader.add_node(request.into_inner()).await;
        }
        let pb::AddNodeRequest { name, url } = request.into_inner();
        if name.is_empty() || url.is_empty() {
            return Err(Status::invalid_argument(
                "invalid node: name and url must be set",
            ));
        }
        tracing::info!(%name, %url, "adding a node to the cluster");
        self.replica.add_node(Member { name, url }).await?;
        Ok(Response::new(self.replica.status()))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> std::result::Result<Response<pb::ClusterStatus>, Status> {
        if let Some(mut leader) = self.leader_client()? {
            return leader.remove_node(request.into_inner()).await;
        }
        let name = request.into_inner().name;
        tracing::info!(%name, "removing a node from the cluster");
        self.replica.remove_node(&name).await?;
        Ok(Response::new(self.replica.status()))
    }

    async fn campaign(
        &self,
        _request: Request<pb::CampaignRequest>,
    ) -> std::result::Result<Response<pb::ClusterStatus>, Status> {
        tracing::info!("the leader is stopping and asked this node to take over");
        self.replica.campaign();
        Ok(Response::new(self.replica.status()))
    }
}

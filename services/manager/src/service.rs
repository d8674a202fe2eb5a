//! `ManagerService`: placement by the leader, the clusters' state from any manager.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use parking_lot::Mutex;
use sluice_api::cluster::{self, Placement};
use sluice_api::{Error, Result};
use sluice_client::channel::ChannelOptions;
use sluice_client::BackendClient;
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use sluice_proto::v1::manager_service_client::ManagerServiceClient;
use sluice_proto::v1::manager_service_server::ManagerService;
use tonic::{Request, Response, Status};

use crate::election::Leadership;
use crate::fleet::Fleet;
use crate::metrics;
use crate::policy::{self, ClusterState, Limits, ScoreConfig};
use crate::rebalance::RebalanceOpts;
use crate::rebalancer::Rebalancer;
use crate::spread::SpreadOpts;

#[derive(Clone)]
pub struct ManagerServiceImpl {
    pub(crate) client: Client,
    pub(crate) root: String,
    pub(crate) leadership: Leadership,
    pub(crate) limits: Limits,
    pub(crate) score: ScoreConfig,
    pub(crate) rebalance: RebalanceOpts,
    pub(crate) spread: SpreadOpts,
    /// A load report older than this makes its cluster's load unknown.
    pub(crate) stale_after: Duration,
    /// How long after its seal a drained partition is kept, ms.
    pub(crate) sealed_keep_ms: u64,
    pub(crate) fleet: Fleet,
    pub(crate) rebalancer: Arc<Mutex<Rebalancer>>,
    pub(crate) backends: Backends,
}

/// Clients of backend nodes by URL, shared by every move.
pub(crate) type Backends = Arc<Mutex<HashMap<String, BackendClient>>>;

pub(crate) fn etcd(err: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("etcd: {err}"))
}

impl ManagerServiceImpl {
    async fn existing(&self, key: &str) -> Result<Option<Placement>> {
        let got = self.client.kv_client().get(key, None).await.map_err(etcd)?;
        got.kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .map_err(|err| Error::Internal(format!("placement {key} is corrupt: {err}")))
            })
            .transpose()
    }

    async fn place(&self, req: pb::PlaceQueueRequest) -> Result<pb::PlaceQueueResponse> {
        if req.queue_id == 0 {
            return Err(Error::invalid("queue_id", "must not be 0"));
        }
        let Some(fence) = self.leadership.fence() else {
            return Err(self.not_the_leader().await);
        };
        let key = cluster::placement_key(&self.root, req.queue_id);
        if let Some(placed) = self.existing(&key).await? {
            return Ok(pb::PlaceQueueResponse {
                cluster: placed.cluster,
            });
        }
        let colocate = match req.colocate_with {
            0 => None,
            partner => {
                let key = cluster::placement_key(&self.root, partner);
                Some((partner, self.existing(&key).await?))
            }
        };
        let clusters = match colocate {
            Some(_) => Vec::new(),
            None => {
                self.fleet.ready().await?;
                self.fleet.clusters(self.stale_after)
            }
        };
        let cluster = policy::cluster_for(colocate, &clusters, &self.limits, &self.score)?;
        let placement = Placement::new(&req.queue, &cluster);
        let value = serde_json::to_vec(&placement).expect("a placement serializes");
        let placed = placement;
        let txn = Txn::new()
            .when([
                fence,
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key.clone(), value, None)]);
        let written = self.client.kv_client().txn(txn).await.map_err(etcd)?;
        if written.succeeded() {
            self.fleet.note_placement(req.queue_id, placed);
            metrics::PLACEMENTS.with_label_values(&[&cluster]).inc();
            tracing::info!(queue = %req.queue, queue_id = req.queue_id, cluster = %cluster, "queue placed");
            return Ok(pb::PlaceQueueResponse { cluster });
        }
        // Either another placement of this queue won, or this manager is no longer the leader.
        match self.existing(&key).await? {
            Some(placed) => Ok(pb::PlaceQueueResponse {
                cluster: placed.cluster,
            }),
            None => Err(Error::Unavailable(
                "lost the manager leadership while placing; retry".into(),
            )),
        }
    }

    /// The answer of a manager that does not lead, naming the leader if there is one.
    async fn not_the_leader(&self) -> Error {
        let election = cluster::manager_election(&self.root);
        match sluice_client::leader_url(&self.client, &election).await {
            Ok(Some(url)) => {
                Error::FailedPrecondition(format!("not the leader; the leader is at {url}"))
            }
            Ok(None) => Error::Unavailable("not the leader, and no manager leads right now".into()),
            Err(err) => etcd(err),
        }
    }

    /// A client of the leader manager, for a request this manager does not lead.
    async fn leader(&self) -> Result<(String, ManagerServiceClient<tonic::transport::Channel>)> {
        let election = cluster::manager_election(&self.root);
        let leader = sluice_client::leader_url(&self.client, &election)
            .await
            .map_err(etcd)?
            .ok_or_else(|| Error::Unavailable("no manager leads right now; retry".into()))?;
        let channel = sluice_client::channel::channel(
            "the leader manager's URL",
            &leader,
            &ChannelOptions::default(),
        )?;
        Ok((leader, ManagerServiceClient::new(channel)))
    }

    /// MoveQueue: done by the leader; another manager hands it over.
    async fn move_to(&self, req: pb::MoveQueueRequest) -> Result<pb::QueuePlacement> {
        if self.leadership.fence().is_some() {
            return self.move_queue(&req.queue, &req.cluster).await;
        }
        let (leader, mut client) = self.leader().await?;
        let mut request = Request::new(req);
        sluice_common::telemetry::inject_trace(request.metadata_mut());
        let moved = client.move_queue(request).await.map_err(|status| {
            sluice_client::channel::from_status(&format!("the leader at {leader}"), status)
        })?;
        Ok(moved.into_inner())
    }

    /// Rebalance: the leader plans (and pauses, and resumes); another manager hands it over.
    async fn rebalance_request(&self, req: pb::RebalanceRequest) -> Result<pb::RebalanceResponse> {
        if self.leadership.fence().is_none() {
            let (leader, mut client) = self.leader().await?;
            let mut request = Request::new(req);
            sluice_common::telemetry::inject_trace(request.metadata_mut());
            let answer = client.rebalance(request).await.map_err(|status| {
                sluice_client::channel::from_status(&format!("the leader at {leader}"), status)
            })?;
            return Ok(answer.into_inner());
        }
        use pb::rebalance_request::Action;
        let action = Action::try_from(req.action)
            .map_err(|_| Error::invalid("action", format!("unknown action {}", req.action)))?;
        match action {
            Action::Plan => {}
            Action::Pause => self.set_paused(true).await?,
            Action::Resume => self.set_paused(false).await?,
        }
        self.fleet.ready().await?;
        let paused = self.paused().await?;
        let (plan, budget) = self.plan_now();
        let mut answer = crate::rebalancer::describe(&plan, paused, budget, &self.rebalance);
        answer.notes.extend(
            self.spread_plan()
                .iter()
                .map(crate::rebalancer::describe_change),
        );
        Ok(answer)
    }

    async fn list(&self) -> Result<pb::ListClustersResponse> {
        self.fleet.ready().await?;
        let clusters = self.fleet.clusters(self.stale_after);
        let leader =
            sluice_client::leader_url(&self.client, &cluster::manager_election(&self.root))
                .await
                .map_err(etcd)?;
        Ok(pb::ListClustersResponse {
            clusters: clusters
                .iter()
                .map(|c| cluster_info(c, &self.limits, &self.score))
                .collect(),
            leader: leader.unwrap_or_default(),
        })
    }
}

fn cluster_info(c: &ClusterState, limits: &Limits, config: &ScoreConfig) -> pb::ClusterInfo {
    let refusal = policy::refusal(c, limits);
    let score = policy::score(&c.load, config);
    pb::ClusterInfo {
        name: c.name.clone(),
        nodes: c
            .nodes
            .iter()
            .map(|n| pb::ClusterNode {
                node: n.node.clone(),
                url: n.url.clone(),
            })
            .collect(),
        load: Some(pb::ClusterLoad {
            messages_in_per_second: c.load.messages_in_per_second,
            messages_out_per_second: c.load.messages_out_per_second,
            bytes_stored: c.load.bytes_stored,
            disk_free_bytes: c.load.disk_free_bytes,
            bytes_in_per_second: c.load.bytes_in_per_second,
            bytes_out_per_second: c.load.bytes_out_per_second,
            cpu: c.load.cpu,
            commit_seconds: c.load.commit_seconds,
        }),
        queue_count: c.queue_count,
        accepting: refusal.is_none(),
        reason: refusal.unwrap_or_default(),
        score: c.unknown.is_none().then_some(pb::ClusterScore {
            total: score.total,
            cpu: score.cpu,
            messages: score.messages,
            bytes: score.bytes,
            storage: score.storage,
            latency: score.latency,
        }),
        unknown: c.unknown.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ManagerService for ManagerServiceImpl {
    async fn place_queue(
        &self,
        request: Request<pb::PlaceQueueRequest>,
    ) -> Result<Response<pb::PlaceQueueResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let queue = req.queue.clone();
        rpc::observe(
            "sluice.v1.ManagerService",
            "PlaceQueue",
            &queue,
            &metadata,
            &metrics::RPC,
            self.place(req),
        )
        .await
    }

    async fn move_queue(
        &self,
        request: Request<pb::MoveQueueRequest>,
    ) -> Result<Response<pb::QueuePlacement>, Status> {
        let (metadata, _, req) = request.into_parts();
        let queue = req.queue.clone();
        rpc::observe(
            "sluice.v1.ManagerService",
            "MoveQueue",
            &queue,
            &metadata,
            &metrics::RPC,
            self.move_to(req),
        )
        .await
    }

    async fn get_placement(
        &self,
        request: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::QueuePlacement>, Status> {
        let (metadata, _, req) = request.into_parts();
        rpc::observe(
            "sluice.v1.ManagerService",
            "GetPlacement",
            &req.queue.clone(),
            &metadata,
            &metrics::RPC,
            self.placement_of(&req.queue),
        )
        .await
    }

    async fn rebalance(
        &self,
        request: Request<pb::RebalanceRequest>,
    ) -> Result<Response<pb::RebalanceResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        rpc::observe(
            "sluice.v1.ManagerService",
            "Rebalance",
            "",
            &metadata,
            &metrics::RPC,
            self.rebalance_request(req),
        )
        .await
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        let (metadata, _, _) = request.into_parts();
        rpc::observe(
            "sluice.v1.ManagerService",
            "ListClusters",
            "",
            &metadata,
            &metrics::RPC,
            self.list(),
        )
        .await
    }
}

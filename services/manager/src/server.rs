//! A running manager: `ManagerService` on the gRPC port, the admin port, and its campaign for
//! the leadership.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sluice_api::cluster;
use sluice_common::admin::{self, Readiness};
use sluice_common::config::{EtcdOpts, ServiceOpts};
use sluice_common::grpc::{self, Drain, GrpcServer};
use sluice_common::tls::{self, Access, Kind};
use sluice_metastore::watch;
use sluice_proto::v1::manager_service_server::ManagerServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::election::{self, Leadership};
use crate::fleet::Fleet;
use crate::policy::{Limits, ScoreConfig};
use crate::rebalance::RebalanceOpts;
use crate::service::ManagerServiceImpl;
use crate::spread::SpreadOpts;

/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManagerOpts {
    #[serde(flatten)]
    pub service: ServiceOpts,
    #[serde(flatten)]
    pub etcd: EtcdOpts,
    /// High-water marks; a cluster past one takes no new queues.
    #[serde(flatten)]
    pub limits: Limits,
    /// How a cluster's score is made.
    #[serde(flatten)]
    pub score: ScoreConfig,
    #[serde(flatten)]
    pub rebalance: RebalanceOpts,
    /// When a queue spreads over more clusters, and how far.
    #[serde(flatten)]
    pub spread: SpreadOpts,
    /// A member whose load report is older than this makes its cluster's load unknown, ms.
    #[serde(default = "default_stale_report_ms")]
    pub stale_report_ms: u64,
    /// How often the leader advances queue moves: finishes interrupted ones and removes
    /// sealed partitions that consumers have drained.
    #[serde(default = "default_move_interval_ms")]
    pub move_interval_ms: u64,
    /// A drained sealed partition is removed only this long after its seal, so that it can
    /// still tell a client's retry by deduplication id (within the backends'
    /// `dedup_window_seconds`, which this should match) that it stored the message.
    #[serde(default = "default_sealed_keep_ms")]
    pub sealed_keep_ms: u64,
}

fn default_sealed_keep_ms() -> u64 {
    5 * 60 * 1000
}

fn default_move_interval_ms() -> u64 {
    1000
}

/// Five of a node's default report periods (2 s).
fn default_stale_report_ms() -> u64 {
    10_000
}

impl Default for ManagerOpts {
    fn default() -> Self {
        ManagerOpts {
            service: ServiceOpts::on(([127, 0, 0, 1], 7090), ([127, 0, 0, 1], 7091)),
            etcd: EtcdOpts::default(),
            limits: Limits::default(),
            score: ScoreConfig::default(),
            rebalance: RebalanceOpts::default(),
            spread: SpreadOpts::default(),
            stale_report_ms: default_stale_report_ms(),
            move_interval_ms: default_move_interval_ms(),
            sealed_keep_ms: default_sealed_keep_ms(),
        }
    }
}

pub struct Manager {
    drain: Drain,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    readiness: Readiness,
    grpc: GrpcServer,
    campaign: tokio::task::JoinHandle<()>,
    mover: tokio::task::JoinHandle<()>,
    rebalancer: tokio::task::JoinHandle<()>,
    watches: [tokio::task::JoinHandle<()>; 2],
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: CancellationToken,
    shutdown: CancellationToken,
}

/// Who may call a manager: metadata nodes placing new queues, other managers forwarding to
/// the leader, and operators' admin commands.
fn access() -> Access {
    Access::new(vec![(
        "/sluice.v1.ManagerService/",
        &[Kind::Metadata, Kind::Manager, Kind::Admin],
    )])
}

/// Starts serving and campaigning; returns once the manager answers requests (it may not lead
/// yet).
pub async fn start(opts: &ManagerOpts, shutdown: CancellationToken) -> anyhow::Result<Manager> {
    anyhow::ensure!(
        !opts.etcd.etcd_endpoints.is_empty(),
        "etcd_endpoints must name at least one etcd"
    );
    opts.score.validate()?;
    opts.rebalance.validate()?;
    opts.spread.validate()?;
    anyhow::ensure!(
        opts.stale_report_ms > 0,
        "stale_report_ms must be at least 1"
    );
    let tls = tls::configure(&opts.service, "sluice-manager", Some(access()))?;
    sluice_common::etcd::configure(&opts.etcd, &opts.service)?;
    let client = etcd_client::Client::connect(
        &opts.etcd.etcd_endpoints,
        Some(sluice_common::etcd::options()),
    )
    .await
    .with_context(|| format!("cannot connect to etcd at {:?}", opts.etcd.etcd_endpoints))?;

    crate::metrics::register();
    let readiness = Readiness::default();
    let admin_shutdown = CancellationToken::new();
    let (admin_addr, admin) = admin::serve(
        opts.service.admin_addr,
        readiness.clone(),
        admin_shutdown.clone(),
    )
    .await?;

    let leadership = Leadership::default();
    let fleet = Fleet::new();
    let root = &opts.etcd.etcd_root;
    let watches = [
        tokio::spawn(watch::follow(
            client.clone(),
            cluster::clusters_prefix(root),
            fleet.clusters_follower(root),
            crate::metrics::WATCHES,
            shutdown.clone(),
        )),
        tokio::spawn(watch::follow(
            client.clone(),
            cluster::placements_prefix(root),
            fleet.placements_follower(),
            crate::metrics::WATCHES,
            shutdown.clone(),
        )),
    ];
    let service = ManagerServiceImpl {
        client: client.clone(),
        root: root.clone(),
        leadership: leadership.clone(),
        limits: opts.limits.clone(),
        score: opts.score.clone(),
        rebalance: opts.rebalance.clone(),
        spread: opts.spread.clone(),
        stale_after: Duration::from_millis(opts.stale_report_ms),
        sealed_keep_ms: opts.sealed_keep_ms,
        fleet,
        rebalancer: Default::default(),
        backends: Default::default(),
    };
    let mover = tokio::spawn(crate::moves::run(
        service.clone(),
        Duration::from_millis(opts.move_interval_ms.max(10)),
        shutdown.clone(),
    ));
    let rebalancer = tokio::spawn(crate::rebalancer::run(service.clone(), shutdown.clone()));
    let service = ManagerServiceServer::new(service);
    let grpc = grpc::serve(
        opts.service.grpc_addr,
        "sluice.v1.ManagerService",
        Routes::new(service),
        CancellationToken::new(),
        &tls,
    )
    .await?;
    let grpc_addr = grpc.local_addr;
    let url = opts.service.advertised(grpc_addr);
    let campaign = tokio::spawn(election::run(
        client,
        cluster::manager_election(&opts.etcd.etcd_root),
        url,
        leadership,
        shutdown.clone(),
    ));
    readiness.set(true);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "manager ready");
    Ok(Manager {
        drain: opts.service.drain(DRAIN_TIMEOUT),
        grpc_addr,
        admin_addr,
        readiness,
        grpc,
        campaign,
        mover,
        rebalancer,
        watches,
        admin,
        admin_shutdown,
        shutdown,
    })
}

impl Manager {
    /// Waits for the shutdown token, then hands the leadership over (the campaign revokes its
    /// lease), drains the gRPC server, and closes the admin port last.
    pub async fn wait(self) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let (campaign, mover, rebalancer) = (self.campaign, self.mover, self.rebalancer);
        let watches = self.watches;
        let leave = async move {
            readiness.set(false);
            let _ = mover.await;
            let _ = rebalancer.await;
            let _ = campaign.await;
            for watch in watches {
                let _ = watch.await;
            }
        };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("manager stopped");
        served
    }
}

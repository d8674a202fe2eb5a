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
use sluice_proto::v1::manager_service_server::ManagerServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::election::{self, Leadership};
use crate::policy::Limits;
use crate::service::ManagerServiceImpl;

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
    /// How often the leader advances queue moves: finishes interrupted ones and removes
    /// sealed partitions that consumers have drained.
    #[serde(default = "default_move_interval_ms")]
    pub move_interval_ms: u64,
}

fn default_move_interval_ms() -> u64 {
    1000
}

impl Default for ManagerOpts {
    fn default() -> Self {
        ManagerOpts {
            service: ServiceOpts::on(([127, 0, 0, 1], 7090), ([127, 0, 0, 1], 7091)),
            etcd: EtcdOpts::default(),
            limits: Limits::default(),
            move_interval_ms: default_move_interval_ms(),
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
    let service = ManagerServiceImpl {
        client: client.clone(),
        root: opts.etcd.etcd_root.clone(),
        leadership: leadership.clone(),
        limits: opts.limits.clone(),
        backends: Default::default(),
    };
    let mover = tokio::spawn(crate::moves::run(
        service.clone(),
        Duration::from_millis(opts.move_interval_ms.max(10)),
        shutdown.clone(),
    ));
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
        let (campaign, mover) = (self.campaign, self.mover);
        let leave = async move {
            readiness.set(false);
            let _ = mover.await;
            let _ = campaign.await;
        };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("manager stopped");
        served
    }
}

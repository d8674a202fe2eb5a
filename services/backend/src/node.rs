//! A running backend node: the engine on its data directory, `BackendService` on the gRPC port,
//! the admin port, and its membership key in etcd, held by a lease that lapses if the node dies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_api::cluster::{self, NodeRecord};
use sluice_common::admin::{self, Readiness};
use sluice_common::config::{EtcdOpts, ServiceOpts};
use sluice_common::grpc::{self, Drain, GrpcServer, MAX_MESSAGE_BYTES};
use sluice_common::tls::{self, Access, Kind};
use sluice_proto::v1::backend_service_server::BackendServiceServer;
use sluice_proto::v1::cluster_service_server::ClusterServiceServer;
use sluice_storage::{Engine, EngineOptions};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::load::LoadSource;
use crate::local::NodeQueues;
use crate::replica::{
    Bootstrap, ClusterServiceImpl, Member, Replica, ReplicaOptions, MAX_RAFT_MESSAGE_BYTES,
};
use crate::service::BackendServiceImpl;

/// How long in-flight requests get to finish after SIGTERM; a long poll lasts at most 20 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// A dead node's key disappears from etcd this long after its last keep-alive.
const LEASE_TTL_SECONDS: i64 = 5;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeOpts {
    pub data_dir: PathBuf,
    #[serde(flatten)]
    pub service: ServiceOpts,
    #[serde(flatten)]
    pub etcd: EtcdOpts,
    /// The cluster this node belongs to, e.g. `a`.
    pub cluster: String,
    /// This node's name within its cluster, e.g. `a1`.
    pub node_id: String,
    #[serde(default = "default_dedup_window")]
    pub dedup_window_seconds: u64,
    /// How often the node writes its load report to etcd, milliseconds.
    #[serde(default = "default_load_report_interval")]
    pub load_report_interval_ms: u64,
    /// Entries applied between two snapshots of the engine; the log is purged up to each one.
    #[serde(default = "default_raft_snapshot_logs")]
    pub raft_snapshot_logs: u64,
    /// Sends are refused (RESOURCE_EXHAUSTED) while less than this many bytes are free on the
    /// data directory's file system, so that receives, deletes and compactions can go on; 0
    /// turns the reserve off.
    #[serde(default = "default_min_free_disk_bytes")]
    pub min_free_disk_bytes: u64,
    /// How many entries (group commits) a leader's log may run ahead of a majority before
    /// ASYNC sends wait: what a leader's crash can lose of them. 0: no bound.
    #[serde(default = "default_async_max_lag_entries")]
    pub async_max_lag_entries: u64,
    /// The members of a new replicated cluster, as `name=url`, the same list on each of them;
    /// empty: a cluster of this node alone. Read only when the node's log is empty.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Starts without forming a cluster, to be added to a running one with
    /// `sluice admin cluster add-node`.
    #[serde(default)]
    pub join: bool,
    /// Runs the node alone without a Raft log: its engine fsyncs its own writes, which is
    /// what a cluster of one commits anyway, and it can never take members. `sluice
    /// standalone` runs its node so; a one-node Raft group cost it about 12% of its
    /// throughput (workload (a)) for a log nobody reads. A data directory stays in the mode
    /// it was created in.
    #[serde(default)]
    pub unreplicated: bool,
}

fn default_load_report_interval() -> u64 {
    2000
}

fn default_raft_snapshot_logs() -> u64 {
    10_000
}

fn default_min_free_disk_bytes() -> u64 {
    sluice_storage::DEFAULT_MIN_FREE_DISK_BYTES
}

/// Some 0.1 s of entries at the most a 3-node cluster commits on modest hardware (about 2,500
/// group commits a second): a follower that falls further behind slows ASYNC sends down to its
/// pace instead of widening what a crash loses.
fn default_async_max_lag_entries() -> u64 {
    256
}

fn default_dedup_window() -> u64 {
    sluice_storage::DEFAULT_DEDUP_WINDOW.as_secs()
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            data_dir: PathBuf::from("./sluice-backend-data"),
            service: ServiceOpts::on(([127, 0, 0, 1], 7080), ([127, 0, 0, 1], 7081)),
            etcd: EtcdOpts::default(),
            cluster: "a".into(),
            node_id: "a1".into(),
            dedup_window_seconds: default_dedup_window(),
            load_report_interval_ms: default_load_report_interval(),
            raft_snapshot_logs: default_raft_snapshot_logs(),
            async_max_lag_entries: default_async_max_lag_entries(),
            min_free_disk_bytes: default_min_free_disk_bytes(),
            peers: Vec::new(),
            join: false,
            unreplicated: false,
        }
    }
}

pub struct Node {
    drain: Drain,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    storage: Arc<Storage>,
    readiness: Readiness,
    grpc: GrpcServer,
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: CancellationToken,
    membership: Option<Membership>,
    shutdown: CancellationToken,
}

/// The node's registration in etcd: the lease in use and the task that holds it.
struct Membership {
    client: etcd_client::Client,
    lease: Arc<AtomicI64>,
    holder: tokio::task::JoinHandle<()>,
}

/// A node's storage, opened but not serving yet: the engine and, unless the node runs
/// unreplicated, the Raft group that feeds it. [`start`] serves it over gRPC; `sluice
/// standalone` hands its queues to a frontend in the same process.
pub struct Storage {
    queues: NodeQueues,
    replica: Option<Replica>,
    /// The node forms a cluster of its own (or runs unreplicated), so it serves at once.
    alone: bool,
}

impl Storage {
    /// Opens the node's data directory and, for a replicated node, starts its Raft as the
    /// member reached at `url`.
    pub async fn open(
        opts: &NodeOpts,
        url: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Storage> {
        anyhow::ensure!(
            opts.dedup_window_seconds > 0,
            "dedup_window_seconds must be at least 1"
        );
        // Zero would have the node snapshot at every entry it applies.
        anyhow::ensure!(
            opts.raft_snapshot_logs > 0,
            "raft_snapshot_logs must be at least 1"
        );
        anyhow::ensure!(
            !opts.cluster.is_empty() && !opts.node_id.is_empty(),
            "cluster and node_id must be set"
        );
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
        let bootstrap = bootstrap_of(opts)?;
        check_layout(opts)?;
        let engine_options = EngineOptions {
            dedup_window: Duration::from_secs(opts.dedup_window_seconds),
            min_free_disk_bytes: opts.min_free_disk_bytes,
            ..EngineOptions::new(opts.data_dir.join(QUEUES_DIR))
        };
        if opts.unreplicated {
            let engine = Engine::open(engine_options).with_context(|| {
                format!(
                    "cannot open the queue engine in {}",
                    opts.data_dir.display()
                )
            })?;
            return Ok(Storage {
                queues: NodeQueues::new(engine),
                replica: None,
                alone: true,
            });
        }
        let me = Member {
            name: opts.node_id.clone(),
            url: url.to_owned(),
        };
        let alone = bootstrap == Bootstrap::Alone;
        let replica = Replica::start(
            &opts.data_dir,
            engine_options,
            ReplicaOptions {
                cluster: opts.cluster.clone(),
                snapshot_logs: opts.raft_snapshot_logs,
                async_max_lag_entries: opts.async_max_lag_entries,
            },
            me,
            bootstrap,
            shutdown,
        )
        .await
        .with_context(|| format!("cannot start the node in {}", opts.data_dir.display()))?;
        Ok(Storage {
            queues: NodeQueues::new(replica.engine.clone()),
            replica: Some(replica),
            alone,
        })
    }

    /// The node's queues as its `BackendService` serves them.
    pub fn queues(&self) -> NodeQueues {
        self.queues.clone()
    }

    /// Returns once the node serves, or has caught up with its cluster's leader.
    async fn caught_up(&self) {
        if let Some(replica) = &self.replica {
            replica.caught_up().await;
        }
    }

    /// Before a planned stop: hands the lead over if this node has it (see
    /// `Replica::hand_over`).
    async fn hand_over(&self) {
        if let Some(replica) = &self.replica {
            replica.hand_over().await;
        }
    }

    /// Stops the node's Raft, if any, then flushes and closes the engine.
    pub async fn close(&self) {
        if let Some(replica) = &self.replica {
            replica.shutdown().await;
        }
        self.queues.engine().close().await;
    }
}

/// Where a node keeps its engine, beside its Raft log (`raft/`) if it is replicated.
const QUEUES_DIR: &str = "queues";
const RAFT_DIR: &str = "raft";

/// Refuses to open a data directory in the other mode than it was written in. A replicated
/// engine writes its applied entries without a WAL of its own (the Raft log is its WAL), so
/// opening it unreplicated would lose them; and a Raft log started over an unreplicated
/// engine would apply the cluster's entries on top of data no other member has.
fn check_layout(opts: &NodeOpts) -> anyhow::Result<()> {
    let has = |dir: &str| opts.data_dir.join(dir).exists();
    if opts.unreplicated {
        anyhow::ensure!(
            opts.peers.is_empty() && !opts.join,
            "an unreplicated node has no peers and joins no cluster"
        );
        anyhow::ensure!(
            !has(RAFT_DIR),
            "{} holds a replicated node (it has a Raft log in {RAFT_DIR}/); it cannot be opened unreplicated",
            opts.data_dir.display()
        );
    } else {
        anyhow::ensure!(
            has(RAFT_DIR) || !has(QUEUES_DIR),
            "{} holds an unreplicated node (queues without a Raft log); it cannot be opened as a member of a cluster",
            opts.data_dir.display()
        );
    }
    Ok(())
}

/// Who may call a backend node: Raft's messages come only from the other nodes of its
/// cluster; its membership is changed by those nodes (a follower forwards to the leader) and by
/// operators; queues and messages are the business of frontends, managers (moves) and the
/// cluster's other nodes (a follower hands a request to its leader).
fn access() -> Access {
    Access::new(vec![
        ("/sluice.v1.ClusterService/AppendEntries", &[Kind::Backend]),
        ("/sluice.v1.ClusterService/Vote", &[Kind::Backend]),
        ("/sluice.v1.ClusterService/Campaign", &[Kind::Backend]),
        (
            "/sluice.v1.ClusterService/InstallSnapshot",
            &[Kind::Backend],
        ),
        ("/sluice.v1.ClusterService/", &[Kind::Backend, Kind::Admin]),
        (
            "/sluice.v1.BackendService/",
            &[Kind::Frontend, Kind::Manager, Kind::Backend],
        ),
    ])
}

/// Opens the engine, starts serving, and registers the node; returns once it is ready.
pub async fn start(opts: &NodeOpts, shutdown: CancellationToken) -> anyhow::Result<Node> {
    let readiness = Readiness::default();
    let admin_shutdown = CancellationToken::new();
    sluice_api::metrics::set_queue_label_cap(opts.service.metrics_queue_labels);
    let (admin_addr, admin) = admin::serve(
        opts.service.admin_addr,
        readiness.clone(),
        admin_shutdown.clone(),
    )
    .await?;

    // Before any channel is opened: it installs the TLS this process calls its peers with.
    let tls = tls::configure(&opts.service, "sluice-backend", Some(access()))?;
    if !opts.etcd.etcd_endpoints.is_empty() {
        sluice_common::etcd::configure(&opts.etcd, &opts.service)?;
    }
    // Bound first: the node's URL goes into the cluster's membership.
    let listener = grpc::bind(opts.service.grpc_addr).await?;
    let url = opts
        .service
        .advertised(listener.local_addr().expect("bound"));
    let storage = Arc::new(Storage::open(opts, &url, shutdown.clone()).await?);
    let queues = storage.queues();
    let service = BackendServiceImpl::new(queues.clone(), storage.replica.clone());
    if let Some(replica) = &storage.replica {
        crate::metrics::register();
        tokio::spawn(crate::resend::run(
            replica.dropped.clone(),
            replica.engine.clone(),
            service.clone(),
            shutdown.clone(),
        ));
    }
    let service = BackendServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut routes = Routes::new(service);
    if let Some(replica) = &storage.replica {
        routes = routes.add_service(
            ClusterServiceServer::new(ClusterServiceImpl::new(replica.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        );
    }
    let grpc = grpc::serve_on(
        listener,
        "sluice.v1.BackendService",
        routes,
        CancellationToken::new(),
        &tls,
    )
    .await?;
    let grpc_addr = grpc.local_addr;
    let load = LoadSource {
        engine: queues.engine().clone(),
        traffic: queues.traffic(),
        replica: storage.replica.clone(),
        node: opts.node_id.clone(),
        period: Duration::from_millis(opts.load_report_interval_ms.max(1)),
    };

    // A node alone leads at once; waiting for it keeps a fresh single-node cluster from
    // answering UNAVAILABLE to its first requests.
    if storage.alone {
        storage.caught_up().await;
        readiness.set(true);
    } else {
        let (storage, readiness) = (storage.clone(), readiness.clone());
        tokio::spawn(async move {
            storage.caught_up().await;
            tracing::info!("caught up with the cluster's leader; ready");
            readiness.set(true);
        });
    }
    let membership = if opts.etcd.etcd_endpoints.is_empty() {
        None
    } else {
        let record = NodeRecord {
            cluster: opts.cluster.clone(),
            node: opts.node_id.clone(),
            url,
        };
        Some(register(opts, &record, load).await?)
    };
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, cluster = %opts.cluster, node = %opts.node_id, "backend node ready");
    Ok(Node {
        drain: opts.service.drain(DRAIN_TIMEOUT),
        grpc_addr,
        admin_addr,
        storage,
        readiness,
        grpc,
        admin,
        admin_shutdown,
        membership,
        shutdown,
    })
}

/// How the node forms its cluster if its log is empty.
fn bootstrap_of(opts: &NodeOpts) -> anyhow::Result<Bootstrap> {
    if opts.join {
        anyhow::ensure!(opts.peers.is_empty(), "join and peers exclude each other");
        return Ok(Bootstrap::Join);
    }
    if opts.peers.is_empty() {
        return Ok(Bootstrap::Alone);
    }
    let members = opts
        .peers
        .iter()
        .map(|peer| {
            let (name, url) = peer
                .split_once('=')
                .with_context(|| format!("peer {peer:?} is not name=url"))?;
            Ok(Member {
                name: name.to_owned(),
                url: url.to_owned(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        members.iter().any(|m| m.name == opts.node_id),
        "peers must list this node ({}) too",
        opts.node_id
    );
    Ok(Bootstrap::Members(members))
}

/// Puts the node's key under a lease, keeps the lease alive and reports the node's load until
/// the node stops. If the lease is lost (etcd unreachable for longer than its TTL, or revoked),
/// the node registers again under a new one.
async fn register(
    opts: &NodeOpts,
    record: &NodeRecord,
    load: LoadSource,
) -> anyhow::Result<Membership> {
    let mut client = etcd_client::Client::connect(
        &opts.etcd.etcd_endpoints,
        Some(sluice_common::etcd::options()),
    )
    .await
    .with_context(|| format!("cannot connect to etcd at {:?}", opts.etcd.etcd_endpoints))?;
    let keys = Registration {
        node_key: cluster::node_key(&opts.etcd.etcd_root, &record.cluster, &record.node),
        load_key: cluster::load_key(&opts.etcd.etcd_root, &record.cluster, &record.node),
        record: serde_json::to_vec(record)?,
    };
    let lease = keys.register(&mut client).await?;
    let current = Arc::new(AtomicI64::new(lease));
    let holder = tokio::spawn(keys.hold(client.clone(), lease, current.clone(), load));
    Ok(Membership {
        client,
        lease: current,
        holder,
    })
}

/// What a node keeps in etcd.
struct Registration {
    node_key: String,
    load_key: String,
    record: Vec<u8>,
}

impl Registration {
    /// Puts the node's key under a new lease; returns the lease.
    async fn register(&self, client: &mut etcd_client::Client) -> anyhow::Result<i64> {
        let lease = client
            .lease_grant(LEASE_TTL_SECONDS, None)
            .await
            .context("cannot grant the node's etcd lease")?
            .id();
        client
            .put(
                self.node_key.clone(),
                self.record.clone(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .with_context(|| format!("cannot register the node under {}", self.node_key))?;
        tracing::info!(key = %self.node_key, lease, "registered in etcd");
        Ok(lease)
    }

    /// Keeps the registration alive and the load reported, registering again whenever the
    /// lease is lost; `current` always holds the lease in use.
    async fn hold(
        self,
        mut client: etcd_client::Client,
        mut lease: i64,
        current: Arc<AtomicI64>,
        load: LoadSource,
    ) {
        let ttl = Duration::from_secs(LEASE_TTL_SECONDS as u64);
        loop {
            tokio::select! {
                _ = sluice_metastore::lease::keep_alive(client.clone(), lease, ttl) => {}
                _ = crate::load::report(client.clone(), lease, self.load_key.clone(), load.clone()) => {}
            }
            tracing::warn!(lease, "the node's etcd lease was lost; registering again");
            lease = loop {
                match self.register(&mut client).await {
                    Ok(lease) => break lease,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot register again; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            current.store(lease, Ordering::SeqCst);
        }
    }
}

impl Node {
    /// Waits for the shutdown token, then drains: the node leaves its cluster first (so no new
    /// work is routed to it) and hands the lead over if it has it, the gRPC server finishes in-flight requests, the engine flushes,
    /// and the admin port closes last.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let membership = self.membership.take();
        let storage = self.storage.clone();
        let leave = async move {
            readiness.set(false);
            if let Some(mut membership) = membership {
                membership.holder.abort();
                let lease = membership.lease.load(Ordering::SeqCst);
                if let Err(err) = membership.client.lease_revoke(lease).await {
                    tracing::warn!(error = %err, "cannot revoke the node's etcd lease; it expires on its own");
                }
            }
            // While the gRPC port still serves: the successor's vote requests and the new
            // leader's appends reach this node through it.
            storage.hand_over().await;
        };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.storage.close().await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("backend node stopped");
        served
    }
}

#[cfg(test)]
mod tests {
    use sluice_api::{QueueBackend, QueueConfig};

    use super::*;

    fn opts(dir: &std::path::Path, unreplicated: bool) -> NodeOpts {
        NodeOpts {
            data_dir: dir.to_owned(),
            unreplicated,
            ..NodeOpts::default()
        }
    }

    async fn open(dir: &std::path::Path, unreplicated: bool) -> anyhow::Result<Storage> {
        Storage::open(&opts(dir, unreplicated), "", CancellationToken::new()).await
    }

    /// A queue created on a fresh node, so that the engine's directory exists.
    async fn create_queue(storage: &Storage) {
        storage
            .queues()
            .create_queue(1, QueueConfig::standard("q", Duration::from_secs(60)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_unreplicated_node_s_directory_is_not_opened_as_a_cluster_member() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), true).await.unwrap();
        create_queue(&storage).await;
        storage.close().await;
        drop(storage);

        let err = open(dir.path(), false).await.err().expect("refused");
        assert!(
            format!("{err:#}").contains("holds an unreplicated node"),
            "{err:#}"
        );
        assert!(
            !dir.path().join(RAFT_DIR).exists(),
            "no Raft log was started"
        );
        // Unreplicated again, it opens with its queue.
        let storage = open(dir.path(), true).await.unwrap();
        assert!(storage.queues().counts(1).await.is_ok());
        storage.close().await;
    }

    #[tokio::test]
    async fn a_cluster_member_s_directory_is_not_opened_unreplicated() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), false).await.unwrap();
        storage.caught_up().await;
        create_queue(&storage).await;
        storage.close().await;
        drop(storage);

        let err = open(dir.path(), true).await.err().expect("refused");
        assert!(
            format!("{err:#}").contains("holds a replicated node"),
            "{err:#}"
        );
        // As a member again, it opens with its queue: it was not touched.
        let storage = open(dir.path(), false).await.unwrap();
        storage.caught_up().await;
        assert!(storage.queues().counts(1).await.is_ok());
        storage.close().await;
    }
}

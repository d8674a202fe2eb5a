//! A running metadata node: `MetadataService`, its membership key under a lease, the watch that
//! keeps the ring, and the watch that keeps the cache.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Event, EventType, KeyValue};
use sluice_api::cluster;
use sluice_client::{ManagerClient, ManagerClientOptions, Ring};
use sluice_common::admin::{self, Readiness};
use sluice_common::config::{EtcdOpts, ServiceOpts};
use sluice_common::grpc::{self, Drain, GrpcServer};
use sluice_common::tls::{self, Access, Kind};
use sluice_metastore::{EtcdStore, StoreDirectory};
use sluice_proto::v1::metadata_service_server::MetadataServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::cache::RecordCache;
use crate::identity::{self, IdentityFollower};
use crate::metrics;
use crate::service::{MetadataServiceImpl, CACHED_PREFIXES};
use sluice_metastore::watch::{self, Follower};

/// A dead node leaves the ring this long after its last renewal.
const LEASE_TTL: Duration = Duration::from_secs(5);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetadataOpts {
    #[serde(flatten)]
    pub service: ServiceOpts,
    #[serde(flatten)]
    pub etcd: EtcdOpts,
    /// This node's name on the ring; unique among metadata nodes.
    pub node_id: String,
    /// Queue records each node keeps cached.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
}

fn default_cache_capacity() -> u64 {
    100_000
}

impl Default for MetadataOpts {
    fn default() -> Self {
        MetadataOpts {
            service: ServiceOpts::on(([127, 0, 0, 1], 7060), ([127, 0, 0, 1], 7061)),
            etcd: EtcdOpts::default(),
            node_id: "m1".into(),
            cache_capacity: default_cache_capacity(),
        }
    }
}

/// The etcd key that puts a metadata node on the ring.
pub fn member_key(root: &str, node: &str) -> String {
    format!("{root}metadata/nodes/{node}")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Member {
    node: String,
    url: String,
}

/// Keeps the ring equal to the live members in etcd.
struct Membership {
    ring: Arc<Ring>,
    members: BTreeMap<String, String>,
    prefix: String,
}

impl Membership {
    fn apply(&self) {
        self.ring.set_members(self.members.clone());
        metrics::RING_MEMBERS.set(self.members.len() as i64);
        tracing::info!(members = ?self.members.keys().collect::<Vec<_>>(), "metadata ring changed");
    }

    fn member(kv: &KeyValue) -> Option<Member> {
        serde_json::from_slice(kv.value()).ok()
    }
}

impl Follower for Membership {
    fn snapshot(&mut self, kvs: &[KeyValue]) {
        self.members = kvs
            .iter()
            .filter_map(Self::member)
            .map(|m| (m.node, m.url))
            .collect();
        self.apply();
    }

    fn event(&mut self, event: &Event) {
        let Some(kv) = event.kv() else { return };
        match event.event_type() {
            EventType::Put => {
                if let Some(m) = Self::member(kv) {
                    self.members.insert(m.node, m.url);
                }
            }
            EventType::Delete => {
                if let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)) {
                    self.members.remove(node);
                }
            }
        }
        self.apply();
    }
}

/// Who may call a metadata node: the frontends it serves and its peers on the ring, which
/// forward to a record's owner. Nothing else writes queue records.
fn access() -> Access {
    Access::new(vec![(
        "/sluice.v1.MetadataService/",
        &[Kind::Frontend, Kind::Metadata],
    )])
}

pub struct MetadataNode {
    drain: Drain,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    readiness: Readiness,
    grpc: GrpcServer,
    client: etcd_client::Client,
    lease: i64,
    background: Vec<tokio::task::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: CancellationToken,
    shutdown: CancellationToken,
}

/// Starts serving, joins the ring, and returns once the node has seen the ring with itself on it.
pub async fn start(
    opts: &MetadataOpts,
    shutdown: CancellationToken,
) -> anyhow::Result<MetadataNode> {
    anyhow::ensure!(
        !opts.etcd.etcd_endpoints.is_empty(),
        "etcd_endpoints must name at least one etcd"
    );
    anyhow::ensure!(!opts.node_id.is_empty(), "node_id must be set");
    metrics::register();
    // Before any channel is opened: it installs the TLS this process calls other tiers with.
    let tls = tls::configure(&opts.service, "sluice-metadata", Some(access()))?;
    sluice_common::etcd::configure(&opts.etcd, &opts.service)?;
    let store = EtcdStore::connect_with(
        &opts.etcd.etcd_endpoints,
        &opts.etcd.etcd_root,
        sluice_common::etcd::installed_tls(),
    )
    .await?;
    let client = store.client().clone();
    let manager = ManagerClient::connect(
        &opts.etcd.etcd_endpoints,
        &opts.etcd.etcd_root,
        ManagerClientOptions::default(),
    )
    .await?;

    let readiness = Readiness::default();
    let admin_shutdown = CancellationToken::new();
    let (admin_addr, admin) = admin::serve(
        opts.service.admin_addr,
        readiness.clone(),
        admin_shutdown.clone(),
    )
    .await?;

    let ring = Arc::new(Ring::default());
    let cache = RecordCache::new(
        opts.cache_capacity,
        &opts.etcd.etcd_root,
        ring.clone(),
        &opts.node_id,
    );
    let (identity_changes, _) = tokio::sync::broadcast::channel(identity::CHANGES_BUFFERED);
    let service = MetadataServiceImpl {
        node_id: opts.node_id.clone(),
        records: Arc::new(StoreDirectory::new(Arc::new(store.clone()))),
        store,
        ring: ring.clone(),
        cache: cache.clone(),
        manager: Arc::new(manager),
        peers: Arc::default(),
        identity_changes: identity_changes.clone(),
        closing: shutdown.clone(),
    };
    let grpc = grpc::serve(
        opts.service.grpc_addr,
        "sluice.v1.MetadataService",
        Routes::new(MetadataServiceServer::new(service)),
        CancellationToken::new(),
        &tls,
    )
    .await?;
    let grpc_addr = grpc.local_addr;
    let url = opts.service.advertised(grpc_addr);

    let watches = CancellationToken::new();
    let members_prefix = member_key(&opts.etcd.etcd_root, "");
    let mut background = vec![tokio::spawn(watch::follow(
        client.clone(),
        members_prefix.clone(),
        Membership {
            ring: ring.clone(),
            members: BTreeMap::new(),
            prefix: members_prefix,
        },
        crate::metrics::WATCHES,
        watches.clone(),
    ))];
    for prefix in CACHED_PREFIXES {
        background.push(tokio::spawn(watch::follow(
            client.clone(),
            format!("{}{prefix}", opts.etcd.etcd_root),
            cache.clone(),
            crate::metrics::WATCHES,
            watches.clone(),
        )));
    }
    background.push(tokio::spawn(watch::follow(
        client.clone(),
        cluster::identity_prefix(&opts.etcd.etcd_root),
        IdentityFollower::new(&opts.etcd.etcd_root, identity_changes),
        crate::metrics::WATCHES,
        watches.clone(),
    )));
    // The watches stop with the node.
    let stop_watches = shutdown.clone();
    background.push(tokio::spawn(async move {
        stop_watches.cancelled().await;
        watches.cancel();
    }));

    let mut registrar = client.clone();
    let lease = registrar
        .lease_grant(LEASE_TTL.as_secs() as i64, None)
        .await
        .context("cannot grant the node's etcd lease")?
        .id();
    let member = Member {
        node: opts.node_id.clone(),
        url,
    };
    registrar
        .put(
            member_key(&opts.etcd.etcd_root, &opts.node_id),
            serde_json::to_vec(&member)?,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .context("cannot join the metadata ring")?;
    background.push(tokio::spawn(sluice_metastore::lease::keep_alive(
        client.clone(),
        lease,
        LEASE_TTL,
    )));
    // Ready once this node sees itself on the ring, so it routes like its peers from the start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ring.owner_url(&opts.node_id).is_none() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "this node never appeared on the ring"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    readiness.set(true);
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, node = %opts.node_id, "metadata node ready");
    Ok(MetadataNode {
        drain: opts.service.drain(DRAIN_TIMEOUT),
        grpc_addr,
        admin_addr,
        readiness,
        grpc,
        client,
        lease,
        background,
        admin,
        admin_shutdown,
        shutdown,
    })
}

impl MetadataNode {
    /// Waits for the shutdown token, leaves the ring (revoking the lease, so peers stop routing
    /// here at once), drains, and closes the admin port last.
    pub async fn wait(self) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let mut client = self.client.clone();
        let (lease, background) = (self.lease, self.background);
        let leave = async move {
            readiness.set(false);
            if let Err(err) = client.lease_revoke(lease).await {
                tracing::warn!(error = %err, "cannot revoke the node's etcd lease; it expires on its own");
            }
            for task in background {
                task.abort();
            }
        };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("metadata node stopped");
        served
    }
}

//! `sluice standalone`: the frontend, a backend node and the embedded metadata store in one
//! process (DESIGN section 9). Same API and storage as the distributed deployment. The node is
//! the backend service's library run unreplicated (its engine fsyncs its own writes), and the
//! frontend calls its queues in process: no port, no protobuf between the two.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_api::cluster::NodeRecord;
use sluice_api::{PlacementDirectory, QueueDirectory};
use sluice_common::admin::{self, Readiness};
use sluice_common::config::ServiceOpts;
use sluice_common::grpc::{ConnectionOpts, Drain, GrpcServer};
use sluice_common::keys::MasterKeys;
use sluice_frontend::auth::{AuthOpts, Authenticator};
use sluice_frontend::bulkhead::BulkheadOpts;
use sluice_frontend::pressure::PressureOpts;
use sluice_frontend::sqs::{SqsOpts, SqsServer};
use sluice_frontend::sse::Encryption;
use sluice_frontend::throttle::{RateLimitOpts, RateLimiter};
use sluice_frontend::{Catalog, QueueServiceImpl, RoutedBackend};
use sluice_manager::policy::{ClusterState, Limits};
use sluice_manager::StorePlacements;
use sluice_metastore::{EmbeddedStore, MetaStore, StoreDirectory};
use tokio_util::sync::CancellationToken;

/// How long in-flight requests get to finish after SIGTERM; a long poll lasts at most 20 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StandaloneOpts {
    pub data_dir: PathBuf,
    #[serde(flatten)]
    pub service: ServiceOpts,
    /// How long a deduplication id is remembered, seconds. SQS fixes it at 5 minutes; tests
    /// shorten it to see a send accepted again after the window.
    #[serde(default = "default_dedup_window")]
    pub dedup_window_seconds: u64,
    /// Sends are refused while less than this many bytes are free on the data directory's disk.
    #[serde(default = "default_min_free_disk_bytes")]
    pub min_free_disk_bytes: u64,
    /// Rate limits per queue and per caller.
    #[serde(default)]
    pub rate_limits: RateLimitOpts,
    /// Caps on the work in flight, by kind.
    #[serde(default)]
    pub bulkheads: BulkheadOpts,
    /// How the cap on calls in flight to the storage engine shrinks while it answers slowly.
    #[serde(default)]
    pub backend_pressure: PressureOpts,
    /// Caps on clients' connections: how many, streams on each, keepalive and idle timeout.
    #[serde(default)]
    pub connections: ConnectionOpts,
    #[serde(flatten)]
    pub auth: AuthOpts,
    /// The SQS endpoint.
    #[serde(flatten)]
    pub sqs: SqsOpts,
}

fn default_dedup_window() -> u64 {
    sluice_backend::node::NodeOpts::default().dedup_window_seconds
}

fn default_min_free_disk_bytes() -> u64 {
    sluice_backend::node::NodeOpts::default().min_free_disk_bytes
}

impl Default for StandaloneOpts {
    fn default() -> Self {
        StandaloneOpts {
            data_dir: PathBuf::from("./sluice-data"),
            service: ServiceOpts::on(([127, 0, 0, 1], 7070), ([127, 0, 0, 1], 7071)),
            dedup_window_seconds: default_dedup_window(),
            min_free_disk_bytes: default_min_free_disk_bytes(),
            rate_limits: RateLimitOpts::default(),
            bulkheads: BulkheadOpts::default(),
            backend_pressure: PressureOpts::default(),
            connections: ConnectionOpts::default(),
            auth: AuthOpts::default(),
            sqs: SqsOpts::default(),
        }
    }
}

/// The one backend cluster (of one node) standalone places every queue on.
const CLUSTER: &str = "standalone";

/// Places every queue that has no placement: data directories from before standalone placed
/// its queues hold none, and a crash between a queue's record and its placement leaves one
/// without.
async fn place_unplaced_queues(
    directory: &StoreDirectory,
    placements: &StorePlacements,
) -> anyhow::Result<()> {
    const PAGE: usize = 1000;
    let mut after = String::new();
    loop {
        let names = directory.list_queues("", &after, PAGE).await?;
        for name in &names {
            let Some(stored) = directory.get_queue(name).await? else {
                continue;
            };
            let id = stored.record.id;
            if placements.placement(id).await?.is_none() {
                let cluster = placements.place(id, name, None).await?;
                tracing::info!(queue = %name, queue_id = id, %cluster, "placed a queue that had no placement");
            }
        }
        match names.last() {
            Some(last) if names.len() == PAGE => after = last.clone(),
            _ => return Ok(()),
        }
    }
}

/// The master keys: as configured, else the key file in the data directory, made on first start.
fn master_keys(opts: &StandaloneOpts) -> anyhow::Result<MasterKeys> {
    if let Some(keys) = MasterKeys::configured(opts.auth.master_key_file.as_deref())? {
        return Ok(keys);
    }
    let path = opts.data_dir.join("master.key");
    if !path.exists() {
        let text = MasterKeys::generate();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        tracing::warn!(path = %path.display(), "made a master key in the data directory: anyone who can read the directory can open the secrets it seals; give --master-key-file to keep the key elsewhere");
    }
    MasterKeys::load(&path)
}

/// Callers may come in without credentials only from this machine (or with `--insecure`).
fn authenticator(
    opts: &StandaloneOpts,
    keys: Arc<MasterKeys>,
    directory: Arc<StoreDirectory>,
) -> anyhow::Result<Authenticator> {
    let has_root = opts.auth.root_credentials_file.is_some();
    let loopback =
        opts.service.grpc_addr.ip().is_loopback() && opts.sqs.sqs_addr.ip().is_loopback();
    let open = !has_root && (loopback || opts.service.insecure);
    if open && loopback {
        let notice = format!(
            "sluice standalone lets in callers without credentials on {} and {}: only this \
             machine can reach them (give --root-credentials-file to require credentials)",
            opts.service.grpc_addr, opts.sqs.sqs_addr
        );
        eprintln!("{notice}");
        tracing::info!("{notice}");
    } else if open {
        sluice_common::tls::announce_insecure(&format!(
            "INSECURE: sluice standalone lets in callers without credentials on {} \
             (--insecure), with every right on every queue",
            opts.service.grpc_addr
        ));
    }
    anyhow::ensure!(
        open || has_root,
        "sluice standalone listens on {} and {}, which other machines can reach: give \
         --root-credentials-file so that callers must authenticate, or --insecure",
        opts.service.grpc_addr,
        opts.sqs.sqs_addr
    );
    Authenticator::new(directory, Some(keys), &opts.auth, open)
}

/// A running standalone server.
pub struct Standalone {
    drain: Drain,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub sqs_addr: SocketAddr,
    storage: sluice_backend::node::Storage,
    sqs: SqsServer,
    readiness: Readiness,
    grpc: GrpcServer,
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: CancellationToken,
    shutdown: CancellationToken,
}

/// Opens the data directory and starts serving; returns once both ports are bound and the
/// server is ready.
pub async fn start(
    opts: &StandaloneOpts,
    shutdown: CancellationToken,
) -> anyhow::Result<Standalone> {
    opts.rate_limits.check()?;
    opts.bulkheads.check()?;
    let tls = sluice_common::tls::standalone(&opts.service)?;
    if matches!(tls, sluice_common::tls::PortTls::Plain) {
        let sqs = opts.sqs.sqs_addr;
        anyhow::ensure!(
            sqs.ip().is_loopback() || opts.service.insecure,
            "the SQS endpoint listens on {sqs}, which other machines can reach, in plain text: \
             give --tls-cert and --tls-key, listen on 127.0.0.1, or run with --insecure"
        );
    }
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    let node_opts = sluice_backend::node::NodeOpts {
        // The engine stays where standalone always kept it (`queues/`), beside the metadata
        // store (`meta/`).
        data_dir: opts.data_dir.clone(),
        cluster: CLUSTER.into(),
        node_id: CLUSTER.into(),
        dedup_window_seconds: opts.dedup_window_seconds,
        min_free_disk_bytes: opts.min_free_disk_bytes,
        unreplicated: true,
        ..Default::default()
    };
    let storage = sluice_backend::node::Storage::open(&node_opts, "", shutdown.clone()).await?;
    let meta: Arc<dyn MetaStore> = Arc::new(
        EmbeddedStore::open(&opts.data_dir.join("meta")).with_context(|| {
            format!(
                "cannot open the metadata store in {}",
                opts.data_dir.display()
            )
        })?,
    );
    let directory = Arc::new(StoreDirectory::new(meta.clone()));
    let keys = Arc::new(master_keys(opts)?);
    let auth = Arc::new(authenticator(opts, keys.clone(), directory.clone())?);
    let encryption = Arc::new(Encryption::new(keys, directory.clone()));
    let placements = StorePlacements::new(
        meta,
        vec![ClusterState {
            name: CLUSTER.into(),
            nodes: vec![NodeRecord {
                cluster: CLUSTER.into(),
                node: CLUSTER.into(),
                url: "in-process".into(),
            }],
            ..Default::default()
        }],
        Limits::default(),
    );
    place_unplaced_queues(&directory, &placements).await?;
    // Calls to the node in flight at most: a frontend's default.
    let max_calls = sluice_frontend::node::FrontendOpts::default().max_backend_calls;
    let backend = RoutedBackend::new(Arc::new(placements), max_calls, &opts.backend_pressure)
        .with_local(CLUSTER, Arc::new(storage.queues()));
    // One frontend: it admits the whole of every limit.
    let service = QueueServiceImpl::new(Catalog::new(directory), Arc::new(backend), auth)
        .with_rate_limits(RateLimiter::new(
            opts.rate_limits.clone(),
            Default::default(),
        ))
        .with_bulkheads(opts.bulkheads.clone())
        .with_encryption(encryption);

    let readiness = Readiness::default();
    // The admin port outlives the gRPC server so /metrics and /readyz answer while it drains.
    let admin_shutdown = CancellationToken::new();
    sluice_api::metrics::set_queue_label_cap(opts.service.metrics_queue_labels);
    let (admin_addr, admin) = admin::serve(
        opts.service.admin_addr,
        readiness.clone(),
        admin_shutdown.clone(),
    )
    .await?;
    let sqs =
        sluice_frontend::sqs::serve(&opts.sqs, service.clone(), &opts.connections, &tls).await?;
    let grpc = sluice_frontend::serve(
        opts.service.grpc_addr,
        service,
        CancellationToken::new(),
        &opts.connections,
        &tls,
    )
    .await?;
    readiness.set(true);
    tracing::info!(grpc = %grpc.local_addr, admin = %admin_addr, sqs = %sqs.local_addr, data_dir = %opts.data_dir.display(), "sluice standalone ready");
    Ok(Standalone {
        drain: opts.service.drain(DRAIN_TIMEOUT),
        grpc_addr: grpc.local_addr,
        admin_addr,
        sqs_addr: sqs.local_addr,
        storage,
        sqs,
        readiness,
        grpc,
        admin,
        admin_shutdown,
        shutdown,
    })
}

impl Standalone {
    /// Waits for the shutdown token, then drains: the gRPC server finishes in-flight requests,
    /// the engine flushes its writes, and the admin port closes last.
    pub async fn wait(self) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let leave = async move { readiness.set(false) };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.sqs.stop(self.drain.timeout).await;
        // Only now: the drain's requests still reach the engine.
        self.storage.close().await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("sluice standalone stopped");
        served
    }
}

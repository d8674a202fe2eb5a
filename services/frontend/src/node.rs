//! A frontend of the distributed deployment: the public `QueueService`, its queue records read
//! through the metadata tier (cached for a bounded time), its messages routed to the backend
//! cluster of each queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_api::identity::IdentityChange;
use sluice_client::MetadataClient;
use sluice_common::admin::{self, Readiness};
use sluice_common::config::ServiceOpts;
use sluice_common::grpc::{ConnectionOpts, Drain, GrpcServer};
use sluice_common::keys::MasterKeys;
use sluice_common::tls;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthOpts, Authenticator};
use crate::bulkhead::BulkheadOpts;
use crate::pressure::PressureOpts;
use crate::routed::RoutedBackend;
use crate::sqs::{SqsOpts, SqsServer};
use crate::sse::Encryption;
use crate::throttle::{Frontends, RateLimitOpts, RateLimiter};
use crate::{metrics, Catalog, QueueServiceImpl};

/// How often a frontend renews its registration, and so learns how many frontends share the
/// rate limits; the registration outlives it by a few periods (10 s).
const REGISTER_PERIOD: Duration = Duration::from_secs(3);

/// How long a frontend waits before watching identity changes again after the watch broke.
const IDENTITY_REWATCH: Duration = Duration::from_millis(500);

/// How long in-flight requests get to finish after SIGTERM; a long poll lasts at most 20 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrontendOpts {
    #[serde(flatten)]
    pub service: ServiceOpts,
    /// gRPC URLs of metadata nodes; any of them answers.
    pub metadata_endpoints: Vec<String>,
    /// How long a queue record is cached: a change made through another frontend is seen here
    /// within this bound.
    #[serde(default = "default_metadata_cache_ttl_ms")]
    pub metadata_cache_ttl_ms: u64,
    /// Calls in flight to one backend cluster at most (fewer while it answers slowly).
    #[serde(default = "default_max_backend_calls")]
    pub max_backend_calls: usize,
    /// How a slow backend cluster's cap on calls in flight shrinks.
    #[serde(default)]
    pub backend_pressure: PressureOpts,
    /// Caps on the work in flight, by kind.
    #[serde(default)]
    pub bulkheads: BulkheadOpts,
    /// Caps on clients' connections: how many, streams on each, keepalive and idle timeout.
    #[serde(default)]
    pub connections: ConnectionOpts,
    /// Rate limits per queue and per caller, cluster-wide (each frontend admits its share).
    #[serde(default)]
    pub rate_limits: RateLimitOpts,
    #[serde(flatten)]
    pub auth: AuthOpts,
    /// The SQS endpoint.
    #[serde(flatten)]
    pub sqs: SqsOpts,
}

fn default_metadata_cache_ttl_ms() -> u64 {
    1000
}

fn default_max_backend_calls() -> usize {
    4096
}

impl Default for FrontendOpts {
    fn default() -> Self {
        FrontendOpts {
            service: ServiceOpts {
                drain_seconds: 5,
                ..ServiceOpts::on(([127, 0, 0, 1], 7070), ([127, 0, 0, 1], 7071))
            },
            metadata_endpoints: Vec::new(),
            metadata_cache_ttl_ms: default_metadata_cache_ttl_ms(),
            max_backend_calls: default_max_backend_calls(),
            backend_pressure: PressureOpts::default(),
            bulkheads: BulkheadOpts::default(),
            connections: ConnectionOpts::default(),
            rate_limits: RateLimitOpts::default(),
            auth: AuthOpts::default(),
            sqs: SqsOpts::default(),
        }
    }
}

pub struct Frontend {
    drain: Drain,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub sqs_addr: SocketAddr,
    readiness: Readiness,
    grpc: GrpcServer,
    sqs: SqsServer,
    admin: tokio::task::JoinHandle<()>,
    admin_shutdown: CancellationToken,
    shutdown: CancellationToken,
}

pub async fn start(opts: &FrontendOpts, shutdown: CancellationToken) -> anyhow::Result<Frontend> {
    anyhow::ensure!(
        !opts.metadata_endpoints.is_empty(),
        "metadata_endpoints must name at least one metadata node"
    );
    opts.rate_limits.check()?;
    opts.bulkheads.check()?;
    // Before any channel is opened: it installs the TLS this process calls other tiers with.
    let tls = tls::configure(&opts.service, "sluice-frontend", None)?;
    let metadata = Arc::new(MetadataClient::new(&opts.metadata_endpoints)?);
    let keys = MasterKeys::configured(opts.auth.master_key_file.as_deref())?.map(Arc::new);
    let auth = Arc::new(authenticator(opts, keys.clone(), metadata.clone())?);
    let catalog = Catalog::with_ttl(
        metadata.clone(),
        Duration::from_millis(opts.metadata_cache_ttl_ms),
    );
    let backend = RoutedBackend::new(
        metadata.clone(),
        opts.max_backend_calls,
        &opts.backend_pressure,
    );
    let frontends = Frontends::default();
    let mut service = QueueServiceImpl::new(catalog, Arc::new(backend), auth.clone())
        .with_rate_limits(RateLimiter::new(
            opts.rate_limits.clone(),
            frontends.clone(),
        ))
        .with_bulkheads(opts.bulkheads.clone());
    if let Some(keys) = keys {
        service = service.with_encryption(Arc::new(Encryption::new(keys, metadata.clone())));
    }

    let readiness = Readiness::default();
    let admin_shutdown = CancellationToken::new();
    sluice_api::metrics::set_queue_label_cap(opts.service.metrics_queue_labels);
    let (admin_addr, admin) = admin::serve(
        opts.service.admin_addr,
        readiness.clone(),
        admin_shutdown.clone(),
    )
    .await?;
    let sqs = crate::sqs::serve(&opts.sqs, service.clone(), &opts.connections, &tls).await?;
    let grpc = crate::serve(
        opts.service.grpc_addr,
        service,
        CancellationToken::new(),
        &opts.connections,
        &tls,
    )
    .await?;
    let url = opts.service.advertised(grpc.local_addr);
    tokio::spawn(follow_identity(metadata.clone(), auth, shutdown.clone()));
    tokio::spawn(register(metadata, url, frontends, shutdown.clone()));
    readiness.set(true);
    tracing::info!(grpc = %grpc.local_addr, admin = %admin_addr, sqs = %sqs.local_addr, "frontend ready");
    Ok(Frontend {
        drain: opts.service.drain(DRAIN_TIMEOUT),
        grpc_addr: grpc.local_addr,
        admin_addr,
        sqs_addr: sqs.local_addr,
        readiness,
        grpc,
        sqs,
        admin,
        admin_shutdown,
        shutdown,
    })
}

/// Callers must authenticate unless the frontend runs `--insecure`; the master key opens the
/// stored access keys' secrets, so without one only the root key could ever authenticate.
fn authenticator(
    opts: &FrontendOpts,
    keys: Option<Arc<MasterKeys>>,
    metadata: Arc<MetadataClient>,
) -> anyhow::Result<Authenticator> {
    let open = opts.service.insecure;
    if open {
        tls::announce_insecure(
            "INSECURE: sluice-frontend lets in callers without credentials (--insecure), with \
             every right on every queue",
        );
    } else {
        anyhow::ensure!(
            keys.is_some(),
            "sluice-frontend refuses to run without authentication: give --master-key-file (or \
             SLUICE_MASTER_KEY), which seals the access keys' secrets, and \
             --root-credentials-file for the first admin; or --insecure to let every caller in \
             without credentials"
        );
        if opts.auth.root_credentials_file.is_none() {
            tracing::info!("no root credentials configured: only stored access keys authenticate");
        }
    }
    Authenticator::new(metadata, keys, &opts.auth, open)
}

/// Keeps `auth`'s cache true to the identity store until `shutdown`: it forgets each key or
/// principal the metadata tier's watch says changed, and everything whenever the watch breaks
/// (it may have missed changes), then watches again.
async fn follow_identity(
    metadata: Arc<MetadataClient>,
    auth: Arc<Authenticator>,
    shutdown: CancellationToken,
) {
    use sluice_proto::v1::meta_identity_change::Change;
    let follow = async {
        loop {
            match metadata.watch_identity().await {
                Ok(mut changes) => loop {
                    let change = match changes.message().await {
                        Ok(Some(change)) => change.change,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(error = %status, "the identity watch broke");
                            break;
                        }
                    };
                    let (kind, change) = match change {
                        Some(Change::Principal(name)) => {
                            ("principal", IdentityChange::Principal(name))
                        }
                        Some(Change::Key(id)) => ("key", IdentityChange::Key(id)),
                        Some(Change::Reset(_)) | None => ("reset", IdentityChange::All),
                    };
                    metrics::IDENTITY_CHANGES.with_label_values(&[kind]).inc();
                    auth.forget(&change);
                },
                Err(err) => tracing::debug!(error = %err, "cannot watch identity changes"),
            }
            auth.forget(&IdentityChange::All);
            tokio::time::sleep(IDENTITY_REWATCH).await;
        }
    };
    tokio::select! {
        () = follow => {}
        () = shutdown.cancelled() => {}
    }
}

/// Keeps this frontend registered with the metadata tier until `shutdown`, and `frontends` set
/// to how many are registered. While the tier cannot be reached the last count stands.
async fn register(
    metadata: Arc<MetadataClient>,
    url: String,
    frontends: Frontends,
    shutdown: CancellationToken,
) {
    let id = format!("{:016x}", rand::random::<u64>());
    let mut lease = 0;
    let mut ticks = tokio::time::interval(REGISTER_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match metadata.register_frontend(&id, &url, lease).await {
            Ok((renewed, count)) => {
                if count != frontends.get() {
                    tracing::info!(frontends = count, "frontends sharing the rate limits");
                }
                lease = renewed;
                frontends.set(count);
                metrics::FRONTENDS.set(i64::from(frontends.get()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot renew this frontend's registration; keeping the last count of frontends")
            }
        }
    }
}

impl Frontend {
    pub async fn wait(self) -> anyhow::Result<()> {
        let readiness = self.readiness.clone();
        let leave = async move { readiness.set(false) };
        let served = self.grpc.run_until(&self.shutdown, self.drain, leave).await;
        self.sqs.stop(self.drain.timeout).await;
        self.admin_shutdown.cancel();
        let _ = self.admin.await;
        tracing::info!("frontend stopped");
        served
    }
}

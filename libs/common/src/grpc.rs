//! Serving gRPC the same way in every service: TCP_NODELAY, the standard health service, and a
//! graceful stop that reports NOT_SERVING, stops accepting and lets in-flight requests finish.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Room for a batch of ten 1 MiB messages plus their framing.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub struct GrpcServer {
    pub local_addr: SocketAddr,
    /// Ends when the server has stopped after `shutdown`.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds `addr` and serves `routes` until `shutdown` is cancelled. The health service reports
/// `service` (its full gRPC name) as serving until then.
pub async fn serve(
    addr: SocketAddr,
    service: &'static str,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<GrpcServer> {
    serve_on(bind(addr).await?, service, routes, shutdown).await
}

/// Binds the gRPC port, for a service that must know its address before it can build its
/// routes.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind gRPC address {addr}"))
}

/// [`serve`] on a bound listener.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    service: &'static str,
    routes: Routes,
    shutdown: CancellationToken,
) -> anyhow::Result<GrpcServer> {
    let local_addr = listener.local_addr()?;
    let (mut health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    // Without TCP_NODELAY small responses wait for the peer's delayed ACK (~40 ms each).
    let incoming = tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|err| anyhow::anyhow!("gRPC listener: {err}"))?;
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_routes(routes.add_service(health_service))
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.cancelled().await;
                health
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            })
            .await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "gRPC server failed");
        }
        result
    });
    Ok(GrpcServer { local_addr, task })
}

impl GrpcServer {
    /// Serves until `shutdown` is cancelled (or the server fails on its own), runs `leave`
    /// (what the service does before its in-flight requests finish, such as leaving its
    /// cluster), then gives those requests `drain` to finish, closing the connections that are
    /// still open after it. Returns how the server ended.
    pub async fn run_until(
        mut self,
        shutdown: &CancellationToken,
        drain: Duration,
        leave: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let served = tokio::select! {
            served = &mut self.task => Some(served),
            _ = shutdown.cancelled() => None,
        };
        leave.await;
        let served = match served {
            Some(served) => served,
            // Clients that keep idle connections open would hold the drain forever.
            None => match tokio::time::timeout(drain, &mut self.task).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(timeout = ?drain, "connections still open after the drain timeout, closing them");
                    self.task.abort();
                    Ok(Ok(()))
                }
            },
        };
        served
            .context("gRPC server task failed")?
            .context("gRPC server failed")
    }
}

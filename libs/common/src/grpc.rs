//! Serving gRPC the same way in every service: TCP_NODELAY, the standard health service, and a
//! draining stop. On shutdown a service first reports NOT_SERVING (and not ready on its admin
//! port) while it goes on serving for its drain period, so a load balancer or Kubernetes takes it
//! out of rotation without failing a request; then it stops accepting, ends its streams, and lets
//! in-flight requests finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

pub use crate::connections::ConnectionOpts;
use crate::connections::{Conn, Gate, TrackRequests};
use crate::tls::{PortTls, ServerTls};

type Admitted = Result<Conn<tokio::net::TcpStream>, std::io::Error>;

/// Admits each accepted connection under the cap and hands it to the server, after its TLS
/// handshake when the port has TLS; ends when the server stops taking connections.
async fn accept(
    incoming: TcpIncoming,
    gate: Gate,
    tls: Option<Arc<ServerTls>>,
    admitted: tokio::sync::mpsc::Sender<Admitted>,
) {
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            _ = admitted.closed() => return,
        };
        let io = match accepted {
            None => return,
            Some(Ok(io)) => io,
            Some(Err(err)) => {
                tracing::debug!(error = %err, "accepting a connection failed");
                continue;
            }
        };
        let Some(io) = gate.admit(io) else {
            continue;
        };
        let Some(tls) = &tls else {
            if admitted.send(Ok(Conn::Plain(io))).await.is_err() {
                return;
            }
            continue;
        };
        let (tls, admitted) = (tls.clone(), admitted.clone());
        tokio::spawn(async move {
            match tls.accept(io).await {
                Ok((stream, peer)) => {
                    let _ = admitted.send(Ok(Conn::Tls(Box::new(stream), peer))).await;
                }
                // Scanners and plain-text clients end here; the metric counts them.
                Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
            }
        });
    }
}

/// Room for a batch of ten 1 MiB messages plus their framing.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

pub struct GrpcServer {
    pub local_addr: SocketAddr,
    /// Ends when the server has stopped after `stop`.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// Cancelled when the server stops accepting, after the drain period.
    stop: CancellationToken,
    health: tonic_health::server::HealthReporter,
    service: &'static str,
}

/// How a service stops: how long it keeps serving after it reported itself not ready, and how
/// long in-flight requests then get to finish before their connections are closed.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub period: Duration,
    pub timeout: Duration,
}

/// Binds `addr` and serves `routes` until `stop` is cancelled, which [`GrpcServer::run_until`]
/// does after the drain period (so `stop` is the server's own token, not the process's
/// shutdown). The health service reports `service` (its full gRPC name) as serving until the
/// drain begins.
pub async fn serve(
    addr: SocketAddr,
    service: &'static str,
    routes: Routes,
    stop: CancellationToken,
    tls: &PortTls,
) -> anyhow::Result<GrpcServer> {
    serve_on(bind(addr).await?, service, routes, stop, tls).await
}

/// Binds the gRPC port, for a service that must know its address before it can build its
/// routes.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind gRPC address {addr}"))
}

/// [`serve`] on a bound listener, with the limits on connections of an internal API.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    service: &'static str,
    routes: Routes,
    stop: CancellationToken,
    tls: &PortTls,
) -> anyhow::Result<GrpcServer> {
    let connections = ConnectionOpts::internal();
    serve_limited(listener, service, routes, stop, &connections, tls).await
}

/// [`serve`] on a bound listener, holding connections to `connections`. With TLS each
/// connection's handshake runs on its own task once it has a place under the cap, so a slow
/// or silent client delays no other.
pub async fn serve_limited(
    listener: tokio::net::TcpListener,
    service: &'static str,
    routes: Routes,
    stop: CancellationToken,
    connections: &ConnectionOpts,
    tls: &PortTls,
) -> anyhow::Result<GrpcServer> {
    connections.check()?;
    let local_addr = listener.local_addr()?;
    let (mut health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    // Without TCP_NODELAY small responses wait for the peer's delayed ACK (~40 ms each). TCP
    // keepalive finds a dead peer even on a connection HTTP/2 pings are not reaching.
    let tcp_keepalive = Some(Duration::from_secs(connections.keepalive_interval_seconds));
    let incoming = TcpIncoming::from_listener(listener, true, tcp_keepalive)
        .map_err(|err| anyhow::anyhow!("gRPC listener: {err}"))?;
    let gate = Gate::new(connections);
    let (admitted, incoming_conns) = tokio::sync::mpsc::channel(64);
    let (server_tls, access) = match tls {
        PortTls::Plain => (None, None),
        PortTls::Tls { server, access } => (Some(server.clone()), access.clone()),
    };
    tokio::spawn(accept(incoming, gate, server_tls, admitted));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming_conns);
    let builder = connections.apply(tonic::transport::Server::builder());
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let result = builder
            .layer(TrackRequests { access })
            .add_routes(routes.add_service(health_service))
            .serve_with_incoming_shutdown(incoming, stopped.cancelled_owned())
            .await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "gRPC server failed");
        }
        result
    });
    Ok(GrpcServer {
        local_addr,
        task,
        stop,
        health,
        service,
    })
}

impl GrpcServer {
    /// Serves until `shutdown` is cancelled (or the server fails on its own). Then reports
    /// NOT_SERVING and runs `leave` (what takes the service out of rotation: not ready on the
    /// admin port, leaving its ring or cluster), keeps serving for `drain.period`, stops
    /// accepting, and gives in-flight requests `drain.timeout` to finish, closing the
    /// connections that are still open after it. Returns how the server ended.
    pub async fn run_until(
        mut self,
        shutdown: &CancellationToken,
        drain: Drain,
        leave: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let served = tokio::select! {
            served = &mut self.task => Some(served),
            _ = shutdown.cancelled() => None,
        };
        self.health
            .set_service_status(self.service, tonic_health::ServingStatus::NotServing)
            .await;
        leave.await;
        let served = match served {
            Some(served) => served,
            None => {
                if !drain.period.is_zero() {
                    tracing::info!(period = ?drain.period, "draining: not ready, still serving");
                    tokio::time::sleep(drain.period).await;
                }
                self.stop.cancel();
                self.finish(drain.timeout).await
            }
        };
        served
            .context("gRPC server task failed")?
            .context("gRPC server failed")
    }

    /// Waits up to `timeout` for the stopped server's in-flight requests.
    async fn finish(
        &mut self,
        timeout: Duration,
    ) -> Result<Result<(), tonic::transport::Error>, tokio::task::JoinError> {
        // Clients that keep idle connections open would hold the stop forever.
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "connections still open after the drain timeout, closing them"
                );
                self.task.abort();
                Ok(Ok(()))
            }
        }
    }
}

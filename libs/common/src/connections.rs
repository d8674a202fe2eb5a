//! What a gRPC server holds per connection, bounded: connections open at most (past the cap a
//! new one is closed at once, cheaper than serving it badly), and a connection with no request
//! open for the idle timeout is closed, so clients that connect and go quiet do not pin memory.
//! Streams per connection and HTTP/2 keepalive are the server builder's settings
//! ([`ConnectionOpts::apply`]).
//!
//! A connection knows whether it is idle through the requests on it: a tower layer counts each
//! request open until its response body is dropped (a Consume stream stays open as long as it
//! runs), and the connection's reads end with EOF once it has had none open for the timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::{register_int_counter, register_int_gauge, IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{Access, Kind};

static OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "sluice_grpc_connections",
        "gRPC connections this process holds open"
    )
    .expect("metric registers once")
});

static REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_grpc_connections_refused_total",
        "gRPC connections closed as they were accepted, over max_connections"
    )
    .expect("metric registers once")
});

static ACCESS_DENIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_grpc_access_denied_total",
        "Calls to an internal port refused because the caller's certificate names a kind of \
         Sluice process that may not make them"
    )
    .expect("metric registers once")
});

static IDLE_CLOSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "sluice_grpc_connections_idle_closed_total",
        "gRPC connections closed after idle_timeout_seconds without a request open"
    )
    .expect("metric registers once")
});

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionOpts {
    /// Connections open at most; one accepted past it is closed at once.
    pub max_connections: usize,
    /// Requests (HTTP/2 streams) open on one connection at most; a client queues the rest.
    pub max_streams_per_connection: u32,
    /// Seconds between HTTP/2 pings on a connection; one not answered within
    /// `keepalive_timeout_seconds` closes it, so a peer that vanished frees its place.
    pub keepalive_interval_seconds: u64,
    pub keepalive_timeout_seconds: u64,
    /// Seconds a connection may stay open with no request on it; 0 keeps it forever.
    pub idle_timeout_seconds: u64,
}

impl Default for ConnectionOpts {
    fn default() -> Self {
        ConnectionOpts {
            max_connections: 10_000,
            max_streams_per_connection: 1000,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            idle_timeout_seconds: 600,
        }
    }
}

impl ConnectionOpts {
    /// For the internal APIs, whose clients are Sluice services: no cap on the requests of one
    /// connection, since a frontend multiplexes all its calls to a node (long polls among them)
    /// over one, and a cap would queue its sends behind its long polls.
    pub fn internal() -> Self {
        ConnectionOpts {
            max_streams_per_connection: u32::MAX,
            ..ConnectionOpts::default()
        }
    }

    /// Checks the settings, naming the one out of range.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=Semaphore::MAX_PERMITS).contains(&self.max_connections),
            "connections.max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_streams_per_connection >= 1,
            "connections.max_streams_per_connection must be at least 1"
        );
        anyhow::ensure!(
            self.keepalive_interval_seconds >= 1 && self.keepalive_timeout_seconds >= 1,
            "connections.keepalive_interval_seconds and keepalive_timeout_seconds must be at \
             least 1"
        );
        Ok(())
    }

    /// The builder's per-connection settings: streams and keepalive.
    pub fn apply<L>(&self, builder: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        builder
            .max_concurrent_streams(self.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(self.keepalive_interval_seconds)))
            .http2_keepalive_timeout(Some(Duration::from_secs(self.keepalive_timeout_seconds)))
    }

    fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_seconds > 0).then(|| Duration::from_secs(self.idle_timeout_seconds))
    }
}

/// The requests open on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born` when the last request ended (or the connection opened).
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            born: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Counts a request open until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// How long the connection has had no request open; zero while one is.
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        self.born.elapsed().saturating_sub(last)
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = self.0.born.elapsed().as_millis() as u64;
        self.0.last_ms.store(now, Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a request learns of its connection: the TCP peer (tonic's own type, so
/// `Request::remote_addr` works), the connection's activity, and the kind of Sluice process its
/// verified client certificate names, if any.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub activity: Arc<Activity>,
    pub peer: Option<Kind>,
}

/// An accepted connection holding its place under the cap.
pub struct Tracked<IO> {
    io: IO,
    activity: Arc<Activity>,
    idle_timeout: Option<Duration>,
    idle_check: Pin<Box<tokio::time::Sleep>>,
    _place: OwnedSemaphorePermit,
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        OPEN.dec();
    }
}

impl<IO: Connected<ConnectInfo = TcpConnectInfo>> Tracked<IO> {
    fn info(&self, peer: Option<Kind>) -> ConnInfo {
        ConnInfo {
            tcp: self.io.connect_info(),
            activity: self.activity.clone(),
            peer,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        // The timer is looked at only when there is nothing to read, so a busy connection pays
        // nothing for it. When it fires: idle long enough ends the connection (EOF, nothing
        // read), else it is set for when it would be.
        if let (Poll::Pending, Some(timeout)) = (&read, self.idle_timeout) {
            while self.idle_check.as_mut().poll(cx).is_ready() {
                let idle = self.activity.idle_for();
                if idle >= timeout {
                    IDLE_CLOSED.inc();
                    return Poll::Ready(Ok(()));
                }
                let next = tokio::time::Instant::now() + (timeout - idle);
                self.idle_check.as_mut().reset(next);
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A connection as the server sees it once admitted: plain, or TLS over the admitted TCP
/// stream with the kind its client's certificate names.
pub enum Conn<IO> {
    Plain(Tracked<IO>),
    Tls(
        Box<tokio_rustls::server::TlsStream<Tracked<IO>>>,
        Option<Kind>,
    ),
}

impl<IO: Connected<ConnectInfo = TcpConnectInfo>> Connected for Conn<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(io) => io.info(None),
            Conn::Tls(io, peer) => io.get_ref().0.info(*peer),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_flush(cx),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Conn::Tls(io, _) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io, _) => io.is_write_vectored(),
        }
    }
}

/// Hands out places under the connection cap.
pub struct Gate {
    places: Arc<Semaphore>,
    idle_timeout: Option<Duration>,
}

impl Gate {
    pub fn new(opts: &ConnectionOpts) -> Self {
        LazyLock::force(&OPEN);
        LazyLock::force(&REFUSED);
        LazyLock::force(&IDLE_CLOSED);
        LazyLock::force(&ACCESS_DENIED);
        Gate {
            places: Arc::new(Semaphore::new(opts.max_connections.max(1))),
            idle_timeout: opts.idle_timeout(),
        }
    }

    /// `io` with a place, or `None` (and `io` closed) if every place is taken.
    pub fn admit<IO>(&self, io: IO) -> Option<Tracked<IO>> {
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            REFUSED.inc();
            tracing::warn!("refused a connection: max_connections are open");
            return None;
        };
        OPEN.inc();
        let timeout = self.idle_timeout.unwrap_or(Duration::MAX / 4);
        Some(Tracked {
            io,
            activity: Arc::new(Activity::new()),
            idle_timeout: self.idle_timeout,
            idle_check: Box::pin(tokio::time::sleep(timeout)),
            _place: place,
        })
    }
}

/// The tower layer that counts each request open on its connection and, on an internal port,
/// refuses a request from a kind of peer its rules do not allow.
#[derive(Clone, Default)]
pub struct TrackRequests {
    pub access: Option<Arc<Access>>,
}

impl<S> tower_layer::Layer<S> for TrackRequests {
    type Service = Tracking<S>;

    fn layer(&self, inner: S) -> Tracking<S> {
        Tracking {
            inner,
            access: self.access.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Tracking<S> {
    inner: S,
    access: Option<Arc<Access>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Tracking<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::BoxBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let info = request.extensions().get::<ConnInfo>().cloned();
        if let Some(access) = &self.access {
            let peer = info.as_ref().and_then(|info| info.peer);
            if let Err(refusal) = access.check(request.uri().path(), peer) {
                ACCESS_DENIED.inc();
                tracing::warn!(
                    path = request.uri().path(),
                    peer = peer.map_or("none", Kind::name),
                    "refused an internal call from a peer its rules do not allow"
                );
                let status = tonic::Status::permission_denied(refusal);
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        let guard = info.map(|info| {
            // tonic finds the peer address under its own type.
            request.extensions_mut().insert(info.tcp.clone());
            info.activity.begin()
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                // The request stays open until its response body is done with.
                Some(guard) => response.map(|body| tonic::body::boxed(Guarded { body, guard })),
                None => response,
            })
        })
    }
}

#[pin_project::pin_project]
struct Guarded {
    #[pin]
    body: tonic::body::BoxBody,
    guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_no_request_open() {
        let activity = Arc::new(Activity::new());
        let guard = activity.begin();
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(guard);
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle_for() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_refused() {
        let gate = Gate::new(&ConnectionOpts {
            max_connections: 2,
            ..ConnectionOpts::default()
        });
        let first = gate.admit(()).unwrap();
        let _second = gate.admit(()).unwrap();
        assert!(gate.admit(()).is_none());
        drop(first);
        assert!(gate.admit(()).is_some());
    }
}

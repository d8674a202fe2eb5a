//! How every Sluice service reaches another: one channel builder, so connect timeouts, HTTP/2
//! keep-alive, Nagle and TLS (the process's own, installed at start) are set in one place, and
//! one retry policy, so every client backs off the same way.

use std::time::Duration;

use backon::ExponentialBuilder;
use sluice_api::{Error, Result};
use tonic::transport::Channel;

/// How a channel to a service connects and notices a peer that went silent.
#[derive(Debug, Clone)]
pub struct ChannelOptions {
    pub connect_timeout: Duration,
    /// How often an open connection is pinged, busy or idle; `None` sends no pings. A peer cut
    /// off the network answers nothing, not even a reset: pings find that out in seconds, and
    /// its calls fail as UNAVAILABLE instead of waiting out their timeouts.
    pub keep_alive_interval: Option<Duration>,
    /// How long a ping may wait for its answer before the connection is dropped.
    pub keep_alive_timeout: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_secs(2),
            keep_alive_interval: Some(Duration::from_secs(1)),
            keep_alive_timeout: Duration::from_secs(2),
        }
    }
}

/// A lazily connected channel to `url` (e.g. `https://10.0.0.5:7080`), over the TLS this
/// process was started with: a service that is down shows up as UNAVAILABLE on the first call
/// rather than here. `what` names the setting the URL came from, for the error a malformed one
/// gets.
pub fn channel(what: &str, url: &str, options: &ChannelOptions) -> Result<Channel> {
    let options = options.clone();
    sluice_common::tls::channel(url, None, move |endpoint| {
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true);
        match options.keep_alive_interval {
            Some(interval) => endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(options.keep_alive_timeout)
                .keep_alive_while_idle(true),
            None => endpoint,
        }
    })
    .map_err(|err| Error::invalid(what, format!("{err:#}")))
}

/// The pauses between attempts of a call that may be retried: exponential from `min` to `max`,
/// jittered so that many clients failing together do not retry together.
pub fn backoff(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
}

/// Turns a failed call's status into our error. A status that a failed connection produced on
/// this side (tonic gives it code UNKNOWN with the transport error as its source) means `peer`
/// could not be reached or went away mid-call: UNAVAILABLE, as retry logic expects. Anything
/// else is the peer's own answer.
pub fn from_status(peer: &str, status: tonic::Status) -> Error {
    if sluice_api::error::is_transport_failure(&status) {
        return Error::Unavailable(format!("{peer} unreachable: {}", status.message()));
    }
    Error::from(status)
}

/// A request with `timeout` and the caller's trace context in its metadata.
/// The client span of one call to `service` with a `Req`, named as OpenTelemetry's RPC
/// conventions name it (`sluice.v1.BackendService/Send`): the method is the request type's name
/// without `Request`. The call's future runs in it, so [`request`] sends it as the parent of the
/// server's span.
pub fn client_span<Req>(service: &'static str) -> tracing::Span {
    let type_name = std::any::type_name::<Req>();
    let method = type_name.rsplit("::").next().unwrap_or(type_name);
    let method = method.strip_suffix("Request").unwrap_or(method);
    tracing::info_span!(
        target: "sluice_rpc",
        "rpc.client",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method
    )
}

pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    sluice_common::telemetry::inject_trace(request.metadata_mut());
    request
}

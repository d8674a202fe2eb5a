//! The SQS endpoint's HTTP server: HTTP/1.1 and HTTP/2 (the SDKs use either), TLS where the
//! gRPC port has it, connections held to the same cap, and a stop that lets requests in flight
//! finish (a long poll lasts at most 20 s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderValue, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value};
use sluice_common::connections::{ConnectionOpts, Gate};
use sluice_common::tls::{PortTls, ServerTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{Code, SqsError};
use super::wire::{self, Protocol};
use super::{observe, sigv4, Ctx, Sqs, SqsOpts};
use crate::auth::{Identity, Refusal};
use crate::service::QueueServiceImpl;

/// The largest request body: a batch of ten 1 MiB messages with their attributes, encoded
/// (base64 binary attributes grow by a third).
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

pub struct SqsServer {
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    connections: TaskTracker,
    accepting: tokio::task::JoinHandle<()>,
}

impl SqsServer {
    /// Stops accepting, asks every connection to close once its request is answered, and
    /// waits up to `timeout` for them; those still open after it are dropped.
    pub async fn stop(self, timeout: Duration) {
        self.stop.cancel();
        let _ = self.accepting.await;
        self.connections.close();
        if tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "SQS connections still open after the drain timeout"
            );
        }
    }
}

/// Binds `opts.sqs_addr` and serves SQS's protocols over `service` until [`SqsServer::stop`].
pub async fn serve(
    opts: &SqsOpts,
    service: QueueServiceImpl,
    connections: &ConnectionOpts,
    tls: &PortTls,
) -> anyhow::Result<SqsServer> {
    opts.check()?;
    connections.check()?;
    let listener = tokio::net::TcpListener::bind(opts.sqs_addr)
        .await
        .with_context(|| format!("cannot bind SQS address {}", opts.sqs_addr))?;
    let local_addr = listener.local_addr()?;
    let tls = match tls {
        PortTls::Plain => None,
        PortTls::Tls { server, .. } => Some(server.clone()),
    };
    let sqs = Arc::new(Sqs::new(service, opts.clone(), tls.is_some()));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accepting = tokio::spawn(accept(
        listener,
        Gate::new(connections),
        tls,
        sqs,
        stop.clone(),
        tracker.clone(),
    ));
    Ok(SqsServer {
        local_addr,
        stop,
        connections: tracker,
        accepting,
    })
}

async fn accept(
    listener: tokio::net::TcpListener,
    gate: Gate,
    tls: Option<Arc<ServerTls>>,
    sqs: Arc<Sqs>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "accepting an SQS connection failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        // Small answers would otherwise wait for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Some(io) = gate.admit(tcp) else {
            continue;
        };
        let (sqs, tls, stop) = (sqs.clone(), tls.clone(), stop.clone());
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let sqs = sqs.clone();
                async move { Ok::<_, Infallible>(sqs.handle(request, Some(peer)).await) }
            });
            match tls {
                None => connection(TokioIo::new(io), service, stop).await,
                Some(tls) => match tls.accept(io).await {
                    Ok((stream, _)) => connection(TokioIo::new(stream), service, stop).await,
                    Err(err) => tracing::debug!(error = %err, "TLS handshake failed"),
                },
            }
        });
    }
}

/// Serves one connection until it closes, or until `stop`, when it finishes its requests.
async fn connection<IO, S>(io: IO, service: S, stop: CancellationToken)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(err) = served {
                tracing::debug!(error = %err, "SQS connection ended with an error");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(err) = conn.await {
        tracing::debug!(error = %err, "SQS connection ended with an error");
    }
}

impl Sqs {
    async fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<SocketAddr>,
    ) -> Response<Body> {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        let (parts, body) = request.into_parts();
        let target = parts
            .headers
            .get("x-amz-target")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let protocol = wire::protocol(target.as_deref());
        let (action, outcome) = match axum::body::to_bytes(Body::new(body), MAX_REQUEST_BYTES).await
        {
            Ok(body) => self.run(&parts, target.as_deref(), &body, peer).await,
            Err(_) => (
                String::new(),
                Err(SqsError::invalid(
                    "body",
                    format!("the request body is over {MAX_REQUEST_BYTES} bytes, or broke off"),
                )),
            ),
        };
        observe(&action, protocol, started, outcome.as_ref().err());
        if let Err(err) = &outcome {
            if err.code.sender_fault() {
                tracing::debug!(target: sluice_common::rpc::TARGET, action, error = %err, "SQS request refused");
            } else {
                tracing::error!(target: sluice_common::rpc::TARGET, action, error = %err, "SQS request failed");
            }
        }
        reply(protocol, &action, outcome, &request_id)
    }

    /// Reads, authenticates and runs one request; returns its action (empty if unreadable).
    async fn run(
        &self,
        parts: &http::request::Parts,
        target: Option<&str>,
        body: &Bytes,
        peer: Option<SocketAddr>,
    ) -> (String, Result<Map<String, Value>, SqsError>) {
        let decoded = match target {
            Some(target) => wire::decode_json(target, body),
            None => {
                let mut params: Vec<(String, String)> =
                    form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                params.extend(form_urlencoded::parse(body).into_owned());
                wire::decode_query(&params, parts.uri.path())
            }
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(err) => return (String::new(), Err(err)),
        };
        let outcome = async {
            let identity = self.authenticate(parts, body, peer).await?;
            let ctx = Ctx {
                identity,
                peer,
                base_url: self.base_url(parts),
                traceparent: parts
                    .headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            };
            self.dispatch(&ctx, &decoded.action, decoded.input).await
        }
        .await;
        (decoded.action, outcome)
    }

    async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, SqsError> {
        let request = sigv4::Request {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
            body,
        };
        let auth = &self.service.auth;
        let Some(signed) = sigv4::parse(&request, &self.opts.sqs_region, Utc::now())? else {
            if auth.is_open() {
                return Ok(Identity::anonymous());
            }
            return Err(SqsError::new(
                Code::MissingAuthenticationToken,
                "Request is missing Authentication Token: sign it with AWS Signature Version 4 \
                 under a Sluice access key",
            ));
        };
        auth.authenticate_signed(&signed.key_id, peer, |secret| signed.matches(secret))
            .await
            .map_err(|refusal| match refusal {
                Refusal::UnknownKey | Refusal::Expired => SqsError::new(
                    Code::InvalidClientTokenId,
                    "The security token included in the request is invalid: the access key is \
                     unknown, revoked or expired.",
                ),
                Refusal::WrongSecret => SqsError::new(
                    Code::SignatureDoesNotMatch,
                    "The request signature we calculated does not match the signature you \
                     provided. Check your Secret Access Key and signing method.",
                ),
                Refusal::Blocked(retry_after) => SqsError::new(
                    Code::ThrottlingException,
                    format!(
                        "Too many failed authentication attempts from this address; retry in \
                         {} ms",
                        retry_after.as_millis()
                    ),
                ),
                Refusal::Failed(err) => SqsError::from(err),
            })
    }

    /// The base of queue URLs for a request: the configured one, else this port's scheme and
    /// the `Host` the client used.
    fn base_url(&self, parts: &http::request::Parts) -> String {
        if let Some(url) = &self.opts.sqs_url {
            return url.trim_end_matches('/').to_owned();
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        format!("{}://{host}", self.scheme)
    }
}

fn reply(
    protocol: Protocol,
    action: &str,
    outcome: Result<Map<String, Value>, SqsError>,
    request_id: &str,
) -> Response<Body> {
    let (status, content_type, body, query_error) = match (protocol, outcome) {
        (Protocol::Json, Ok(output)) => (
            StatusCode::OK,
            wire::JSON_CONTENT_TYPE,
            Value::Object(output).to_string(),
            None,
        ),
        (Protocol::Json, Err(err)) => (
            err.code.status(),
            wire::JSON_CONTENT_TYPE,
            wire::json_error(&err),
            Some(wire::query_error_header(&err)),
        ),
        (Protocol::Query, Ok(output)) => (
            StatusCode::OK,
            "text/xml",
            wire::xml_reply(action, &output, request_id),
            None,
        ),
        (Protocol::Query, Err(err)) => (
            err.code.status(),
            "text/xml",
            wire::xml_error(&err, request_id),
            None,
        ),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    if let Some(value) = query_error.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert("x-amzn-query-error", value);
    }
    response
}

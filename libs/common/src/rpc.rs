//! What every gRPC server of Sluice does around a request: a span that continues the caller's
//! trace and is named after OpenTelemetry's RPC conventions, a count by gRPC code, a latency
//! histogram, and the mapping of our error onto a status.

use std::future::Future;
use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec};
use tonic::{Response, Status};
use tracing::Instrument;

use sluice_api::error::code_name;
use sluice_api::{Error, Result};

use crate::telemetry;

/// The target of every RPC span and of the request's own log lines, whichever service serves it:
/// `RUST_LOG=sluice_rpc=debug` shows refused requests too.
pub const TARGET: &str = "sluice_rpc";

/// The two metrics of one gRPC service, labelled by method (and code, for the counter).
pub struct RpcMetrics {
    pub requests: &'static IntCounterVec,
    pub duration: &'static HistogramVec,
}

/// Runs `work` as the RPC `service/method` about `queue` (empty if none).
pub async fn observe<T>(
    service: &'static str,
    method: &'static str,
    queue: &str,
    metadata: &tonic::metadata::MetadataMap,
    metrics: &RpcMetrics,
    work: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TARGET,
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.grpc.status_code = tracing::field::Empty,
        method,
        queue,
        trace_id = tracing::field::Empty
    );
    telemetry::attach_trace(&span, metadata);
    let result = work.instrument(span.clone()).await;
    metrics
        .duration
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(err) => err.code(),
    };
    metrics
        .requests
        .with_label_values(&[method, code_name(code)])
        .inc();
    span.record("rpc.grpc.status_code", code as i32);
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(err) => {
            if matches!(err, Error::Internal(_)) {
                span.in_scope(|| tracing::error!(target: TARGET, error = %err, "request failed"));
            } else {
                span.in_scope(|| tracing::debug!(target: TARGET, error = %err, "request refused"));
            }
            Err(err.into())
        }
    }
}

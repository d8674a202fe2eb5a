//! Structured logs and traces through `tracing`.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). Every span is also an
//! OpenTelemetry span, so each request has a trace id even when nothing exports it: the RPC span
//! records that id as a field and every log line inside the request carries it. With an OTLP
//! endpoint configured the spans are exported over OTLP/gRPC in batches. A caller's W3C
//! `traceparent` header is honoured, so a request keeps one trace id across tiers.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::TracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a service passes to [`init`].
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The OpenTelemetry `service.name`, e.g. `sluice-standalone`.
    pub service_name: &'static str,
    pub log_format: LogFormat,
    /// An OTLP/gRPC collector such as `http://127.0.0.1:4317`; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes the spans not yet exported.
pub struct Telemetry {
    provider: TracerProvider,
}

impl Telemetry {
    /// Exports what is still buffered. Call it last, after the servers have drained.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "could not flush the last spans");
        }
    }
}

/// Installs the global subscriber. Must run inside a Tokio runtime when an OTLP endpoint is set
/// (the batch exporter runs on it). If a subscriber is already installed (another test in the
/// same process), the first one stays and this one only exists to be shut down.
pub fn init(config: TelemetryConfig) -> anyhow::Result<Telemetry> {
    let resource = Resource::new([KeyValue::new("service.name", config.service_name)]);
    let mut builder = TracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|err| {
                anyhow::anyhow!("cannot set up the OTLP exporter to {endpoint}: {err}")
            })?;
        builder = builder.with_batch_exporter(exporter, opentelemetry_sdk::runtime::Tokio);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice"));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = match config.log_format {
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already installed: keep the first one.
    drop(result);
    Ok(Telemetry { provider })
}

/// Reads gRPC request metadata as W3C trace-context headers.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span` a child of the trace the caller sent in `traceparent` (if any) and records its
/// trace id in the span's `trace_id` field, which the span must declare (as `Empty`).
pub fn attach_trace(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    if parent.span().span_context().is_valid() {
        span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    // With no OpenTelemetry layer installed the id is invalid; a field of zeros would mislead.
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // W3C trace context keys and values are plain ASCII; anything else is skipped.
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Puts the current span's trace context into an outgoing request's `traceparent`, so the next
/// tier's span joins the same trace.
pub fn inject_trace(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

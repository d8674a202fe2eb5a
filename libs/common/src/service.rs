//! The life of a service binary: logging and tracing set up, SIGTERM and Ctrl-C turned into a
//! cancellation, the service run until it has drained, and the last traces flushed.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::telemetry::{self, LogFormat, TelemetryConfig};

/// Runs `service` with a token that is cancelled on SIGTERM or Ctrl-C; `service` starts, prints
/// its ready line, and returns once it has stopped.
pub async fn run<Fut>(
    service_name: &'static str,
    log_json: bool,
    otlp_endpoint: Option<String>,
    service: impl FnOnce(CancellationToken) -> Fut,
) -> anyhow::Result<()>
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = telemetry::init(TelemetryConfig {
        service_name,
        log_format: if log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        otlp_endpoint,
    })?;
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());
    let result = service(shutdown).await;
    telemetry.shutdown();
    result
}

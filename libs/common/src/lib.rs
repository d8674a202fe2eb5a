//! What every Sluice service shares: the error type that maps onto gRPC status codes, logging
//! set-up, the admin HTTP port (`/metrics`, `/healthz`, `/readyz`) and shutdown on signals.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod error;
pub mod grpc;
pub mod rpc;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use error::{Error, Result};

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! What every Sluice service shares: the error type that maps onto gRPC status codes, logging
//! set-up, the admin HTTP port (`/metrics`, `/healthz`, `/readyz`) and shutdown on signals.

pub mod admin;
pub mod config;
pub mod error;
pub mod rpc;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use error::{Error, Result};

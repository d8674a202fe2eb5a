//! What every Sluice service does the same way: logging and tracing set-up, config loading,
//! serving gRPC around each request, the admin HTTP port (`/metrics`, `/healthz`, `/readyz`)
//! and shutdown on signals.

pub mod admin;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod etcd;
pub mod grpc;
pub mod keys;
pub mod rpc;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

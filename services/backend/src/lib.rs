//! A backend node: the queue engine served over the internal `BackendService`, replicated over
//! its cluster with Raft. Frontends and managers reach it through `sluice-client`'s
//! `BackendClient`.

pub mod cli;
mod load;
mod local;
mod metrics;
pub mod node;
pub mod replica;
mod resend;
mod service;

pub use local::{NodeQueues, Traffic};
pub use service::BackendServiceImpl;

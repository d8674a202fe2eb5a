//! A backend node: the queue engine served over the internal `BackendService`, and the typed
//! client frontends reach it with. `QueueBackend` is what a frontend needs from the tier that
//! stores messages; the engine in the same process and `RemoteBackend` both implement it.

mod api;
mod client;
mod convert;
mod metrics;
pub mod node;
pub mod replica;
mod service;

pub use api::QueueBackend;
pub use client::{ClientOptions, LeaderHint, RemoteBackend};
pub use service::{BackendServiceImpl, Traffic};

//! The public `sluice.v1.QueueService`: validates every request against the limits of DESIGN
//! section 3, resolves queue names through the metadata store, and hands the work to a
//! `QueueBackend`: the in-process engine in standalone, a backend node over the network otherwise.

mod audit;
pub mod auth;
pub mod bulkhead;
mod catalog;
mod consume;
mod convert;
mod digest;
mod identity;
mod messages;
mod metrics;
pub mod node;
pub mod pressure;
mod queues;
mod refresh;
mod routed;
mod server;
mod service;
mod spread;
pub mod sqs;
pub mod sse;
pub mod throttle;
pub mod validate;

pub use catalog::Catalog;
pub use routed::RoutedBackend;
pub use server::serve;
pub use service::QueueServiceImpl;

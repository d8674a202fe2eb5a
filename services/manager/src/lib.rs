//! The manager (DESIGN section 7): runs outside the backend clusters, elects one leader through
//! etcd, and places every new queue on the least-utilized healthy cluster under its high-water
//! marks. The leader also moves queues between clusters on an operator's word (seal, drain,
//! remove). Any manager shows the clusters' state.

mod election;
mod metrics;
mod moves;
pub mod policy;
mod server;
mod service;
mod store;
mod view;

pub use server::{start, Manager, ManagerOpts};
pub use store::StorePlacements;

//! The manager (DESIGN section 7): runs outside the backend clusters, elects one leader through
//! etcd, and places every new queue on the lowest-scoring healthy cluster under its high-water
//! marks. The leader moves queues off clusters that stay hot (and on an operator's word) with
//! the seal-and-drain move. Any manager shows the clusters' state. docs/placement.md has the
//! rules.

mod election;
mod fleet;
mod metrics;
mod moves;
pub mod policy;
pub mod rebalance;
mod rebalancer;
mod resize;
mod server;
mod service;
pub mod simulate;
pub mod spread;
mod store;

pub use server::{start, Manager, ManagerOpts};
pub use store::StorePlacements;

//! One client per internal Sluice service, over one channel builder: a tier that calls another
//! links this crate, never the other tier's own crate. Retries (one `backon` policy each) sit
//! at one level per call path: in the metadata and manager clients, which know the other
//! nodes to try; for backends in the caller that routes to a cluster's nodes.
//!
//! - [`BackendClient`]: a backend node's `BackendService`, following its cluster's leader.
//! - [`MetadataClient`]: the metadata tier; any node answers.
//! - [`ManagerClient`]: the leading manager, found through etcd (feature `manager`).
//!
//! And for clients of the public API, [`QueueClient`] and [`IdentityClient`], which present an
//! access key, and [`retry_throttled`]: backing off when a frontend throttles.

mod backend;
pub mod channel;
#[cfg(feature = "manager")]
mod manager;
mod metadata;
mod public;
mod ring;
mod throttled;

pub use backend::{node_client, BackendClient, BackendClientOptions, LeaderHint};
#[cfg(feature = "manager")]
pub use manager::{leader_url, ManagerClient, ManagerClientOptions};
pub use metadata::MetadataClient;
pub use public::{identity_client, queue_client, IdentityClient, QueueClient};
pub use ring::Ring;
pub use throttled::{retry_throttled, CLIENT_ID};

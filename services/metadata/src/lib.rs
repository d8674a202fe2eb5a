//! The metadata tier (DESIGN section 6): nodes on a consistent-hash ring over etcd. Each queue's
//! record is owned by one node, which caches it and keeps the cache true with an etcd watch; any
//! node forwards a request to the owner. Frontends reach the tier through `sluice-client`'s
//! `MetadataClient`.

mod cache;
mod identity;
mod metrics;
mod server;
mod service;

pub use server::{member_key, start, MetadataNode, MetadataOpts};

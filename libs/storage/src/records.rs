//! What is stored in RocksDB, as prost messages so fields can be added later without a
//! migration.

use std::collections::BTreeMap;

use bytes::Bytes;

/// A typed message attribute, stored and returned exactly as sent.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AttributeValue {
    #[prost(string, tag = "1")]
    pub data_type: String,
    #[prost(string, tag = "2")]
    pub string_value: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub binary_value: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct QueueRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub retention_ms: u64,
}

/// The immutable part of a message, written once at send.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    #[prost(btree_map = "string, message", tag = "3")]
    pub attributes: BTreeMap<String, AttributeValue>,
    #[prost(string, tag = "4")]
    pub group_id: String,
}

/// The small, mutable part of a message: rewritten on every receive and visibility change, and
/// all that start-up reads to rebuild the in-memory index.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct StateRecord {
    #[prost(uint64, tag = "1")]
    pub sent_ms: u64,
    #[prost(uint64, tag = "2")]
    pub visible_at_ms: u64,
    #[prost(uint32, tag = "3")]
    pub receive_count: u32,
    #[prost(uint64, tag = "4")]
    pub first_receive_ms: u64,
}

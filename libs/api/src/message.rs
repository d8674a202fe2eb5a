//! What a queue holds and hands out: messages as sent, stored and received, a queue's settings
//! as the engine needs them, and the tasks that move messages between queues. Every tier speaks
//! these: the frontend builds them from requests, the backend's engine stores them, and the
//! internal API carries them (see [`crate::wire`]).

use std::collections::BTreeMap;
use std::time::Duration;

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

/// Identifies a queue inside the engine; never reused, so a deleted queue's receipt handles and
/// records can never be mistaken for a new queue's.
pub type QueueId = u64;

/// What the engine must know of a queue on its own, without the metadata tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's public name, for logs and metric labels.
    pub name: String,
    /// Messages older than this are deleted.
    pub retention: Duration,
    /// Delivers one message of a group at a time, in send order. Fixed when the queue is created.
    pub fifo: bool,
    pub dead_letter: Option<DeadLetter>,
    /// When a send is acknowledged on a replicated engine.
    pub replication: Replication,
}

/// When a replicated engine acknowledges a send. A standalone engine fsyncs before it
/// acknowledges either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replication {
    /// Once a majority of the cluster holds it durably.
    #[default]
    Sync,
    /// Once the leader holds it durably; the other nodes get it after.
    Async,
}

impl Replication {
    /// `Async` if `asynchronous`: records and protos store the mode as that flag.
    pub fn from_async(asynchronous: bool) -> Self {
        if asynchronous {
            Replication::Async
        } else {
            Replication::Sync
        }
    }
}

impl QueueConfig {
    /// A standard queue without a dead-letter queue.
    pub fn standard(name: impl Into<String>, retention: Duration) -> Self {
        QueueConfig {
            name: name.into(),
            retention,
            fifo: false,
            dead_letter: None,
            replication: Replication::Sync,
        }
    }
}

/// Where messages go that were received too often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    pub queue: QueueId,
    /// A message received this many times moves on its next receive instead of being delivered.
    pub max_receive_count: u32,
}

/// The state of a message move task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MoveTaskStatus {
    Running = 1,
    Completed = 2,
    Cancelled = 3,
    Failed = 4,
}

/// A task moving messages out of a (dead-letter) queue, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTask {
    pub id: String,
    /// `None`: each message back to the queue it came from.
    pub destination: Option<QueueId>,
    pub destination_name: String,
    pub max_per_second: Option<u32>,
    pub status: MoveTaskStatus,
    pub moved: u64,
    pub total: u64,
    pub failure: String,
    pub started_ms: u64,
}

/// A message to store.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Not visible to receives until this has passed.
    pub delay: Duration,
    pub group_id: String,
    /// Non-empty: a send with an id already seen within the engine's window stores nothing and
    /// returns the first send's answer.
    pub deduplication_id: String,
    /// The id the frontend chose (an encrypted body is bound to it); empty: the engine names
    /// the message.
    pub message_id: String,
    /// The hex MD5 of the plain body, given with an encrypted one; empty: the engine computes
    /// it from `body`.
    pub md5_of_body: String,
}

/// What the first send of a deduplication id was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstSend {
    pub message_id: String,
    pub sequence: u64,
}

/// The engine's answer to a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub message_id: String,
    /// Increases with every message the queue stores, across restarts.
    pub sequence: u64,
    /// The deduplication id was seen within the window: nothing new was stored, and the id and
    /// sequence are the first send's.
    pub duplicate: bool,
    /// Hex MD5 of the body this send carried.
    pub md5_of_body: String,
}

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Bytes,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub sent_timestamp_ms: u64,
    pub receive_count: u32,
    pub first_receive_timestamp_ms: u64,
    pub group_id: String,
    pub sequence: u64,
    /// For a message in a dead-letter queue: the name of the queue it was moved from.
    pub dead_letter_source: String,
    /// Hex MD5 of the body.
    pub md5_of_body: String,
}

/// The reserved attribute that carries a message's [`SystemAttributes`].
pub const SYSTEM_ATTRIBUTE: &str = "Sluice.System";

/// What a frontend keeps with a message for its receivers beyond body and attributes (see
/// `SystemAttributes` in the internal API).
pub use sluice_proto::v1::SystemAttributes;

/// Adds `system` to a message's `attributes`, unless it holds nothing.
pub fn attach_system(attributes: &mut BTreeMap<String, AttributeValue>, system: &SystemAttributes) {
    if *system == SystemAttributes::default() {
        return;
    }
    attributes.insert(
        SYSTEM_ATTRIBUTE.to_owned(),
        AttributeValue {
            data_type: "Binary".into(),
            string_value: String::new(),
            binary_value: prost::Message::encode_to_vec(system).into(),
        },
    );
}

/// Takes a received message's system attributes out of its `attributes`. A message stored
/// before Sluice kept them has none; one whose attribute does not decode (only a faulty
/// frontend could write it) is delivered without them rather than not at all.
pub fn take_system(attributes: &mut BTreeMap<String, AttributeValue>) -> SystemAttributes {
    attributes
        .remove(SYSTEM_ATTRIBUTE)
        .and_then(|value| prost::Message::decode(value.binary_value).ok())
        .unwrap_or_default()
}

/// Hex MD5 of a message body, as SQS clients check it.
pub fn md5_of_body(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("{:x}", Md5::digest(body))
}

/// Approximate number of messages in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5_of_body_is_lower_case_hex() {
        // RFC 1321's test suite.
        assert_eq!(super::md5_of_body(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            super::md5_of_body(b"message digest"),
            "f96b697d7cb7938d525a2f31aaf161d0"
        );
    }

    #[test]
    fn system_attributes_ride_in_their_reserved_attribute_and_come_out_of_it() {
        use super::*;
        let mut attributes = BTreeMap::new();
        attach_system(&mut attributes, &SystemAttributes::default());
        assert!(attributes.is_empty(), "nothing to keep, nothing added");
        let system = SystemAttributes {
            sender_id: "svc".into(),
            deduplication_id: "d-1".into(),
            trace_header: "Root=1-a".into(),
        };
        attach_system(&mut attributes, &system);
        assert_eq!(attributes[SYSTEM_ATTRIBUTE].data_type, "Binary");
        assert_eq!(take_system(&mut attributes), system);
        assert!(attributes.is_empty());
        // Not decodable: the message is delivered without them, and without the attribute.
        attributes.insert(
            SYSTEM_ATTRIBUTE.to_owned(),
            AttributeValue {
                data_type: "Binary".into(),
                string_value: String::new(),
                binary_value: Bytes::from_static(&[0xff]),
            },
        );
        assert_eq!(take_system(&mut attributes), SystemAttributes::default());
        assert!(attributes.is_empty());
    }
}

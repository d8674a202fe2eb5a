//! A queue as the metadata tier records it: its id, every attribute with defaults filled in,
//! and its tags, stored as JSON so operators can read records with the store's own tools.

use std::collections::HashMap;

use sluice_proto::v1 as pb;

use crate::limits::*;
use crate::{Error, QueueId, Result};

/// A queue's record, under [`crate::cluster::queue_record_key`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueueRecord {
    pub id: QueueId,
    pub name: String,
    pub attributes: EffectiveAttributes,
    #[serde(default)]
    pub tags: HashMap<String, String>,
    pub created_at_ms: u64,
    /// When its attributes or tags last changed; records from before it was kept have 0.
    #[serde(default)]
    pub modified_at_ms: u64,
    /// When it was last purged, 0 if never: SQS allows one purge a minute.
    #[serde(default)]
    pub purged_at_ms: u64,
}

impl QueueRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a queue record always serializes")
    }

    /// Reads the record stored under `key`; a record that does not parse is an internal error
    /// naming the key.
    pub fn decode(key: &str, raw: &[u8]) -> Result<QueueRecord> {
        serde_json::from_slice(raw)
            .map_err(|err| Error::Internal(format!("queue record {key} is corrupt: {err}")))
    }
}

/// A value with the revision at which it was last written; a compare-and-swap names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: u64,
}

/// A record together with the store revision it was read at, for a compare-and-swap update.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: QueueRecord,
    pub revision: u64,
}

impl Stored {
    /// The record stored under `key` as `value`.
    pub fn decode(key: &str, value: Versioned) -> Result<Stored> {
        Ok(Stored {
            record: QueueRecord::decode(key, &value.value)?,
            revision: value.revision,
        })
    }
}

/// Every attribute of a queue, defaults filled in; what the metadata store keeps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EffectiveAttributes {
    pub visibility_timeout_seconds: u32,
    pub message_retention_seconds: u32,
    pub delay_seconds: u32,
    pub max_message_bytes: u32,
    pub receive_wait_time_seconds: u32,
    pub fifo: bool,
    pub content_based_deduplication: bool,
    /// `pb::Replication` as its number.
    pub replication: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_policy: Option<RedrivePolicy>,
    /// The queue's own rate limits; the frontends' default fills in those it does not set.
    #[serde(default, skip_serializing_if = "RateLimits::is_empty")]
    pub rate_limits: RateLimits,
    /// Messages are sent encrypted under the queue's data key. Records from before encryption
    /// existed have none.
    #[serde(default)]
    pub server_side_encryption: bool,
    /// Which queues may name this one as their dead-letter queue.
    #[serde(default, skip_serializing_if = "RedriveAllow::is_allow_all")]
    pub redrive_allow: RedriveAllow,
}

/// Rate limits, each per second; `None` sets no limit of its own. A queue's bound all its
/// callers together, a caller's (frontend config) one caller across its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_messages_per_second: Option<u32>,
    /// Bodies and message attributes, counted as `max_message_bytes` counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_bytes_per_second: Option<u32>,
    /// ReceiveMessage requests, and the receives of Consume streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receives_per_second: Option<u32>,
    /// Receipt handles deleted or whose visibility is changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_per_second: Option<u32>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        *self == RateLimits::default()
    }

    /// These limits, with `default`'s where these set none.
    pub fn or(&self, default: &RateLimits) -> RateLimits {
        RateLimits {
            send_messages_per_second: self
                .send_messages_per_second
                .or(default.send_messages_per_second),
            send_bytes_per_second: self.send_bytes_per_second.or(default.send_bytes_per_second),
            receives_per_second: self.receives_per_second.or(default.receives_per_second),
            deletes_per_second: self.deletes_per_second.or(default.deletes_per_second),
        }
    }

    pub fn to_proto(&self) -> pb::RateLimits {
        pb::RateLimits {
            send_messages_per_second: self.send_messages_per_second,
            send_bytes_per_second: self.send_bytes_per_second,
            receives_per_second: self.receives_per_second,
            deletes_per_second: self.deletes_per_second,
        }
    }
}

/// Which queues may name a queue as their dead-letter queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedriveAllow {
    #[default]
    AllowAll,
    DenyAll,
    /// Only the queues named.
    ByQueue(Vec<String>),
}

impl RedriveAllow {
    /// Whether queue `source` may name this queue as its dead-letter queue.
    pub fn allows(&self, source: &str) -> bool {
        match self {
            RedriveAllow::AllowAll => true,
            RedriveAllow::DenyAll => false,
            RedriveAllow::ByQueue(sources) => sources.iter().any(|s| s == source),
        }
    }

    fn is_allow_all(&self) -> bool {
        *self == RedriveAllow::AllowAll
    }

    pub fn to_proto(&self) -> pb::RedriveAllowPolicy {
        let (permission, source_queues) = match self {
            RedriveAllow::AllowAll => (pb::RedrivePermission::AllowAll, Vec::new()),
            RedriveAllow::DenyAll => (pb::RedrivePermission::DenyAll, Vec::new()),
            RedriveAllow::ByQueue(sources) => (pb::RedrivePermission::ByQueue, sources.clone()),
        };
        pb::RedriveAllowPolicy {
            permission: permission as i32,
            source_queues,
        }
    }
}

/// Where a queue's messages go after too many receives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedrivePolicy {
    /// The dead-letter queue's name.
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

impl Default for EffectiveAttributes {
    fn default() -> Self {
        EffectiveAttributes {
            visibility_timeout_seconds: DEFAULT_VISIBILITY_TIMEOUT_SECS,
            message_retention_seconds: DEFAULT_RETENTION_SECS,
            delay_seconds: 0,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            receive_wait_time_seconds: 0,
            fifo: false,
            content_based_deduplication: false,
            server_side_encryption: false,
            replication: pb::Replication::Sync as i32,
            redrive_policy: None,
            rate_limits: RateLimits::default(),
            redrive_allow: RedriveAllow::AllowAll,
        }
    }
}

impl EffectiveAttributes {
    pub fn to_proto(&self) -> pb::QueueAttributes {
        pb::QueueAttributes {
            visibility_timeout_seconds: Some(self.visibility_timeout_seconds),
            message_retention_seconds: Some(self.message_retention_seconds),
            delay_seconds: Some(self.delay_seconds),
            max_message_bytes: Some(self.max_message_bytes),
            receive_wait_time_seconds: Some(self.receive_wait_time_seconds),
            redrive_policy: self
                .redrive_policy
                .as_ref()
                .map(|policy| pb::RedrivePolicy {
                    dead_letter_queue: policy.dead_letter_queue.clone(),
                    max_receive_count: policy.max_receive_count,
                }),
            fifo: self.fifo,
            content_based_deduplication: self.content_based_deduplication,
            server_side_encryption: Some(self.server_side_encryption),
            replication: self.replication,
            rate_limits: (!self.rate_limits.is_empty()).then(|| self.rate_limits.to_proto()),
            redrive_allow_policy: Some(self.redrive_allow.to_proto()),
        }
    }
}

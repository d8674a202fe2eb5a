//! The limits of the public API (DESIGN section 3) and the checks that enforce them. Every
//! failure names the field and the limit, so a client knows what to fix.

use std::time::Duration;

use sluice_common::{Error, Result};
use sluice_proto::v1 as pb;

pub const MAX_QUEUE_NAME_LEN: usize = 80;
pub const FIFO_SUFFIX: &str = ".fifo";
pub const DEFAULT_VISIBILITY_TIMEOUT_SECS: u32 = 30;
pub const MAX_VISIBILITY_TIMEOUT_SECS: u32 = 12 * 60 * 60;
pub const DEFAULT_RETENTION_SECS: u32 = 4 * 24 * 60 * 60;
pub const MIN_RETENTION_SECS: u32 = 60;
pub const MAX_RETENTION_SECS: u32 = 14 * 24 * 60 * 60;
pub const MAX_DELAY_SECS: u32 = 900;
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1024 * 1024;
pub const MIN_MAX_MESSAGE_BYTES: u32 = 1024;
pub const MAX_MAX_MESSAGE_BYTES: u32 = 1024 * 1024;
pub const MAX_WAIT_TIME_SECS: u32 = 20;
pub const MAX_BATCH_ENTRIES: usize = 10;
pub const MAX_RECEIVE_MESSAGES: u32 = 10;
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 256;
pub const MAX_BATCH_ENTRY_ID_LEN: usize = 80;
pub const MAX_GROUP_ID_LEN: usize = 128;
pub const MAX_DEDUPLICATION_ID_LEN: usize = 128;
pub const MIN_MAX_RECEIVE_COUNT: u32 = 1;
pub const MAX_MAX_RECEIVE_COUNT: u32 = 1000;
pub const MAX_MOVE_RATE: u32 = 1000;
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const DEFAULT_PREFETCH: u32 = 100;
pub const MAX_PREFETCH: u32 = 1000;
pub const MAX_ACK_HANDLES: usize = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Checks a queue name; `field` is the request field that carries it.
pub fn queue_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "queue name must not be empty"));
    }
    if name.len() > MAX_QUEUE_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "queue name is {} characters, the limit is {MAX_QUEUE_NAME_LEN}",
                name.len()
            ),
        ));
    }
    let base = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
    if base.is_empty() || !base.chars().all(is_name_char) {
        return Err(Error::invalid(
            field,
            format!(
                "queue name {name:?} may only contain A-Z, a-z, 0-9, '_' and '-' (FIFO names end in \"{FIFO_SUFFIX}\")"
            ),
        ));
    }
    Ok(())
}

fn in_range(field: &str, value: u32, min: u32, max: u32) -> Result<u32> {
    if value < min || value > max {
        return Err(Error::invalid(
            field,
            format!("{value} is outside {min} to {max}"),
        ));
    }
    Ok(value)
}

pub fn visibility_timeout(field: &str, secs: u32) -> Result<Duration> {
    in_range(field, secs, 0, MAX_VISIBILITY_TIMEOUT_SECS).map(|s| Duration::from_secs(s.into()))
}

pub fn delay(field: &str, secs: u32) -> Result<Duration> {
    in_range(field, secs, 0, MAX_DELAY_SECS).map(|s| Duration::from_secs(s.into()))
}

pub fn wait_time(field: &str, secs: u32) -> Result<Duration> {
    in_range(field, secs, 0, MAX_WAIT_TIME_SECS).map(|s| Duration::from_secs(s.into()))
}

pub fn max_messages(value: u32) -> Result<usize> {
    let value = if value == 0 { 1 } else { value };
    in_range("max_messages", value, 1, MAX_RECEIVE_MESSAGES).map(|v| v as usize)
}

pub fn prefetch(value: u32) -> Result<usize> {
    let value = if value == 0 { DEFAULT_PREFETCH } else { value };
    in_range("start.prefetch", value, 1, MAX_PREFETCH).map(|v| v as usize)
}

/// A receipt handle must at least be there; the engine checks the rest (its signature).
pub fn receipt_handle(field: &str, handle: &str) -> Result<()> {
    if handle.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(())
}

pub fn ack_handles(len: usize) -> Result<()> {
    if len == 0 || len > MAX_ACK_HANDLES {
        return Err(Error::invalid(
            "ack.receipt_handles",
            format!("an ack holds 1 to {MAX_ACK_HANDLES} receipt handles, got {len}"),
        ));
    }
    Ok(())
}

pub fn page_size(value: u32) -> Result<usize> {
    let value = if value == 0 { DEFAULT_PAGE_SIZE } else { value };
    in_range("page_size", value, 1, MAX_PAGE_SIZE).map(|v| v as usize)
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
            replication: pb::Replication::Sync as i32,
            redrive_policy: None,
        }
    }
}

impl EffectiveAttributes {
    /// Applies the fields `update` sets on top of `self`, checking each. `creating` allows
    /// choosing the queue kind, which cannot change later.
    pub fn apply(
        &self,
        name: &str,
        update: &pb::QueueAttributes,
        creating: bool,
    ) -> Result<EffectiveAttributes> {
        let mut next = self.clone();
        if let Some(v) = update.visibility_timeout_seconds {
            next.visibility_timeout_seconds = in_range(
                "attributes.visibility_timeout_seconds",
                v,
                0,
                MAX_VISIBILITY_TIMEOUT_SECS,
            )?;
        }
        if let Some(v) = update.message_retention_seconds {
            next.message_retention_seconds = in_range(
                "attributes.message_retention_seconds",
                v,
                MIN_RETENTION_SECS,
                MAX_RETENTION_SECS,
            )?;
        }
        if let Some(v) = update.delay_seconds {
            next.delay_seconds = in_range("attributes.delay_seconds", v, 0, MAX_DELAY_SECS)?;
        }
        if let Some(v) = update.max_message_bytes {
            next.max_message_bytes = in_range(
                "attributes.max_message_bytes",
                v,
                MIN_MAX_MESSAGE_BYTES,
                MAX_MAX_MESSAGE_BYTES,
            )?;
        }
        if let Some(v) = update.receive_wait_time_seconds {
            next.receive_wait_time_seconds = in_range(
                "attributes.receive_wait_time_seconds",
                v,
                0,
                MAX_WAIT_TIME_SECS,
            )?;
        }
        match pb::Replication::try_from(update.replication) {
            Ok(pb::Replication::Unspecified) => {}
            Ok(r) => next.replication = r as i32,
            Err(_) => {
                return Err(Error::invalid(
                    "attributes.replication",
                    format!("{} is not a replication mode", update.replication),
                ))
            }
        }
        let named_fifo = name.ends_with(FIFO_SUFFIX);
        if creating {
            if update.fifo != named_fifo {
                return Err(Error::invalid(
                    "attributes.fifo",
                    format!("FIFO queues, and only they, have names ending in \"{FIFO_SUFFIX}\""),
                ));
            }
            next.fifo = update.fifo;
        } else if update.fifo && !self.fifo {
            return Err(Error::invalid(
                "attributes.fifo",
                "a standard queue cannot become a FIFO queue",
            ));
        }
        if update.content_based_deduplication {
            if !next.fifo {
                return Err(Error::invalid(
                    "attributes.content_based_deduplication",
                    "applies to FIFO queues only",
                ));
            }
            next.content_based_deduplication = true;
        }
        if let Some(policy) = &update.redrive_policy {
            next.redrive_policy = redrive_policy(name, policy)?;
        }
        Ok(next)
    }

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
            replication: self.replication,
        }
    }
}

/// Checks a redrive policy's own fields; an empty dead-letter queue removes the policy. Whether
/// the dead-letter queue exists and is of the right kind is for the caller, who can look it up.
fn redrive_policy(name: &str, policy: &pb::RedrivePolicy) -> Result<Option<RedrivePolicy>> {
    if policy.dead_letter_queue.is_empty() {
        return Ok(None);
    }
    queue_name(
        "attributes.redrive_policy.dead_letter_queue",
        &policy.dead_letter_queue,
    )?;
    if policy.dead_letter_queue == name {
        return Err(Error::invalid(
            "attributes.redrive_policy.dead_letter_queue",
            "a queue cannot be its own dead-letter queue",
        ));
    }
    let max_receive_count = in_range(
        "attributes.redrive_policy.max_receive_count",
        policy.max_receive_count,
        MIN_MAX_RECEIVE_COUNT,
        MAX_MAX_RECEIVE_COUNT,
    )?;
    Ok(Some(RedrivePolicy {
        dead_letter_queue: policy.dead_letter_queue.clone(),
        max_receive_count,
    }))
}

pub fn tags(tags: &std::collections::HashMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            "tags",
            format!("{} tags, the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    for (key, value) in tags {
        if key.is_empty() || key.len() > MAX_TAG_KEY_LEN {
            return Err(Error::invalid(
                "tags",
                format!("tag key {key:?} must be 1 to {MAX_TAG_KEY_LEN} characters"),
            ));
        }
        if value.len() > MAX_TAG_VALUE_LEN {
            return Err(Error::invalid(
                "tags",
                format!("value of tag {key:?} is over {MAX_TAG_VALUE_LEN} characters"),
            ));
        }
    }
    Ok(())
}

pub fn batch_size(field: &str, len: usize) -> Result<()> {
    if len == 0 || len > MAX_BATCH_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("a batch holds 1 to {MAX_BATCH_ENTRIES} entries, got {len}"),
        ));
    }
    Ok(())
}

/// Checks batch entry ids: each present, well formed and unique in the batch.
pub fn batch_ids<'a>(field: &str, ids: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if id.is_empty() || id.len() > MAX_BATCH_ENTRY_ID_LEN || !id.chars().all(is_name_char) {
            return Err(Error::invalid(
                field,
                format!("entry id {id:?} must be 1 to {MAX_BATCH_ENTRY_ID_LEN} characters of A-Z, a-z, 0-9, '_' and '-'"),
            ));
        }
        if !seen.insert(id) {
            return Err(Error::invalid(
                field,
                format!("entry id {id:?} appears twice"),
            ));
        }
    }
    Ok(())
}

/// Checks a message's attributes and returns the bytes they count toward the size limit.
pub fn message_attributes(
    attributes: &std::collections::HashMap<String, pb::MessageAttributeValue>,
) -> Result<usize> {
    if attributes.len() > MAX_MESSAGE_ATTRIBUTES {
        return Err(Error::invalid(
            "attributes",
            format!(
                "{} attributes, the limit is {MAX_MESSAGE_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    let mut size = 0;
    for (name, value) in attributes {
        let field = format!("attributes[{name:?}]");
        let lower = name.to_ascii_lowercase();
        if name.is_empty()
            || name.len() > MAX_ATTRIBUTE_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(Error::invalid(
                field,
                format!("attribute names are 1 to {MAX_ATTRIBUTE_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '-' and '.'"),
            ));
        }
        if lower.starts_with("aws.") || lower.starts_with("sluice.") {
            return Err(Error::invalid(
                field,
                "attribute names starting with \"AWS.\" or \"Sluice.\" are reserved",
            ));
        }
        let base = value.data_type.split('.').next().unwrap_or_default();
        match base {
            "String" | "Number" => {
                if value.string_value.is_empty() {
                    return Err(Error::invalid(
                        field,
                        format!("a {} attribute needs a string_value", value.data_type),
                    ));
                }
                if base == "Number" && value.string_value.parse::<f64>().is_err() {
                    return Err(Error::invalid(
                        field,
                        format!("{:?} is not a number", value.string_value),
                    ));
                }
            }
            "Binary" => {
                if value.binary_value.is_empty() {
                    return Err(Error::invalid(
                        field,
                        "a Binary attribute needs a binary_value",
                    ));
                }
            }
            _ => {
                return Err(Error::invalid(
                    field,
                    format!(
                    "data_type {:?} must be String, Number or Binary, optionally with a .suffix",
                    value.data_type
                ),
                ))
            }
        }
        size += name.len()
            + value.data_type.len()
            + value.string_value.len()
            + value.binary_value.len();
    }
    Ok(size)
}

/// Checks an id a client chooses: a group or deduplication id. Empty means none was given.
fn client_id(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1 to {max} printable ASCII characters, got {} characters",
                value.chars().count()
            ),
        ));
    }
    Ok(())
}

pub fn group_id(value: &str) -> Result<()> {
    client_id("group_id", value, MAX_GROUP_ID_LEN)
}

pub fn deduplication_id(value: &str) -> Result<()> {
    client_id("deduplication_id", value, MAX_DEDUPLICATION_ID_LEN)
}

pub fn move_rate(value: Option<u32>) -> Result<Option<std::num::NonZeroU32>> {
    value
        .map(|rate| {
            in_range("max_messages_per_second", rate, 1, MAX_MOVE_RATE)
                .map(|r| std::num::NonZeroU32::new(r).expect("at least 1"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(queue_name("name", "orders_v2-EU").is_ok());
        assert!(queue_name("name", &"a".repeat(80)).is_ok());
        assert!(queue_name("name", "jobs.fifo").is_ok());
        for bad in ["", "has space", "dots.in.name", ".fifo", &"a".repeat(81)] {
            let err = queue_name("name", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(err.to_string().starts_with("invalid name:"), "{err}");
        }
    }

    #[test]
    fn attribute_limits_name_the_field() {
        let base = EffectiveAttributes::default();
        let err = base
            .apply(
                "q",
                &pb::QueueAttributes {
                    message_retention_seconds: Some(59),
                    ..Default::default()
                },
                true,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid attributes.message_retention_seconds: 59 is outside 60 to 1209600"
        );
        let fifo_mismatch = base
            .apply(
                "q",
                &pb::QueueAttributes {
                    fifo: true,
                    ..Default::default()
                },
                true,
            )
            .unwrap_err();
        assert_eq!(fifo_mismatch.code(), tonic::Code::InvalidArgument);
    }

    fn policy(queue: &str, max_receive_count: u32) -> pb::QueueAttributes {
        pb::QueueAttributes {
            redrive_policy: Some(pb::RedrivePolicy {
                dead_letter_queue: queue.into(),
                max_receive_count,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn redrive_policy_limits() {
        let base = EffectiveAttributes::default();
        for (attributes, message) in [
            (
                policy("dlq", 0),
                "invalid attributes.redrive_policy.max_receive_count: 0 is outside 1 to 1000",
            ),
            (
                policy("dlq", 1001),
                "invalid attributes.redrive_policy.max_receive_count: 1001 is outside 1 to 1000",
            ),
            (
                policy("q", 5),
                "invalid attributes.redrive_policy.dead_letter_queue: a queue cannot be its own dead-letter queue",
            ),
        ] {
            let err = base.apply("q", &attributes, true).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        let with = base.apply("q", &policy("dlq", 1000), true).unwrap();
        assert_eq!(
            with.redrive_policy,
            Some(RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 1000
            })
        );
        let without = with.apply("q", &policy("", 0), false).unwrap();
        assert_eq!(without.redrive_policy, None);
    }

    #[test]
    fn client_chosen_ids() {
        assert!(deduplication_id(&"x".repeat(128)).is_ok());
        for bad in ["x".repeat(129), "has space".into(), "caf\u{e9}".into()] {
            let err = deduplication_id(&bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.to_string().starts_with("invalid deduplication_id:"),
                "{err}"
            );
        }
        assert!(group_id("orders/eu-1").is_ok());
        assert!(move_rate(Some(0)).is_err());
        assert!(move_rate(Some(1001)).is_err());
        assert_eq!(move_rate(None).unwrap(), None);
    }
}

//! The limits of the public API (DESIGN section 3), and the checks a queue's name, attributes
//! and tags must pass: the frontend applies them to requests, and the metadata tier to every
//! record it is sent. Every failure names the field and the limit, so a caller knows what to fix.

use std::collections::HashMap;

use sluice_proto::v1 as pb;

use crate::{EffectiveAttributes, Error, RateLimits, RedriveAllow, RedrivePolicy, Result};

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
/// The most a batch of sends may hold in all, bodies and attributes, as SQS allows: a batch is
/// one write of the queue's log, and ten largest messages in one entry would hold up every
/// other write of the cluster while the leader sends 10 MiB to each follower.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The most messages a frontend asks a backend for at once (a consume stream's pull).
pub const MAX_FORWARDED_RECEIVE: u32 = 100;
pub const MAX_RECEIVE_MESSAGES: u32 = 10;
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 256;
pub const MAX_BATCH_ENTRY_ID_LEN: usize = 80;
pub const MAX_GROUP_ID_LEN: usize = 128;
pub const MAX_DEDUPLICATION_ID_LEN: usize = 128;
/// A send's trace header: X-Ray's and W3C's fit in a tenth of it.
pub const MAX_TRACE_HEADER_LEN: usize = 1024;
pub const MIN_MAX_RECEIVE_COUNT: u32 = 1;
pub const MAX_MAX_RECEIVE_COUNT: u32 = 1000;
pub const MAX_MOVE_RATE: u32 = 1000;
pub const MAX_TAGS: usize = 50;
/// Queues a redrive allow policy may name.
pub const MAX_REDRIVE_SOURCES: usize = 10;
pub const MAX_TAG_KEY_LEN: usize = 128;
pub const MAX_TAG_VALUE_LEN: usize = 256;
pub const DEFAULT_PREFETCH: u32 = 100;
pub const MAX_PREFETCH: u32 = 1000;
pub const MAX_ACK_HANDLES: usize = 1000;
pub const MAX_RATE: u32 = 10_000_000;
/// One largest message a second: a lower bytes limit could never admit one.
pub const MIN_BYTES_RATE: u32 = MAX_MAX_MESSAGE_BYTES;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Whether `c` may stand in a queue name (or a batch entry id).
pub fn is_name_char(c: char) -> bool {
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

/// `value` if it is within `min` to `max`; otherwise INVALID_ARGUMENT naming `field`.
/// A message id a frontend chose: empty (the engine chooses), or 1 to 64 of `A-Z a-z 0-9 -`.
pub fn message_id(field: &str, id: &str) -> Result<()> {
    let valid = id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be at most 64 characters of A-Z, a-z, 0-9 and -",
        ))
    }
}

/// An MD5 a frontend computed: empty (the engine computes it), or 32 lowercase hex digits.
pub fn md5(field: &str, md5: &str) -> Result<()> {
    let valid = md5.is_empty()
        || (md5.len() == 32 && md5.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be empty or 32 lowercase hex digits",
        ))
    }
}

pub fn in_range(field: &str, value: u32, min: u32, max: u32) -> Result<u32> {
    if value < min || value > max {
        return Err(Error::invalid(
            field,
            format!("{value} is outside {min} to {max}"),
        ));
    }
    Ok(value)
}

/// Applies the fields `update` sets on top of `base`, checking each. `creating` allows
/// choosing the queue kind, which cannot change later.
pub fn apply_attributes(
    base: &EffectiveAttributes,
    name: &str,
    update: &pb::QueueAttributes,
    creating: bool,
) -> Result<EffectiveAttributes> {
    let mut next = base.clone();
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
    } else if update.fifo && !base.fifo {
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
    if let Some(limits) = &update.rate_limits {
        next.rate_limits = rate_limits("attributes.rate_limits", &next.rate_limits, limits, true)?;
    }
    if let Some(allow) = &update.redrive_allow_policy {
        if let Some(allow) = redrive_allow(allow)? {
            next.redrive_allow = allow;
        }
    }
    if let Some(encrypted) = update.server_side_encryption {
        next.server_side_encryption = encrypted;
    }
    Ok(next)
}

/// Applies the limits `update` sets on top of `base`, checking each; with `zero_resets`, a
/// limit set to 0 is removed (a queue's goes back to the deployment's default).
pub fn rate_limits(
    field: &str,
    base: &RateLimits,
    update: &pb::RateLimits,
    zero_resets: bool,
) -> Result<RateLimits> {
    let one = |name: &str, current: Option<u32>, given: Option<u32>, min: u32, max: u32| match given
    {
        None => Ok(current),
        Some(0) if zero_resets => Ok(None),
        Some(value) => in_range(&format!("{field}.{name}"), value, min, max).map(Some),
    };
    Ok(RateLimits {
        send_messages_per_second: one(
            "send_messages_per_second",
            base.send_messages_per_second,
            update.send_messages_per_second,
            1,
            MAX_RATE,
        )?,
        send_bytes_per_second: one(
            "send_bytes_per_second",
            base.send_bytes_per_second,
            update.send_bytes_per_second,
            MIN_BYTES_RATE,
            u32::MAX,
        )?,
        receives_per_second: one(
            "receives_per_second",
            base.receives_per_second,
            update.receives_per_second,
            1,
            MAX_RATE,
        )?,
        deletes_per_second: one(
            "deletes_per_second",
            base.deletes_per_second,
            update.deletes_per_second,
            1,
            MAX_RATE,
        )?,
    })
}

/// Checks limits given in a config file (a caller's), where 0 means nothing.
pub fn configured_rate_limits(field: &str, limits: &RateLimits) -> Result<()> {
    rate_limits(field, &RateLimits::default(), &limits.to_proto(), false).map(|_| ())
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

/// The redrive allow policy `allow` asks for; `None` leaves the current one.
fn redrive_allow(allow: &pb::RedriveAllowPolicy) -> Result<Option<RedriveAllow>> {
    let field = "attributes.redrive_allow_policy";
    let sources = &allow.source_queues;
    let permission = pb::RedrivePermission::try_from(allow.permission).map_err(|_| {
        Error::invalid(
            format!("{field}.permission"),
            format!("{} is not a redrive permission", allow.permission),
        )
    })?;
    if permission != pb::RedrivePermission::ByQueue && !sources.is_empty() {
        return Err(Error::invalid(
            format!("{field}.source_queues"),
            "names queues only with the permission BY_QUEUE",
        ));
    }
    Ok(match permission {
        pb::RedrivePermission::Unspecified => None,
        pb::RedrivePermission::AllowAll => Some(RedriveAllow::AllowAll),
        pb::RedrivePermission::DenyAll => Some(RedriveAllow::DenyAll),
        pb::RedrivePermission::ByQueue => {
            if sources.is_empty() || sources.len() > MAX_REDRIVE_SOURCES {
                return Err(Error::invalid(
                    format!("{field}.source_queues"),
                    format!(
                        "BY_QUEUE names 1 to {MAX_REDRIVE_SOURCES} queues, not {}",
                        sources.len()
                    ),
                ));
            }
            for source in sources {
                queue_name(&format!("{field}.source_queues"), source)?;
            }
            Some(RedriveAllow::ByQueue(sources.clone()))
        }
    })
}

/// Checks a queue's tags.
pub fn tags(tags: &HashMap<String, String>) -> Result<()> {
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
        let err = apply_attributes(
            &base,
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
        let fifo_mismatch = apply_attributes(
            &base,
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
            let err = apply_attributes(&base, "q", &attributes, true).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        let with = apply_attributes(&base, "q", &policy("dlq", 1000), true).unwrap();
        assert_eq!(
            with.redrive_policy,
            Some(RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 1000
            })
        );
        let without = apply_attributes(&with, "q", &policy("", 0), false).unwrap();
        assert_eq!(without.redrive_policy, None);
    }
}

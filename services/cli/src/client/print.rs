//! How the client commands show what the server answered: aligned text for people, or one JSON
//! object per line with `--json`.

use std::collections::HashMap;

use serde_json::json;
use sluice_proto::v1 as pb;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn print_queue(json_out: bool, queue: &pb::Queue) {
    let attrs = queue.attributes.clone().unwrap_or_default();
    let counts = queue.counts.unwrap_or_default();
    let replication = pb::Replication::try_from(attrs.replication)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REPLICATION_")
                .to_lowercase()
        })
        .unwrap_or_default();
    if json_out {
        let value = json!({
            "name": queue.name,
            "created_at_ms": queue.created_at_ms,
            "attributes": {
                "visibility_timeout_seconds": attrs.visibility_timeout_seconds,
                "message_retention_seconds": attrs.message_retention_seconds,
                "delay_seconds": attrs.delay_seconds,
                "max_message_bytes": attrs.max_message_bytes,
                "receive_wait_time_seconds": attrs.receive_wait_time_seconds,
                "fifo": attrs.fifo,
                "content_based_deduplication": attrs.content_based_deduplication,
                "server_side_encryption": attrs.server_side_encryption.unwrap_or_default(),
                "redrive_policy": attrs.redrive_policy.as_ref().map(|p| json!({
                    "dead_letter_queue": p.dead_letter_queue,
                    "max_receive_count": p.max_receive_count,
                })),
                "replication": replication,
                "rate_limits": rate_limits_json(attrs.rate_limits.unwrap_or_default()),
            },
            "rate_limits": rate_limits_json(queue.rate_limits.unwrap_or_default()),
            "counts": {
                "visible": counts.visible,
                "in_flight": counts.in_flight,
                "delayed": counts.delayed,
            },
            "tags": queue.tags,
        });
        println!("{value}");
        return;
    }
    println!("queue               {}", queue.name);
    println!(
        "messages            {} visible, {} in flight, {} delayed",
        counts.visible, counts.in_flight, counts.delayed
    );
    let secs = |v: Option<u32>| v.map(|s| format!("{s} s")).unwrap_or_default();
    println!(
        "visibility timeout  {}",
        secs(attrs.visibility_timeout_seconds)
    );
    println!(
        "retention           {}",
        secs(attrs.message_retention_seconds)
    );
    println!("delay               {}", secs(attrs.delay_seconds));
    println!(
        "receive wait        {}",
        secs(attrs.receive_wait_time_seconds)
    );
    println!(
        "max message bytes   {}",
        attrs.max_message_bytes.unwrap_or_default()
    );
    println!("replication         {replication}");
    let encrypted = if attrs.server_side_encryption.unwrap_or_default() {
        "on (AES-256-GCM under the queue's data key)"
    } else {
        "off"
    };
    println!("encryption at rest  {encrypted}");
    if attrs.fifo {
        let dedup = if attrs.content_based_deduplication {
            "content-based deduplication"
        } else {
            "deduplication by id"
        };
        println!("fifo                yes, {dedup}");
    }
    if let Some(policy) = &attrs.redrive_policy {
        println!(
            "dead-letter queue   {} after {} receives",
            policy.dead_letter_queue, policy.max_receive_count
        );
    }
    // The limits in force, and whether each is the queue's own or the frontends' default.
    let own = attrs.rate_limits.unwrap_or_default();
    let limits = queue.rate_limits.unwrap_or_default();
    for (what, own, limit, unit) in [
        (
            "send rate",
            own.send_messages_per_second,
            limits.send_messages_per_second,
            "messages/s",
        ),
        (
            "send bytes rate",
            own.send_bytes_per_second,
            limits.send_bytes_per_second,
            "bytes/s",
        ),
        (
            "receive rate",
            own.receives_per_second,
            limits.receives_per_second,
            "receives/s",
        ),
        (
            "delete rate",
            own.deletes_per_second,
            limits.deletes_per_second,
            "deletes/s",
        ),
    ] {
        let shown = match limit {
            None => "unlimited".to_owned(),
            Some(limit) => format!("{limit} {unit}"),
        };
        let source = if own.is_some() { "" } else { " (default)" };
        println!("{what:<20}{shown}{source}");
    }
    let mut tags: Vec<_> = queue.tags.iter().collect();
    tags.sort();
    for (k, v) in tags {
        println!("tag                 {k}={v}");
    }
}

fn rate_limits_json(limits: pb::RateLimits) -> serde_json::Value {
    json!({
        "send_messages_per_second": limits.send_messages_per_second,
        "send_bytes_per_second": limits.send_bytes_per_second,
        "receives_per_second": limits.receives_per_second,
        "deletes_per_second": limits.deletes_per_second,
    })
}

/// Reports a finished action on a queue, e.g. `purged orders`.
pub(crate) fn print_done(json_out: bool, action: &str, name: &str) {
    if json_out {
        println!("{}", json!({ action: name }));
    } else {
        println!("{action} {name}");
    }
}

pub(crate) fn message_json(m: &pb::Message) -> serde_json::Value {
    let attributes: HashMap<&str, serde_json::Value> = m
        .attributes
        .iter()
        .map(|(name, v)| {
            let value = if v.data_type.starts_with("Binary") {
                json!({"data_type": v.data_type, "binary_value_hex": hex(&v.binary_value)})
            } else {
                json!({"data_type": v.data_type, "string_value": v.string_value})
            };
            (name.as_str(), value)
        })
        .collect();
    json!({
        "message_id": m.message_id,
        "receipt_handle": m.receipt_handle,
        "body": String::from_utf8_lossy(&m.body),
        "md5_of_body": m.md5_of_body,
        "md5_of_message_attributes": m.md5_of_message_attributes,
        "attributes": attributes,
        "sent_timestamp_ms": m.sent_timestamp_ms,
        "approximate_receive_count": m.approximate_receive_count,
        "approximate_first_receive_timestamp_ms": m.approximate_first_receive_timestamp_ms,
        "group_id": m.group_id,
        "sequence_number": m.sequence_number,
        "dead_letter_source_queue": m.dead_letter_source_queue,
        "sender_id": m.sender_id,
        "deduplication_id": m.deduplication_id,
        "trace_header": m.trace_header,
    })
}

/// One received message, as JSON or for a reader; `receipt` shows its receipt handle.
pub(crate) fn print_message(json_out: bool, m: &pb::Message, receipt: bool) {
    if json_out {
        println!("{}", message_json(m));
        return;
    }
    println!(
        "{}  received {}x  {}",
        m.message_id,
        m.approximate_receive_count,
        String::from_utf8_lossy(&m.body)
    );
    if !m.group_id.is_empty() {
        println!("  group {}, sequence {}", m.group_id, m.sequence_number);
    }
    if !m.dead_letter_source_queue.is_empty() {
        println!("  dead-lettered from {}", m.dead_letter_source_queue);
    }
    if !m.sender_id.is_empty() {
        println!("  sent by {}", m.sender_id);
    }
    if !m.trace_header.is_empty() {
        println!("  trace {}", m.trace_header);
    }
    let mut names: Vec<_> = m.attributes.keys().collect();
    names.sort();
    for name in names {
        let v = &m.attributes[name];
        let shown = if v.data_type.starts_with("Binary") {
            hex(&v.binary_value)
        } else {
            v.string_value.clone()
        };
        println!("  {name} ({}) = {shown}", v.data_type);
    }
    if receipt {
        println!("  receipt: {}", m.receipt_handle);
    }
}

pub(crate) fn task_status(task: &pb::MessageMoveTask) -> String {
    task.status()
        .as_str_name()
        .trim_start_matches("MESSAGE_MOVE_TASK_STATUS_")
        .to_lowercase()
}

pub(crate) fn print_task(json_out: bool, task: &pb::MessageMoveTask) {
    let destination = if task.destination.is_empty() {
        "each message's source queue"
    } else {
        task.destination.as_str()
    };
    if json_out {
        println!(
            "{}",
            json!({
                "task_handle": task.task_handle,
                "status": task_status(task),
                "source": task.source,
                "destination": task.destination,
                "max_messages_per_second": task.max_messages_per_second,
                "moved": task.moved,
                "total": task.total,
                "failure_reason": task.failure_reason,
                "started_at_ms": task.started_at_ms,
            })
        );
        return;
    }
    let rate = task
        .max_messages_per_second
        .map(|r| format!(", at most {r}/s"))
        .unwrap_or_default();
    println!(
        "{}  {}  moved {} of {} from {} to {destination}{rate}",
        task.task_handle,
        task_status(task),
        task.moved,
        task.total,
        task.source
    );
    if !task.failure_reason.is_empty() {
        println!("  failed: {}", task.failure_reason);
    }
}

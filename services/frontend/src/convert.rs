//! Between the engine's answers and the public API's messages: queues, received messages, move
//! tasks and per-entry batch results, as every RPC and the Consume stream return them.

use std::collections::HashMap;

use sluice_api::{
    Error, MoveTask, MoveTaskStatus, QueueCounts, QueueRecord, ReceivedMessage, Result,
};
use sluice_proto::v1 as pb;

use crate::digest;

pub(crate) fn batch_error(id: String, err: &Error) -> pb::BatchResultError {
    pb::BatchResultError {
        id,
        code: err.code_name().to_owned(),
        message: err.to_string(),
    }
}

/// Pairs entry ids with the backend's per-entry results: the ids that succeeded are returned,
/// the failures appended to `failed`.
pub(crate) fn split_results(
    ids: Vec<String>,
    results: Vec<Result<()>>,
    failed: &mut Vec<pb::BatchResultError>,
) -> Vec<String> {
    let mut successful = Vec::new();
    for (id, result) in ids.into_iter().zip(results) {
        match result {
            Ok(()) => successful.push(id),
            Err(err) => failed.push(batch_error(id, &err)),
        }
    }
    successful
}

/// What a move task's handle says: `<source queue>/<task id>`, so any frontend can route it.
pub(crate) fn task_handle(source: &str, task: &str) -> String {
    format!("{source}/{task}")
}

pub(crate) fn to_proto_task(source: &str, task: MoveTask) -> pb::MessageMoveTask {
    let status = match task.status {
        MoveTaskStatus::Running => pb::MessageMoveTaskStatus::Running,
        MoveTaskStatus::Completed => pb::MessageMoveTaskStatus::Completed,
        MoveTaskStatus::Cancelled => pb::MessageMoveTaskStatus::Cancelled,
        MoveTaskStatus::Failed => pb::MessageMoveTaskStatus::Failed,
    };
    pb::MessageMoveTask {
        task_handle: task_handle(source, &task.id),
        status: status as i32,
        source: source.to_owned(),
        destination: task.destination_name,
        max_messages_per_second: task.max_per_second,
        moved: task.moved,
        total: task.total,
        failure_reason: task.failure,
        started_at_ms: task.started_ms,
    }
}

/// A received message as the API returns it.
pub(crate) fn to_proto_message(mut m: ReceivedMessage) -> pb::Message {
    let system = sluice_api::take_system(&mut m.attributes);
    let attributes: HashMap<String, pb::MessageAttributeValue> = m
        .attributes
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                pb::MessageAttributeValue {
                    data_type: v.data_type,
                    string_value: v.string_value,
                    binary_value: v.binary_value,
                },
            )
        })
        .collect();
    pb::Message {
        md5_of_body: m.md5_of_body,
        md5_of_message_attributes: digest::md5_of_attributes(&attributes),
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        attributes,
        sent_timestamp_ms: m.sent_timestamp_ms,
        approximate_receive_count: m.receive_count,
        approximate_first_receive_timestamp_ms: m.first_receive_timestamp_ms,
        group_id: m.group_id,
        sequence_number: m.sequence.to_string(),
        dead_letter_source_queue: m.dead_letter_source,
        sender_id: system.sender_id,
        deduplication_id: system.deduplication_id,
        trace_header: system.trace_header,
    }
}

/// The queue as `GetQueue` shows it, with the rate `limits` in force for it.
pub(crate) fn to_proto_queue(
    record: &QueueRecord,
    counts: QueueCounts,
    limits: sluice_api::RateLimits,
) -> pb::Queue {
    pb::Queue {
        name: record.name.clone(),
        attributes: Some(record.attributes.to_proto()),
        counts: Some(pb::QueueCounts {
            visible: counts.visible,
            in_flight: counts.in_flight,
            delayed: counts.delayed,
        }),
        created_at_ms: record.created_at_ms,
        modified_at_ms: record.modified_at_ms.max(record.created_at_ms),
        tags: record.tags.clone(),
        rate_limits: Some(limits.to_proto()),
    }
}

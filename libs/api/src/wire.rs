//! Between the shared types and the internal APIs' messages, both ways: a service decodes what
//! its client encodes with the same functions, so the two cannot drift apart.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_proto::v1 as pb;

use crate::cluster::{Placement, SealedPartition, SpreadPartition};
use crate::identity::{AccessKey, Action, Grant, Principal, Sealed};
use crate::{
    limits, AttributeValue, DeadLetter, EffectiveAttributes, Error, IdempotencyKey, MoveTask,
    MoveTaskStatus, NewMessage, QueueConfig, QueueCounts, QueueId, QueueRecord, ReceivedMessage,
    Replication, Result, SentMessage,
};

/// The response header in which a backend node that forwarded a call names its cluster's
/// leader, so the client calls the leader directly next time.
pub const LEADER_HEADER: &str = "sluice-leader";

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

pub fn config_to_pb(config: &QueueConfig) -> pb::EngineQueueConfig {
    pb::EngineQueueConfig {
        name: config.name.clone(),
        retention_seconds: config.retention.as_secs(),
        fifo: config.fifo,
        dead_letter_queue_id: config.dead_letter.map_or(0, |d| d.queue),
        max_receive_count: config.dead_letter.map_or(0, |d| d.max_receive_count),
        async_replication: config.replication == Replication::Async,
    }
}

/// A queue's settings as another service sent them, checked against the public limits.
pub fn config_from_pb(config: pb::EngineQueueConfig) -> Result<QueueConfig> {
    limits::queue_name("config.name", &config.name)?;
    let retention = u32::try_from(config.retention_seconds).unwrap_or(u32::MAX);
    limits::in_range(
        "config.retention_seconds",
        retention,
        limits::MIN_RETENTION_SECS,
        limits::MAX_RETENTION_SECS,
    )?;
    if config.dead_letter_queue_id != 0 {
        limits::in_range(
            "config.max_receive_count",
            config.max_receive_count,
            limits::MIN_MAX_RECEIVE_COUNT,
            limits::MAX_MAX_RECEIVE_COUNT,
        )?;
    }
    Ok(QueueConfig {
        name: config.name,
        retention: Duration::from_secs(config.retention_seconds),
        fifo: config.fifo,
        dead_letter: (config.dead_letter_queue_id != 0).then_some(DeadLetter {
            queue: config.dead_letter_queue_id,
            max_receive_count: config.max_receive_count,
        }),
        replication: Replication::from_async(config.async_replication),
    })
}

pub fn counts_to_pb(counts: QueueCounts) -> pb::QueueCounts {
    pb::QueueCounts {
        visible: counts.visible,
        in_flight: counts.in_flight,
        delayed: counts.delayed,
    }
}

pub fn counts_from_pb(counts: pb::QueueCounts) -> QueueCounts {
    QueueCounts {
        visible: counts.visible,
        in_flight: counts.in_flight,
        delayed: counts.delayed,
    }
}

pub fn attribute_to_pb(value: AttributeValue) -> pb::MessageAttributeValue {
    pb::MessageAttributeValue {
        data_type: value.data_type,
        string_value: value.string_value,
        binary_value: value.binary_value,
    }
}

pub fn attribute_from_pb(value: pb::MessageAttributeValue) -> AttributeValue {
    AttributeValue {
        data_type: value.data_type,
        string_value: value.string_value,
        binary_value: value.binary_value,
    }
}

pub fn new_message_to_pb(message: NewMessage) -> pb::NewMessage {
    pb::NewMessage {
        body: message.body,
        attributes: message
            .attributes
            .into_iter()
            .map(|(k, v)| (k, attribute_to_pb(v)))
            .collect(),
        delay_ms: millis(message.delay),
        group_id: message.group_id,
        deduplication_id: message.deduplication_id,
        message_id: message.message_id,
        md5_of_body: message.md5_of_body,
    }
}

/// The internal send of `messages` to queue `id`, under `key` when the sender has one.
pub fn send_request(
    id: QueueId,
    key: Option<IdempotencyKey>,
    messages: Vec<NewMessage>,
) -> pb::SendRequest {
    pb::SendRequest {
        queue_id: id,
        messages: messages.into_iter().map(new_message_to_pb).collect(),
        idempotency_key: key
            .map(|k| k.to_bytes().to_vec())
            .unwrap_or_default()
            .into(),
    }
}

/// A message another service sent to be stored; its frontend-chosen id is checked, the rest is
/// what the frontend already checked against the queue's limits.
pub fn new_message_from_pb(message: pb::NewMessage) -> Result<NewMessage> {
    limits::message_id("messages.message_id", &message.message_id)?;
    limits::md5("messages.md5_of_body", &message.md5_of_body)?;
    Ok(NewMessage {
        body: message.body,
        attributes: message
            .attributes
            .into_iter()
            .map(|(k, v)| (k, attribute_from_pb(v)))
            .collect(),
        delay: Duration::from_millis(message.delay_ms),
        group_id: message.group_id,
        deduplication_id: message.deduplication_id,
        message_id: message.message_id,
        md5_of_body: message.md5_of_body,
    })
}

pub fn sent_to_pb(sent: SentMessage) -> pb::SentMessage {
    pb::SentMessage {
        message_id: sent.message_id,
        sequence: sent.sequence,
        duplicate: sent.duplicate,
        md5_of_body: sent.md5_of_body,
    }
}

pub fn sent_from_pb(sent: pb::SentMessage) -> SentMessage {
    SentMessage {
        message_id: sent.message_id,
        sequence: sent.sequence,
        duplicate: sent.duplicate,
        md5_of_body: sent.md5_of_body,
    }
}

pub fn received_to_pb(m: ReceivedMessage) -> pb::ReceivedMessage {
    pb::ReceivedMessage {
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        attributes: m
            .attributes
            .into_iter()
            .map(|(k, v)| (k, attribute_to_pb(v)))
            .collect(),
        sent_timestamp_ms: m.sent_timestamp_ms,
        receive_count: m.receive_count,
        first_receive_timestamp_ms: m.first_receive_timestamp_ms,
        group_id: m.group_id,
        sequence: m.sequence,
        dead_letter_source: m.dead_letter_source,
        md5_of_body: m.md5_of_body,
    }
}

pub fn received_from_pb(m: pb::ReceivedMessage) -> ReceivedMessage {
    ReceivedMessage {
        message_id: m.message_id,
        receipt_handle: m.receipt_handle,
        body: m.body,
        attributes: m
            .attributes
            .into_iter()
            .map(|(k, v)| (k, attribute_from_pb(v)))
            .collect(),
        sent_timestamp_ms: m.sent_timestamp_ms,
        receive_count: m.receive_count,
        first_receive_timestamp_ms: m.first_receive_timestamp_ms,
        group_id: m.group_id,
        sequence: m.sequence,
        dead_letter_source: m.dead_letter_source,
        md5_of_body: m.md5_of_body,
    }
}

pub fn entry_to_pb(result: Result<()>) -> pb::EntryResult {
    match result {
        Ok(()) => pb::EntryResult {
            code: tonic::Code::Ok as i32,
            message: String::new(),
        },
        Err(err) => {
            let status = tonic::Status::from(err);
            pb::EntryResult {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }
        }
    }
}

pub fn entry_from_pb(result: pb::EntryResult) -> Result<()> {
    match tonic::Code::from_i32(result.code) {
        tonic::Code::Ok => Ok(()),
        code => Err(Error::from(tonic::Status::new(code, result.message))),
    }
}

fn status_to_pb(status: MoveTaskStatus) -> pb::MessageMoveTaskStatus {
    match status {
        MoveTaskStatus::Running => pb::MessageMoveTaskStatus::Running,
        MoveTaskStatus::Completed => pb::MessageMoveTaskStatus::Completed,
        MoveTaskStatus::Cancelled => pb::MessageMoveTaskStatus::Cancelled,
        MoveTaskStatus::Failed => pb::MessageMoveTaskStatus::Failed,
    }
}

fn status_from_pb(status: pb::MessageMoveTaskStatus) -> Result<MoveTaskStatus> {
    Ok(match status {
        pb::MessageMoveTaskStatus::Running => MoveTaskStatus::Running,
        pb::MessageMoveTaskStatus::Completed => MoveTaskStatus::Completed,
        pb::MessageMoveTaskStatus::Cancelled => MoveTaskStatus::Cancelled,
        pb::MessageMoveTaskStatus::Failed => MoveTaskStatus::Failed,
        pb::MessageMoveTaskStatus::Unspecified => {
            return Err(Error::Internal(
                "a backend sent a move task without a status".into(),
            ))
        }
    })
}

pub fn task_to_pb(task: MoveTask) -> pb::MoveTask {
    pb::MoveTask {
        id: task.id,
        destination_queue_id: task.destination.unwrap_or(0),
        destination_name: task.destination_name,
        max_messages_per_second: task.max_per_second,
        status: status_to_pb(task.status) as i32,
        moved: task.moved,
        total: task.total,
        failure_reason: task.failure,
        started_at_ms: task.started_ms,
    }
}

pub fn task_from_pb(task: pb::MoveTask) -> Result<MoveTask> {
    Ok(MoveTask {
        status: status_from_pb(task.status())?,
        id: task.id,
        destination: (task.destination_queue_id != 0).then_some(task.destination_queue_id),
        destination_name: task.destination_name,
        max_per_second: task.max_messages_per_second,
        moved: task.moved,
        total: task.total,
        failure: task.failure_reason,
        started_ms: task.started_at_ms,
    })
}

/// A queue record as the metadata tier's API carries it.
pub fn record_to_pb(record: &QueueRecord) -> pb::MetaQueueRecord {
    pb::MetaQueueRecord {
        id: record.id,
        name: record.name.clone(),
        attributes: Some(record.attributes.to_proto()),
        tags: record.tags.clone(),
        created_at_ms: record.created_at_ms,
        modified_at_ms: record.modified_at_ms,
        purged_at_ms: record.purged_at_ms,
    }
}

/// A queue record sent to the metadata tier, checked as the frontend checks a new queue: a
/// record that no frontend could have made is refused, naming the field, before it is stored.
pub fn record_from_pb(record: Option<pb::MetaQueueRecord>) -> Result<QueueRecord> {
    let record = record.ok_or_else(|| Error::invalid("record", "is required"))?;
    limits::queue_name("record.name", &record.name)?;
    if record.id == 0 {
        return Err(Error::invalid("record.id", "must be set"));
    }
    limits::tags(&record.tags)?;
    let attributes = record
        .attributes
        .ok_or_else(|| Error::invalid("record.attributes", "is required"))?;
    let attributes = limits::apply_attributes(
        &EffectiveAttributes::default(),
        &record.name,
        &attributes,
        true,
    )?;
    Ok(QueueRecord {
        id: record.id,
        name: record.name,
        attributes,
        tags: record.tags,
        created_at_ms: record.created_at_ms,
        modified_at_ms: record.modified_at_ms,
        purged_at_ms: record.purged_at_ms,
    })
}

pub fn placement_to_pb(placement: &Placement) -> pb::MetaPlacement {
    pb::MetaPlacement {
        queue: placement.queue.clone(),
        cluster: placement.cluster.clone(),
        placed_at_ms: placement.placed_at_ms,
        partition: placement.partition,
        sealed: placement
            .sealed
            .iter()
            .map(|s| pb::MetaSealedPartition {
                partition: s.partition,
                cluster: s.cluster.clone(),
                sealed_at_ms: s.sealed_at_ms,
                fifo: s.fifo,
            })
            .collect(),
        moving_to: placement.moving_to.clone().unwrap_or_default(),
        moved_at_ms: placement.moved_at_ms.unwrap_or_default(),
        spread: placement
            .spread
            .iter()
            .map(|p| pb::MetaSpreadPartition {
                partition: p.partition,
                cluster: p.cluster.clone(),
                weight: p.weight,
                opened_at_ms: p.opened_at_ms,
            })
            .collect(),
        spread_from: placement.spread_from.unwrap_or_default(),
        weight: placement.weight.unwrap_or_default(),
    }
}

pub fn placement_from_pb(placement: pb::MetaPlacement) -> Placement {
    Placement {
        queue: placement.queue,
        cluster: placement.cluster,
        placed_at_ms: placement.placed_at_ms,
        partition: placement.partition,
        sealed: placement
            .sealed
            .into_iter()
            .map(|s| SealedPartition {
                partition: s.partition,
                cluster: s.cluster,
                sealed_at_ms: s.sealed_at_ms,
                fifo: s.fifo,
            })
            .collect(),
        moving_to: (!placement.moving_to.is_empty()).then_some(placement.moving_to),
        moved_at_ms: (placement.moved_at_ms != 0).then_some(placement.moved_at_ms),
        spread: placement
            .spread
            .into_iter()
            .map(|p| SpreadPartition {
                partition: p.partition,
                cluster: p.cluster,
                weight: p.weight,
                opened_at_ms: p.opened_at_ms,
            })
            .collect(),
        spread_from: (placement.spread_from != 0).then_some(placement.spread_from),
        weight: (placement.weight != 0.0).then_some(placement.weight),
        resize: None,
    }
}

/// The actions named in `names`, each checked; `field` names them in an error.
pub fn actions_from_pb(field: &str, names: &[String]) -> Result<BTreeSet<Action>> {
    names
        .iter()
        .map(|name| Action::parse(field, name))
        .collect()
}

pub fn principal_to_pb(principal: &Principal) -> pb::MetaPrincipal {
    pb::MetaPrincipal {
        name: principal.name.clone(),
        admin: principal.admin,
        grants: principal
            .grants
            .iter()
            .map(|grant| pb::MetaGrant {
                actions: grant
                    .actions
                    .iter()
                    .map(|a| a.as_str().to_owned())
                    .collect(),
                queues: grant.queues.clone(),
            })
            .collect(),
        created_at_ms: principal.created_at_ms,
    }
}

/// A principal from another service, checked before anything stores or trusts it.
pub fn principal_from_pb(principal: Option<pb::MetaPrincipal>) -> Result<Principal> {
    let principal = principal.ok_or_else(|| Error::invalid("principal", "is required"))?;
    let grants = principal
        .grants
        .into_iter()
        .map(|grant| {
            Ok(Grant {
                actions: actions_from_pb("principal.grants.actions", &grant.actions)?,
                queues: grant.queues,
            })
        })
        .collect::<Result<_>>()?;
    let principal = Principal {
        name: principal.name,
        admin: principal.admin,
        grants,
        created_at_ms: principal.created_at_ms,
    };
    principal.check()?;
    Ok(principal)
}

pub fn sealed_to_pb(sealed: &Sealed) -> pb::MetaSealed {
    pb::MetaSealed {
        key: sealed.key.clone(),
        nonce: sealed.nonce.clone().into(),
        ciphertext: sealed.ciphertext.clone().into(),
    }
}

/// A sealed value from another service, checked; `field` names it in an error.
pub fn sealed_from_pb(field: &str, sealed: Option<pb::MetaSealed>) -> Result<Sealed> {
    let sealed = sealed.ok_or_else(|| Error::invalid(field, "is required"))?;
    let sealed = Sealed {
        key: sealed.key,
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext.to_vec(),
    };
    sealed.check(field)?;
    Ok(sealed)
}

pub fn access_key_to_pb(key: &AccessKey) -> pb::MetaAccessKey {
    pb::MetaAccessKey {
        id: key.id.clone(),
        principal: key.principal.clone(),
        secret: Some(sealed_to_pb(&key.secret)),
        created_at_ms: key.created_at_ms,
        expires_at_ms: key.expires_at_ms,
    }
}

/// An access key from another service, checked before anything stores or trusts it.
pub fn access_key_from_pb(key: Option<pb::MetaAccessKey>) -> Result<AccessKey> {
    let key = key.ok_or_else(|| Error::invalid("access_key", "is required"))?;
    let key = AccessKey {
        secret: sealed_from_pb("access_key.secret", key.secret)?,
        id: key.id,
        principal: key.principal,
        created_at_ms: key.created_at_ms,
        expires_at_ms: key.expires_at_ms,
    };
    key.check()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_placements_round_trip() {
        let mut record = QueueRecord {
            id: 9,
            name: "orders.fifo".into(),
            attributes: EffectiveAttributes {
                fifo: true,
                content_based_deduplication: true,
                delay_seconds: 5,
                ..EffectiveAttributes::default()
            },
            tags: [("team".to_owned(), "payments".to_owned())].into(),
            created_at_ms: 17,
            modified_at_ms: 18,
            purged_at_ms: 19,
        };
        record.attributes.redrive_policy = Some(crate::RedrivePolicy {
            dead_letter_queue: "orders-dead.fifo".into(),
            max_receive_count: 4,
        });
        record.attributes.redrive_allow = crate::RedriveAllow::ByQueue(vec!["returns.fifo".into()]);
        assert_eq!(record_from_pb(Some(record_to_pb(&record))).unwrap(), record);
        let err = record_from_pb(None).unwrap_err();
        assert_eq!(err, Error::invalid("record", "is required"));

        let mut placement = Placement::new("orders", "b");
        placement.partition = 2;
        placement.moving_to = Some("c".into());
        placement.sealed.push(SealedPartition {
            partition: 1,
            cluster: "a".into(),
            sealed_at_ms: 3,
            fifo: true,
        });
        placement.spread_from = Some(3);
        placement.weight = Some(0.25);
        placement.spread.push(SpreadPartition {
            partition: 3,
            cluster: "c".into(),
            weight: 0.75,
            opened_at_ms: 4,
        });
        assert_eq!(placement_from_pb(placement_to_pb(&placement)), placement);
        let settled = Placement::new("orders", "a");
        assert_eq!(placement_from_pb(placement_to_pb(&settled)), settled);
    }

    #[test]
    fn round_trips() {
        let config = QueueConfig {
            name: "orders.fifo".into(),
            retention: Duration::from_secs(3600),
            fifo: true,
            dead_letter: Some(DeadLetter {
                queue: 7,
                max_receive_count: 3,
            }),
            replication: Replication::Async,
        };
        assert_eq!(config_from_pb(config_to_pb(&config)).unwrap(), config);
        let standard = QueueConfig::standard("q", Duration::from_secs(60));
        assert_eq!(config_from_pb(config_to_pb(&standard)).unwrap(), standard);
        let mut short = config_to_pb(&standard);
        short.retention_seconds = u64::MAX;
        let err = config_from_pb(short).unwrap_err();
        assert!(
            err.to_string().contains("config.retention_seconds"),
            "{err}"
        );

        let task = MoveTask {
            id: "t".into(),
            destination: None,
            destination_name: String::new(),
            max_per_second: Some(5),
            status: MoveTaskStatus::Failed,
            moved: 3,
            total: 9,
            failure: "gone".into(),
            started_ms: 42,
        };
        assert_eq!(task_from_pb(task_to_pb(task.clone())).unwrap(), task);

        let err = Error::FailedPrecondition("stale receipt".into());
        assert_eq!(entry_from_pb(entry_to_pb(Err(err.clone()))), Err(err));
        assert_eq!(entry_from_pb(entry_to_pb(Ok(()))), Ok(()));
    }
}

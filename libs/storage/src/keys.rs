//! Key encodings. Big-endian so RocksDB's byte order is (queue, sequence) order.

use sluice_api::IdempotencyKey;

use crate::QueueId;

pub(crate) const CF_QUEUES: &str = "queues";
pub(crate) const CF_MESSAGES: &str = "messages";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_DEDUP: &str = "dedup";
pub(crate) const ALL_CFS: [&str; 5] = [CF_QUEUES, CF_MESSAGES, CF_STATE, CF_META, CF_DEDUP];

pub(crate) const RECEIPT_KEY: &[u8] = b"receipt-key";

pub(crate) fn queue_key(queue: QueueId) -> [u8; 8] {
    queue.to_be_bytes()
}

pub(crate) fn message_key(queue: QueueId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&queue.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn parse_message_key(key: &[u8]) -> Option<(QueueId, u64)> {
    let queue = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((queue, seq))
}

/// Key of a deduplication id: the queue, then the id's bytes.
pub(crate) fn dedup_key(queue: QueueId, dedup_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + dedup_id.len());
    key.extend_from_slice(&queue.to_be_bytes());
    key.extend_from_slice(dedup_id.as_bytes());
    key
}

/// Key of an idempotency key, beside the deduplication ids: the queue, a 0xFF byte (which no
/// UTF-8 id starts with), then the key's bytes.
pub(crate) fn send_key(queue: QueueId, key: IdempotencyKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + IdempotencyKey::LEN);
    out.extend_from_slice(&queue.to_be_bytes());
    out.push(SEND_KEY_MARK);
    out.extend_from_slice(&key.to_bytes());
    out
}

const SEND_KEY_MARK: u8 = 0xFF;

/// What a key of the deduplication column family names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Remembered {
    Dedup(QueueId, String),
    Send(QueueId, IdempotencyKey),
}

pub(crate) fn parse_remembered_key(key: &[u8]) -> Option<Remembered> {
    let queue = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let rest = key.get(8..)?;
    match rest.split_first() {
        Some((&SEND_KEY_MARK, bytes)) => {
            let key = IdempotencyKey::from_wire(bytes).ok()??;
            Some(Remembered::Send(queue, key))
        }
        _ => Some(Remembered::Dedup(
            queue,
            std::str::from_utf8(rest).ok()?.to_owned(),
        )),
    }
}

/// Key of a message move task: `task/`, the source queue, then the task id, so a queue's tasks
/// list with one prefix scan.
pub(crate) fn task_key(queue: QueueId, task: &str) -> Vec<u8> {
    let mut key = task_prefix(queue);
    key.extend_from_slice(task.as_bytes());
    key
}

pub(crate) fn task_prefix(queue: QueueId) -> Vec<u8> {
    let mut key = Vec::with_capacity(13 + 36);
    key.extend_from_slice(b"task/");
    key.extend_from_slice(&queue.to_be_bytes());
    key
}

/// Key of the queue's sequence floor: a value no lower than every sequence number the queue
/// has ever handed out, kept with a max-merge so sequence numbers are never reused.
pub(crate) fn seq_floor_key(queue: QueueId) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(b"seq/");
    key[4..].copy_from_slice(&queue.to_be_bytes());
    key
}

/// The max-merge for sequence floors: every operand is a big-endian u64.
pub(crate) fn max_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let decode = |v: &[u8]| v.try_into().map(u64::from_be_bytes).unwrap_or(0);
    let mut max = existing.map(decode).unwrap_or(0);
    for op in operands {
        max = max.max(decode(op));
    }
    Some(max.to_be_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_queue_then_sequence() {
        assert!(message_key(1, u64::MAX) < message_key(2, 0));
        assert!(message_key(2, 255) < message_key(2, 256));
        assert_eq!(parse_message_key(&message_key(7, 42)), Some((7, 42)));
        assert_eq!(parse_message_key(b"short"), None);
    }

    #[test]
    fn deduplication_and_idempotency_keys_round_trip_apart() {
        assert_eq!(
            parse_remembered_key(&dedup_key(9, "order-17")),
            Some(Remembered::Dedup(9, "order-17".into()))
        );
        let key = IdempotencyKey::random();
        assert_eq!(
            parse_remembered_key(&send_key(9, key)),
            Some(Remembered::Send(9, key))
        );
        assert_eq!(parse_remembered_key(b"short"), None);
        let mut truncated = send_key(9, key);
        truncated.pop();
        assert_eq!(parse_remembered_key(&truncated), None);
    }
}

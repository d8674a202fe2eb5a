//! Key encodings. Big-endian so RocksDB's byte order is (queue, sequence) order.

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

pub(crate) fn parse_dedup_key(key: &[u8]) -> Option<(QueueId, String)> {
    let queue = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let id = std::str::from_utf8(key.get(8..)?).ok()?;
    Some((queue, id.to_owned()))
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
    fn dedup_keys_round_trip() {
        assert_eq!(
            parse_dedup_key(&dedup_key(9, "order-17")),
            Some((9, "order-17".into()))
        );
        assert_eq!(parse_dedup_key(b"short"), None);
    }
}

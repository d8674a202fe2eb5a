//! The sends in a log entry a node had to drop. A leader acknowledges an ASYNC send once the
//! entry holding it is durable in its own log. If it is then deposed before a majority has
//! the entry (cut off the network, killed), the new leader's log wins and the entry is
//! truncated from the old leader's log when it rejoins: the send, acknowledged, would be lost.
//! Instead the node keeps what it truncates and sends it again through the new leader
//! (services/backend/src/resend.rs). This reads those sends back out of the entry's batch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prost::Message as _;

use crate::batch::{self, Kind};
use crate::engine::{queue_config, Engine};
use crate::error::{Error, Result};
use crate::keys::{parse_message_key, parse_remembered_key, queue_key, Remembered};
use crate::records::{DedupRecord, MessageRecord, QueueRecord, SendOnceRecord, StateRecord};
use crate::{now_ms, IdempotencyKey, NewMessage, QueueId, Replication};

/// One send to make again: the messages one request stored, under its idempotency key if it
/// had one, so that a send the new leader already holds (the frontend retried it there) is
/// not stored twice.
#[derive(Debug, Clone)]
pub struct DroppedSend {
    pub queue: QueueId,
    pub key: Option<IdempotencyKey>,
    pub messages: Vec<NewMessage>,
}

impl Engine {
    /// The sends to ASYNC standard queues that the write batch `batch` (a dropped log entry's)
    /// stored, each message as it was sent: its id, body, attributes, MD5, deduplication id and
    /// what is left of its delay. Left out: messages the engine moved between queues (their
    /// source still holds them, the delete being in the same batch), sends to SYNC queues
    /// (acknowledged only once a majority had them, so never in a dropped entry), and sends to
    /// FIFO queues, which sent again could overtake a later message of their group that the
    /// new leader took (docs/replication.md).
    pub fn dropped_sends(&self, batch: &[u8]) -> Result<Vec<DroppedSend>> {
        let db = &self.inner.db;
        let cf = |name| {
            db.cf_handle(name)
                .ok_or_else(|| Error::Corrupt(format!("no column family {name}")))
                .and_then(batch::cf_id)
        };
        let (messages_cf, state_cf, dedup_cf) = (
            cf(crate::keys::CF_MESSAGES)?,
            cf(crate::keys::CF_STATE)?,
            cf(crate::keys::CF_DEDUP)?,
        );
        let decode = |what: &str, err: prost::DecodeError| {
            Error::Corrupt(format!("a dropped entry's {what} record: {err}"))
        };
        let mut sent: BTreeMap<(QueueId, u64), MessageRecord> = BTreeMap::new();
        let mut states: HashMap<(QueueId, u64), StateRecord> = HashMap::new();
        let mut dedup_ids: HashMap<(QueueId, u64), String> = HashMap::new();
        let mut keyed: Vec<(QueueId, IdempotencyKey, SendOnceRecord)> = Vec::new();
        for record in batch::records(batch)? {
            if record.kind != Kind::Put {
                continue;
            }
            if record.cf == messages_cf {
                let Some(at) = parse_message_key(record.key) else {
                    continue;
                };
                let message =
                    MessageRecord::decode(record.value).map_err(|e| decode("message", e))?;
                if message.moved_ms == 0 {
                    sent.insert(at, message);
                }
            } else if record.cf == state_cf {
                if let Some(at) = parse_message_key(record.key) {
                    let state =
                        StateRecord::decode(record.value).map_err(|e| decode("state", e))?;
                    states.insert(at, state);
                }
            } else if record.cf == dedup_cf {
                match parse_remembered_key(record.key) {
                    Some(Remembered::Dedup(queue, dedup_id)) => {
                        let first =
                            DedupRecord::decode(record.value).map_err(|e| decode("dedup", e))?;
                        dedup_ids.insert((queue, first.sequence), dedup_id);
                    }
                    Some(Remembered::Send(queue, key)) => {
                        let once = SendOnceRecord::decode(record.value)
                            .map_err(|e| decode("idempotency key", e))?;
                        keyed.push((queue, key, once));
                    }
                    None => {}
                }
            }
        }

        let mut resendable: HashMap<QueueId, bool> = HashMap::new();
        sent.retain(|(queue, _), _| {
            *resendable
                .entry(*queue)
                .or_insert_with(|| self.is_async_standard(*queue))
        });
        let now = now_ms();
        let mut new_message = |at: (QueueId, u64), record: MessageRecord| NewMessage {
            body: record.body,
            attributes: record.attributes,
            delay: states.get(&at).map_or(Duration::ZERO, |state| {
                Duration::from_millis(state.visible_at_ms.saturating_sub(now))
            }),
            group_id: record.group_id,
            deduplication_id: dedup_ids.remove(&at).unwrap_or_default(),
            message_id: record.message_id,
            md5_of_body: record.md5_of_body,
        };
        let mut sends = Vec::new();
        for (queue, key, once) in keyed {
            let range = (queue, once.first_sequence)
                ..(queue, once.first_sequence.saturating_add(once.count));
            let at: Vec<_> = sent.range(range).map(|(at, _)| *at).collect();
            let messages: Vec<_> = at
                .into_iter()
                .filter_map(|at| Some(new_message(at, sent.remove(&at)?)))
                .collect();
            if !messages.is_empty() {
                sends.push(DroppedSend {
                    queue,
                    key: Some(key),
                    messages,
                });
            }
        }
        // Sent without a key: one send each, which the backend's limits always allow.
        for (at, record) in std::mem::take(&mut sent) {
            sends.push(DroppedSend {
                queue: at.0,
                key: None,
                messages: vec![new_message(at, record)],
            });
        }
        Ok(sends)
    }

    /// Whether queue `id` is, as this node's RocksDB holds it, a standard queue replicated
    /// ASYNC. A queue it does not hold is not: the send's entry also created it, and the new
    /// leader never had it.
    fn is_async_standard(&self, id: QueueId) -> bool {
        let record = self
            .inner
            .db
            .cf_handle(crate::keys::CF_QUEUES)
            .and_then(|cf| self.inner.db.get_cf(cf, queue_key(id)).ok().flatten())
            .and_then(|bytes| QueueRecord::decode(bytes.as_slice()).ok());
        record.is_some_and(|record| {
            let config = queue_config(record);
            !config.fifo && config.replication == Replication::Async
        })
    }
}

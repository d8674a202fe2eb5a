//! Opening the engine's RocksDB and rebuilding what the engine keeps in memory from it: each
//! queue's index of visible, delayed and in-flight messages, the deduplication ids still within
//! their window, and the key receipt handles are signed with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use rand::RngCore;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, DB};

use crate::engine::{meta_of, queue_config};
use crate::error::{Error, Result};
use crate::keys::{self, message_key, seq_floor_key, Remembered};
use crate::queue::Queue;
use crate::records::{DedupRecord, QueueRecord, SendOnceRecord, StateRecord};
use crate::window::{Dedup, SendOnce};
use crate::{now_ms, IdempotencyKey, QueueId};

/// The WAL files kept before RocksDB flushes the column families that pin the oldest one.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

/// Opens the engine's RocksDB. A `replicated` engine is written without its WAL (see
/// [`crate::Engine::apply`]), so only its flushes persist it, and they must leave every column family
/// at the same entry of the cluster's log.
pub(crate) fn open_db(path: &Path, replicated: bool) -> Result<DB> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.increase_parallelism(2);
    if replicated {
        crate::background::behind_requests(&mut options)?;
    }
    options.set_atomic_flush(replicated);
    // Messages are deleted soon after they are sent, so the messages column family flushes
    // every few seconds under load while the small ones (delivery state, dedup ids) hardly
    // ever fill; each of them keeps every WAL file since its last flush alive. Without a cap
    // the WAL grew to RocksDB's default of four times all write buffers, over a gigabyte to
    // replay after a crash. Past this cap RocksDB flushes the families that pin the oldest WAL.
    options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    crate::wal::archive_obsolete_wal(&mut options);
    let mut meta = Options::default();
    meta.set_merge_operator_associative("max_u64", keys::max_merge);
    let cfs = vec![
        ColumnFamilyDescriptor::new(keys::CF_QUEUES, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_MESSAGES, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_STATE, Options::default()),
        ColumnFamilyDescriptor::new(keys::CF_META, meta),
        ColumnFamilyDescriptor::new(keys::CF_DEDUP, Options::default()),
    ];
    Ok(DB::open_cf_descriptors(&options, path, cfs)?)
}

pub(crate) fn load_or_create_receipt_key(db: &DB) -> Result<[u8; 32]> {
    let cf = db.cf_handle(keys::CF_META).expect("created at open");
    if let Some(existing) = db.get_cf(cf, keys::RECEIPT_KEY)? {
        return existing
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("receipt key has the wrong length".into()));
    }
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(true);
    db.put_cf_opt(cf, keys::RECEIPT_KEY, key, &options)?;
    Ok(key)
}

/// Rebuilds every queue's in-memory index from the state records. Records of queues that no
/// longer exist (a delete interrupted by a crash) are removed. With `release_in_flight`, a
/// message of a standard queue in flight is visible at once: it was received from a leader
/// that is gone, which may not have written its delivery state.
pub(crate) fn rebuild(db: &DB, release_in_flight: bool) -> Result<HashMap<QueueId, Arc<Queue>>> {
    let now = now_ms();
    let meta_cf = db.cf_handle(keys::CF_META).expect("created at open");
    let mut queues = HashMap::new();
    for item in db.iterator_cf(
        db.cf_handle(keys::CF_QUEUES).expect("created at open"),
        IteratorMode::Start,
    ) {
        let (key, value) = item?;
        let id = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt("queue key".into()))?,
        );
        let record = QueueRecord::decode(value.as_ref())
            .map_err(|err| Error::Corrupt(format!("queue {id}: {err}")))?;
        let floor = db
            .get_cf(meta_cf, seq_floor_key(id))?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1)
            .max(1);
        let sealed = record.sealed;
        let config = queue_config(record);
        crate::metrics::touch_queue_counters(&config.name);
        let queue = Queue::new(config, floor);
        queue.state.lock().sealed = sealed;
        queues.insert(id, Arc::new(queue));
    }

    let mut orphans: Vec<QueueId> = Vec::new();
    let mut messages = 0u64;
    for item in db.iterator_cf(
        db.cf_handle(keys::CF_STATE).expect("created at open"),
        IteratorMode::Start,
    ) {
        let (key, value) = item?;
        let (id, seq) =
            keys::parse_message_key(&key).ok_or_else(|| Error::Corrupt("state key".into()))?;
        let Some(queue) = queues.get(&id) else {
            if orphans.last() != Some(&id) {
                orphans.push(id);
            }
            continue;
        };
        let mut record = StateRecord::decode(value.as_ref())
            .map_err(|err| Error::Corrupt(format!("state {id}/{seq}: {err}")))?;
        let mut state = queue.state.lock();
        // A FIFO queue's deliveries were committed before they went out: whoever received
        // one still holds it, and the group waits.
        if release_in_flight
            && !state.config.fifo
            && record.receive_count > 0
            && record.visible_at_ms > now
        {
            record.visible_at_ms = now;
        }
        state.next_seq = state.next_seq.max(seq + 1);
        let group = state.group(&record.group_id);
        state.insert(seq, meta_of(&record, group), now);
        messages += 1;
    }
    let remembered = rebuild_dedup(db, &queues, now)?;
    for id in orphans {
        tracing::info!(queue_id = id, "removing records of a deleted queue");
        let from = message_key(id, 0);
        let to = message_key(id + 1, 0);
        for cf in [keys::CF_MESSAGES, keys::CF_STATE] {
            db.delete_range_cf(db.cf_handle(cf).expect("created at open"), from, to)?;
        }
    }
    tracing::info!(
        queues = queues.len(),
        messages,
        remembered_sends = remembered,
        "queue engine rebuilt its index"
    );
    Ok(queues)
}

/// Loads the deduplication ids and idempotency keys still within their window; forgets the
/// rest and those of deleted queues. Returns how many it kept.
pub(crate) fn rebuild_dedup(
    db: &DB,
    queues: &HashMap<QueueId, Arc<Queue>>,
    now: u64,
) -> Result<usize> {
    let cf = db.cf_handle(keys::CF_DEDUP).expect("created at open");
    let mut dedups: Vec<(QueueId, String, Dedup)> = Vec::new();
    let mut sends: Vec<(QueueId, IdempotencyKey, SendOnce)> = Vec::new();
    let mut stale = Vec::new();
    let live = |id: &QueueId, expires_ms: u64| expires_ms > now && queues.contains_key(id);
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (key, value) = item?;
        match keys::parse_remembered_key(&key).ok_or_else(|| Error::Corrupt("dedup key".into()))? {
            Remembered::Dedup(id, dedup_id) => {
                let record = DedupRecord::decode(value.as_ref())
                    .map_err(|err| Error::Corrupt(format!("dedup {id}/{dedup_id}: {err}")))?;
                if !live(&id, record.expires_ms) {
                    stale.push(key);
                    continue;
                }
                let entry = Dedup {
                    message_id: record.message_id,
                    seq: record.sequence,
                    expires_ms: record.expires_ms,
                };
                dedups.push((id, dedup_id, entry));
            }
            Remembered::Send(id, send) => {
                let record = SendOnceRecord::decode(value.as_ref())
                    .map_err(|err| Error::Corrupt(format!("idempotency key of {id}: {err}")))?;
                if !live(&id, record.expires_ms) {
                    stale.push(key);
                    continue;
                }
                let entry = SendOnce {
                    first_seq: record.first_sequence,
                    count: record.count,
                    expires_ms: record.expires_ms,
                };
                sends.push((id, send, entry));
            }
        }
    }
    for key in stale {
        db.delete_cf(cf, key)?;
    }
    let kept = dedups.len() + sends.len();
    // Inserted in expiry order, which is the order each queue forgets them in.
    dedups.sort_by_key(|(_, _, entry)| entry.expires_ms);
    for (id, dedup_id, entry) in dedups {
        queues[&id].state.lock().dedup.insert(dedup_id, entry);
    }
    sends.sort_by_key(|(_, _, entry)| entry.expires_ms);
    for (id, key, entry) in sends {
        queues[&id].state.lock().sends.insert(key, entry);
    }
    Ok(kept)
}

//! The limits of the public API (DESIGN section 3) and the checks that enforce them. Every
//! failure names the field and the limit, so a client knows what to fix.

use std::time::Duration;

// The checks a queue record must pass live with the limits, in the shared vocabulary: the
// metadata tier checks every record it is sent with the same ones.
pub use sluice_api::limits::{apply_attributes, queue_name, tags};

use sluice_api::content;
use sluice_api::limits::*;
use sluice_api::{Error, Result};
use sluice_proto::v1 as pb;

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

pub fn batch_size(field: &str, len: usize) -> Result<()> {
    if len == 0 || len > MAX_BATCH_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("a batch holds 1 to {MAX_BATCH_ENTRIES} entries, got {len}"),
        ));
    }
    Ok(())
}

/// A batch of sends holds at most [`MAX_BATCH_BYTES`] of bodies and attributes in all, or
/// fails whole (SQS's `BatchRequestTooLong`): `sizes` are its entries' sizes as
/// `max_message_bytes` counts them.
pub fn batch_bytes(field: &str, sizes: impl Iterator<Item = usize>) -> Result<()> {
    let total: usize = sizes.sum();
    if total > MAX_BATCH_BYTES {
        return Err(Error::invalid(
            field,
            format!("the batch's messages add up to {total} bytes, a batch may hold {MAX_BATCH_BYTES} in all"),
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
    content::message_attributes("attributes", attributes, content::Origin::Client)
}

pub fn group_id(value: &str) -> Result<()> {
    content::group_id("group_id", value)
}

pub fn deduplication_id(value: &str) -> Result<()> {
    content::deduplication_id("deduplication_id", value)
}

pub fn trace_header(value: &str) -> Result<()> {
    content::trace_header("trace_header", value)
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
    fn move_rates() {
        assert!(move_rate(Some(0)).is_err());
        assert!(move_rate(Some(1001)).is_err());
        assert_eq!(move_rate(None).unwrap(), None);
    }
}

//! Reads the bytes of a RocksDB write batch back into its records, in the format RocksDB
//! writes to its WAL (`db/write_batch.cc`): a 12-byte header (sequence, count), then per
//! record a tag byte, a varint column family id for the column-family forms, and
//! length-prefixed key and value. A replicated log entry is such a batch; reading it is how a
//! node finds the sends in the entries it had to drop (`dropped.rs`). The `rocksdb` crate's
//! own iterator reports the default column family only.

use rocksdb::{AsColumnFamilyRef, WriteBatch};

use crate::error::{Error, Result};

const HEADER_BYTES: usize = 12;

const DELETION: u8 = 0x0;
const VALUE: u8 = 0x1;
const MERGE: u8 = 0x2;
const LOG_DATA: u8 = 0x3;
const CF_DELETION: u8 = 0x4;
const CF_VALUE: u8 = 0x5;
const CF_MERGE: u8 = 0x6;
const SINGLE_DELETION: u8 = 0x7;
const CF_SINGLE_DELETION: u8 = 0x8;
const CF_RANGE_DELETION: u8 = 0xE;
const RANGE_DELETION: u8 = 0xF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put,
    Delete,
    /// `key` is the start of the range and `value` its end.
    DeleteRange,
    Merge,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) cf: u32,
    pub(crate) kind: Kind,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("a write batch in the log is malformed: {what}"))
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8> {
        let (&first, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| corrupt("cut short"))?;
        self.rest = rest;
        Ok(first)
    }

    fn varint32(&mut self) -> Result<u32> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u32::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("a varint runs past 5 bytes"))
    }

    fn slice(&mut self) -> Result<&'a [u8]> {
        let len = self.varint32()? as usize;
        if len > self.rest.len() {
            return Err(corrupt("a key or value runs past the end"));
        }
        let (slice, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(slice)
    }
}

/// The puts, deletes and merges of the batch whose bytes are `rep`, in order.
pub(crate) fn records(rep: &[u8]) -> Result<Vec<Record<'_>>> {
    let (header, body) = rep
        .split_at_checked(HEADER_BYTES)
        .ok_or_else(|| corrupt("shorter than its header"))?;
    let count = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
    let mut reader = Reader { rest: body };
    let mut records = Vec::with_capacity(count as usize);
    while !reader.rest.is_empty() {
        let tag = reader.byte()?;
        let cf = match tag {
            CF_VALUE | CF_DELETION | CF_SINGLE_DELETION | CF_MERGE | CF_RANGE_DELETION => {
                reader.varint32()?
            }
            _ => 0,
        };
        let (kind, key, value) = match tag {
            VALUE | CF_VALUE => (Kind::Put, reader.slice()?, reader.slice()?),
            DELETION | CF_DELETION | SINGLE_DELETION | CF_SINGLE_DELETION => {
                (Kind::Delete, reader.slice()?, &[][..])
            }
            RANGE_DELETION | CF_RANGE_DELETION => {
                (Kind::DeleteRange, reader.slice()?, reader.slice()?)
            }
            MERGE | CF_MERGE => (Kind::Merge, reader.slice()?, reader.slice()?),
            LOG_DATA => {
                reader.slice()?;
                continue;
            }
            other => return Err(corrupt(&format!("a record of unknown type {other:#x}"))),
        };
        records.push(Record {
            cf,
            kind,
            key,
            value,
        });
    }
    if records.len() != count as usize {
        return Err(corrupt(&format!(
            "its header counts {count} records, it holds {}",
            records.len()
        )));
    }
    Ok(records)
}

/// The id RocksDB gave `cf`, as batches name it: read off a batch of one put to it.
pub(crate) fn cf_id(cf: &impl AsColumnFamilyRef) -> Result<u32> {
    let mut batch = WriteBatch::default();
    batch.put_cf(cf, b"", b"");
    Ok(records(batch.data())?
        .first()
        .ok_or_else(|| corrupt("a batch of one put holds nothing"))?
        .cf)
}

#[cfg(test)]
mod tests {
    use rocksdb::{Options, DB};

    use super::*;

    fn db(dir: &std::path::Path) -> DB {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        DB::open_cf(&options, dir, ["one", "two"]).unwrap()
    }

    #[test]
    fn reads_back_every_kind_of_record_with_its_column_family() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let one = db.cf_handle("one").unwrap();
        let two = db.cf_handle("two").unwrap();
        let (one_id, two_id) = (cf_id(one).unwrap(), cf_id(two).unwrap());
        assert_ne!(one_id, two_id);
        assert_ne!(one_id, 0, "the default column family is 0");

        let long = vec![7u8; 300];
        let mut batch = WriteBatch::default();
        batch.put_cf(one, b"k1", &long);
        batch.delete_cf(two, b"k2");
        batch.delete_range_cf(one, b"a", b"z");
        batch.merge_cf(two, b"k3", b"m");
        batch.put(b"k4", b"v4");
        batch.delete(b"k5");
        let records = records(batch.data()).unwrap();
        assert_eq!(
            records,
            vec![
                Record {
                    cf: one_id,
                    kind: Kind::Put,
                    key: b"k1",
                    value: &long,
                },
                Record {
                    cf: two_id,
                    kind: Kind::Delete,
                    key: b"k2",
                    value: b"",
                },
                Record {
                    cf: one_id,
                    kind: Kind::DeleteRange,
                    key: b"a",
                    value: b"z",
                },
                Record {
                    cf: two_id,
                    kind: Kind::Merge,
                    key: b"k3",
                    value: b"m",
                },
                Record {
                    cf: 0,
                    kind: Kind::Put,
                    key: b"k4",
                    value: b"v4",
                },
                Record {
                    cf: 0,
                    kind: Kind::Delete,
                    key: b"k5",
                    value: b"",
                },
            ]
        );
    }

    #[test]
    fn a_cut_or_miscounted_batch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let mut batch = WriteBatch::default();
        batch.put_cf(db.cf_handle("one").unwrap(), b"key", b"value");
        let data = batch.data().to_vec();
        for len in 0..data.len() {
            assert!(records(&data[..len]).is_err(), "cut at {len} bytes");
        }
        let mut miscounted = data.clone();
        miscounted[8] = 2;
        assert!(records(&miscounted).is_err());
        let mut unknown = data;
        unknown[HEADER_BYTES] = 0x42;
        assert!(records(&unknown).is_err());
    }
}

//! The embedded metadata store: a RocksDB of its own, every write fsync'd. Writes are serialized
//! by a mutex, which makes compare-and-swap trivially atomic; metadata writes are rare.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use crate::{Error, MetaStore, Result, Versioned};

/// Holds the store-wide revision, bumped by every write, as in etcd.
const REVISION_KEY: &[u8] = b"\0revision";

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<DB>,
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).map_err(backend)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn read(&self, key: &str) -> Result<Option<Versioned>> {
        match self.db.get(key.as_bytes()).map_err(backend)? {
            None => Ok(None),
            Some(raw) => decode(key, &raw).map(Some),
        }
    }

    fn current_revision(&self) -> Result<u64> {
        Ok(self
            .db
            .get(REVISION_KEY)
            .map_err(backend)?
            .and_then(|raw| raw.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Writes the key (or deletes it with `None`) and bumps the store revision, fsync'd.
    async fn write(&self, key: &str, value: Option<&[u8]>) -> Result<u64> {
        let db = self.db.clone();
        let revision = self.current_revision()? + 1;
        let key = key.to_owned();
        let value = value.map(|v| encode(v, revision));
        tokio::task::spawn_blocking(move || {
            let mut batch = WriteBatch::default();
            match value {
                Some(value) => batch.put(key.as_bytes(), value),
                None => batch.delete(key.as_bytes()),
            }
            batch.put(REVISION_KEY, revision.to_be_bytes());
            let mut options = WriteOptions::default();
            options.set_sync(true);
            db.write_opt(batch, &options)
        })
        .await
        .map_err(|err| Error::Backend(err.to_string()))?
        .map_err(backend)?;
        Ok(revision)
    }
}

fn backend(err: rocksdb::Error) -> Error {
    Error::Backend(err.to_string())
}

fn encode(value: &[u8], revision: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(8 + value.len());
    raw.extend_from_slice(&revision.to_be_bytes());
    raw.extend_from_slice(value);
    raw
}

fn decode(key: &str, raw: &[u8]) -> Result<Versioned> {
    if raw.len() < 8 {
        return Err(Error::Corrupt {
            key: key.to_owned(),
            reason: "shorter than its revision".into(),
        });
    }
    let (revision, value) = raw.split_at(8);
    Ok(Versioned {
        value: value.to_vec(),
        revision: u64::from_be_bytes(revision.try_into().expect("8 bytes")),
    })
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.read(key)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        let start = if start_after.is_empty() {
            prefix.as_bytes().to_vec()
        } else {
            // The smallest key after `start_after`.
            let mut start = start_after.as_bytes().to_vec();
            start.push(0);
            start
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (key, raw) = item.map_err(backend)?;
            if !key.starts_with(prefix.as_bytes()) || out.len() >= limit {
                break;
            }
            let key = String::from_utf8(key.to_vec()).map_err(|_| Error::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: "key is not UTF-8".into(),
            })?;
            let value = decode(&key, &raw)?;
            out.push((key, value));
        }
        Ok(out)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Option<u64>> {
        let _guard = self.write_lock.lock().await;
        if self.read(key)?.is_some() {
            return Ok(None);
        }
        self.write(key, Some(&value)).await.map(Some)
    }

    async fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<Option<u64>> {
        let _guard = self.write_lock.lock().await;
        match self.read(key)? {
            Some(current) if current.revision == revision => {
                self.write(key, Some(&value)).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        match self.read(key)? {
            Some(current) if current.revision == revision => {
                self.write(key, None).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn next_ids(&self, key: &str, count: u64) -> Result<u64> {
        let _guard = self.write_lock.lock().await;
        let first = match self.read(key)? {
            None => 1,
            Some(current) => crate::counter_value(key, &current.value)? + 1,
        };
        let last = first + count.max(1) - 1;
        self.write(key, Some(&last.to_be_bytes())).await?;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_the_store_contract_and_keeps_counters_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        crate::conformance::check(&store).await;
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.next_ids("ids/queue", 1).await.unwrap(), 14);
    }
}

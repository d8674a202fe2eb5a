//! Group commit. One writer thread owns every write to RocksDB: it takes all the requests that
//! queued while the previous write ran, applies them as one `WriteBatch`, and fsyncs once if any
//! of them asked for durability. Under load one fsync acknowledges many sends, which is what lets
//! a disk that manages a thousand fsyncs a second take tens of thousands of messages.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::keys::{CF_DEDUP, CF_MESSAGES, CF_META, CF_QUEUES, CF_STATE};
use crate::metrics;

/// Most requests folded into one write; bounds the latency of the first one in a burst.
const MAX_REQUESTS_PER_COMMIT: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Cf {
    Queues,
    Messages,
    State,
    Meta,
    Dedup,
}

impl Cf {
    fn name(self) -> &'static str {
        match self {
            Cf::Queues => CF_QUEUES,
            Cf::Messages => CF_MESSAGES,
            Cf::State => CF_STATE,
            Cf::Meta => CF_META,
            Cf::Dedup => CF_DEDUP,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
    Merge(Cf, Vec<u8>, Vec<u8>),
}

struct Request {
    ops: Vec<Op>,
    sync: bool,
    done: oneshot::Sender<Result<(), rocksdb::Error>>,
}

pub(crate) struct Committer {
    tx: parking_lot::Mutex<Option<mpsc::Sender<Request>>>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Committer {
    pub(crate) fn start(db: Arc<DB>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("sluice-commit".into())
            .spawn(move || writer_loop(&db, rx))?;
        Ok(Committer {
            tx: parking_lot::Mutex::new(Some(tx)),
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Applies `ops` atomically; with `sync` they are fsync'd before this returns.
    pub(crate) async fn commit(&self, ops: Vec<Op>, sync: bool) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.submit(ops, sync)?.wait().await
    }

    /// Queues `ops` now, without waiting. Writes are applied in the order they are submitted,
    /// so once a later submission is done every earlier one is too; an empty submission is a
    /// barrier that waits for everything before it.
    pub(crate) fn submit(&self, ops: Vec<Op>, sync: bool) -> Result<Pending> {
        let (done, wait) = oneshot::channel();
        let tx = self.tx.lock();
        let tx = tx.as_ref().ok_or(Error::Closed)?;
        tx.send(Request { ops, sync, done })
            .map_err(|_| Error::Closed)?;
        Ok(Pending(wait))
    }

    /// Lets the writer finish what is queued, then stops it.
    pub(crate) fn close(&self) {
        self.tx.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("commit thread panicked");
            }
        }
    }
}

/// A submitted write.
pub(crate) struct Pending(oneshot::Receiver<Result<(), rocksdb::Error>>);

impl Pending {
    pub(crate) async fn wait(self) -> Result<()> {
        self.0.await.map_err(|_| Error::Closed)?.map_err(Error::Db)
    }
}

impl Drop for Committer {
    /// Joins the writer so RocksDB is closed by the time the engine is gone.
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(db: &DB, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        while requests.len() < MAX_REQUESTS_PER_COMMIT {
            match rx.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        let sync = requests.iter().any(|r| r.sync);
        let started = Instant::now();
        let result = write(db, &requests, sync);
        metrics::COMMIT_DURATION.observe(started.elapsed().as_secs_f64());
        metrics::COMMIT_BATCH_REQUESTS.observe(requests.len() as f64);
        metrics::COMMITS
            .with_label_values(&[if sync { "true" } else { "false" }])
            .inc();
        if let Err(err) = &result {
            tracing::error!(error = %err, requests = requests.len(), "group commit failed");
        }
        for request in requests {
            // The caller may have gone away (cancelled request); the write stands regardless.
            let _ = request.done.send(result.clone());
        }
    }
}

fn write(db: &DB, requests: &[Request], sync: bool) -> Result<(), rocksdb::Error> {
    let mut batch = WriteBatch::default();
    for op in requests.iter().flat_map(|r| r.ops.iter()) {
        let cf = |cf: &Cf| {
            db.cf_handle(cf.name())
                .expect("column families are created at open")
        };
        match op {
            Op::Put(c, k, v) => batch.put_cf(cf(c), k, v),
            Op::Delete(c, k) => batch.delete_cf(cf(c), k),
            Op::DeleteRange(c, from, to) => batch.delete_range_cf(cf(c), from, to),
            Op::Merge(c, k, v) => batch.merge_cf(cf(c), k, v),
        }
    }
    if batch.is_empty() {
        // Only barriers: everything before them is already written.
        return Ok(());
    }
    let mut options = WriteOptions::default();
    options.set_sync(sync);
    db.write_opt(batch, &options)
}

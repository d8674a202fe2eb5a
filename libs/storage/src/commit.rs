//! Group commit. One writer thread owns every write: it takes all the requests that queued while
//! the previous write ran and turns them into one `WriteBatch`. Under load one write
//! acknowledges many sends, which is what lets a disk that manages a thousand fsyncs a second
//! take tens of thousands of messages.
//!
//! A standalone engine writes the batch to RocksDB itself, and a second thread fsyncs the WAL
//! behind it when any request asked for durability: the next batch is written while the
//! previous one's fsync runs, and one fsync covers every batch written before it. A replicated
//! engine hands the batch's bytes to its [`Replicator`] instead: the batch becomes one entry of
//! the cluster's log, and RocksDB sees it when the entry is applied, on this node as on every
//! other.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;
use tracing::Span;

use crate::error::{Error, Result};
use crate::keys::{CF_DEDUP, CF_MESSAGES, CF_META, CF_QUEUES, CF_STATE};
use crate::metrics;

/// Most requests folded into one write; bounds the latency of the first one in a burst.
const MAX_REQUESTS_PER_COMMIT: usize = 1024;
/// No more requests join a write once it holds this many bytes: a replicated write is one log
/// entry, sent whole to every node.
const MAX_BYTES_PER_COMMIT: usize = 8 * 1024 * 1024;

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

/// Why a write did not happen.
#[derive(Debug, Clone)]
pub(crate) enum CommitError {
    Db(rocksdb::Error),
    /// The replicated log refused or lost the write: this node is not (or no longer) the leader.
    NotLeader(String),
}

impl From<CommitError> for Error {
    fn from(err: CommitError) -> Self {
        match err {
            CommitError::Db(err) => Error::Db(err),
            CommitError::NotLeader(reason) => Error::NotLeader(reason),
        }
    }
}

type Done = oneshot::Sender<Result<(), CommitError>>;

/// Called once with the outcome of one stage of a proposed write.
pub type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The replicated log a replicated engine writes through.
pub trait Replicator: Send + Sync + 'static {
    /// Appends `batch` (the bytes of a RocksDB `WriteBatch`) to the log, in the order of calls.
    /// `durable` is called once the entry is fsync'd in this node's own log, `applied` once it
    /// is committed by the cluster and applied to this node's engine; either with an error if
    /// that will not happen (this node is not the leader).
    /// `span` is the group commit's, the parent of the spans the log makes of this entry.
    fn propose(&self, batch: Vec<u8>, durable: Completion, applied: Completion, span: Span);
}

struct Request {
    ops: Vec<Op>,
    sync: bool,
    durable: Done,
    applied: Done,
    /// The submitter's span: a group commit's span is the child of its first request's.
    span: Span,
}

/// The span of a group commit, a child of its first request's span; none when that request
/// was made outside any traced request (background work), which would only add root spans.
fn group_span(requests: &[Request]) -> Span {
    match requests.first() {
        Some(first) if !first.span.is_none() => tracing::info_span!(
            parent: &first.span,
            "storage.group_commit",
            requests = requests.len()
        ),
        _ => Span::none(),
    }
}

impl Request {
    /// Roughly what the request adds to a write batch.
    fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(_, k, v) | Op::Merge(_, k, v) | Op::DeleteRange(_, k, v) => {
                    k.len() + v.len()
                }
                Op::Delete(_, k) => k.len(),
            })
            .sum()
    }
}

pub(crate) struct Committer {
    tx: parking_lot::Mutex<Option<mpsc::Sender<Request>>>,
    /// The writer, and on a standalone engine the syncer, in the order they stop.
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Committer {
    /// Writes go to `db`, or through `replicator` when there is one.
    pub(crate) fn start(
        db: Arc<DB>,
        replicator: Option<Arc<dyn Replicator>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(run)
        };
        let threads = match replicator {
            None => {
                let (written_tx, written_rx) = mpsc::channel();
                let syncer_db = db.clone();
                vec![
                    spawn(
                        "sluice-commit",
                        Box::new(move || writer_loop(&db, rx, written_tx)),
                    )?,
                    spawn(
                        "sluice-sync",
                        Box::new(move || syncer_loop(&syncer_db, written_rx)),
                    )?,
                ]
            }
            Some(replicator) => vec![spawn(
                "sluice-commit",
                Box::new(move || proposer_loop(&db, replicator.as_ref(), rx)),
            )?],
        };
        Ok(Committer {
            tx: parking_lot::Mutex::new(Some(tx)),
            threads: parking_lot::Mutex::new(threads),
        })
    }

    /// Applies `ops` atomically; with `sync` they are durable before this returns (fsync'd, or
    /// committed by a majority of a replicated cluster).
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
        let (durable, durable_rx) = oneshot::channel();
        let (applied, applied_rx) = oneshot::channel();
        let tx = self.tx.lock();
        let tx = tx.as_ref().ok_or(Error::Closed)?;
        tx.send(Request {
            ops,
            sync,
            durable,
            applied,
            span: Span::current(),
        })
        .map_err(|_| Error::Closed)?;
        Ok(Pending {
            durable: durable_rx,
            applied: applied_rx,
        })
    }

    /// Lets the writer finish what is queued, then stops it (and the syncer after it).
    pub(crate) fn close(&self) {
        self.tx.lock().take();
        for thread in std::mem::take(&mut *self.threads.lock()) {
            if thread.join().is_err() {
                tracing::error!("commit thread panicked");
            }
        }
    }
}

/// A submitted write.
pub(crate) struct Pending {
    durable: oneshot::Receiver<Result<(), CommitError>>,
    applied: oneshot::Receiver<Result<(), CommitError>>,
}

impl Pending {
    /// Waits until the write is applied: readable here, and durable as asked.
    pub(crate) async fn wait(self) -> Result<()> {
        Ok(self.applied.await.map_err(|_| Error::Closed)??)
    }

    /// Parts the wait until the write is durable on this node from the wait until it is
    /// applied. On a standalone engine both happen at once.
    pub(crate) fn split(self) -> (Durable, Applied) {
        (Durable(self.durable), Applied(self.applied))
    }
}

/// A write on its way to being durable on this node.
pub(crate) struct Durable(oneshot::Receiver<Result<(), CommitError>>);

impl Durable {
    pub(crate) async fn wait(self) -> Result<()> {
        Ok(self.0.await.map_err(|_| Error::Closed)??)
    }
}

/// A write on its way to being applied.
pub(crate) struct Applied(oneshot::Receiver<Result<(), CommitError>>);

impl Applied {
    pub(crate) async fn wait(self) -> Result<()> {
        Ok(self.0.await.map_err(|_| Error::Closed)??)
    }
}

impl Drop for Committer {
    /// Joins the writer so RocksDB is closed by the time the engine is gone.
    fn drop(&mut self) {
        self.close();
    }
}

/// Takes the first request and whatever queued behind it.
fn next_group(rx: &mpsc::Receiver<Request>) -> Option<Vec<Request>> {
    let first = rx.recv().ok()?;
    let mut bytes = first.bytes();
    let mut requests = vec![first];
    while requests.len() < MAX_REQUESTS_PER_COMMIT && bytes < MAX_BYTES_PER_COMMIT {
        match rx.try_recv() {
            Ok(request) => {
                bytes += request.bytes();
                requests.push(request);
            }
            Err(_) => break,
        }
    }
    Some(requests)
}

fn observe(started: Instant, requests: usize, sync: bool) {
    metrics::COMMIT_DURATION.observe(started.elapsed().as_secs_f64());
    metrics::COMMIT_BATCH_REQUESTS.observe(requests as f64);
    metrics::COMMITS
        .with_label_values(&[if sync { "true" } else { "false" }])
        .inc();
}

/// A group written to RocksDB, waiting for its fsync (if it asked for one) before it is done.
struct Written {
    requests: Vec<Request>,
    sync: bool,
    result: Result<(), CommitError>,
    started: Instant,
    /// The group commit's span; it ends when the group is done.
    span: Span,
}

/// Writes each group without fsync and leaves the fsync to [`syncer_loop`], so the next group is
/// written while the previous one's fsync runs: a write waits for one fsync, not for the rest
/// of the previous group's write and fsync as well.
fn writer_loop(db: &DB, rx: mpsc::Receiver<Request>, written: mpsc::Sender<Written>) {
    while let Some(requests) = next_group(&rx) {
        if written.send(write_group(db, requests)).is_err() {
            return;
        }
    }
}

fn write_group(db: &DB, requests: Vec<Request>) -> Written {
    let sync = requests.iter().any(|r| r.sync);
    let started = Instant::now();
    let span = group_span(&requests);
    let batch = batch_of(db, &requests);
    // Only barriers make an empty batch: everything before them is already written.
    let result = if batch.is_empty() {
        Ok(())
    } else {
        let _write = tracing::info_span!(parent: &span, "storage.write").entered();
        db.write_opt(batch, &WriteOptions::default())
            .map_err(CommitError::Db)
    };
    if let Err(err) = &result {
        tracing::error!(error = ?err, requests = requests.len(), "group commit failed");
    }
    Written {
        requests,
        sync,
        result,
        started,
        span,
    }
}

/// Takes every group written since the last fsync, fsyncs the WAL once if any of them needs it,
/// and completes them in order, so a group is never done before one written earlier.
fn syncer_loop(db: &DB, rx: mpsc::Receiver<Written>) {
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        round.extend(rx.try_iter());
        if round.iter().any(|w| w.sync) {
            // The fsync serves every group of the round; its span is the first traced one's.
            let parent = round.iter().find(|w| !w.span.is_none()).map(|w| &w.span);
            let _fsync = parent.map(|parent| {
                tracing::info_span!(parent: parent, "storage.fsync", groups = round.len()).entered()
            });
            let started = Instant::now();
            let synced = crate::disk::fsync_outcome("storage::wal_fsync_error", db.flush_wal(true));
            crate::dbstats::observe_fsync("queues", started);
            // Never a reply saying durable after it: the node stops instead.
            if let Err(err) = synced {
                crate::disk::stop_on_failed_fsync("queue engine's write-ahead log", &err);
            }
        }
        for written in round {
            let result = written.result;
            observe(written.started, written.requests.len(), written.sync);
            for request in written.requests {
                // The caller may have gone away (cancelled request); the write stands regardless.
                let _ = request.durable.send(result.clone());
                let _ = request.applied.send(result.clone());
            }
        }
    }
}

/// Proposes each group as one log entry. The next group is proposed once this one is durable in
/// the local log, so that requests pile up into the next group meanwhile, as they do behind an
/// fsync on a standalone engine; replication to the other nodes runs on in the background.
fn proposer_loop(db: &DB, replicator: &dyn Replicator, rx: mpsc::Receiver<Request>) {
    while let Some(requests) = next_group(&rx) {
        let started = Instant::now();
        let count = requests.len();
        // It ends when the group is applied: what a SYNC send waits for.
        let span = group_span(&requests);
        let batch = batch_of(db, &requests);
        let (durable_done, applied_done): (Vec<Done>, Vec<Done>) =
            requests.into_iter().map(|r| (r.durable, r.applied)).unzip();
        let (local_tx, local_rx) = mpsc::channel();
        replicator.propose(
            batch.data().to_vec(),
            Box::new(move |result| {
                let result = result.map_err(CommitError::NotLeader);
                for done in durable_done {
                    let _ = done.send(result.clone());
                }
                let _ = local_tx.send(());
            }),
            {
                let span = span.clone();
                Box::new(move |result| {
                    let result = result.map_err(CommitError::NotLeader);
                    for done in applied_done {
                        let _ = done.send(result.clone());
                    }
                    drop(span);
                })
            },
            span,
        );
        // A dropped completion (the replicator went away) ends the wait as well.
        let _ = local_rx.recv();
        observe(started, count, true);
    }
}

fn batch_of(db: &DB, requests: &[Request]) -> WriteBatch {
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
    batch
}

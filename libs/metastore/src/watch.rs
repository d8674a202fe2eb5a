//! Following a prefix of etcd: a snapshot, then every change after it. When the watch breaks
//! (etcd restarted, or compacted the revision the watch needs), a fresh snapshot is taken and
//! the watch resumes from its revision, so a follower never silently misses a change.

use std::sync::LazyLock;
use std::time::Duration;

use etcd_client::{Client, Event, GetOptions, KeyValue, WatchOptions};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

/// The follower's service's counters of changes heard and of watches started again.
#[derive(Clone, Copy)]
pub struct WatchCounters {
    pub events: &'static LazyLock<IntCounter>,
    pub restarts: &'static LazyLock<IntCounter>,
}

/// What a follower does with what it sees.
pub trait Follower: Send + 'static {
    /// Everything under the prefix now; replaces whatever was known.
    fn snapshot(&mut self, kvs: &[KeyValue]);
    fn event(&mut self, event: &Event);
}

/// Follows `prefix` until `shutdown`.
pub async fn follow(
    client: Client,
    prefix: String,
    follower: impl Follower,
    counters: WatchCounters,
    shutdown: CancellationToken,
) {
    follow_since(client, prefix, follower, counters, shutdown, None).await
}

/// Follows `prefix` until `shutdown`, for a follower that already holds the state at revision
/// `known` (`None`: it holds nothing, so a snapshot comes first). If etcd has compacted past
/// `known`, the follower gets a snapshot instead of the changes it missed.
pub async fn follow_since(
    client: Client,
    prefix: String,
    mut follower: impl Follower,
    counters: WatchCounters,
    shutdown: CancellationToken,
    mut known: Option<i64>,
) {
    while !shutdown.is_cancelled() {
        let resumed = known.take();
        if let Err(err) = follow_once(
            &client,
            &prefix,
            &mut follower,
            counters,
            &shutdown,
            resumed,
        )
        .await
        {
            tracing::warn!(prefix = %prefix, error = %err, "etcd watch broke; taking a new snapshot");
            counters.restarts.inc();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Keys read per request of a snapshot. etcd counts every key left in the range to answer each
/// page, so pages of 1,000 made a snapshot of 1,000,000 placements take 100 s; 10,000 keep the
/// pages few and each under [`SNAPSHOT_MESSAGE_BYTES`] with values of up to 6 KiB.
const SNAPSHOT_PAGE: i64 = 10_000;

/// The largest response of a snapshot's read the client takes (its default is 4 MiB).
const SNAPSHOT_MESSAGE_BYTES: usize = 64 << 20;

/// Everything under `prefix` at one revision, read a page at a time; and that revision.
pub async fn snapshot(client: &Client, prefix: &str) -> anyhow::Result<(Vec<KeyValue>, i64)> {
    let end = crate::etcd::prefix_end(prefix.as_bytes());
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut start = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(SNAPSHOT_PAGE);
        // Every page at the first page's revision, so the snapshot is one moment of etcd.
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let page = client
            .kv_client()
            .max_decoding_message_size(SNAPSHOT_MESSAGE_BYTES)
            .get(start.clone(), Some(options))
            .await?;
        if revision == 0 {
            revision = page
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| anyhow::anyhow!("snapshot without a revision"))?;
        }
        let Some(last) = page.kvs().last() else { break };
        // The next page starts just after the last key: the key with a zero byte appended.
        start = last.key().to_vec();
        start.push(0);
        kvs.extend_from_slice(page.kvs());
        if !page.more() {
            break;
        }
    }
    Ok((kvs, revision))
}

async fn follow_once(
    client: &Client,
    prefix: &str,
    follower: &mut impl Follower,
    counters: WatchCounters,
    shutdown: &CancellationToken,
    known: Option<i64>,
) -> anyhow::Result<()> {
    let revision = match known {
        Some(revision) => revision,
        None => {
            let (kvs, revision) = snapshot(client, prefix).await?;
            follower.snapshot(&kvs);
            revision
        }
    };
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let (_watcher, mut stream) = client.watch_client().watch(prefix, Some(options)).await?;
    loop {
        let message = tokio::select! {
            message = stream.message() => message?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(response) = message else {
            anyhow::bail!("the watch stream ended");
        };
        if response.compact_revision() > 0 {
            anyhow::bail!(
                "etcd compacted past the watch (revision {})",
                response.compact_revision()
            );
        }
        if response.canceled() {
            anyhow::bail!("etcd cancelled the watch");
        }
        counters.events.inc_by(response.events().len() as u64);
        for event in response.events() {
            follower.event(event);
        }
    }
}

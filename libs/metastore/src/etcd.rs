//! The metadata store over etcd, for the distributed deployment. Every key lives under a root
//! prefix (e.g. `/sluice/`), so several deployments or tests can share one etcd. Revisions are
//! etcd's own `mod_revision`s, and every compare-and-swap is a single etcd transaction.

use std::sync::LazyLock;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, Txn, TxnOp, TxnResponse,
};
use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};

use crate::{Error, MetaStore, Result, Versioned};

/// How long a single etcd call may take before the store reports the tier unavailable.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A counter's compare-and-swap loses only to a concurrent increment; this bounds a pathological
/// storm of them.
const MAX_COUNTER_ATTEMPTS: usize = 64;

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    root: String,
}

impl EtcdStore {
    /// Connects to the etcd `endpoints` (e.g. `http://127.0.0.1:2379`); every key is stored
    /// under `root`.
    pub async fn connect(endpoints: &[String], root: &str) -> Result<Self> {
        Self::connect_with(endpoints, root, None).await
    }

    /// [`connect`](Self::connect) over TLS (`https://` endpoints) with `tls`.
    pub async fn connect_with(
        endpoints: &[String],
        root: &str,
        tls: Option<etcd_client::TlsOptions>,
    ) -> Result<Self> {
        register_metrics();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|err| {
                Error::Backend(format!("cannot connect to etcd at {endpoints:?}: {err}"))
            })?;
        Ok(EtcdStore {
            client,
            root: root.to_owned(),
        })
    }

    /// The underlying client, for what the trait does not cover (leases, watches, elections).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The root prefix every key is stored under.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn versioned(&self, kv: &KeyValue) -> Result<(String, Versioned)> {
        let key = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|key| key.strip_prefix(&self.root))
            .ok_or_else(|| Error::Corrupt {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                reason: format!("key is not UTF-8 under {:?}", self.root),
            })?;
        Ok((
            key.to_owned(),
            Versioned {
                value: kv.value().to_vec(),
                revision: kv.mod_revision() as u64,
            },
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        timed("txn", self.client.kv_client().txn(txn)).await
    }
}

static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "sluice_etcd_request_duration_seconds",
        "Latency of this process's requests to etcd through the metadata store, by operation \
         (get, list, txn), failed ones included",
        &["op"],
        sluice_api::metrics::latency_buckets()
    )
    .expect("metric registers once")
});

static REQUEST_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "sluice_etcd_request_errors_total",
        "Requests to etcd through the metadata store that failed (etcd unreachable, timed out or \
         refused), by operation",
        &["op"]
    )
    .expect("metric registers once")
});

/// Exports the etcd request metrics before the first request.
fn register_metrics() {
    for op in ["get", "list", "txn"] {
        REQUEST_DURATION.with_label_values(&[op]);
        REQUEST_ERRORS.with_label_values(&[op]);
    }
}

/// Runs one etcd request `op`, timing it and counting it if it fails.
async fn timed<T>(
    op: &'static str,
    request: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    let started = std::time::Instant::now();
    let result = request.await;
    REQUEST_DURATION
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|err| {
        REQUEST_ERRORS.with_label_values(&[op]).inc();
        backend(err)
    })
}

fn backend(err: etcd_client::Error) -> Error {
    Error::Backend(format!("etcd: {err}"))
}

/// The revision a successful transaction wrote at.
fn written_revision(response: &TxnResponse) -> Result<u64> {
    response
        .header()
        .map(|h| h.revision() as u64)
        .ok_or_else(|| Error::Backend("etcd answered a transaction without a header".into()))
}

/// The first key after every key that starts with `prefix`, as etcd's range ends want it.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on, which etcd spells as "\0".
    vec![0]
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let response = timed("get", self.client.kv_client().get(self.full_key(key), None)).await?;
        response
            .kvs()
            .first()
            .map(|kv| self.versioned(kv).map(|(_, v)| v))
            .transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>> {
        let full_prefix = self.full_key(prefix);
        let start = if start_after.is_empty() {
            full_prefix.clone().into_bytes()
        } else {
            // The smallest key after `start_after`.
            let mut start = self.full_key(start_after).into_bytes();
            start.push(0);
            start
        };
        let options = GetOptions::new()
            .with_range(prefix_end(full_prefix.as_bytes()))
            .with_limit(limit as i64);
        let response = timed("list", self.client.kv_client().get(start, Some(options))).await?;
        response.kvs().iter().map(|kv| self.versioned(kv)).collect()
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Option<u64>> {
        let key = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        written_revision(&response).map(Some)
    }

    async fn update(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<Option<u64>> {
        let key = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision as i64,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let response = self.txn(txn).await?;
        if !response.succeeded() {
            return Ok(None);
        }
        written_revision(&response).map(Some)
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<bool> {
        let key = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision as i64,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.succeeded())
    }

    async fn next_ids(&self, key: &str, count: u64) -> Result<u64> {
        let count = count.max(1);
        for _ in 0..MAX_COUNTER_ATTEMPTS {
            let written = match self.get(key).await? {
                None => self
                    .create(key, count.to_be_bytes().to_vec())
                    .await?
                    .map(|_| 1),
                Some(current) => {
                    let first = crate::counter_value(key, &current.value)? + 1;
                    let last = first + count - 1;
                    self.update(key, last.to_be_bytes().to_vec(), current.revision)
                        .await?
                        .map(|_| first)
                }
            };
            if let Some(first) = written {
                return Ok(first);
            }
        }
        Err(Error::Backend(format!(
            "counter {key} lost {MAX_COUNTER_ATTEMPTS} compare-and-swaps in a row"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/sluice/queues/"), b"/sluice/queues0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}

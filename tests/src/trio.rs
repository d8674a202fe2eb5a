//! Three nodes of replicated backend cluster `a` as real processes on real RocksDB
//! directories, for the tests that kill, wipe and restart them, and a client that acts as a
//! frontend does: it tries the nodes in turn until one takes the call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use sluice_api::IdempotencyKey;
use sluice_proto::v1 as pb;
use sluice_proto::v1::backend_service_client::BackendServiceClient;
use sluice_proto::v1::cluster_service_client::ClusterServiceClient;
use tonic::transport::Channel;

use crate::{backend_bin, free_port_range, ServerProcess};

/// The queue the trio's helpers use.
pub const QUEUE: u64 = 1;

/// One test at a time: each picks free ports and binds them later, so tests running side by
/// side could take each other's.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three nodes of cluster `a`; a killed node's slot is `None`.
pub struct Trio {
    _one: tokio::sync::MutexGuard<'static, ()>,
    pub dir: tempfile::TempDir,
    base: u16,
    pub nodes: Vec<Option<ServerProcess>>,
    /// The `sluice-backend` build every node runs.
    pub bin: PathBuf,
    /// Flags every node gets besides its own and `--peers`.
    extra: Vec<String>,
}

impl Trio {
    pub fn name(i: usize) -> String {
        format!("a{}", i + 1)
    }

    pub fn port(&self, i: usize) -> u16 {
        self.base + 2 * i as u16
    }

    pub fn peers(&self) -> String {
        (0..3)
            .map(|i| format!("{}=https://127.0.0.1:{}", Self::name(i), self.port(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the three nodes of the plain build, node `i` with environment `env(i)`.
    pub async fn start(
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> anyhow::Result<Trio> {
        Self::start_of(backend_bin(), env).await
    }

    /// Starts the three nodes from binary `bin`, node `i` with environment `env(i)`.
    pub async fn start_of(
        bin: PathBuf,
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> anyhow::Result<Trio> {
        Self::start_with(bin, Vec::new(), env).await
    }

    /// Like [`start_of`](Self::start_of), with `extra` flags for every node.
    pub async fn start_with(
        bin: PathBuf,
        extra: Vec<String>,
        env: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
    ) -> anyhow::Result<Trio> {
        let mut trio = Trio {
            _one: ONE_AT_A_TIME.lock().await,
            dir: tempfile::tempdir()?,
            base: free_port_range(8)?,
            nodes: Vec::new(),
            bin,
            extra,
        };
        for i in 0..3 {
            let node = trio.launch(i, &env(i))?;
            trio.nodes.push(Some(node));
        }
        Ok(trio)
    }

    pub fn launch(&self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let peers = self.peers();
        let mut flags = vec!["--peers", peers.as_str()];
        flags.extend(self.extra.iter().map(String::as_str));
        ServerProcess::start_replica(
            &self.bin,
            &self.dir.path().join(Self::name(i)),
            &Self::name(i),
            self.port(i),
            &flags,
            env,
        )
    }

    pub fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.port(i))
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    pub async fn status(&self, i: usize) -> anyhow::Result<pb::ClusterStatus> {
        let mut client = ClusterServiceClient::new(crate::channel(&self.url(i)));
        Ok(client
            .status(pb::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// The node that leads and serves, once there is one.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for i in self.live() {
                if self.status(i).await.is_ok_and(|s| s.serving) {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no node of the cluster came to serve")
    }

    pub async fn client(&self, i: usize) -> anyhow::Result<BackendServiceClient<Channel>> {
        // As a frontend calls it.
        let channel = crate::channel_as(&self.url(i), crate::Kind::Frontend);
        Ok(BackendServiceClient::new(channel))
    }

    /// Runs `call` on the live nodes in turn until one succeeds; returns how many failed first.
    pub async fn until_ok<T, F, Fut>(&self, what: &str, call: F) -> anyhow::Result<(T, usize)>
    where
        F: Fn(BackendServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Each try is on the next live node; `failures` tries failed before this one.
        for failures in 0.. {
            let live = self.live();
            let i = live[failures % live.len()];
            if let Ok(client) = self.client(i).await {
                match call(client).await {
                    Ok(response) => return Ok((response.into_inner(), failures)),
                    Err(status) => eprintln!("{what} on a{}: {status}", i + 1),
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{what} never succeeded")
    }

    pub async fn put_queue(&self) -> anyhow::Result<()> {
        let config = pb::EngineQueueConfig {
            name: "q".into(),
            retention_seconds: 3600,
            ..Default::default()
        };
        self.put_queue_as(QUEUE, config).await
    }

    /// Creates queue `id` with `config` through whichever node takes it.
    pub async fn put_queue_as(&self, id: u64, config: pb::EngineQueueConfig) -> anyhow::Result<()> {
        self.until_ok("PutQueue", |mut c| {
            let config = config.clone();
            async move {
                c.put_queue(pb::PutQueueRequest {
                    queue_id: id,
                    config: Some(config),
                    first_sequence: 0,
                })
                .await
            }
        })
        .await?;
        Ok(())
    }

    /// Sends `bodies` as one batch until some node acknowledges it, every attempt with the same
    /// idempotency key, as a frontend does.
    pub async fn send(&self, bodies: &[String]) -> anyhow::Result<usize> {
        let key = bytes::Bytes::copy_from_slice(&IdempotencyKey::random().to_bytes());
        let messages: Vec<pb::NewMessage> = bodies
            .iter()
            .map(|b| pb::NewMessage {
                body: b.clone().into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let (_, failures) = self
            .until_ok("Send", |mut c| {
                let messages = messages.clone();
                let idempotency_key = key.clone();
                async move {
                    c.send(pb::SendRequest {
                        queue_id: QUEUE,
                        messages,
                        idempotency_key,
                    })
                    .await
                }
            })
            .await?;
        Ok(failures)
    }

    /// Receives and deletes until the queue gives nothing three times running; returns how
    /// often each body came.
    pub async fn drain(&self) -> anyhow::Result<HashMap<String, u32>> {
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut empty = 0;
        while empty < 3 {
            let (received, _) = self
                .until_ok("Receive", |mut c| async move {
                    c.receive(pb::ReceiveRequest {
                        queue_id: QUEUE,
                        max_messages: 10,
                        visibility_ms: 30_000,
                        wait_ms: 200,
                    })
                    .await
                })
                .await?;
            if received.messages.is_empty() {
                empty += 1;
                continue;
            }
            empty = 0;
            let handles: Vec<String> = received
                .messages
                .iter()
                .map(|m| m.receipt_handle.clone())
                .collect();
            for m in received.messages {
                *seen
                    .entry(String::from_utf8_lossy(&m.body).into_owned())
                    .or_default() += 1;
            }
            self.until_ok("Delete", |mut c| {
                let handles = handles.clone();
                async move {
                    c.delete(pb::DeleteRequest {
                        queue_id: QUEUE,
                        receipt_handles: handles,
                    })
                    .await
                }
            })
            .await?;
        }
        Ok(seen)
    }
}

pub fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

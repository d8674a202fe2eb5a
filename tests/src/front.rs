//! Helpers for the tests of the frontend as the front door (rate limits, bulkheads, caches):
//! requests named by caller, batches, refusals, and a small cluster with two frontends.

use std::time::{Duration, Instant};

use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use tonic::Status;

use crate::{EtcdProcess, ServerProcess};

/// `message` as sent by the caller with client id `caller`.
pub fn as_caller<T>(caller: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("sluice-client-id", caller.parse().expect("valid id"));
    request
}

/// Sends a batch of `n` messages as `caller`; the number stored, or the refusal.
pub async fn send_batch(
    client: &mut QueueClient,
    queue: &str,
    caller: &str,
    n: usize,
) -> Result<u64, Status> {
    let entries = (0..n)
        .map(|i| pb::SendMessageBatchEntry {
            id: i.to_string(),
            body: format!("m{i}").into(),
            ..Default::default()
        })
        .collect();
    let response = client
        .send_message_batch(as_caller(
            caller,
            pb::SendMessageBatchRequest {
                queue: queue.into(),
                entries,
            },
        ))
        .await?
        .into_inner();
    assert!(response.failed.is_empty(), "{:?}", response.failed);
    Ok(response.successful.len() as u64)
}

/// What a refusal asks the caller to wait.
pub fn retry_after(status: &Status) -> Duration {
    let millis = status
        .metadata()
        .get("retry-after-ms")
        .unwrap_or_else(|| panic!("no retry-after-ms in {status:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    Duration::from_millis(millis)
}

/// `sluice standalone` in `dir` with the config file `toml`.
pub fn standalone_with_config(dir: &tempfile::TempDir, toml: &str) -> ServerProcess {
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    ServerProcess::start_with(&dir.path().join("data"), |command| {
        command.arg("--config").arg(&config);
    })
    .unwrap()
}

pub async fn create_queue(client: &mut QueueClient, name: &str) {
    create_queue_with(client, name, pb::QueueAttributes::default()).await
}

/// Creates queue `name` with `attributes`, failing the test with the status if refused.
pub async fn create_queue_with(
    client: &mut QueueClient,
    name: &str,
    attributes: pb::QueueAttributes,
) {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            attributes: Some(attributes),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("cannot create queue {name}: {status}"));
}

/// etcd, a backend node, a metadata node, a manager and two frontends.
pub struct TwoFrontends {
    pub frontends: Vec<ServerProcess>,
    _manager: ServerProcess,
    pub metadata: ServerProcess,
    _backend: ServerProcess,
    _etcd: EtcdProcess,
    _dir: tempfile::TempDir,
}

impl TwoFrontends {
    pub fn start() -> TwoFrontends {
        let etcd = EtcdProcess::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backend =
            ServerProcess::start_backend(&dir.path().join("a1"), &etcd.endpoint, "a", "a1")
                .unwrap();
        let metadata = ServerProcess::start_metadata(&etcd.endpoint, "m1").unwrap();
        let manager = ServerProcess::start_manager(&etcd.endpoint, &[]).unwrap();
        let urls = [metadata.endpoint()];
        let frontends = (0..2)
            .map(|_| ServerProcess::start_frontend(&urls, 500).unwrap())
            .collect();
        TwoFrontends {
            frontends,
            _manager: manager,
            metadata,
            _backend: backend,
            _etcd: etcd,
            _dir: dir,
        }
    }

    /// Waits until every frontend counts them all, so each admits its share.
    pub async fn registered(&self) {
        crate::wait_for(
            "both frontends to count two",
            Duration::from_secs(30),
            || {
                Ok(self.frontends.iter().all(|f| {
                    f.metric("sluice_frontend_registered_frontends")
                        .is_ok_and(|n| n == 2.0)
                }))
            },
        )
        .await
        .unwrap();
    }
}

/// Sends batches of ten through `client` until one is refused; the refusal.
pub async fn until_refused(client: &mut QueueClient, queue: &str) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Err(status) = send_batch(client, queue, "app", 10).await {
            return status;
        }
        assert!(Instant::now() < deadline, "never refused");
    }
}

/// Percentile `p` (0 to 100) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub async fn send_one(client: &mut QueueClient, queue: &str, body: &str) -> Result<(), Status> {
    client
        .send_message(pb::SendMessageRequest {
            queue: queue.into(),
            body: body.to_owned().into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// A Consume stream's requests, its start for `queue` already sent: keep the sender to keep the
/// stream open, pass the stream to `consume`.
pub fn consume_start(
    queue: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<pb::ConsumeRequest>,
    tokio_stream::wrappers::UnboundedReceiverStream<pb::ConsumeRequest>,
) {
    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
    requests
        .send(pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
                queue: queue.into(),
                ..Default::default()
            })),
        })
        .expect("the receiver is right here");
    (
        requests,
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
    )
}

/// Delete-batch entries for `messages`, numbered from 0.
pub fn delete_entries(messages: &[pb::Message]) -> Vec<pb::DeleteMessageBatchEntry> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| pb::DeleteMessageBatchEntry {
            id: i.to_string(),
            receipt_handle: m.receipt_handle.clone(),
        })
        .collect()
}

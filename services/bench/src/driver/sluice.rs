//! Sluice over its public gRPC API, standalone or through a cluster's frontends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sluice_client::retry_throttled;
use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::Streaming;

use super::{pick, Consumer, Driver, Producer};

/// Messages a consumer holds received and unacknowledged, the same window as the RabbitMQ
/// driver's prefetch.
const PREFETCH: u32 = 200;

/// How long `receive` waits for a push before it returns empty-handed.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// Connections the bench opens to Sluice at most; producers and consumers beyond this share
/// them (gRPC multiplexes their calls). A client per connection would take 20,000 connections,
/// and twice as many descriptors on one machine, for 10,000 queues. Workloads with fewer clients
/// (all of (a) to (e)) keep one connection each.
const MAX_CONNECTIONS: usize = 256;

/// Queues created or deleted at once when a run sets up or cleans up.
const ADMIN_CONCURRENCY: usize = 32;

pub struct SluiceDriver {
    endpoints: Vec<String>,
    replication: pb::Replication,
    /// FIFO message groups per queue; 0 for standard queues.
    groups: usize,
    /// The caller every request names (`sluice-client-id`), for rate limits per caller.
    client_id: Option<MetadataValue<Ascii>>,
    /// Sends the server refused for a limit, each tried again after its retry-after.
    throttled: Arc<AtomicU64>,
    /// The queues' `server_side_encryption`; `None`: the server's default.
    encrypt: Option<bool>,
    /// The connections opened so far, by slot; see [`MAX_CONNECTIONS`].
    connections: parking_lot::Mutex<HashMap<usize, QueueClient>>,
    /// The slot the next client takes.
    next_slot: AtomicUsize,
}

impl SluiceDriver {
    pub fn new(endpoints: Vec<String>, replication: pb::Replication, groups: usize) -> Self {
        SluiceDriver {
            endpoints,
            replication,
            groups,
            client_id: None,
            throttled: Arc::default(),
            encrypt: None,
            connections: parking_lot::Mutex::default(),
            next_slot: AtomicUsize::new(0),
        }
    }

    /// Creates the queues with `server_side_encryption` set to `encrypt`.
    pub fn with_encryption(mut self, encrypt: Option<bool>) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Every request names caller `id`.
    pub fn with_client_id(mut self, id: &str) -> anyhow::Result<Self> {
        self.client_id = Some(
            id.parse()
                .with_context(|| format!("client id {id:?} is not valid request metadata"))?,
        );
        Ok(self)
    }

    /// How many sends the server has refused for a limit so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// A client on the next connection slot: a connection of its own for the first
    /// [`MAX_CONNECTIONS`] clients, a shared one after them. Slots take the endpoints in turn.
    async fn client(&self) -> anyhow::Result<QueueClient> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % MAX_CONNECTIONS;
        if let Some(client) = self.connections.lock().get(&slot) {
            return Ok(client.clone());
        }
        let client = connect(pick(&self.endpoints, slot)).await?;
        self.connections.lock().insert(slot, client.clone());
        Ok(client)
    }

    fn create_request(&self, name: String) -> pb::CreateQueueRequest {
        pb::CreateQueueRequest {
            name,
            attributes: Some(pb::QueueAttributes {
                fifo: self.groups > 0,
                replication: self.replication as i32,
                server_side_encryption: self.encrypt,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// FIFO queue names must end in `.fifo`.
    fn queue_name(&self, queue: &str) -> String {
        if self.groups > 0 {
            format!("{queue}.fifo")
        } else {
            queue.to_owned()
        }
    }
}

async fn connect(endpoint: &str) -> anyhow::Result<QueueClient> {
    // Over the TLS the command line installed, if any.
    let channel = sluice_common::tls::channel(endpoint, None, |endpoint| endpoint)
        .with_context(|| format!("cannot reach Sluice at {endpoint}"))?;
    Ok(
        sluice_client::queue_client(channel, sluice_common::credentials::installed())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

async fn create_queue(
    mut admin: QueueClient,
    request: pb::CreateQueueRequest,
) -> anyhow::Result<()> {
    let name = request.name.clone();
    match admin.create_queue(request.clone()).await {
        Ok(_) => Ok(()),
        // A queue left by an earlier run may have other attributes: start afresh.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            delete_queue(admin.clone(), name.clone())
                .await
                .with_context(|| format!("cannot replace the old queue {name}"))?;
            admin
                .create_queue(request)
                .await
                .with_context(|| format!("cannot create queue {name}"))?;
            Ok(())
        }
        Err(status) => anyhow::bail!("cannot create queue {name}: {}", status.message()),
    }
}

async fn delete_queue(mut admin: QueueClient, name: String) -> anyhow::Result<()> {
    admin
        .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
        .await
        .with_context(|| format!("cannot delete queue {name}"))?;
    Ok(())
}

#[async_trait]
impl Driver for SluiceDriver {
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let admin = self.client().await?;
        let requests: Vec<_> = queues
            .iter()
            .map(|queue| self.create_request(self.queue_name(queue)))
            .collect();
        futures::stream::iter(requests)
            .map(|request| create_queue(admin.clone(), request))
            .buffer_unordered(ADMIN_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let admin = self.client().await?;
        let names: Vec<_> = queues.iter().map(|queue| self.queue_name(queue)).collect();
        futures::stream::iter(names)
            .map(|name| delete_queue(admin.clone(), name))
            .buffer_unordered(ADMIN_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>> {
        Ok(Arc::new(SluiceProducer {
            client: self.client().await?,
            queue: self.queue_name(queue),
            index,
            groups: self.groups,
            sent: AtomicU64::new(0),
            client_id: self.client_id.clone(),
            throttled: self.throttled.clone(),
        }))
    }

    async fn consumer(&self, queue: &str, _index: usize) -> anyhow::Result<Box<dyn Consumer>> {
        let mut consumer = SluiceConsumer {
            client: self.client().await?,
            client_id: self.client_id.clone(),
            queue: self.queue_name(queue),
            stream: None,
            receipts: Vec::new(),
        };
        // Opened now so that a queue that cannot be consumed fails the run at its start.
        consumer.open().await?;
        Ok(Box::new(consumer))
    }
}

struct SluiceProducer {
    client: QueueClient,
    queue: String,
    index: usize,
    groups: usize,
    /// Messages this producer sent, for unique FIFO deduplication ids.
    sent: AtomicU64,
    client_id: Option<MetadataValue<Ascii>>,
    throttled: Arc<AtomicU64>,
}

/// `message` as a request naming caller `client_id`, if set.
fn named<T>(client_id: &Option<MetadataValue<Ascii>>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(id) = client_id {
        request
            .metadata_mut()
            .insert(sluice_client::CLIENT_ID, id.clone());
    }
    request
}

impl SluiceProducer {
    /// Sends with `call`, trying again after each refusal for a limit, which it counts.
    async fn sent<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        retry_throttled(|| async {
            let result = call().await;
            if matches!(&result, Err(status) if status.code() == tonic::Code::ResourceExhausted) {
                self.throttled.fetch_add(1, Ordering::Relaxed);
            }
            result
        })
        .await
    }
}

impl SluiceProducer {
    /// The group and deduplication id of this producer's `n`th message; empty on a standard
    /// queue. Sends spread over the groups in turn.
    fn fifo_fields(&self, n: u64) -> (String, String) {
        if self.groups == 0 {
            return (String::new(), String::new());
        }
        let group = format!("g{}", (n as usize + self.index) % self.groups);
        (group, format!("p{}-{n}", self.index))
    }
}

#[async_trait]
impl Producer for SluiceProducer {
    async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let first = self.sent.fetch_add(bodies.len() as u64, Ordering::Relaxed);
        let client = &self.client;
        if bodies.len() == 1 {
            let (group_id, deduplication_id) = self.fifo_fields(first);
            let body = bodies.into_iter().next().expect("one body");
            let request = pb::SendMessageRequest {
                queue: self.queue.clone(),
                body,
                group_id,
                deduplication_id,
                ..Default::default()
            };
            self.sent(|| {
                let (mut client, request) =
                    (client.clone(), named(&self.client_id, request.clone()));
                async move { client.send_message(request).await }
            })
            .await?;
            return Ok(());
        }
        let entries = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let (group_id, deduplication_id) = self.fifo_fields(first + i as u64);
                pb::SendMessageBatchEntry {
                    id: i.to_string(),
                    body,
                    group_id,
                    deduplication_id,
                    ..Default::default()
                }
            })
            .collect();
        let request = pb::SendMessageBatchRequest {
            queue: self.queue.clone(),
            entries,
        };
        let response = self
            .sent(|| {
                let (mut client, request) =
                    (client.clone(), named(&self.client_id, request.clone()));
                async move { client.send_message_batch(request).await }
            })
            .await?
            .into_inner();
        if let Some(failed) = response.failed.first() {
            anyhow::bail!(
                "{} of the batch failed, e.g. {}: {}",
                response.failed.len(),
                failed.code,
                failed.message
            );
        }
        Ok(())
    }
}

/// Consumes over a `Consume` stream: the server pushes up to `PREFETCH` messages ahead and
/// acks go back on the same stream without a request each. A stream that fails (a leader
/// change, a server shutting down) is opened again on the next `receive`, as a client would;
/// what it delivered and was not acked goes back to the queue.
struct SluiceConsumer {
    client: QueueClient,
    client_id: Option<MetadataValue<Ascii>>,
    queue: String,
    stream: Option<ConsumeStream>,
    /// Receipts of what the last `receive` returned.
    receipts: Vec<String>,
}

struct ConsumeStream {
    /// The request side; dropping it closes the stream.
    acks: mpsc::UnboundedSender<pb::ConsumeRequest>,
    responses: Streaming<pb::ConsumeResponse>,
}

impl SluiceConsumer {
    async fn open(&mut self) -> anyhow::Result<&mut ConsumeStream> {
        if self.stream.is_none() {
            let (acks, requests) = mpsc::unbounded_channel();
            let start = pb::consume_request::Request::Start(pb::ConsumeStart {
                queue: self.queue.clone(),
                prefetch: PREFETCH,
                visibility_timeout_seconds: Some(60),
            });
            acks.send(pb::ConsumeRequest {
                request: Some(start),
            })
            .expect("the receiver is right here");
            let responses = self
                .client
                .consume(named(
                    &self.client_id,
                    UnboundedReceiverStream::new(requests),
                ))
                .await
                .context("cannot start consuming")?
                .into_inner();
            self.stream = Some(ConsumeStream { acks, responses });
        }
        Ok(self.stream.as_mut().expect("just opened"))
    }
}

/// Fails if an ack did not delete everything it named.
fn check_acked(acked: &pb::ConsumeAcked) -> anyhow::Result<()> {
    if let Some(failed) = acked.failed.first() {
        anyhow::bail!(
            "{} deletes failed, e.g. {}: {}",
            acked.failed.len(),
            failed.code,
            failed.message
        );
    }
    Ok(())
}

#[async_trait]
impl Consumer for SluiceConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let stream = self.open().await?;
        let result = next_batch(&mut stream.responses).await;
        if result.is_err() {
            // The next receive starts a new stream.
            self.stream = None;
        }
        let messages = result?;
        self.receipts = Vec::with_capacity(messages.len());
        Ok(messages
            .into_iter()
            .map(|m| {
                self.receipts.push(m.receipt_handle);
                m.body
            })
            .collect())
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        if self.receipts.is_empty() {
            return Ok(());
        }
        let receipt_handles = std::mem::take(&mut self.receipts);
        let ack = pb::consume_request::Request::Ack(pb::ConsumeAck { receipt_handles });
        let stream = self
            .stream
            .as_ref()
            .context("the consume stream is closed")?;
        stream
            .acks
            .send(pb::ConsumeRequest { request: Some(ack) })
            .map_err(|_| anyhow::anyhow!("the consume stream is closed"))
    }

    /// Closes the stream and waits for the answers to the acks still running. Messages pushed
    /// meanwhile go back to the queue when the stream ends.
    async fn finish(&mut self) -> anyhow::Result<()> {
        let Some(ConsumeStream {
            acks,
            mut responses,
        }) = self.stream.take()
        else {
            return Ok(());
        };
        drop(acks);
        while let Some(response) = responses.message().await? {
            if let Some(pb::consume_response::Response::Acked(acked)) = response.response {
                check_acked(&acked)?;
            }
        }
        Ok(())
    }
}

/// The next batch pushed on the stream, checking the ack answers that come before it; empty
/// if none comes within `RECEIVE_WAIT`.
async fn next_batch(
    responses: &mut Streaming<pb::ConsumeResponse>,
) -> anyhow::Result<Vec<pb::Message>> {
    loop {
        let Ok(next) = tokio::time::timeout(RECEIVE_WAIT, responses.message()).await else {
            return Ok(Vec::new());
        };
        let Some(response) = next? else {
            anyhow::bail!("the server ended the consume stream");
        };
        match response.response {
            Some(pb::consume_response::Response::Messages(batch)) => return Ok(batch.messages),
            Some(pb::consume_response::Response::Acked(acked)) => check_acked(&acked)?,
            None => anyhow::bail!("the server sent an empty consume response"),
        }
    }
}

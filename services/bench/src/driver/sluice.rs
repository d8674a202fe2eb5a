//! Sluice over its public gRPC API, standalone or through a cluster's frontends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use sluice_proto::v1 as pb;
use sluice_proto::v1::queue_service_client::QueueServiceClient;
use tonic::transport::Channel;

use super::{pick, Consumer, Driver, Producer};

/// Most messages one receive may return.
const RECEIVE_MAX: u32 = 10;

/// Receives a consumer keeps waiting at once: Sluice's counterpart of a prefetch window, as
/// RabbitMQ pushes up to its prefetch count and JetStream pulls whole batches. With four, a
/// consumer has up to 40 messages coming while it handles the last ones.
const RECEIVES_IN_FLIGHT: usize = 4;

/// Deletes a consumer leaves running while it receives more. AMQP and JetStream acks are
/// one-way messages that a consumer does not wait for; a Sluice delete answers once it is
/// durable, so a consumer overlaps a few instead of waiting for each.
const DELETES_IN_FLIGHT: usize = 4;

pub struct SluiceDriver {
    endpoints: Vec<String>,
    replication: pb::Replication,
    /// FIFO message groups per queue; 0 for standard queues.
    groups: usize,
}

impl SluiceDriver {
    pub fn new(endpoints: Vec<String>, replication: pb::Replication, groups: usize) -> Self {
        SluiceDriver {
            endpoints,
            replication,
            groups,
        }
    }

    async fn client(&self, index: usize) -> anyhow::Result<QueueServiceClient<Channel>> {
        connect(pick(&self.endpoints, index)).await
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

async fn connect(endpoint: &str) -> anyhow::Result<QueueServiceClient<Channel>> {
    let channel = Channel::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot reach Sluice at {endpoint}"))?;
    Ok(QueueServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

#[async_trait]
impl Driver for SluiceDriver {
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let mut admin = self.client(0).await?;
        for queue in queues {
            let name = self.queue_name(queue);
            let request = pb::CreateQueueRequest {
                name: name.clone(),
                attributes: Some(pb::QueueAttributes {
                    fifo: self.groups > 0,
                    replication: self.replication as i32,
                    ..Default::default()
                }),
                ..Default::default()
            };
            match admin.create_queue(request.clone()).await {
                Ok(_) => {}
                // A queue left by an earlier run may have other attributes: start afresh.
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    admin
                        .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                        .await
                        .with_context(|| format!("cannot delete the old queue {name}"))?;
                    admin
                        .create_queue(request)
                        .await
                        .with_context(|| format!("cannot create queue {name}"))?;
                }
                Err(status) => {
                    anyhow::bail!("cannot create queue {name}: {}", status.message())
                }
            }
        }
        Ok(())
    }

    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let mut admin = self.client(0).await?;
        for queue in queues {
            let name = self.queue_name(queue);
            admin
                .delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                .await
                .with_context(|| format!("cannot delete queue {name}"))?;
        }
        Ok(())
    }

    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>> {
        Ok(Arc::new(SluiceProducer {
            client: self.client(index).await?,
            queue: self.queue_name(queue),
            index,
            groups: self.groups,
            sent: AtomicU64::new(0),
        }))
    }

    async fn consumer(&self, queue: &str, index: usize) -> anyhow::Result<Box<dyn Consumer>> {
        Ok(Box::new(SluiceConsumer {
            client: self.client(index).await?,
            queue: self.queue_name(queue),
            receipts: Vec::new(),
            receives: FuturesUnordered::new(),
            deletes: FuturesUnordered::new(),
        }))
    }
}

struct SluiceProducer {
    client: QueueServiceClient<Channel>,
    queue: String,
    index: usize,
    groups: usize,
    /// Messages this producer sent, for unique FIFO deduplication ids.
    sent: AtomicU64,
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
        let mut client = self.client.clone();
        if bodies.len() == 1 {
            let (group_id, deduplication_id) = self.fifo_fields(first);
            let body = bodies.into_iter().next().expect("one body");
            client
                .send_message(pb::SendMessageRequest {
                    queue: self.queue.clone(),
                    body,
                    group_id,
                    deduplication_id,
                    ..Default::default()
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
        let response = client
            .send_message_batch(pb::SendMessageBatchRequest {
                queue: self.queue.clone(),
                entries,
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

type Call<T> = BoxFuture<'static, anyhow::Result<T>>;

struct SluiceConsumer {
    client: QueueServiceClient<Channel>,
    queue: String,
    /// Receipts of what the last `receive` returned.
    receipts: Vec<String>,
    receives: FuturesUnordered<Call<Vec<pb::Message>>>,
    deletes: FuturesUnordered<Call<()>>,
}

impl SluiceConsumer {
    fn start_receive(&self) -> Call<Vec<pb::Message>> {
        let mut client = self.client.clone();
        let request = pb::ReceiveMessageRequest {
            queue: self.queue.clone(),
            max_messages: RECEIVE_MAX,
            wait_time_seconds: Some(1),
            visibility_timeout_seconds: Some(60),
        };
        Box::pin(async move { Ok(client.receive_message(request).await?.into_inner().messages) })
    }

    fn start_delete(&self, receipts: Vec<String>) -> Call<()> {
        let mut client = self.client.clone();
        let request = pb::DeleteMessageBatchRequest {
            queue: self.queue.clone(),
            entries: receipts
                .into_iter()
                .enumerate()
                .map(|(i, receipt_handle)| pb::DeleteMessageBatchEntry {
                    id: i.to_string(),
                    receipt_handle,
                })
                .collect(),
        };
        Box::pin(async move {
            let response = client.delete_message_batch(request).await?.into_inner();
            if let Some(failed) = response.failed.first() {
                anyhow::bail!(
                    "{} deletes failed, e.g. {}: {}",
                    response.failed.len(),
                    failed.code,
                    failed.message
                );
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Consumer for SluiceConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        while self.receives.len() < RECEIVES_IN_FLIGHT {
            let call = self.start_receive();
            self.receives.push(call);
        }
        let messages = self
            .receives
            .next()
            .await
            .expect("receives were just started")?;
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
        if !self.receipts.is_empty() {
            let receipts = std::mem::take(&mut self.receipts);
            let call = self.start_delete(receipts);
            self.deletes.push(call);
        }
        // Report a failed delete on the next ack rather than lose it.
        while self.deletes.len() >= DELETES_IN_FLIGHT {
            self.deletes.next().await.expect("deletes are running")?;
        }
        while let Some(Some(done)) = self.deletes.next().now_or_never() {
            done?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        while let Some(done) = self.deletes.next().await {
            done?;
        }
        Ok(())
    }
}

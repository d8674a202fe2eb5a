//! NATS JetStream (`async-nats`): one file-stored work-queue stream per queue, a shared durable
//! pull consumer, explicit acks. Whether an acknowledged publish was fsync'd is the server's
//! `sync_interval` setting (`always`, or by default every two minutes), so the scripts in
//! `deploy/bench/` run both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::ConsumerErrorKind;
use async_nats::jetstream::{self, consumer, stream, ErrorCode};
use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use super::{pick, Consumer, Driver, Producer};

/// Messages one pull request asks for, the same window as RabbitMQ's prefetch.
const PULL_BATCH: usize = 200;

/// The durable consumer every bench consumer of a queue shares, as consumers share a queue.
const CONSUMER: &str = "bench";

/// Creating a stream or a consumer on a new cluster waits up to 30 s, in all, for what the
/// servers have not agreed on yet.
fn new_cluster_backoff() -> ConstantBuilder {
    ConstantBuilder::default()
        .with_delay(Duration::from_millis(500))
        .with_max_times(60)
}

pub struct NatsDriver {
    urls: Vec<String>,
    replicas: usize,
}

impl NatsDriver {
    pub fn new(urls: Vec<String>, replicas: usize) -> Self {
        NatsDriver { urls, replicas }
    }

    async fn context(&self, index: usize) -> anyhow::Result<jetstream::Context> {
        let url = pick(&self.urls, index);
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("cannot reach NATS at {url}"))?;
        Ok(jetstream::new(client))
    }
}

fn subject(queue: &str) -> String {
    format!("bench.{queue}")
}

#[async_trait]
impl Driver for NatsDriver {
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        self.delete_queues(queues).await?;
        let js = self.context(0).await?;
        for queue in queues {
            let config = stream::Config {
                name: queue.clone(),
                subjects: vec![subject(queue)],
                storage: stream::StorageType::File,
                // Messages leave the stream once acknowledged, as from a queue.
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: self.replicas,
                ..Default::default()
            };
            // A new cluster elects its metadata leader before every server has told it what
            // JetStream resources it has; until then an R3 stream finds no peers to go on.
            let stream = (|| js.create_stream(config.clone()))
                .retry(new_cluster_backoff())
                .when(|err| {
                    matches!(err.kind(), CreateStreamErrorKind::JetStream(js)
                        if js.error_code() == ErrorCode::CLUSTER_NO_PEERS)
                })
                .await
                .with_context(|| format!("cannot create stream {queue}"))?;
            let config = consumer::pull::Config {
                durable_name: Some(CONSUMER.to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 100_000,
                ..Default::default()
            };
            // An R3 stream is created once its metadata is agreed, which can be before the
            // server asked next has started its copy.
            (|| stream.create_consumer(config.clone()))
                .retry(new_cluster_backoff())
                .when(|err| {
                    matches!(err.kind(), ConsumerErrorKind::JetStream(js)
                        if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
                })
                .await
                .with_context(|| format!("cannot create the consumer of {queue}"))?;
        }
        Ok(())
    }

    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let js = self.context(0).await?;
        for queue in queues {
            if js.get_stream(queue).await.is_ok() {
                js.delete_stream(queue)
                    .await
                    .with_context(|| format!("cannot delete stream {queue}"))?;
            }
        }
        Ok(())
    }

    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>> {
        Ok(Arc::new(NatsProducer {
            js: self.context(index).await?,
            subject: subject(queue),
        }))
    }

    async fn consumer(&self, queue: &str, index: usize) -> anyhow::Result<Box<dyn Consumer>> {
        let js = self.context(index).await?;
        let consumer: consumer::PullConsumer = js
            .get_stream(queue)
            .await?
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("no consumer on stream {queue}: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await?;
        Ok(Box::new(NatsConsumer {
            messages,
            pending: Vec::new(),
        }))
    }
}

struct NatsProducer {
    js: jetstream::Context,
    subject: String,
}

#[async_trait]
impl Producer for NatsProducer {
    async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        // JetStream has no batch publish: publish each, then wait for every acknowledgement.
        let mut acks = Vec::with_capacity(bodies.len());
        for body in bodies {
            acks.push(self.js.publish(self.subject.clone(), body).await?);
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}

struct NatsConsumer {
    messages: consumer::pull::Stream,
    pending: Vec<jetstream::Message>,
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let first = match tokio::time::timeout(Duration::from_secs(1), self.messages.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => anyhow::bail!("the server ended the pull subscription"),
            Ok(Some(message)) => message.map_err(|e| anyhow::anyhow!(e))?,
        };
        let mut bodies = vec![first.payload.clone()];
        self.pending.push(first);
        // Take what has already arrived, up to one pull batch, without waiting.
        while bodies.len() < PULL_BATCH {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => {
                    let message = message.map_err(|e| anyhow::anyhow!(e))?;
                    bodies.push(message.payload.clone());
                    self.pending.push(message);
                }
                _ => break,
            }
        }
        Ok(bodies)
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        // JetStream acknowledges one message at a time.
        for message in self.pending.drain(..) {
            message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(())
    }
}

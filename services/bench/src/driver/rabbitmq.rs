//! RabbitMQ over AMQP 0-9-1 (`lapin`): durable quorum or classic queues, persistent messages,
//! publisher confirms and manual acknowledgements.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{pick, Consumer, Driver, Producer};

/// Unacknowledged deliveries the broker may push to one consumer. Large enough that a consumer
/// never waits on the network between acks, small enough that one slow consumer does not hold
/// a large part of the queue (RabbitMQ's guidance is a few hundred at most).
pub const PREFETCH: u16 = 200;

/// Persistent (written to disk) in AMQP's `delivery_mode`.
const PERSISTENT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// Raft-replicated queues that fsync before confirming.
    Quorum,
    /// Single-node durable queues.
    Classic,
}

pub struct RabbitDriver {
    urls: Vec<String>,
    queue_type: QueueType,
}

impl RabbitDriver {
    pub fn new(urls: Vec<String>, queue_type: QueueType) -> Self {
        RabbitDriver { urls, queue_type }
    }

    async fn channel(&self, index: usize) -> anyhow::Result<Channel> {
        let url = pick(&self.urls, index);
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot reach RabbitMQ at {url}"))?;
        // The channel keeps the connection open; a dropped `Connection` handle does not close it.
        Ok(connection.create_channel().await?)
    }

    fn arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(kind)),
        );
        arguments
    }
}

#[async_trait]
impl Driver for RabbitDriver {
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        // A queue's type cannot change; delete what an earlier run left and declare afresh.
        self.delete_queues(queues).await?;
        let channel = self.channel(0).await?;
        for queue in queues {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    self.arguments(),
                )
                .await
                .with_context(|| format!("cannot declare queue {queue}"))?;
        }
        Ok(())
    }

    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let channel = self.channel(0).await?;
        for queue in queues {
            // Deleting a missing queue succeeds in AMQP 0-9-1.
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .with_context(|| format!("cannot delete queue {queue}"))?;
        }
        Ok(())
    }

    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>> {
        let channel = self.channel(index).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Arc::new(RabbitProducer {
            channel,
            queue: queue.to_owned(),
        }))
    }

    async fn consumer(&self, queue: &str, index: usize) -> anyhow::Result<Box<dyn Consumer>> {
        let channel = self.channel(index).await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let deliveries = channel
            .basic_consume(
                queue.into(),
                format!("bench-{index}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {queue}"))?;
        Ok(Box::new(RabbitConsumer {
            _channel: channel,
            deliveries,
            last: None,
        }))
    }
}

struct RabbitProducer {
    channel: Channel,
    queue: String,
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        // AMQP has no batch publish: publish each message, then wait for all their confirms.
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in &bodies {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(PERSISTENT),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await?;
            anyhow::ensure!(confirmation.is_ack(), "the broker refused a message");
        }
        Ok(())
    }
}

struct RabbitConsumer {
    /// Keeps the channel open while consuming.
    _channel: Channel,
    deliveries: lapin::Consumer,
    /// The last delivery received and not yet acknowledged.
    last: Option<lapin::message::Delivery>,
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let mut first =
            match tokio::time::timeout(Duration::from_secs(1), self.deliveries.next()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(None) => anyhow::bail!("the broker cancelled the consumer"),
                Ok(Some(delivery)) => delivery?,
            };
        let mut bodies = vec![Bytes::from(std::mem::take(&mut first.data))];
        let mut last = first;
        // Take what the broker has already pushed, up to the prefetch window, without waiting.
        while bodies.len() < PREFETCH as usize {
            match self.deliveries.next().now_or_never() {
                Some(Some(delivery)) => {
                    let mut delivery = delivery?;
                    bodies.push(Bytes::from(std::mem::take(&mut delivery.data)));
                    last = delivery;
                }
                _ => break,
            }
        }
        self.last = Some(last);
        Ok(bodies)
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        if let Some(last) = self.last.take() {
            // One ack for every delivery up to the last one received.
            last.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

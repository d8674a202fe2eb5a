//! Sluice over its SQS endpoint, through the AWS SDK for Rust (SQS's JSON protocol), so the
//! cost of the SQS path is measured against the gRPC one. Sends go in batches of ten (SQS's
//! limit), receives take up to ten a request with a short long poll, and deletes go in batches
//! in the background, as an SQS application would do them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::task::JoinHandle;

use super::{Consumer, Driver, Producer};
use crate::workload::TIMESTAMP_BYTES;

/// SQS's batch limit.
const BATCH: usize = 10;
/// A receive's long poll: a consumer returns empty-handed after about this long.
const RECEIVE_WAIT_SECONDS: i32 = 1;

pub struct SqsDriver {
    clients: Vec<Client>,
}

impl SqsDriver {
    /// A driver for the SQS endpoints `endpoints`, signing with `key` in `region`; HTTPS
    /// endpoints are trusted by the CA in `ca` (the system's roots without one).
    pub fn new(
        endpoints: &[String],
        key: (&str, &str),
        region: &str,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let http = http_client(ca)?;
        let clients = endpoints
            .iter()
            .map(|endpoint| {
                let config = aws_sdk_sqs::Config::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .endpoint_url(endpoint)
                    .region(Region::new(region.to_owned()))
                    .credentials_provider(Credentials::new(key.0, key.1, None, None, "bench"))
                    .http_client(http.clone())
                    // Throttled requests are tried again, as the SDK does by default.
                    .retry_config(
                        aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(10),
                    )
                    .build();
                Client::from_conf(config)
            })
            .collect();
        Ok(SqsDriver { clients })
    }

    fn client(&self, index: usize) -> &Client {
        &self.clients[index % self.clients.len()]
    }

    /// The queue's URL, as GetQueueUrl gives it.
    async fn url(&self, index: usize, queue: &str) -> anyhow::Result<String> {
        self.client(index)
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .with_context(|| format!("cannot find queue {queue}"))?
            .queue_url
            .context("no QueueUrl")
    }
}

fn http_client(ca: Option<PathBuf>) -> anyhow::Result<aws_sdk_sqs::config::SharedHttpClient> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let trust = match ca {
        Some(ca) => {
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            TrustStore::empty().with_pem_certificate(pem)
        }
        None => TrustStore::default(),
    };
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .context("TLS settings")?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// A bench body as SQS text: its send time (the first bytes) in hex, then the rest, which the
/// bench fills with ASCII.
fn to_text(body: &[u8]) -> anyhow::Result<String> {
    let (stamp, rest) = body.split_at(TIMESTAMP_BYTES.min(body.len()));
    let rest = std::str::from_utf8(rest).context("a bench body's filler is ASCII")?;
    let mut text = String::with_capacity(2 * stamp.len() + rest.len());
    for byte in stamp {
        text.push_str(&format!("{byte:02x}"));
    }
    text.push_str(rest);
    Ok(text)
}

fn from_text(text: &str) -> anyhow::Result<Bytes> {
    let hex = text
        .get(..2 * TIMESTAMP_BYTES)
        .context("a body shorter than its send time")?;
    let mut body = BytesMut::with_capacity(text.len());
    for i in 0..TIMESTAMP_BYTES {
        body.put_u8(u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("send time")?);
    }
    body.put_slice(&text.as_bytes()[2 * TIMESTAMP_BYTES..]);
    Ok(body.freeze())
}

#[async_trait]
impl Driver for SqsDriver {
    async fn create_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        let client = self.client(0);
        for queue in queues {
            let created = client.create_queue().queue_name(queue).send().await;
            if let Err(err) = created {
                // A queue left by an earlier run may have other attributes: start afresh.
                let exists = err
                    .as_service_error()
                    .is_some_and(|e| e.is_queue_name_exists());
                anyhow::ensure!(exists, "cannot create queue {queue}: {err:?}");
                let url = self.url(0, queue).await?;
                client.delete_queue().queue_url(url).send().await?;
                client
                    .create_queue()
                    .queue_name(queue)
                    .send()
                    .await
                    .with_context(|| format!("cannot create queue {queue}"))?;
            }
        }
        Ok(())
    }

    async fn delete_queues(&self, queues: &[String]) -> anyhow::Result<()> {
        for queue in queues {
            let url = self.url(0, queue).await?;
            self.client(0)
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .with_context(|| format!("cannot delete queue {queue}"))?;
        }
        Ok(())
    }

    async fn producer(&self, queue: &str, index: usize) -> anyhow::Result<Arc<dyn Producer>> {
        Ok(Arc::new(SqsProducer {
            client: self.client(index).clone(),
            url: self.url(index, queue).await?,
        }))
    }

    async fn consumer(&self, queue: &str, index: usize) -> anyhow::Result<Box<dyn Consumer>> {
        Ok(Box::new(SqsConsumer {
            client: self.client(index).clone(),
            url: self.url(index, queue).await?,
            handles: Vec::new(),
            deleting: Vec::new(),
        }))
    }
}

struct SqsProducer {
    client: Client,
    url: String,
}

#[async_trait]
impl Producer for SqsProducer {
    async fn send(&self, bodies: Vec<Bytes>) -> anyhow::Result<()> {
        let mut sends = Vec::new();
        for chunk in bodies.chunks(BATCH) {
            let mut request = self.client.send_message_batch().queue_url(&self.url);
            for (i, body) in chunk.iter().enumerate() {
                request = request.entries(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(to_text(body)?)
                        .build()?,
                );
            }
            sends.push(request.send());
        }
        for sent in futures::future::join_all(sends).await {
            let sent = sent.context("SendMessageBatch")?;
            if let Some(failed) = sent.failed().first() {
                anyhow::bail!(
                    "{} of a batch failed: {} {}",
                    sent.failed().len(),
                    failed.code(),
                    failed.message().unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

struct SqsConsumer {
    client: Client,
    url: String,
    /// Receipt handles of what the last receive returned.
    handles: Vec<String>,
    /// Deletes running in the background.
    deleting: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl SqsConsumer {
    /// Reports the first failure of the deletes that have finished.
    async fn check_deletes(&mut self) -> anyhow::Result<()> {
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deleting)
            .into_iter()
            .partition(JoinHandle::is_finished);
        self.deleting = running;
        for delete in done {
            delete.await??;
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn receive(&mut self) -> anyhow::Result<Vec<Bytes>> {
        self.check_deletes().await?;
        let received = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(BATCH as i32)
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .send()
            .await
            .context("ReceiveMessage")?;
        let mut bodies = Vec::with_capacity(received.messages().len());
        for message in received.messages() {
            bodies.push(from_text(message.body().unwrap_or_default())?);
            self.handles
                .push(message.receipt_handle().unwrap_or_default().to_owned());
        }
        Ok(bodies)
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        self.check_deletes().await?;
        let handles = std::mem::take(&mut self.handles);
        if handles.is_empty() {
            return Ok(());
        }
        let mut request = self.client.delete_message_batch().queue_url(&self.url);
        for (i, handle) in handles.into_iter().enumerate() {
            request = request.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()?,
            );
        }
        self.deleting.push(tokio::spawn(async move {
            let deleted = request.send().await.context("DeleteMessageBatch")?;
            if let Some(failed) = deleted.failed().first() {
                anyhow::bail!("a delete failed: {} {:?}", failed.code(), failed.message());
            }
            Ok(())
        }));
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        for delete in std::mem::take(&mut self.deleting) {
            delete.await??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_bodies_survive_the_trip_through_sqs_text() {
        let mut body = BytesMut::new();
        body.put_u64_le(0x0123_4567_89ab_cdef);
        body.put_slice(b"xxxx");
        let text = to_text(&body).unwrap();
        assert_eq!(text, "efcdab8967452301xxxx");
        assert_eq!(from_text(&text).unwrap(), body.freeze());
    }
}

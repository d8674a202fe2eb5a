//! `Consume`: receiving without asking each time. One task per stream keeps a long poll running
//! while the client has room in its prefetch window and deletes what the client acknowledges,
//! both through the same `QueueBackend` calls as `ReceiveMessage` and `DeleteMessageBatch`. A
//! consumer then costs the server a frame per batch instead of a request per batch, which is
//! what a busy queue spends most of its time on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use sluice_api::{Error, QueueBackend, QueueRecord, ReceivedMessage, Result};
use sluice_common::rpc;
use sluice_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::bulkhead::Pass;
use crate::convert::{batch_error, split_results, to_proto_message};
use crate::messages::readable;
use crate::metrics;
use crate::sse::{self, Encryption};
use crate::throttle::{Caller, Kind, RateLimiter};
use crate::validate;

/// Most messages one receive asks for: a window of a thousand fills in a few calls, each small
/// enough to go out as one response frame.
const MAX_PER_RECEIVE: usize = sluice_api::limits::MAX_FORWARDED_RECEIVE as usize;
/// How long one receive waits for messages when the queue is empty; the stream then asks again.
const LONG_POLL: Duration = Duration::from_secs(sluice_api::limits::MAX_WAIT_TIME_SECS as u64);
/// Responses queued for a client that reads slowly; the window bounds what can pile up anyway.
const RESPONSE_BUFFER: usize = 16;
/// How long a stream's own backend call waits out a busy cluster's refusals before the refusal
/// stands: as long as the client library waits for a throttled call.
const PRESSURE_WAIT: Duration = Duration::from_secs(30);

pub(crate) type Responses = mpsc::Receiver<Result<pb::ConsumeResponse, Status>>;

/// A started stream: its queue and window, and what it has delivered and not yet seen
/// acknowledged.
pub(crate) struct Consumer {
    backend: Arc<dyn QueueBackend>,
    /// A stream over its rate limits waits instead of being refused: it has no request to
    /// refuse.
    rates: Arc<RateLimiter>,
    caller: Caller,
    /// Opens sealed messages before they are pushed.
    encryption: Option<Arc<Encryption>>,
    /// The stream's place in its bulkhead, held until it ends.
    _pass: Pass,
    queue: Arc<QueueRecord>,
    prefetch: usize,
    visibility: Duration,
    /// Cancelled when the server shuts down: a stream has no end of its own to wait for.
    closing: CancellationToken,
    /// Receipt handles delivered on this stream and not yet acknowledged; they are made visible
    /// again when the stream ends, as AMQP returns a closed channel's unacknowledged messages.
    /// An acked handle stays here until its delete is answered, so acks waiting on a busy
    /// cluster hold their places in the window and the stream takes no more meanwhile.
    outstanding: HashSet<String>,
}

/// The outcome of one ack: the positions in the ack (as entry ids) of the handles that went to
/// the backend, the handles, its results for them, and the failures found before it.
struct AckDone {
    ids: Vec<String>,
    handles: Vec<String>,
    results: Result<Vec<Result<()>>>,
    failed: Vec<pb::BatchResultError>,
}

impl Consumer {
    /// Checks the stream's first request, which must be a `start`.
    pub(crate) fn new(
        backend: Arc<dyn QueueBackend>,
        (rates, caller, pass): (Arc<RateLimiter>, Caller, Pass),
        encryption: Option<Arc<Encryption>>,
        queue: QueueRecord,
        start: &pb::ConsumeStart,
        closing: CancellationToken,
    ) -> Result<Consumer> {
        let prefetch = validate::prefetch(start.prefetch)?;
        let visibility = validate::visibility_timeout(
            "start.visibility_timeout_seconds",
            start
                .visibility_timeout_seconds
                .unwrap_or(queue.attributes.visibility_timeout_seconds),
        )?;
        Ok(Consumer {
            backend,
            rates,
            caller,
            encryption,
            _pass: pass,
            queue: Arc::new(queue),
            prefetch,
            visibility,
            closing,
            outstanding: HashSet::new(),
        })
    }

    /// Serves the rest of the stream on its own task; the responses come out of what this
    /// returns.
    pub(crate) fn spawn(self, requests: Streaming<pb::ConsumeRequest>) -> Responses {
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let span = tracing::info_span!(target: rpc::TARGET, "consume", queue = %self.queue.name);
        tokio::spawn(
            async move {
                metrics::CONSUME_STREAMS.inc();
                let mut consumer = self;
                let result = consumer.serve(requests, &tx).await;
                consumer.release().await;
                metrics::CONSUME_STREAMS.dec();
                if let Err(err) = result {
                    if matches!(err, Error::Internal(_)) {
                        tracing::error!(target: rpc::TARGET, error = %err, "consume stream failed");
                    } else {
                        tracing::debug!(target: rpc::TARGET, error = %err, "consume stream ended");
                    }
                    // The client may be gone already; then there is no one left to tell.
                    let _ = tx.send(Err(err.into())).await;
                }
            }
            .instrument(span),
        );
        rx
    }

    fn receive(&self, max: usize) -> BoxFuture<'static, Result<Vec<ReceivedMessage>>> {
        let backend = self.backend.clone();
        let (rates, caller, queue) = (self.rates.clone(), self.caller.clone(), self.queue.clone());
        let encryption = self.encryption.clone();
        let visibility = self.visibility;
        async move {
            rates.wait(&caller, &queue, Kind::Receives, 1).await;
            let received =
                patiently(|| backend.receive(queue.id, max, visibility, LONG_POLL)).await?;
            let received = sse::opened(encryption.as_ref(), received).await?;
            // A message the caller may not read ends the stream, which would otherwise meet it
            // again at once.
            readable(
                backend.as_ref(),
                &caller.identity().principal,
                &queue,
                received,
            )
            .await
        }
        .boxed()
    }

    /// Starts deleting the ack's handles; their places in the window are freed when it is done.
    fn ack(&mut self, ack: pb::ConsumeAck) -> Result<BoxFuture<'static, AckDone>> {
        validate::ack_handles(ack.receipt_handles.len())?;
        let mut ids = Vec::with_capacity(ack.receipt_handles.len());
        let mut handles = Vec::with_capacity(ack.receipt_handles.len());
        let mut failed = Vec::new();
        for (position, handle) in ack.receipt_handles.into_iter().enumerate() {
            if let Err(err) = validate::receipt_handle("ack.receipt_handles", &handle) {
                failed.push(batch_error(position.to_string(), &err));
                continue;
            }
            ids.push(position.to_string());
            handles.push(handle);
        }
        let backend = self.backend.clone();
        let (rates, caller, queue) = (self.rates.clone(), self.caller.clone(), self.queue.clone());
        Ok(async move {
            let results = if handles.is_empty() {
                Ok(Vec::new())
            } else {
                rates
                    .wait(&caller, &queue, Kind::Deletes, handles.len())
                    .await;
                patiently(|| backend.delete(queue.id, handles.clone())).await
            };
            AckDone {
                ids,
                handles,
                results,
                failed,
            }
        }
        .boxed())
    }

    /// Runs until the client has closed its side and every ack is answered, the client is
    /// gone, or the backend fails. When the server shuts down it stops receiving, answers the
    /// acks under way and ends the stream UNAVAILABLE, so the client consumes elsewhere.
    async fn serve(
        &mut self,
        mut requests: Streaming<pb::ConsumeRequest>,
        tx: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    ) -> Result<()> {
        let mut receiving: Option<BoxFuture<'static, Result<Vec<ReceivedMessage>>>> = None;
        let mut acks = FuturesOrdered::new();
        let mut open = true;
        let mut closed_by_server = false;
        loop {
            let room = self.prefetch.saturating_sub(self.outstanding.len());
            if open && receiving.is_none() && room > 0 {
                receiving = Some(self.receive(room.min(MAX_PER_RECEIVE)));
            }
            if !open && acks.is_empty() {
                if closed_by_server {
                    return Err(Error::Unavailable(
                        "the server is shutting down; consume through another".into(),
                    ));
                }
                return Ok(());
            }
            tokio::select! {
                request = requests.message(), if open => match request {
                    Ok(Some(pb::ConsumeRequest { request: Some(pb::consume_request::Request::Ack(ack)) })) => {
                        acks.push_back(self.ack(ack)?);
                    }
                    Ok(Some(_)) => {
                        return Err(Error::invalid(
                            "request",
                            "after the first request, which is a start, every request must be an ack",
                        ));
                    }
                    Ok(None) => {
                        // The client sends no more acks: stop receiving, answer what is acked.
                        // A receive cut short here leaves what it took in flight until its
                        // visibility timeout, as an abandoned ReceiveMessage does.
                        open = false;
                        receiving = None;
                    }
                    // The client is gone; nothing can reach it any more.
                    Err(_) => return Ok(()),
                },
                received = async { receiving.as_mut().expect("guarded").await }, if receiving.is_some() => {
                    receiving = None;
                    let received = received?;
                    metrics::count_received(&self.queue.name, received.len());
                    if received.is_empty() {
                        continue;
                    }
                    self.outstanding
                        .extend(received.iter().map(|m| m.receipt_handle.clone()));
                    let messages = received.into_iter().map(to_proto_message).collect();
                    let response = pb::consume_response::Response::Messages(
                        pb::ReceiveMessageResponse { messages },
                    );
                    if !respond(tx, response).await {
                        return Ok(());
                    }
                },
                Some(done) = acks.next(), if !acks.is_empty() => {
                    let acked = self.acked(done)?;
                    if !respond(tx, pb::consume_response::Response::Acked(acked)).await {
                        return Ok(());
                    }
                },
                () = self.closing.cancelled(), if open => {
                    open = false;
                    closed_by_server = true;
                    receiving = None;
                }
                () = tx.closed() => return Ok(()),
            }
        }
    }

    /// Turns the backend's results for an ack into its response, and frees the places of its
    /// handles: deleted, or refused one by one (expired, or received by another since). If the
    /// whole call failed the stream ends, and its handles are released with the rest.
    fn acked(&mut self, done: AckDone) -> Result<pb::ConsumeAcked> {
        if done.results.is_ok() {
            for handle in &done.handles {
                self.outstanding.remove(handle);
            }
        }
        let mut failed = done.failed;
        let deleted = split_results(done.ids, done.results?, &mut failed).len();
        // Refused before the backend and refused by it, in the ack's order.
        failed.sort_by_key(|f| f.id.parse::<usize>().unwrap_or(usize::MAX));
        metrics::count_deleted(&self.queue.name, deleted);
        Ok(pb::ConsumeAcked {
            deleted: deleted as u32,
            failed,
        })
    }

    /// Makes what the client received and never acknowledged visible to other consumers now,
    /// rather than after its visibility timeout.
    async fn release(&mut self) {
        if self.outstanding.is_empty() {
            return;
        }
        let changes: Vec<(String, Duration)> = self
            .outstanding
            .drain()
            .map(|handle| (handle, Duration::ZERO))
            .collect();
        let count = changes.len();
        // A message already received again elsewhere refuses its old handle; that is fine, it
        // is someone else's now. A failed call leaves the rest to their visibility timeout.
        let backend = &self.backend;
        let released =
            patiently(|| backend.change_visibility(self.queue.id, changes.clone())).await;
        if let Err(err) = released {
            tracing::warn!(target: rpc::TARGET, error = %err, count, "could not release unacknowledged messages");
        }
    }
}

/// Runs a stream's own backend call again while a busy cluster refuses it (the frontend's
/// backend-pressure cap), after the pause the refusal asks for, with jitter, for up to
/// [`PRESSURE_WAIT`]. A unary call hands that refusal to its client, which retries; a stream
/// has no request to refuse, and an ack or a release refused at once would leave its messages
/// in flight until their visibility timeout, to be delivered again: more work for a cluster
/// that already has too much.
async fn patiently<T, F, Fut>(call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times()
        .with_total_delay(Some(PRESSURE_WAIT));
    call.retry(backoff)
        .when(|err| matches!(err, Error::Throttled { .. }))
        .adjust(|err, pause| match err {
            Error::Throttled { retry_after, .. } => pause.map(|pause| pause.max(*retry_after)),
            _ => pause,
        })
        .await
}

/// Sends one response; false once the client has gone.
async fn respond(
    tx: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    response: pb::consume_response::Response,
) -> bool {
    tx.send(Ok(pb::ConsumeResponse {
        response: Some(response),
    }))
    .await
    .is_ok()
}

//! Sends again, through the cluster's leader, the ASYNC sends in the log entries this node had
//! to drop (`replica::Dropped`): a deposed leader's acknowledged sends that no majority took.
//! Each goes through this node's own `BackendService`, which hands it to the leader, under the
//! idempotency key it was first sent with: a send the leader already holds (its frontend
//! retried it there) is not stored twice. docs/replication.md, "ASYNC and a deposed leader".

use std::time::Duration;

use sluice_api::wire;
use sluice_proto::v1::backend_service_server::BackendService;
use sluice_storage::{DroppedSend, Engine};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::metrics;
use crate::replica::Dropped;
use crate::service::BackendServiceImpl;

/// How long to wait before trying again while the cluster has no leader to take the sends.
const RETRY: Duration = Duration::from_millis(500);

/// What became of one dropped entry.
enum Outcome {
    /// Every send in it was stored, found stored, or refused for good.
    Done,
    /// The leader could not be reached: try the entry again later.
    Later(tonic::Status),
}

/// Messages sent again in one pass, by what became of them.
#[derive(Default)]
struct Tally {
    entries: u64,
    stored: u64,
    duplicates: u64,
    refused: u64,
}

/// Sends the dropped entries' sends again as they are kept, until `shutdown`. Entries kept
/// before a restart are sent at start.
pub(crate) async fn run(
    dropped: Dropped,
    engine: Engine,
    service: BackendServiceImpl,
    shutdown: CancellationToken,
) {
    loop {
        let pending = match resend_all(&dropped, &engine, &service).await {
            Ok(pending) => pending,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the dropped log entries");
                true
            }
        };
        let wait = async {
            if pending {
                tokio::time::sleep(RETRY).await
            } else {
                dropped.kept().await
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wait => {}
        }
    }
}

/// Goes through every entry kept; whether some are left to try again.
async fn resend_all(
    dropped: &Dropped,
    engine: &Engine,
    service: &BackendServiceImpl,
) -> anyhow::Result<bool> {
    let mut tally = Tally::default();
    let mut pending = false;
    for (key, batch) in dropped.entries()? {
        let sends = match engine.dropped_sends(&batch) {
            Ok(sends) => sends,
            Err(err) => {
                // Not a batch this engine wrote: nothing in it can be sent again.
                tracing::error!(error = %err, "a dropped log entry cannot be read; forgetting it");
                dropped.forget(&key)?;
                continue;
            }
        };
        match resend_entry(service, sends, &mut tally).await {
            Outcome::Done => {
                dropped.forget(&key)?;
                tally.entries += 1;
            }
            Outcome::Later(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "the leader cannot take dropped sends yet; trying again");
                pending = true;
                break;
            }
        }
    }
    if tally.entries > 0 {
        tracing::info!(
            entries = tally.entries,
            stored = tally.stored,
            duplicates = tally.duplicates,
            refused = tally.refused,
            "sent again the ASYNC sends of dropped log entries"
        );
    }
    Ok(pending)
}

async fn resend_entry(
    service: &BackendServiceImpl,
    sends: Vec<DroppedSend>,
    tally: &mut Tally,
) -> Outcome {
    for send in sends {
        let DroppedSend {
            queue,
            key,
            messages,
        } = send;
        let count = messages.len() as u64;
        let request = wire::send_request(queue, key, messages);
        match service.send(tonic::Request::new(request)).await {
            Ok(response) => {
                let sent = response.into_inner().messages;
                let duplicates = sent.iter().filter(|m| m.duplicate).count() as u64;
                let stored = sent.len() as u64 - duplicates;
                metrics::resent("stored", stored);
                metrics::resent("duplicate", duplicates);
                tally.stored += stored;
                tally.duplicates += duplicates;
            }
            Err(status) if transient(status.code()) => return Outcome::Later(status),
            Err(status) => {
                metrics::resent("refused", count);
                tally.refused += count;
                tracing::warn!(
                    queue_id = queue,
                    messages = count,
                    code = ?status.code(),
                    message = status.message(),
                    "the leader refused the ASYNC sends of a dropped log entry: those that were acknowledged are lost"
                );
            }
        }
    }
    Outcome::Done
}

/// Whether a refusal may pass: no leader yet, a lease running out, a full disk, backpressure.
/// The others (the queue deleted, moved to another cluster, the key reused) will not.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

//! What a client of the public API does when a frontend throttles it: waits as long as the
//! refusal's `retry-after-ms` says (or longer, as the backoff grows), with jitter so refused
//! clients do not come back together, and gives up after a bounded total.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tonic::{Code, Status};

/// The request metadata entry that names the caller, for rate limits per caller (until callers
/// authenticate).
pub const CLIENT_ID: &str = "sluice-client-id";

/// Pauses between attempts at least this long, at most the longer of `MAX_PAUSE` and what the
/// server asks for.
const MIN_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// Waiting in all at most: a caller held back longer than this sees the refusal.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Runs `call` until it is not refused with RESOURCE_EXHAUSTED, for up to [`MAX_WAIT`]; returns
/// its last answer. A throttled request did nothing, so sending it again is always safe.
pub async fn retry_throttled<T, F, Fut>(call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(MIN_PAUSE)
        .with_max_delay(MAX_PAUSE)
        .without_max_times()
        .with_total_delay(Some(MAX_WAIT));
    call.retry(backoff)
        .when(|status| status.code() == Code::ResourceExhausted)
        .adjust(|status, pause| {
            // The jittered backoff, but never sooner than the server said it would pass.
            let asked = sluice_api::error::retry_after(status)?;
            pause.map(|pause| pause.max(asked))
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sluice_api::Error;

    use super::*;

    #[tokio::test]
    async fn a_throttled_call_runs_again_no_sooner_than_the_server_asked() {
        let calls = AtomicU32::new(0);
        let start = std::time::Instant::now();
        let answer = retry_throttled(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(Status::from(Error::Throttled {
                    message: "over".into(),
                    retry_after: Duration::from_millis(60),
                }))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(answer, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(start.elapsed() >= Duration::from_millis(120));
    }

    #[tokio::test]
    async fn other_failures_come_back_to_the_caller_at_once() {
        let calls = AtomicU32::new(0);
        let err = retry_throttled(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::invalid_argument("bad"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

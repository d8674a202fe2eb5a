//! A noisy neighbour: another caller that sends to a queue of its own as fast as its producers
//! go while a workload runs beside it, so a run shows what the well-behaved caller keeps of its
//! throughput and latency when a neighbour asks for more than its share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::driver::Driver;
use crate::workload::{Noisy, Workload};

/// Pause after a failed send, as the runner's clients take.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

pub struct NoisyLoad {
    queue: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    started: Instant,
}

/// What the noisy caller got done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoisyOutcome {
    /// Messages stored per second.
    pub rate: f64,
    pub sent: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// Starts the noisy caller of `workload` through `driver` (which names it as a caller).
pub async fn start(
    workload: &Workload,
    noisy: &Noisy,
    driver: &dyn Driver,
) -> anyhow::Result<NoisyLoad> {
    let queue = format!("bench-{}-noisy", workload.name);
    driver.create_queues(std::slice::from_ref(&queue)).await?;
    let stop = CancellationToken::new();
    let (sent, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let body = Bytes::from(vec![b'n'; workload.message_size]);
    let mut tasks = Vec::new();
    for index in 0..noisy.producers {
        let producer = driver.producer(&queue, index).await?;
        let (stop, sent, errors, body) = (stop.clone(), sent.clone(), errors.clone(), body.clone());
        let (batch, window) = (workload.batch_size, noisy.max_in_flight);
        tasks.push(tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            while !stop.is_cancelled() {
                while in_flight.len() < window {
                    let (producer, bodies) = (producer.clone(), vec![body.clone(); batch]);
                    in_flight.push(async move { producer.send(bodies).await });
                }
                let done = tokio::select! {
                    Some(done) = in_flight.next() => done,
                    () = stop.cancelled() => break,
                };
                match done {
                    Ok(()) => {
                        sent.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
        }));
    }
    Ok(NoisyLoad {
        queue,
        stop,
        tasks,
        sent,
        errors,
        started: Instant::now(),
    })
}

impl NoisyLoad {
    /// Stops the noisy caller and removes its queue.
    pub async fn stop(self, driver: &dyn Driver) -> anyhow::Result<NoisyOutcome> {
        self.stop.cancel();
        let seconds = self.started.elapsed().as_secs_f64();
        for task in self.tasks {
            task.await.expect("noisy producer panicked");
        }
        driver
            .delete_queues(std::slice::from_ref(&self.queue))
            .await?;
        let sent = self.sent.load(Ordering::Relaxed);
        Ok(NoisyOutcome {
            rate: sent as f64 / seconds,
            sent,
            errors: self.errors.load(Ordering::Relaxed),
            seconds,
        })
    }
}

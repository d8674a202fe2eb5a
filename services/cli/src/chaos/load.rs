//! The chaos run's load: producers that send numbered bodies and keep sending one until it is
//! acknowledged, and consumers that receive, record every delivery with its times, and delete.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::QueueClient;
use sluice_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::report::{Delivery, Ledger};

/// Sends, one at a time, `p0-0`, `p0-1`, ... to a standard queue, or `f0-0`, `f0-1`, ... in
/// group `g0` of a FIFO queue (with the body as deduplication id, so a retried send is stored
/// once), at `rate` per second; a failed send is tried again (through the other frontend)
/// until it succeeds or the load stops. A FIFO group's next message is sent only once the one
/// before is acknowledged, so the group's order is the order of the numbers.
pub(super) async fn produce(
    p: usize,
    fifo: bool,
    frontends: Vec<QueueClient>,
    queue: String,
    rate: u32,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = p;
    for n in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let body = if fifo {
            format!("f{p}-{n}")
        } else {
            format!("p{p}-{n}")
        };
        ledger
            .lock()
            .expect("not poisoned")
            .sent
            .insert(body.clone());
        let mut failing_since: Option<Instant> = None;
        let first_try = Instant::now();
        loop {
            let request = pb::SendMessageRequest {
                queue: queue.clone(),
                body: body.clone().into(),
                group_id: if fifo { format!("g{p}") } else { String::new() },
                deduplication_id: if fifo { body.clone() } else { String::new() },
                ..Default::default()
            };
            let sent = frontends[turn % frontends.len()]
                .clone()
                .send_message(request)
                .await;
            let mut ledger = ledger.lock().expect("not poisoned");
            match sent {
                Ok(_) => {
                    ledger.acknowledged.insert(body);
                    ledger.send_times.push(first_try.elapsed());
                    ledger.send_ends.push(Instant::now());
                    if let Some(since) = failing_since {
                        ledger.failure_windows.push(since.elapsed());
                    }
                    break;
                }
                Err(_) => {
                    failing_since.get_or_insert_with(Instant::now);
                    turn += 1;
                }
            }
            drop(ledger);
            if stop.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Receives, records each delivery and deletes until told to stop.
pub(super) async fn consume(
    c: usize,
    fifo: bool,
    frontends: Vec<QueueClient>,
    queue: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let mut turn = c;
    while !stop.is_cancelled() {
        let mut client = frontends[turn % frontends.len()].clone();
        let request = pb::ReceiveMessageRequest {
            queue: queue.clone(),
            max_messages: 10,
            wait_time_seconds: Some(1),
            visibility_timeout_seconds: None,
        };
        let asked = Instant::now();
        let messages = match client.receive_message(request).await {
            Ok(response) => response.into_inner().messages,
            Err(_) => {
                turn += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let got = Instant::now();
        let bodies: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect();
        {
            let mut ledger = ledger.lock().expect("not poisoned");
            for (message, body) in messages.iter().zip(&bodies) {
                *ledger.received.entry(body.clone()).or_default() += 1;
                ledger.deliveries.push(Delivery {
                    message_id: message.message_id.clone(),
                    body: body.clone(),
                    fifo,
                    asked,
                    got,
                });
            }
        }
        let entries = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| pb::DeleteMessageBatchEntry {
                id: i.to_string(),
                receipt_handle: m.receipt_handle,
            })
            .collect();
        // The first attempt to delete each is what a FIFO group's next message must wait for.
        {
            let now = Instant::now();
            let mut ledger = ledger.lock().expect("not poisoned");
            for body in bodies {
                ledger.delete_tried.entry(body).or_insert(now);
            }
        }
        // A delete that fails leaves the message to come back: a duplicate, which the report
        // counts.
        let _ = client
            .delete_message_batch(pb::DeleteMessageBatchRequest {
                queue: queue.clone(),
                entries,
            })
            .await;
    }
}

//! Runs a workload against a driver: producers paced by the workload's rate, consumers as fast
//! as they go, a window of counts and latencies taken every second for the time series and
//! summed over the measured part of the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::driver::{Consumer, Driver, Producer};
use crate::stats::{
    elapsed_micros, Clock, Pace, Pacer, Percentiles, RateControl, Recorder, Sample, Window,
};
use crate::workload::{Workload, TIMESTAMP_BYTES};

/// How long a client waits after a failed call before the next one, so a server that is down
/// is not hammered in a tight loop.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Windows shorter than this are counted but neither charted nor used to set the rate.
const MIN_SAMPLE: Duration = Duration::from_millis(250);

/// The longest a producer sleeps before it asks again when its next send is due.
const RECHECK_DUE: Duration = Duration::from_millis(500);

/// How often the runner checks whether a phase is over.
const TICK: Duration = Duration::from_millis(20);

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// Which system and set-up, e.g. "Sluice standalone" or "RabbitMQ quorum, 3 nodes".
    pub system: String,
    pub workload: Workload,
    /// Measured seconds: the run after warm-up, or the drain of a backlog workload.
    pub seconds: f64,
    pub published: u64,
    pub consumed: u64,
    pub publish_rate: f64,
    pub consume_rate: f64,
    pub publish_errors: u64,
    pub consume_errors: u64,
    /// Messages published and not consumed when the run ended.
    pub backlog: i64,
    /// From each request's intended send time to its acknowledgement.
    pub publish_latency_ms: Percentiles,
    /// From each message's intended send time to its receipt by a consumer.
    pub end_to_end_latency_ms: Percentiles,
    /// The first failed call's error, if any failed.
    pub first_error: Option<String>,
    /// Backlog workloads: how fast the producers filled the queues.
    pub fill: Option<Phase>,
    /// Absent from `--json` output unless asked for.
    #[serde(default)]
    pub series: Vec<Sample>,
}

/// How to run, apart from what the workload says.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Give up on a backlog workload whose fill takes longer.
    pub fill_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Phase {
    pub messages: u64,
    pub seconds: f64,
    pub rate: f64,
}

/// What every producer and consumer task shares.
#[derive(Clone)]
struct Shared {
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
    clock: Clock,
}

/// A body of `size` bytes that starts with the intended send time.
fn body(size: usize, sent_micros: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(size);
    body.put_u64_le(sent_micros);
    body.resize(size, b'x');
    body.freeze()
}

/// The send time a body carries; `None` for a body that is not the bench's.
pub fn sent_micros(body: &[u8]) -> Option<u64> {
    let stamp: [u8; TIMESTAMP_BYTES] = body.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(stamp))
}

async fn produce(
    shared: Shared,
    producer: Arc<dyn Producer>,
    mut pacer: Pacer,
    stop: CancellationToken,
) {
    let work = &shared.workload;
    let mut in_flight = FuturesUnordered::new();
    'sending: loop {
        while in_flight.len() >= work.max_in_flight {
            in_flight.next().await;
        }
        // Wait for the send to fall due, taking answers meanwhile. An adaptive schedule moves
        // with the rate, so a long wait is cut into steps that each ask for it again.
        let due = loop {
            let now = Instant::now();
            let due = pacer.due(now);
            if now >= due {
                break due;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due.min(now + RECHECK_DUE).into()) => {}
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                () = stop.cancelled() => break 'sending,
            }
        };
        if stop.is_cancelled() {
            break;
        }
        pacer.take(due);
        let due_micros = shared.clock.micros(due);
        // The messages of one request share their send time, so they can share one buffer.
        let bodies = vec![body(work.message_size, due_micros); work.batch_size];
        let (producer, shared) = (producer.clone(), shared.clone());
        in_flight.push(async move {
            match producer.send(bodies).await {
                Ok(()) => {
                    let n = shared.workload.batch_size as u64;
                    shared
                        .recorder
                        .published(n, elapsed_micros(due_micros, shared.clock.now_micros()));
                }
                Err(error) => {
                    shared.recorder.publish_failed(&error);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        });
    }
    while in_flight.next().await.is_some() {}
}

async fn consume(shared: Shared, mut consumer: Box<dyn Consumer>, stop: CancellationToken) {
    loop {
        let received = tokio::select! {
            received = consumer.receive() => received,
            () = stop.cancelled() => break,
        };
        let bodies = match received {
            Ok(bodies) => bodies,
            Err(error) => {
                shared.recorder.consume_failed(&error);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if bodies.is_empty() {
            continue;
        }
        let now = shared.clock.now_micros();
        shared
            .recorder
            .consumed(now, bodies.iter().map(|b| sent_micros(b)));
        if let Err(error) = consumer.ack().await {
            shared.recorder.consume_failed(&error);
        }
    }
    if let Err(error) = consumer.finish().await {
        shared.recorder.consume_failed(&error);
    }
}

/// Tasks of one kind, stopped together.
struct Clients {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Clients {
    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            // A panicking client is a bench bug; let it show.
            task.await.expect("bench client task panicked");
        }
    }
}

async fn start_producers(
    shared: &Shared,
    driver: &dyn Driver,
    queues: &[String],
    pace: Pace,
) -> anyhow::Result<Clients> {
    let stop = CancellationToken::new();
    let mut producers = Vec::new();
    for (q, queue) in queues.iter().enumerate() {
        for p in 0..shared.workload.producers_per_queue {
            let index = q * shared.workload.producers_per_queue + p;
            producers.push(driver.producer(queue, index).await?);
        }
    }
    // Every producer's schedule starts from the same moment, after all have connected; an
    // adaptive one's first send falls at its own point of the first interval (its phase).
    let start = Instant::now();
    let count = producers.len();
    let tasks = producers
        .into_iter()
        .enumerate()
        .map(|(i, producer)| {
            let pacer = Pacer::new(start, pace.clone()).with_phase(i as f64 / count as f64);
            tokio::spawn(produce(shared.clone(), producer, pacer, stop.clone()))
        })
        .collect();
    Ok(Clients { stop, tasks })
}

async fn start_consumers(
    shared: &Shared,
    driver: &dyn Driver,
    queues: &[String],
) -> anyhow::Result<Clients> {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (q, queue) in queues.iter().enumerate() {
        for c in 0..shared.workload.consumers_per_queue {
            let index = q * shared.workload.consumers_per_queue + c;
            let consumer = driver.consumer(queue, index).await?;
            tasks.push(tokio::spawn(consume(
                shared.clone(),
                consumer,
                stop.clone(),
            )));
        }
    }
    Ok(Clients { stop, tasks })
}

/// The time series and the summed windows of a run.
struct Timeline {
    recorder: Arc<Recorder>,
    /// Where second 0 of the series is: the end of warm-up, or the start of a drain.
    zero: Instant,
    last: Instant,
    series: Vec<Sample>,
    measured: Window,
    progress: ProgressBar,
    /// Sets the producers' rate when the workload asks for the maximum.
    control: Option<Arc<RateControl>>,
}

impl Timeline {
    fn backlog(&self) -> i64 {
        let (published, consumed) = self.recorder.totals();
        published as i64 - consumed as i64
    }

    /// Ends the current window: adds it to the series, and to the measured sums if `measure`.
    fn close_window(&mut self, measure: bool) {
        let now = Instant::now();
        let window = self.recorder.take();
        let seconds = (now - self.last).as_secs_f64().max(1e-3);
        let second = if now >= self.zero {
            (now - self.zero).as_secs_f64()
        } else {
            -(self.zero - now).as_secs_f64()
        };
        let mut sample = Sample::of(second, seconds, &window, self.backlog());
        if let Some(control) = &self.control {
            sample.target_rate = Some(control.rate() as f64);
            // The sliver of a second left where warm-up ends says nothing about rates.
            if seconds >= MIN_SAMPLE.as_secs_f64() {
                control.adjust(sample.publish_rate, sample.consume_rate, sample.backlog);
            }
        }
        self.progress.set_message(format!(
            "pub {:>9.0}/s  cons {:>9.0}/s  backlog {:>9}  e2e p99 {:>8.2} ms",
            sample.publish_rate,
            sample.consume_rate,
            sample.backlog,
            sample.end_to_end_latency_ms.p99
        ));
        if seconds >= MIN_SAMPLE.as_secs_f64() {
            self.series.push(sample);
        }
        if measure {
            self.measured.add(&window);
        }
        self.last = now;
    }

    /// Ticks until `done`, closing a window every second.
    async fn until(&mut self, measure: bool, done: impl Fn(&Timeline) -> bool) {
        let mut next_window = self.last + Duration::from_secs(1);
        while !done(self) {
            tokio::time::sleep(TICK).await;
            if Instant::now() >= next_window {
                self.close_window(measure);
                next_window += Duration::from_secs(1);
            }
            self.progress.tick();
        }
    }
}

fn progress_bar(visible: bool, length: u64, unit: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// Runs `workload` against `driver` on fresh queues, and removes them afterwards.
pub async fn run(
    workload: &Workload,
    driver: &dyn Driver,
    system: &str,
    options: &Options,
) -> anyhow::Result<Report> {
    let queues = workload.queue_names("bench");
    driver.create_queues(&queues).await?;
    let result = measure(workload, driver, &queues, system, options).await;
    let cleanup = driver.delete_queues(&queues).await;
    let report = result?;
    cleanup?;
    Ok(report)
}

async fn measure(
    workload: &Workload,
    driver: &dyn Driver,
    queues: &[String],
    system: &str,
    options: &Options,
) -> anyhow::Result<Report> {
    let progress = options.progress;
    let shared = Shared {
        workload: Arc::new(workload.clone()),
        recorder: Arc::new(Recorder::default()),
        clock: Clock::now(),
    };
    let now = Instant::now();
    let mut timeline = Timeline {
        recorder: shared.recorder.clone(),
        zero: now + workload.warmup,
        last: now,
        series: Vec::new(),
        measured: Window::default(),
        progress: ProgressBar::hidden(),
        control: None,
    };

    if workload.backlog > 0 {
        let target = workload.backlog;
        timeline.progress = progress_bar(progress, target, "messages");
        timeline.progress.set_prefix(format!("{system}: fill"));
        let fill_started = Instant::now();
        let give_up = options.fill_timeout.map(|t| fill_started + t);
        let producers = start_producers(&shared, driver, queues, Pace::Unlimited).await?;
        timeline
            .until(false, |t| {
                let (published, _) = t.recorder.totals();
                t.progress.set_position(published.min(target));
                published >= target || give_up.is_some_and(|g| Instant::now() >= g)
            })
            .await;
        producers.stop().await;
        let (published, _) = shared.recorder.totals();
        let fill_seconds = fill_started.elapsed().as_secs_f64();
        anyhow::ensure!(
            published >= target,
            "filling {target} messages took longer than {} ({published} sent, {:.0} msgs/s)",
            humantime::format_duration(options.fill_timeout.unwrap_or_default()),
            published as f64 / fill_seconds
        );
        timeline.close_window(false);
        timeline.progress.finish_and_clear();

        timeline.progress = progress_bar(progress, published, "messages");
        timeline.progress.set_prefix(format!("{system}: drain"));
        let drain_started = Instant::now();
        timeline.zero = drain_started;
        timeline.last = drain_started;
        let consumers = start_consumers(&shared, driver, queues).await?;
        timeline
            .until(true, |t| {
                let (_, consumed) = t.recorder.totals();
                t.progress.set_position(consumed.min(published));
                consumed >= published
            })
            .await;
        let seconds = drain_started.elapsed().as_secs_f64();
        timeline.close_window(true);
        consumers.stop().await;
        timeline.progress.finish_and_clear();
        let fill = Phase {
            messages: published,
            seconds: fill_seconds,
            rate: published as f64 / fill_seconds,
        };
        return Ok(report(system, workload, seconds, timeline, Some(fill)));
    }

    let total = workload.warmup + workload.duration;
    timeline.progress = progress_bar(progress, total.as_secs(), "s");
    timeline.progress.set_prefix(system.to_owned());
    let pace = match workload.send_interval() {
        Some(interval) => Pace::Fixed(interval),
        None if !workload.adaptive() => Pace::Unlimited,
        None => {
            let control = Arc::new(RateControl::new(workload.producers(), workload.batch_size));
            timeline.control = Some(control.clone());
            Pace::Adaptive(control)
        }
    };
    let consumers = start_consumers(&shared, driver, queues).await?;
    let producers = start_producers(&shared, driver, queues, pace).await?;
    let started = Instant::now();
    timeline.zero = started + workload.warmup;
    timeline.last = started;
    let warmup_end = timeline.zero;
    timeline
        .until(false, |t| {
            t.progress.set_position(started.elapsed().as_secs());
            Instant::now() >= warmup_end
        })
        .await;
    // The warm-up's last partial second is not measured.
    timeline.close_window(false);
    let end = warmup_end + workload.duration;
    timeline
        .until(true, |t| {
            t.progress.set_position(started.elapsed().as_secs());
            Instant::now() >= end
        })
        .await;
    let seconds = warmup_end.elapsed().as_secs_f64();
    timeline.close_window(true);
    producers.stop().await;
    consumers.stop().await;
    timeline.progress.finish_and_clear();
    Ok(report(system, workload, seconds, timeline, None))
}

fn report(
    system: &str,
    workload: &Workload,
    seconds: f64,
    timeline: Timeline,
    fill: Option<Phase>,
) -> Report {
    let measured = &timeline.measured;
    Report {
        system: system.to_owned(),
        workload: workload.clone(),
        seconds,
        published: measured.published,
        consumed: measured.consumed,
        publish_rate: measured.published as f64 / seconds,
        consume_rate: measured.consumed as f64 / seconds,
        publish_errors: measured.publish_errors,
        consume_errors: measured.consume_errors,
        backlog: timeline.backlog(),
        publish_latency_ms: Percentiles::of(&measured.publish_latency),
        end_to_end_latency_ms: Percentiles::of(&measured.end_to_end_latency),
        first_error: timeline.recorder.first_error(),
        fill,
        series: timeline.series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_carries_its_send_time() {
        let b = body(1024, 1_700_000_000_123_456);
        assert_eq!(b.len(), 1024);
        assert_eq!(sent_micros(&b), Some(1_700_000_000_123_456));
        assert_eq!(sent_micros(b"short"), None);
    }
}

//! Measurement shared by every driver: when sends are due, latency histograms per second and
//! over the run, and the summaries the reports print.
//!
//! Latency is measured from the *intended* send time. At a fixed rate a producer's k-th request
//! is due at `start + k × interval` whether or not the previous one has been answered; a server
//! that stalls for a second therefore shows a second of latency on every request that was due
//! during the stall, not only on the one request that was waiting (coordinated omission, as the
//! OpenMessaging Benchmark and HdrHistogram's authors describe it). Messages carry the same
//! intended time, so end-to-end latency is corrected the same way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds up to ten minutes; longer ones saturate.
const MAX_MICROS: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

/// How fast producers send.
#[derive(Debug, Clone)]
pub enum Pace {
    /// One request every interval, on a fixed schedule.
    Fixed(Duration),
    /// As fast as answers come back (the fill of a backlog).
    Unlimited,
    /// At the rate a [`RateControl`] sets, which follows what consumers keep up with.
    Adaptive(Arc<RateControl>),
}

/// How far behind an adaptive schedule a producer may fall and still send what it owes: a few
/// of the timer's millisecond ticks.
const MAX_OWED: Duration = Duration::from_millis(5);

/// When a producer's next request is due.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    pace: Pace,
    sent: u32,
    last_due: Option<Instant>,
    /// Where in its first interval an adaptive producer's first request falls, 0 to 1.
    phase: f64,
}

impl Pacer {
    pub fn new(start: Instant, pace: Pace) -> Pacer {
        Pacer {
            start,
            pace,
            sent: 0,
            last_due: None,
            phase: 0.0,
        }
    }

    /// Spreads the first requests of many adaptive producers over one interval instead of
    /// sending them all at the start: with 10,000 producers an interval is seconds long, and
    /// requests that all fall in one second would read to the rate control as a burst followed
    /// by silence.
    pub fn with_phase(mut self, phase: f64) -> Pacer {
        self.phase = phase.clamp(0.0, 1.0);
        self
    }

    /// The intended time of the next request, taken at once: the tests' shorthand for
    /// [`Pacer::due`] and [`Pacer::take`], which producers call apart so a long wait can ask
    /// again. On a fixed schedule it does not move when the producer falls behind, so the lag
    /// is counted; unlimited, it is `now`.
    #[cfg(test)]
    fn next(&mut self, now: Instant) -> Instant {
        let due = self.due(now);
        self.take(due);
        due
    }

    /// When the next request is due, as things stand at `now`; an adaptive schedule moves
    /// with the rate, so a producer waiting long asks again (see [`Pacer::take`]).
    pub fn due(&self, now: Instant) -> Instant {
        match &self.pace {
            Pace::Unlimited => now,
            Pace::Fixed(interval) => self.start + *interval * self.sent,
            Pace::Adaptive(control) => {
                let interval = control.interval();
                let due = self
                    .last_due
                    .map_or(self.start + interval.mul_f64(self.phase), |last| {
                        last + interval
                    });
                // A little behind is the timer's doing: it wakes on millisecond ticks, later
                // than asked, and a producer sending more often than that catches up at once.
                // Further behind, the rate is above what the system takes and the controller
                // is about to lower it; owing those sends would only flood the system then.
                if due + interval.max(MAX_OWED) < now {
                    now
                } else {
                    due
                }
            }
        }
    }

    /// Records that the request due at `due` (from [`Pacer::due`]) is being sent.
    pub fn take(&mut self, due: Instant) {
        self.sent += 1;
        self.last_due = Some(due);
    }
}

/// Finds the highest rate the consumers keep up with, as the OpenMessaging Benchmark does for
/// a workload without a fixed rate: every second it raises the producers' rate while the
/// backlog stays small and they reach it, and lowers it below the consume rate once the
/// backlog grows. A system whose producers outrun its consumers therefore cannot report a
/// publish rate it does not deliver.
#[derive(Debug)]
pub struct RateControl {
    /// Messages per second over all producers.
    rate: AtomicU64,
    /// Seconds of the producers' own requests: the time between two requests of one producer
    /// is `batch / (rate / producers)`.
    producers: usize,
    batch: usize,
    /// Once it first had to slow down, it raises the rate in smaller steps.
    backed_off: AtomicBool,
    /// The backlog at the last adjustment, to tell a growing backlog from one draining.
    last_backlog: AtomicI64,
    /// The publish and consume rates of the last [`MAX_HORIZON`] seconds, newest last.
    history: Mutex<VecDeque<(f64, f64)>>,
}

/// Where the search starts.
const START_RATE: f64 = 5_000.0;
/// No slower than this, however much the system struggles.
const MIN_RATE: f64 = 100.0;
/// More than this many seconds of messages waiting means the consumers are falling behind.
const BACKLOG_SECONDS: f64 = 0.25;
/// The longest a producer waits between two requests, however low the rate falls: below it
/// a producer that waits out one interval sees none of what the rate control does meanwhile,
/// and with 10,000 producers at 100 msgs/s an interval would be a quarter of an hour.
const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// The most seconds of rates the control looks back over (see [`RateControl::adjust`]).
const MAX_HORIZON: usize = 10;

/// The lowest rate of `producers` sending batches of `batch`: [`MIN_RATE`], or more if that
/// would keep a producer waiting longer than [`MAX_INTERVAL`].
fn floor(producers: usize, batch: usize) -> f64 {
    MIN_RATE.max((producers * batch) as f64 / MAX_INTERVAL.as_secs_f64())
}

impl RateControl {
    pub fn new(producers: usize, batch: usize) -> RateControl {
        RateControl {
            rate: AtomicU64::new(START_RATE.max(floor(producers, batch)) as u64),
            producers,
            batch,
            backed_off: AtomicBool::new(false),
            last_backlog: AtomicI64::new(0),
            history: Mutex::new(VecDeque::with_capacity(MAX_HORIZON)),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    fn interval(&self) -> Duration {
        request_interval(self.rate() as f64, self.producers, self.batch)
    }

    /// Sets the next second's rate from the last seconds' publish and consume rates and the
    /// backlog now. It looks back over one interval between a producer's requests (at least a
    /// second, at most [`MAX_HORIZON`]): with many producers each sends only every few seconds,
    /// so one second can hold a burst or a silence, and a single silent second (every producer
    /// waiting out a refusal's backoff) read as "the producers cannot send" would halve the rate
    /// every second until it reached the floor.
    pub fn adjust(&self, published: f64, consumed: f64, backlog: i64) {
        let rate = self.rate() as f64;
        let horizon = (self.interval().as_secs_f64().ceil() as usize).clamp(1, MAX_HORIZON);
        let (published, consumed) = {
            let mut history = self.history.lock();
            if history.len() == MAX_HORIZON {
                history.pop_front();
            }
            history.push_back((published, consumed));
            let recent = history.iter().rev().take(horizon);
            let n = recent.len() as f64;
            let (p, c) = recent.fold((0.0, 0.0), |(p, c), (dp, dc)| (p + dp, c + dc));
            (p / n, c / n)
        };
        let previous = self.last_backlog.swap(backlog, Ordering::Relaxed);
        let behind = backlog as f64 > (rate * BACKLOG_SECONDS).max(1_000.0);
        let next = if behind && backlog > previous {
            // Just under what the consumers took, so the backlog drains.
            self.backed_off.store(true, Ordering::Relaxed);
            consumed.min(rate) * 0.95
        } else if behind {
            // Draining already: hold until it is gone.
            rate
        } else if published >= 0.9 * rate {
            // Large steps to find the range, then small ones to stay close below the top.
            let step = if self.backed_off.load(Ordering::Relaxed) {
                1.05
            } else {
                1.25
            };
            rate * step
        } else {
            // The producers cannot send that fast: publishing is the limit, so aim a little
            // above what they manage instead of letting the target run away.
            (published * 1.1).max(rate * 0.5)
        };
        self.rate.store(
            next.max(floor(self.producers, self.batch)) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Microseconds since the Unix epoch of an `Instant`, for the timestamp carried in a message.
/// Producers and consumers run in one process, so one anchor serves both.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    instant: Instant,
    epoch_micros: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let epoch_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_micros() as u64;
        Clock {
            instant: Instant::now(),
            epoch_micros,
        }
    }

    pub fn micros(&self, at: Instant) -> u64 {
        self.epoch_micros + at.saturating_duration_since(self.instant).as_micros() as u64
    }

    pub fn now_micros(&self) -> u64 {
        self.micros(Instant::now())
    }
}

/// Micros between two timestamps, at least 1 so every sample lands in the histogram.
pub fn elapsed_micros(from: u64, to: u64) -> u64 {
    to.saturating_sub(from).max(1)
}

/// Counts and latencies since the last `take`.
#[derive(Debug)]
pub struct Window {
    pub published: u64,
    pub consumed: u64,
    pub publish_errors: u64,
    pub consume_errors: u64,
    pub publish_latency: Histogram<u64>,
    pub end_to_end_latency: Histogram<u64>,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            published: 0,
            consumed: 0,
            publish_errors: 0,
            consume_errors: 0,
            publish_latency: histogram(),
            end_to_end_latency: histogram(),
        }
    }
}

impl Window {
    pub fn add(&mut self, other: &Window) {
        self.published += other.published;
        self.consumed += other.consumed;
        self.publish_errors += other.publish_errors;
        self.consume_errors += other.consume_errors;
        // Both histograms have the same bounds, so adding cannot fail.
        self.publish_latency
            .add(&other.publish_latency)
            .expect("same bounds");
        self.end_to_end_latency
            .add(&other.end_to_end_latency)
            .expect("same bounds");
    }
}

/// The time between two requests of one producer when `producers` share `rate` msgs/s and
/// each request carries `batch` messages.
pub fn request_interval(rate: f64, producers: usize, batch: usize) -> Duration {
    Duration::from_secs_f64(batch as f64 * producers as f64 / rate)
}

/// What producers and consumers record into; the runner takes a window every second.
#[derive(Default)]
pub struct Recorder {
    window: Mutex<Window>,
    /// Counts over the whole run, read without a lock to end phases.
    published_total: AtomicU64,
    consumed_total: AtomicU64,
    /// The first error of the run, so a report says why calls failed.
    first_error: Mutex<Option<String>>,
}

impl Recorder {
    /// A send request of `messages` answered `latency_micros` after it was due.
    pub fn published(&self, messages: u64, latency_micros: u64) {
        self.published_total.fetch_add(messages, Ordering::Relaxed);
        let mut w = self.window.lock();
        w.published += messages;
        w.publish_latency.saturating_record(latency_micros);
    }

    pub fn publish_failed(&self, error: &anyhow::Error) {
        self.window.lock().publish_errors += 1;
        self.keep_error(error);
    }

    fn keep_error(&self, error: &anyhow::Error) {
        self.first_error
            .lock()
            .get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().clone()
    }

    /// Messages received now, given the send timestamps they carried (`None` for a message
    /// without one, which counts but has no latency).
    pub fn consumed(&self, now_micros: u64, sent_micros: impl Iterator<Item = Option<u64>>) {
        let mut w = self.window.lock();
        let mut count = 0;
        for sent in sent_micros {
            count += 1;
            if let Some(sent) = sent {
                w.end_to_end_latency
                    .saturating_record(elapsed_micros(sent, now_micros));
            }
        }
        w.consumed += count;
        self.consumed_total.fetch_add(count, Ordering::Relaxed);
    }

    /// Messages published and consumed since the run began.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.published_total.load(Ordering::Relaxed),
            self.consumed_total.load(Ordering::Relaxed),
        )
    }

    pub fn consume_failed(&self, error: &anyhow::Error) {
        self.window.lock().consume_errors += 1;
        self.keep_error(error);
    }

    pub fn take(&self) -> Window {
        std::mem::take(&mut *self.window.lock())
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of a run, for the charts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since measuring started (negative during warm-up).
    pub second: f64,
    pub publish_rate: f64,
    pub consume_rate: f64,
    /// Messages sent and not yet consumed, over the whole run.
    pub backlog: i64,
    pub publish_latency_ms: Percentiles,
    pub end_to_end_latency_ms: Percentiles,
    /// The producers' target rate, while a [`RateControl`] sets it.
    #[serde(default)]
    pub target_rate: Option<f64>,
}

impl Sample {
    pub fn of(second: f64, seconds: f64, window: &Window, backlog: i64) -> Sample {
        Sample {
            target_rate: None,
            second,
            publish_rate: window.published as f64 / seconds,
            consume_rate: window.consumed as f64 / seconds,
            backlog,
            publish_latency_ms: Percentiles::of(&window.publish_latency),
            end_to_end_latency_ms: Percentiles::of(&window.end_to_end_latency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut h = histogram();
        // 1..=1000 ms: p50 is 500 ms, p99 990 ms, p99.9 999 ms, max 1000 ms.
        for ms in 1..=1000u64 {
            h.record(ms * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        // HdrHistogram keeps three significant digits.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert!(close(p.max, 1000.0), "{p:?}");
        assert_eq!(Percentiles::of(&histogram()), Percentiles::default());
    }

    /// A producer at 100 requests/s against a server that answers in 1 ms, except for one
    /// request that takes a full second. The producer waits for each answer (one in flight),
    /// as a blocked client would.
    fn stalled_run(pacer: &mut Pacer, start: Instant) -> (Histogram<u64>, Histogram<u64>) {
        let mut corrected = histogram();
        let mut naive = histogram();
        let mut free_at = start;
        for k in 0..1000 {
            let due = pacer.next(free_at);
            let sent = due.max(free_at);
            let service = if k == 200 {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(1)
            };
            let answered = sent + service;
            corrected
                .record((answered - due).as_micros() as u64)
                .unwrap();
            naive.record((answered - sent).as_micros() as u64).unwrap();
            free_at = answered;
        }
        (corrected, naive)
    }

    #[test]
    fn a_stall_shows_on_every_request_that_was_due_during_it() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, Pace::Fixed(Duration::from_millis(10)));
        let (corrected, naive) = stalled_run(&mut pacer, start);
        // Timed from when each request was actually sent, the stall is one sample in 1,000:
        // p99 looks like 1 ms and hides it.
        assert!(
            Percentiles::of(&naive).p99 < 2.0,
            "{:?}",
            Percentiles::of(&naive)
        );
        // Timed from when each was due, the ~100 requests due during the second-long stall
        // waited up to a second, and the producer needs another ~100 ms to catch up (each
        // answer takes 1 ms while a new one falls due every 10 ms): p99 is hundreds of
        // milliseconds, and about 110 requests were late by more than 10 ms.
        let p = Percentiles::of(&corrected);
        assert!(p.p99 > 800.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 2.0, "{p:?}");
        let late = corrected
            .iter_recorded()
            .filter(|v| v.value_iterated_to() > 10_000)
            .map(|v| v.count_at_value())
            .sum::<u64>();
        assert!((100..=120).contains(&late), "{late} late requests");
        // Once the backlog of due requests is worked off the producer is back on schedule.
        assert!(p.p50 < 2.0, "{p:?}");
    }

    #[test]
    fn at_maximum_rate_a_request_is_due_when_it_is_sent() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, Pace::Unlimited);
        let later = start + Duration::from_secs(3);
        assert_eq!(pacer.next(later), later);
        let mut fixed = Pacer::new(start, Pace::Fixed(Duration::from_millis(10)));
        assert_eq!(fixed.next(later), start);
        assert_eq!(fixed.next(later), start + Duration::from_millis(10));
    }

    /// A system whose producers could send 80,000 msgs/s but whose consumers take 30,000.
    fn simulate(control: &RateControl, seconds: usize) -> (Vec<f64>, i64) {
        let mut backlog = 0i64;
        let mut most = 0;
        let mut consumed_rates = Vec::new();
        for _ in 0..seconds {
            let published = (control.rate() as f64).min(80_000.0);
            let consumed = (backlog as f64 + published).min(30_000.0);
            backlog += (published - consumed) as i64;
            most = most.max(backlog);
            control.adjust(published, consumed, backlog);
            consumed_rates.push(consumed);
        }
        (consumed_rates, most)
    }

    #[test]
    fn the_rate_control_settles_where_consumers_keep_up() {
        let control = RateControl::new(4, 10);
        let (consumed, most_backlog) = simulate(&control, 60);
        // It climbs from 5,000 to the consumers' 30,000 within the first seconds and then
        // stays close to it, the backlog bounded instead of growing for a minute (at the full
        // 80,000 it would reach three million).
        let last: Vec<f64> = consumed[10..].to_vec();
        let mean = last.iter().sum::<f64>() / last.len() as f64;
        assert!(mean > 28_000.0, "{consumed:?}");
        assert!(most_backlog < 30_000, "backlog reached {most_backlog}");
    }

    #[test]
    fn the_rate_control_follows_a_publish_limit() {
        let control = RateControl::new(1, 1);
        // Producers reach only 2,000 msgs/s and consumers keep up: the target stays near.
        for _ in 0..20 {
            control.adjust(2_000.0, 2_000.0, 10);
        }
        assert!(control.rate() <= 2_500, "{}", control.rate());
        assert!(control.rate() >= 2_000, "{}", control.rate());
    }

    #[test]
    fn a_silent_second_does_not_halve_the_rate_of_many_producers() {
        // 10,000 producers of 10-message batches, a system that takes 20,000 msgs/s: each
        // producer sends every few seconds.
        let control = RateControl::new(10_000, 10);
        for _ in 0..30 {
            let published = (control.rate() as f64).min(20_000.0);
            control.adjust(published, published, 0);
        }
        let before = control.rate();
        assert!(before >= 18_000, "{before}");
        // One second in which every producer waited out a refusal: nothing was published. The
        // rate stays above three quarters of what the system takes (halving it would not).
        control.adjust(0.0, 0.0, 0);
        assert!(
            control.rate() >= 15_000,
            "{} after {before}",
            control.rate()
        );
        // However long the silence, each producer still sends every 10 s, so it sees the
        // system come back.
        for _ in 0..60 {
            control.adjust(0.0, 0.0, 0);
        }
        assert_eq!(control.rate(), 10_000);
        assert_eq!(control.interval(), MAX_INTERVAL);
    }

    #[test]
    fn an_adaptive_pacer_catches_up_a_tick_but_owes_nothing_once_far_behind() {
        let start = Instant::now();
        let control = Arc::new(RateControl::new(1, 1));
        // 5,000 msgs/s: one request every 200 µs.
        let mut pacer = Pacer::new(start, Pace::Adaptive(control));
        assert_eq!(pacer.next(start), start);
        assert_eq!(pacer.next(start), start + Duration::from_micros(200));
        // A timer tick late, it still owes the requests due meanwhile: they go at once.
        let tick_late = start + Duration::from_millis(1);
        assert_eq!(pacer.next(tick_late), start + Duration::from_micros(400));
        assert_eq!(pacer.next(tick_late), start + Duration::from_micros(600));
        // A second later the producer was stuck; the next request is due now, not 5,000
        // requests ago.
        let later = start + Duration::from_secs(1);
        assert_eq!(pacer.next(later), later);
    }

    #[test]
    fn adaptive_producers_spread_their_first_requests_and_follow_a_new_rate() {
        let start = Instant::now();
        // 10,000 producers of 10-message batches start at 10,000 msgs/s, their floor: a
        // request every 10 s each.
        let control = Arc::new(RateControl::new(10_000, 10));
        let last = Pacer::new(start, Pace::Adaptive(control.clone())).with_phase(0.75);
        assert_eq!(last.due(start), start + Duration::from_millis(7500));
        // The rate goes up while the producer waits: its request falls due sooner.
        control.rate.store(50_000, Ordering::Relaxed);
        assert_eq!(last.due(start), start + Duration::from_millis(1500));
        let mut pacer = last;
        let first = pacer.due(start);
        pacer.take(first);
        assert_eq!(pacer.due(start), first + Duration::from_secs(2));
    }

    #[test]
    fn the_recorder_hands_out_windows_and_starts_afresh() {
        let recorder = Recorder::default();
        recorder.published(10, 2_000);
        recorder.publish_failed(&anyhow::anyhow!("refused"));
        recorder.publish_failed(&anyhow::anyhow!("refused again"));
        recorder.consumed(5_000, [Some(1_000), Some(4_000), Some(5_000)].into_iter());
        let w = recorder.take();
        assert_eq!((w.published, w.consumed, w.publish_errors), (10, 3, 2));
        assert_eq!(recorder.first_error().as_deref(), Some("refused"));
        assert_eq!(w.publish_latency.len(), 1);
        // Latencies 4 ms, 1 ms, and a floor of 1 µs for a message consumed the same microsecond.
        let e2e = &w.end_to_end_latency;
        assert!(e2e.equivalent(e2e.max(), 4_000), "{}", e2e.max());
        assert_eq!(w.end_to_end_latency.min(), 1);
        let empty = recorder.take();
        assert_eq!((empty.published, empty.consumed), (0, 0));
        // Taking a window does not reset the run's totals.
        assert_eq!(recorder.totals(), (10, 3));

        let mut total = Window::default();
        total.add(&w);
        total.add(&w);
        assert_eq!((total.published, total.end_to_end_latency.len()), (20, 6));
        let s = Sample::of(1.0, 0.5, &w, 7);
        assert_eq!((s.publish_rate, s.consume_rate, s.backlog), (20.0, 6.0, 7));
    }
}

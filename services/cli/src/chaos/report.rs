//! The chaos run's ledger, what the producers and consumers saw, and the report made of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// What the producers and consumers saw.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) sent: HashSet<String>,
    pub(super) acknowledged: HashSet<String>,
    /// Deliveries of each body.
    pub(super) received: HashMap<String, u32>,
    /// How long each spell of failing sends lasted, from a producer's first failed attempt to
    /// its next success.
    pub(super) failure_windows: Vec<Duration>,
    /// How long each acknowledged send took, from its first attempt: a send that waited out a
    /// failover inside the frontend shows here rather than as a failure.
    pub(super) send_times: Vec<Duration>,
    /// When each of those was acknowledged, in the same order.
    pub(super) send_ends: Vec<Instant>,
    /// When each fault began, and its kind, in order.
    pub(super) faults: Vec<(Instant, &'static str)>,
    /// Every delivery a consumer got.
    pub(super) deliveries: Vec<Delivery>,
    /// When a consumer first set out to delete each body.
    pub(super) delete_tried: HashMap<String, Instant>,
}

/// One message handed to a consumer.
pub(super) struct Delivery {
    pub(super) message_id: String,
    pub(super) body: String,
    pub(super) fifo: bool,
    /// When the receive that returned it was sent, and when its answer came.
    pub(super) asked: Instant,
    pub(super) got: Instant,
}

/// What the deliveries show about FIFO order and receipts held at once.
#[derive(Default, Debug, PartialEq)]
pub(super) struct Deliveries {
    /// FIFO messages delivered before the message before them in their group was (tried to
    /// be) deleted, by group.
    pub(super) fifo_violations: BTreeMap<String, u32>,
    /// Messages of the standard queue and of the FIFO queue delivered again while the receipt
    /// of their earlier delivery was still valid.
    pub(super) double_deliveries: u64,
    pub(super) fifo_double_deliveries: u64,
    pub(super) examples: Vec<String>,
}

/// How far the servers' and the checker's clocks may drift apart over one visibility timeout.
const CLOCK_SLACK: Duration = Duration::from_millis(100);

impl Deliveries {
    /// Checks `ledger`'s deliveries; `visibility` is both queues' visibility timeout.
    ///
    /// A FIFO body `f<g>-<k>` (k > 0) delivered, its answer in hand, before any consumer set
    /// out to delete `f<g>-<k-1>` was delivered while an earlier message of its group was
    /// still in the queue: a violation. (A delete set out on and failed is not caught, which
    /// keeps the check free of false alarms.)
    ///
    /// Two deliveries of one message went to two consumers at once, each holding a valid
    /// receipt, when the server must have handed out the later one before the earlier one's
    /// visibility timeout ran out. The server hands a message out somewhere between the
    /// receive's sending and its answer, so two hand-outs lie at most as far apart as the
    /// later answer from the earlier sending, whichever of the two receives was sent first: a
    /// receive sent first can be answered last (held up by a fault), and its message can be
    /// the later hand-out.
    pub(super) fn check(ledger: &Ledger, visibility: Duration) -> Deliveries {
        let mut found = Deliveries::default();
        for delivery in ledger.deliveries.iter().filter(|d| d.fifo) {
            let Some((group, k)) = delivery
                .body
                .strip_prefix('f')
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(g, k)| Some((g, k.parse::<u64>().ok()?)))
            else {
                continue;
            };
            if k == 0 {
                continue;
            }
            let before = format!("f{group}-{}", k - 1);
            let deleted_first = ledger
                .delete_tried
                .get(&before)
                .is_some_and(|tried| *tried <= delivery.got);
            if !deleted_first {
                *found
                    .fifo_violations
                    .entry(format!("g{group}"))
                    .or_default() += 1;
                if found.examples.len() < 10 {
                    found.examples.push(format!(
                        "{} delivered before {before} was deleted",
                        delivery.body
                    ));
                }
            }
        }
        let mut by_message: HashMap<&str, Vec<&Delivery>> = HashMap::new();
        for delivery in &ledger.deliveries {
            by_message
                .entry(delivery.message_id.as_str())
                .or_default()
                .push(delivery);
        }
        for deliveries in by_message.values_mut() {
            deliveries.sort_by_key(|d| d.got);
            for pair in deliveries.windows(2) {
                let (first, again) = (pair[0], pair[1]);
                let farthest = again
                    .got
                    .saturating_duration_since(first.asked)
                    .max(first.got.saturating_duration_since(again.asked));
                if farthest + CLOCK_SLACK < visibility {
                    if again.fifo {
                        found.fifo_double_deliveries += 1;
                    } else {
                        found.double_deliveries += 1;
                    }
                    if found.examples.len() < 10 {
                        found.examples.push(format!(
                            "{} handed out twice at most {} ms apart, within its visibility",
                            again.body,
                            farthest.as_millis()
                        ));
                    }
                }
            }
        }
        found
    }
}

/// Sends that took this long or longer waited out a failover.
const STALL: Duration = Duration::from_millis(500);

#[derive(serde::Serialize)]
pub(super) struct Report {
    pub(super) replication: &'static str,
    pub(super) seconds: f64,
    pub(super) kills: HashMap<&'static str, u32>,
    pub(super) sent: usize,
    pub(super) acknowledged: usize,
    pub(super) received: usize,
    pub(super) lost: usize,
    pub(super) duplicated: u64,
    pub(super) unexpected: usize,
    pub(super) send_failure_windows: usize,
    pub(super) send_failure_p50_ms: u128,
    pub(super) send_failure_max_ms: u128,
    pub(super) send_p50_ms: u128,
    pub(super) send_p99_ms: u128,
    pub(super) send_max_ms: u128,
    /// Sends that took 500 ms or more (they waited out a failover), and the p50 of their times.
    pub(super) stalled_sends: usize,
    pub(super) stalled_send_p50_ms: u128,
    /// The longest send, by the kind of the last fault begun before it was acknowledged (or
    /// `none`): which fault a client waits out longest.
    pub(super) longest_send_ms_by_fault: BTreeMap<&'static str, u128>,
    /// The most log entries any leader held that a majority did not yet have (what a leader
    /// crash can lose of ASYNC sends), sampled every 200 ms.
    pub(super) max_replication_lag_entries: u64,
    /// Some lost messages, to look for in the logs.
    pub(super) lost_examples: Vec<String>,
    /// Acknowledged sends to the FIFO queue, and those of them lost (counted in `acknowledged`
    /// and `lost` too).
    pub(super) fifo_acknowledged: usize,
    pub(super) fifo_lost: usize,
    /// FIFO messages delivered before the one before them in their group was deleted, in all
    /// and by group.
    pub(super) fifo_order_violations: u32,
    pub(super) fifo_order_violations_by_group: BTreeMap<String, u32>,
    /// Messages delivered to a second consumer while the first one's receipt was still valid,
    /// in the standard queue and in the FIFO queue.
    pub(super) double_deliveries: u64,
    pub(super) fifo_double_deliveries: u64,
    /// Some of those, to look for in the logs.
    pub(super) delivery_examples: Vec<String>,
}

impl Report {
    pub(super) fn of(
        ledger: &Ledger,
        replication: &'static str,
        elapsed: Duration,
        kills: HashMap<&'static str, u32>,
        lag: u64,
        visibility: Duration,
    ) -> Report {
        let deliveries = Deliveries::check(ledger, visibility);
        let mut windows = ledger.failure_windows.clone();
        windows.sort();
        let mut times = ledger.send_times.clone();
        times.sort();
        let at = |q: f64| {
            times
                .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
                .map_or(0, |d| d.as_millis())
        };
        let stalled: Vec<Duration> = times.iter().copied().filter(|t| *t >= STALL).collect();
        let mut longest_send_ms_by_fault: BTreeMap<&'static str, u128> = BTreeMap::new();
        for (time, end) in ledger.send_times.iter().zip(&ledger.send_ends) {
            let during = ledger
                .faults
                .iter()
                .take_while(|(began, _)| began <= end)
                .last()
                .map_or("none", |(_, kind)| *kind);
            let longest = longest_send_ms_by_fault.entry(during).or_default();
            *longest = (*longest).max(time.as_millis());
        }
        let lost: Vec<&String> = ledger
            .acknowledged
            .iter()
            .filter(|body| !ledger.received.contains_key(*body))
            .collect();
        Report {
            replication,
            seconds: elapsed.as_secs_f64(),
            kills,
            sent: ledger.sent.len(),
            acknowledged: ledger.acknowledged.len(),
            received: ledger.received.len(),
            lost: lost.len(),
            duplicated: ledger
                .received
                .values()
                .map(|&n| u64::from(n.saturating_sub(1)))
                .sum(),
            unexpected: ledger
                .received
                .keys()
                .filter(|body| !ledger.sent.contains(*body))
                .count(),
            send_failure_windows: windows.len(),
            send_failure_p50_ms: windows.get(windows.len() / 2).map_or(0, |d| d.as_millis()),
            send_failure_max_ms: windows.last().map_or(0, |d| d.as_millis()),
            send_p50_ms: at(0.5),
            send_p99_ms: at(0.99),
            send_max_ms: times.last().map_or(0, |d| d.as_millis()),
            stalled_sends: stalled.len(),
            stalled_send_p50_ms: stalled.get(stalled.len() / 2).map_or(0, |d| d.as_millis()),
            longest_send_ms_by_fault,
            max_replication_lag_entries: lag,
            lost_examples: lost.iter().take(10).map(|s| s.to_string()).collect(),
            fifo_acknowledged: ledger
                .acknowledged
                .iter()
                .filter(|body| body.starts_with('f'))
                .count(),
            fifo_lost: lost.iter().filter(|body| body.starts_with('f')).count(),
            fifo_order_violations: deliveries.fifo_violations.values().sum(),
            fifo_order_violations_by_group: deliveries.fifo_violations,
            double_deliveries: deliveries.double_deliveries,
            fifo_double_deliveries: deliveries.fifo_double_deliveries,
            delivery_examples: deliveries.examples,
        }
    }
}

pub(super) fn print_report(r: &Report) {
    println!(
        "chaos report ({} replication, {:.0} s)",
        r.replication, r.seconds
    );
    let mut kills: Vec<_> = r.kills.iter().collect();
    kills.sort();
    for (kind, n) in kills {
        println!("  killed        {n} {kind}");
    }
    println!("  sent          {}", r.sent);
    println!("  acknowledged  {}", r.acknowledged);
    println!("  received      {}", r.received);
    println!(
        "  lost          {} ({} of the FIFO queue){}",
        r.lost,
        r.fifo_lost,
        if r.lost_examples.is_empty() {
            String::new()
        } else {
            format!(", e.g. {}", r.lost_examples.join(" "))
        }
    );
    println!("  duplicated    {}", r.duplicated);
    println!("  unexpected    {}", r.unexpected);
    println!(
        "  send failures {} windows, p50 {} ms, longest {} ms",
        r.send_failure_windows, r.send_failure_p50_ms, r.send_failure_max_ms
    );
    println!(
        "  send time     p50 {} ms, p99 {} ms, longest {} ms; {} took 500 ms or more (p50 {} ms)",
        r.send_p50_ms, r.send_p99_ms, r.send_max_ms, r.stalled_sends, r.stalled_send_p50_ms
    );
    let by_fault: Vec<String> = r
        .longest_send_ms_by_fault
        .iter()
        .map(|(kind, ms)| format!("{kind} {ms}"))
        .collect();
    println!(
        "  longest send (ms) by the fault before it: {}",
        by_fault.join(", ")
    );
    println!(
        "  max replication lag {} entries",
        r.max_replication_lag_entries
    );
    println!(
        "  FIFO          {} acknowledged, {} order violations {:?}",
        r.fifo_acknowledged, r.fifo_order_violations, r.fifo_order_violations_by_group
    );
    println!(
        "  delivered again within the visibility timeout: {} standard, {} FIFO",
        r.double_deliveries, r.fifo_double_deliveries
    );
    for example in &r.delivery_examples {
        println!("    {example}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(10);

    fn deliver(ledger: &mut Ledger, id: &str, body: &str, at: Instant) {
        ledger.deliveries.push(Delivery {
            message_id: id.into(),
            body: body.into(),
            fifo: body.starts_with('f'),
            asked: at,
            got: at + Duration::from_millis(5),
        });
    }

    #[test]
    fn a_fifo_message_delivered_after_the_one_before_was_deleted_is_in_order() {
        let t = Instant::now();
        let mut ledger = Ledger::default();
        deliver(&mut ledger, "m0", "f0-0", t);
        ledger
            .delete_tried
            .insert("f0-0".into(), t + Duration::from_millis(10));
        deliver(&mut ledger, "m1", "f0-1", t + Duration::from_millis(20));
        assert_eq!(
            Deliveries::check(&ledger, VISIBILITY),
            Deliveries::default()
        );
    }

    #[test]
    fn a_fifo_message_delivered_before_the_one_before_was_deleted_is_a_violation_of_its_group() {
        let t = Instant::now();
        let mut ledger = Ledger::default();
        deliver(&mut ledger, "m0", "f3-0", t);
        deliver(&mut ledger, "m1", "f3-1", t + Duration::from_millis(20));
        ledger
            .delete_tried
            .insert("f3-0".into(), t + Duration::from_millis(40));
        // Another group's first message is never a violation.
        deliver(&mut ledger, "m2", "f4-0", t + Duration::from_millis(20));
        let found = Deliveries::check(&ledger, VISIBILITY);
        assert_eq!(found.fifo_violations, BTreeMap::from([("g3".into(), 1)]));
        assert_eq!(found.examples, ["f3-1 delivered before f3-0 was deleted"]);
    }

    #[test]
    fn a_message_delivered_again_within_its_visibility_timeout_counts_as_a_double_delivery() {
        let t = Instant::now();
        let mut ledger = Ledger::default();
        // Standard: again after 3 s, within the 10 s; FIFO: again after 10.5 s, once due.
        deliver(&mut ledger, "s", "p0-0", t);
        deliver(&mut ledger, "s", "p0-0", t + Duration::from_secs(3));
        deliver(&mut ledger, "f", "f0-0", t);
        deliver(&mut ledger, "f", "f0-0", t + Duration::from_millis(10_500));
        let found = Deliveries::check(&ledger, VISIBILITY);
        assert_eq!(
            (found.double_deliveries, found.fifo_double_deliveries),
            (1, 0)
        );
        // The same body sent twice is two messages, not a delivery again.
        let mut ledger = Ledger::default();
        deliver(&mut ledger, "a", "p0-1", t);
        deliver(&mut ledger, "b", "p0-1", t + Duration::from_secs(1));
        assert_eq!(Deliveries::check(&ledger, VISIBILITY).double_deliveries, 0);
    }

    #[test]
    fn a_receive_sent_first_and_answered_last_may_have_got_the_later_hand_out() {
        let t = Instant::now();
        let mut ledger = Ledger::default();
        // Sent at t and held up by a fault for 12 s; meanwhile another consumer got the
        // message at 0.6 s, and it was due again at 10.6 s at the latest: the first receive's
        // answer may carry the hand-out after that.
        ledger.deliveries.push(Delivery {
            message_id: "f".into(),
            body: "f1-7".into(),
            fifo: true,
            asked: t,
            got: t + Duration::from_secs(12),
        });
        ledger.deliveries.push(Delivery {
            message_id: "f".into(),
            body: "f1-7".into(),
            fifo: true,
            asked: t + Duration::from_millis(500),
            got: t + Duration::from_millis(600),
        });
        assert_eq!(
            Deliveries::check(&ledger, VISIBILITY).fifo_double_deliveries,
            0
        );
        // Answered at 9 s, it was handed out within the other's visibility whatever the order.
        ledger.deliveries[0].got = t + Duration::from_secs(9);
        assert_eq!(
            Deliveries::check(&ledger, VISIBILITY).fifo_double_deliveries,
            1
        );
    }
}

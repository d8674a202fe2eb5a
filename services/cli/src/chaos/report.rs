//! The chaos run's ledger, what the producers and consumers saw, and the report made of it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
    /// The most log entries any leader held that a majority did not yet have (what a leader
    /// crash can lose of ASYNC sends), sampled every 200 ms.
    pub(super) max_replication_lag_entries: u64,
    /// Some lost messages, to look for in the logs.
    pub(super) lost_examples: Vec<String>,
}

impl Report {
    pub(super) fn of(
        ledger: &Ledger,
        replication: &'static str,
        elapsed: Duration,
        kills: HashMap<&'static str, u32>,
        lag: u64,
    ) -> Report {
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
            max_replication_lag_entries: lag,
            lost_examples: lost.iter().take(10).map(|s| s.to_string()).collect(),
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
    println!("  lost          {}", r.lost);
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
    println!(
        "  max replication lag {} entries",
        r.max_replication_lag_entries
    );
}

//! Markdown tables from a folder of run results, one table per workload.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use crate::runner::Report;

/// Every `*.json` result in `dir` and in its `run<N>` folders (the repeats `compare.sh`
/// makes), in path order.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let entries = |dir: &Path| -> anyhow::Result<Vec<std::path::PathBuf>> {
        std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .map(|e| Ok(e?.path()))
            .collect()
    };
    let mut paths = Vec::new();
    for path in entries(dir)? {
        let repeat = path.is_dir()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("run"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if repeat {
            paths.extend(entries(&path)?);
        } else {
            paths.push(path);
        }
    }
    paths.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read(path)?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a sluice-bench result", path.display()))
        })
        .collect()
}

fn by_workload(reports: &[Report]) -> BTreeMap<&str, Vec<&Report>> {
    let mut groups: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        groups.entry(&r.workload.name).or_default().push(r);
    }
    groups
}

/// The runs of each system, in the order the systems first appear.
fn by_system<'a>(runs: &[&'a Report]) -> Vec<(&'a str, Vec<&'a Report>)> {
    let mut systems: Vec<(&str, Vec<&Report>)> = Vec::new();
    for r in runs {
        match systems.iter_mut().find(|(name, _)| *name == r.system) {
            Some((_, group)) => group.push(r),
            None => systems.push((&r.system, vec![r])),
        }
    }
    systems
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One figure of a system's runs: their median, and with `range` and more than one run the
/// lowest and highest in parentheses.
fn figure(
    runs: &[&Report],
    value: impl Fn(&Report) -> f64,
    decimals: usize,
    range: bool,
) -> String {
    let mut values: Vec<f64> = runs.iter().map(|r| value(r)).collect();
    let mid = median(&mut values);
    let (low, high) = (values[0], values[values.len() - 1]);
    if range && values.len() > 1 {
        format!("{mid:.decimals$} ({low:.decimals$}–{high:.decimals$})")
    } else {
        format!("{mid:.decimals$}")
    }
}

/// One table per workload: rates, latency percentiles, errors. A system run more than once
/// (`compare.sh` repeats every run) shows the median of its runs, with the range of the
/// figures that compare systems.
pub fn markdown(reports: &[Report]) -> String {
    let mut out = String::new();
    for (name, runs) in by_workload(reports) {
        let w = &runs[0].workload;
        let _ = writeln!(out, "### {name}\n");
        if !w.description.is_empty() {
            let _ = writeln!(out, "{}\n", w.description);
        }
        let systems = by_system(&runs);
        if w.backlog > 0 {
            out.push_str(
                "| System | Fill msgs/s | Drain msgs/s | Drained | Drain / empty-queue rate | Errors |\n",
            );
            out.push_str("|---|---:|---:|---:|---:|---:|\n");
            for (system, runs) in &systems {
                let drain = median(&mut runs.iter().map(|r| r.consume_rate).collect::<Vec<_>>());
                let versus = empty_queue_rate(reports, runs[0])
                    .map(|rate| format!("{:.0}%", 100.0 * drain / rate))
                    .unwrap_or_else(|| "-".to_owned());
                let errors: u64 = runs
                    .iter()
                    .map(|r| r.publish_errors + r.consume_errors)
                    .sum();
                let _ = writeln!(
                    out,
                    "| {system} | {} | {} | {} in {} s | {versus} | {errors} |",
                    figure(
                        runs,
                        |r| r.fill.map(|f| f.rate).unwrap_or_default(),
                        0,
                        true
                    ),
                    figure(runs, |r| r.consume_rate, 0, true),
                    figure(runs, |r| r.consumed as f64, 0, false),
                    figure(runs, |r| r.seconds, 1, false),
                );
            }
        } else {
            // Plainly marked where the latencies are not corrected for coordinated omission.
            let mark = if w.adaptive() { " †" } else { "" };
            let _ = writeln!(
                out,
                "| System | Publish msgs/s | Consume msgs/s | Publish p50 / p99 ms{mark} | \
                 End-to-end p50 / p99 / p99.9 / max ms{mark} | Errors |"
            );
            out.push_str("|---|---:|---:|---:|---:|---:|\n");
            for (system, runs) in &systems {
                let errors: u64 = runs
                    .iter()
                    .map(|r| r.publish_errors + r.consume_errors)
                    .sum();
                let _ = writeln!(
                    out,
                    "| {system} | {} | {} | {} / {} | {} / {} / {} / {} | {errors} |",
                    figure(runs, |r| r.publish_rate, 0, false),
                    figure(runs, |r| r.consume_rate, 0, true),
                    figure(runs, |r| r.publish_latency_ms.p50, 2, false),
                    figure(runs, |r| r.publish_latency_ms.p99, 2, false),
                    figure(runs, |r| r.end_to_end_latency_ms.p50, 2, false),
                    figure(runs, |r| r.end_to_end_latency_ms.p99, 2, true),
                    figure(runs, |r| r.end_to_end_latency_ms.p999, 2, false),
                    figure(runs, |r| r.end_to_end_latency_ms.max, 2, false),
                );
            }
            if w.adaptive() {
                out.push_str(
                    "\n† Not corrected for coordinated omission: the rate follows the consumers, \
                     and a producer that falls far behind its schedule starts again from the \
                     present, so a stall shows in the requests that waited, not in every one \
                     that was due. The fixed-rate workloads' latencies are corrected.\n",
                );
            }
        }
        let most = systems
            .iter()
            .map(|(_, runs)| runs.len())
            .max()
            .unwrap_or(0);
        if most > 1 {
            let _ = writeln!(
                out,
                "\nMedians of each system's runs (up to {most}); in parentheses the lowest and \
                 highest run. Errors are all runs' together."
            );
        }
        out.push('\n');
    }
    out
}

/// The consume rate the same system reached with the same clients and messages on an empty
/// queue at maximum rate (the median of its runs): what draining a backlog is compared with.
fn empty_queue_rate(reports: &[Report], drain: &Report) -> Option<f64> {
    let d = &drain.workload;
    let mut rates: Vec<f64> = reports
        .iter()
        .filter(|r| {
            let w = &r.workload;
            r.system == drain.system
                && w.backlog == 0
                && w.rate == 0
                && (w.queues, w.producers_per_queue, w.consumers_per_queue)
                    == (d.queues, d.producers_per_queue, d.consumers_per_queue)
                && (w.message_size, w.batch_size) == (d.message_size, d.batch_size)
        })
        .map(|r| r.consume_rate)
        .filter(|rate| *rate > 0.0)
        .collect();
    (!rates.is_empty()).then(|| median(&mut rates))
}

/// Consumed msgs/s per system (the median of its runs), per workload, for the comparison
/// charts.
pub fn bars(reports: &[Report]) -> Vec<(String, Vec<(String, f64)>)> {
    by_workload(reports)
        .into_iter()
        .map(|(name, runs)| {
            let bars = by_system(&runs)
                .into_iter()
                .map(|(system, runs)| {
                    let mut rates: Vec<f64> = runs.iter().map(|r| r.consume_rate).collect();
                    (system.to_owned(), median(&mut rates))
                })
                .collect();
            (name.to_owned(), bars)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::workload::Workload;

    fn report(workload: &str) -> Report {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads")
            .join(workload);
        Report {
            system: "S".into(),
            workload: Workload::load(&path).unwrap(),
            seconds: 1.0,
            published: 0,
            consumed: 0,
            publish_rate: 0.0,
            consume_rate: 0.0,
            publish_errors: 0,
            consume_errors: 0,
            backlog: 0,
            publish_latency_ms: Default::default(),
            end_to_end_latency_ms: Default::default(),
            first_error: None,
            fill: None,
            series: Vec::new(),
        }
    }

    #[test]
    fn repeated_runs_show_the_median_with_the_range_and_load_from_run_folders() {
        let dir = tempfile::tempdir().unwrap();
        for (i, rate) in [300.0, 100.0, 200.0].into_iter().enumerate() {
            let mut r = report("a-max-throughput.toml");
            r.consume_rate = rate;
            r.publish_rate = rate;
            r.end_to_end_latency_ms.p99 = rate / 100.0;
            r.consume_errors = 1;
            let run = dir.path().join(format!("run{}", i + 1));
            std::fs::create_dir_all(run.join("runs")).unwrap();
            std::fs::write(run.join("a.json"), serde_json::to_vec(&r).unwrap()).unwrap();
            // What compare.sh keeps beside them is not a result.
            std::fs::write(run.join("runs/a.json"), b"{}").unwrap();
        }
        let mut other = report("a-max-throughput.toml");
        other.system = "T".into();
        other.consume_rate = 50.0;
        std::fs::write(
            dir.path().join("t.json"),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        let reports = load(dir.path()).unwrap();
        assert_eq!(reports.len(), 4);
        let table = markdown(&reports);
        assert!(
            table.contains("| S | 200 | 200 (100–300) | 0.00 / 0.00 | 0.00 / 2.00 (1.00–3.00) / 0.00 / 0.00 | 3 |"),
            "{table}"
        );
        assert!(table.contains("| T | 0 | 50 |"), "{table}");
        assert!(
            table.contains("Medians of each system's runs (up to 3)"),
            "{table}"
        );
        assert_eq!(
            bars(&reports),
            [(
                "a-max-throughput".to_owned(),
                vec![("S".to_owned(), 200.0), ("T".to_owned(), 50.0)]
            )]
        );
    }

    #[test]
    fn latencies_of_an_adaptive_rate_are_marked_uncorrected_and_a_fixed_rates_are_not() {
        let adaptive = markdown(&[report("a-max-throughput.toml")]);
        assert!(adaptive.contains("Publish p50 / p99 ms † |"), "{adaptive}");
        assert!(
            adaptive.contains("† Not corrected for coordinated omission"),
            "{adaptive}"
        );
        let fixed = markdown(&[report("b-half-rate-latency.toml")]);
        assert!(!fixed.contains('†'), "{fixed}");
    }
}

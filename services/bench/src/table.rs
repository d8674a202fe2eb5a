//! Markdown tables from a folder of run results, one table per workload.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use crate::runner::Report;

/// Every `*.json` result in `dir`, in file name order.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
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

/// One table per workload: rates, latency percentiles, errors.
pub fn markdown(reports: &[Report]) -> String {
    let mut out = String::new();
    for (name, runs) in by_workload(reports) {
        let w = &runs[0].workload;
        let _ = writeln!(out, "### {name}\n");
        if !w.description.is_empty() {
            let _ = writeln!(out, "{}\n", w.description);
        }
        if w.backlog > 0 {
            out.push_str(
                "| System | Fill msgs/s | Drain msgs/s | Drained | Drain / empty-queue rate | Errors |\n",
            );
            out.push_str("|---|---:|---:|---:|---:|---:|\n");
            for r in runs {
                let fill = r.fill.map(|f| f.rate).unwrap_or_default();
                let versus = empty_queue_rate(reports, r)
                    .map(|rate| format!("{:.0}%", 100.0 * r.consume_rate / rate))
                    .unwrap_or_else(|| "-".to_owned());
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {} in {:.1} s | {versus} | {} |",
                    r.system,
                    fill,
                    r.consume_rate,
                    r.consumed,
                    r.seconds,
                    r.publish_errors + r.consume_errors
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
            for r in runs {
                let p = &r.publish_latency_ms;
                let e = &r.end_to_end_latency_ms;
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} / {:.2} / {:.2} | {} |",
                    r.system,
                    r.publish_rate,
                    r.consume_rate,
                    p.p50,
                    p.p99,
                    e.p50,
                    e.p99,
                    e.p999,
                    e.max,
                    r.publish_errors + r.consume_errors
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
        out.push('\n');
    }
    out
}

/// The consume rate the same system reached with the same clients and messages on an empty
/// queue at maximum rate: what draining a backlog is compared with.
fn empty_queue_rate(reports: &[Report], drain: &Report) -> Option<f64> {
    let d = &drain.workload;
    reports
        .iter()
        .find(|r| {
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
}

/// Consumed msgs/s per system, per workload, for the comparison charts.
pub fn bars(reports: &[Report]) -> Vec<(String, Vec<(String, f64)>)> {
    by_workload(reports)
        .into_iter()
        .map(|(name, runs)| {
            let bars = runs
                .iter()
                .map(|r| (r.system.clone(), r.consume_rate))
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

//! PNG charts with `plotters`: throughput and latency percentiles over a run, and one bar per
//! system for a comparison.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use sluice_chart::{line_chart, plot_error, register_font, WIDTH};

use crate::runner::Report;

/// A file name made of a label's letters and digits.
pub fn file_stem(label: &str) -> String {
    let mut stem = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            stem.push(c.to_ascii_lowercase());
        } else if !stem.ends_with('-') {
            stem.push('-');
        }
    }
    stem.trim_matches('-').to_owned()
}

/// Writes `<stem>-throughput.png` and `<stem>-latency.png` for one run into `dir`.
pub fn run_charts(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let stem = file_stem(&format!("{} {}", report.workload.name, report.system));
    let series = &report.series;
    let throughput = dir.join(format!("{stem}-throughput.png"));
    let mut lines = vec![
        (
            "published",
            BLUE,
            series.iter().map(|s| (s.second, s.publish_rate)).collect(),
        ),
        (
            "consumed",
            RED,
            series.iter().map(|s| (s.second, s.consume_rate)).collect(),
        ),
    ];
    let target: Vec<_> = series
        .iter()
        .filter_map(|s| Some((s.second, s.target_rate?)))
        .collect();
    if !target.is_empty() {
        lines.push(("target rate", BLACK, target));
    }
    line_chart(
        &throughput,
        &format!("{}: {} throughput", report.system, report.workload.name),
        "seconds",
        "messages / s",
        &lines,
        false,
    )
    .with_context(|| format!("writing {}", throughput.display()))?;
    let latency = dir.join(format!("{stem}-latency.png"));
    // Seconds with no message have no percentiles: leave them out rather than plot zeros.
    let points = |f: fn(&crate::stats::Sample) -> f64| {
        series
            .iter()
            .filter(|s| f(s) > 0.0)
            .map(|s| (s.second, f(s)))
            .collect::<Vec<_>>()
    };
    line_chart(
        &latency,
        &format!("{}: {} latency", report.system, report.workload.name),
        "seconds",
        "milliseconds",
        &[
            (
                "end-to-end p50",
                GREEN,
                points(|s| s.end_to_end_latency_ms.p50),
            ),
            (
                "end-to-end p99",
                RED,
                points(|s| s.end_to_end_latency_ms.p99),
            ),
            (
                "end-to-end p99.9",
                MAGENTA,
                points(|s| s.end_to_end_latency_ms.p999),
            ),
            ("publish p99", BLUE, points(|s| s.publish_latency_ms.p99)),
        ],
        true,
    )
    .with_context(|| format!("writing {}", latency.display()))?;
    Ok(vec![throughput, latency])
}

/// One horizontal bar per `(label, value)`, e.g. msgs/s per system on one workload.
pub fn bar_chart(
    path: &Path,
    caption: &str,
    unit: &str,
    bars: &[(String, f64)],
) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, 80 + 45 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .build_cartesian_2d(0.0..max * 1.6, 0.0..bars.len() as f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(unit)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = (bars.len() - 1 - i) as f64;
        let color = palette[i % palette.len()];
        chart
            .draw_series([Rectangle::new(
                [(0.0, y + 0.15), (*value, y + 0.85)],
                color.mix(0.7).filled(),
            )])
            .map_err(plot_error)?;
        chart
            .draw_series([Text::new(
                format!("{label}: {value:.0}"),
                (*value + max * 0.02, y + 0.65),
                ("sans-serif", 16),
            )])
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_plain() {
        assert_eq!(
            file_stem("a-max-throughput RabbitMQ quorum, 3 nodes"),
            "a-max-throughput-rabbitmq-quorum-3-nodes"
        );
        assert_eq!(file_stem("  Sluice (SYNC) "), "sluice-sync");
    }
}

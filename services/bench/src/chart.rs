//! PNG charts with `plotters`: throughput and latency percentiles over a run, and one bar per
//! system for a comparison.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::runner::Report;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;

/// Where Debian's `fonts-dejavu-core` puts the font the charts are drawn with; the
/// `SLUICE_BENCH_FONT` variable names another TrueType file.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Loads the font once: plotters draws text only with a registered font.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = std::env::var("SLUICE_BENCH_FONT").unwrap_or_else(|_| DEFAULT_FONT.into());
            let bytes = std::fs::read(&path).map_err(|e| {
                format!("cannot read the chart font {path} ({e}); install fonts-dejavu-core or set SLUICE_BENCH_FONT")
            })?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a TrueType font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

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

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e:?}")
}

/// One line of a chart: a name and (x, y) points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

fn line_chart(
    path: &Path,
    caption: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let points = || lines.iter().flat_map(|(_, _, p)| p.iter());
    let x_min = points().map(|p| p.0).fold(0.0, f64::min);
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(caption, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(90);
    if log_y {
        // Stalls are orders of magnitude above the median; a log axis shows both.
        let y_min = points()
            .map(|p| p.1)
            .filter(|y| *y > 0.0)
            .fold(f64::MAX, f64::min)
            .min(y_max / 10.0);
        let mut chart = builder
            .build_cartesian_2d(x_min..x_max, (y_min * 0.8..y_max).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        draw_lines(&mut chart, lines)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_desc)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        draw_lines(&mut chart, lines)?;
    }
    root.present().map_err(plot_error)
}

fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: &[Line],
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (name, color, data) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(plot_error)
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

//! PNG line charts with `plotters`, for the bench's runs and the manager's simulation.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use plotters::style::FontStyle;

pub use plotters::style::colors::{BLACK, BLUE, CYAN, GREEN, MAGENTA, RED, WHITE};
pub use plotters::style::RGBColor;

pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 600;

/// Where Debian's `fonts-dejavu-core` puts the font the charts are drawn with; the
/// `SLUICE_BENCH_FONT` variable names another TrueType file.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Loads the font once: plotters draws text only with a registered font.
pub fn register_font() -> anyhow::Result<()> {
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

pub fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e:?}")
}

/// One line of a chart: a name, its colour and (x, y) points.
pub type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Draws `lines` into a PNG at `path`; a log scale for y if `log_y`. Registers the font first.
pub fn line_chart(
    path: &Path,
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
) -> anyhow::Result<()> {
    register_font()?;
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
        draw_lines(&mut chart, x_desc, y_desc, lines)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(plot_error)?;
        draw_lines(&mut chart, x_desc, y_desc, lines)?;
    }
    root.present().map_err(plot_error)
}

/// The axes' mesh and labels, then each line with its legend.
fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_error)?;
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

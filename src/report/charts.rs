//! Drawing the report's charts with plotters, to PNG and SVG, with an embedded font.

use super::data::ThreadSweep;
use super::glyphs::GlyphBackend;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::OnceLock;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1100;

/// Tableau's ten colours: distinguishable, and readable on white.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}

/// plotters draws text only with registered fonts; DejaVu Sans is compiled in, so no
/// system font or fontconfig is needed (a bare Raspberry Pi OS, CI).
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())
        })
        .clone()
}

/// A chart file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Svg,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }

    pub fn parse(text: &str) -> Option<Format> {
        match text.trim().to_ascii_lowercase().as_str() {
            "png" => Some(Format::Png),
            "svg" => Some(Format::Svg),
            _ => None,
        }
    }
}

/// One bar per series in each category, with an error bar when the value has a spread.
#[derive(Debug, Clone)]
pub struct BarPanel {
    pub title: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

#[derive(Debug, Clone)]
pub struct BarSeries {
    pub name: String,
    /// Per category: (value, standard deviation).
    pub values: Vec<Option<(f64, f64)>>,
    pub color: RGBColor,
}

#[derive(Debug, Clone)]
pub struct LabelledPoint {
    pub series: usize,
    pub label: String,
    pub x: f64,
    pub y: f64,
}

/// A vertical line at a memory limit: a box's RAM or VRAM.
#[derive(Debug, Clone)]
pub struct Limit {
    pub label: String,
    pub gib: f64,
    pub color: RGBColor,
}

#[derive(Debug, Clone)]
pub enum Figure {
    Bars {
        title: String,
        x_desc: String,
        columns: usize,
        panels: Vec<BarPanel>,
        /// Digits after the point in the value printed beside each bar.
        decimals: usize,
    },
    /// Memory against speed, log-log, with each box's limits.
    Memory {
        title: String,
        y_desc: String,
        series: Vec<(String, RGBColor)>,
        points: Vec<LabelledPoint>,
        limits: Vec<Limit>,
    },
    Threads {
        title: String,
        sweeps: Vec<ThreadSweep>,
    },
    /// Predicted against measured, log-log, with y = x and a ±25% band.
    Predicted {
        title: String,
        series: Vec<(String, RGBColor)>,
        points: Vec<LabelledPoint>,
    },
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        match self {
            Figure::Bars {
                columns, panels, ..
            } => {
                let rows = panels.len().div_ceil((*columns).max(1)).max(1);
                let tallest = panels
                    .iter()
                    .map(|p| p.categories.len() * (p.series.len() * 16 + 10))
                    .max()
                    .unwrap_or(0);
                let panel = (tallest + 110).max(200);
                (WIDTH, (60 + rows * panel) as u32)
            }
            Figure::Memory { series, .. } => (WIDTH, 700 + legend_height(series.len())),
            Figure::Threads { sweeps, .. } => (WIDTH, 700 + legend_height(sweeps.len())),
            Figure::Predicted { series, .. } => (WIDTH, 700 + legend_height(series.len() + 2)),
        }
    }
}

/// Writes `figure` to `path` in `format`.
pub fn render(figure: &Figure, path: &Path, format: Format) -> Result<(), String> {
    register_font()?;
    let size = figure.size();
    match format {
        Format::Png => {
            let root = GlyphBackend::new(BitMapBackend::new(path, size)).into_drawing_area();
            draw(&root, figure)?;
            root.present().map_err(|e| e.to_string())
        }
        Format::Svg => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw(&root, figure)?;
            root.present().map_err(|e| e.to_string())
        }
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    match figure {
        Figure::Bars {
            title,
            x_desc,
            columns,
            panels,
            decimals,
        } => {
            let body = root.titled(title, (FONT, 24)).map_err(|e| e.to_string())?;
            let columns = (*columns).max(1);
            let rows = panels.len().div_ceil(columns).max(1);
            let areas = body.split_evenly((rows, columns));
            for (panel, area) in panels.iter().zip(&areas) {
                draw_bar_panel(root, area, panel, x_desc, *decimals)?;
            }
            Ok(())
        }
        Figure::Memory {
            title,
            y_desc,
            series,
            points,
            limits,
        } => draw_memory(root, title, y_desc, series, points, limits),
        Figure::Threads { title, sweeps } => draw_threads(root, title, sweeps),
        Figure::Predicted {
            title,
            series,
            points,
        } => draw_predicted(root, title, series, points),
    }
}

fn text_style(size: u32, pos: Pos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(pos)
}

/// How a legend entry shows its series.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Bar,
    Line,
    Dot,
}

/// Height of the legend strip under a chart with `entries` in two columns.
fn legend_height(entries: usize) -> u32 {
    (entries.div_ceil(2) * 20 + 16) as u32
}

/// A legend drawn in its own strip, so it never hides data: rows of 20 px, in `columns`.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor, Mark)],
    columns: usize,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let columns = columns.max(1);
    let width = area.dim_in_pixel().0 as i32 / columns as i32;
    for (i, (name, color, mark)) in entries.iter().enumerate() {
        let x = (i % columns) as i32 * width + 12;
        let y = (i / columns) as i32 * 20 + 12;
        match mark {
            Mark::Bar => area.draw(&Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                color.filled(),
            )),
            Mark::Line => area.draw(&PathElement::new(
                vec![(x, y), (x + 16, y)],
                color.stroke_width(2),
            )),
            Mark::Dot => area.draw(&Circle::new((x + 7, y), 5, color.filled())),
        }
        .map_err(err)?;
        area.draw_text(
            name,
            &text_style(13, Pos::new(HPos::Left, VPos::Center)),
            (x + 24, y),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// A number for a tick or a bar: few digits, no trailing zeros.
pub fn short_number(value: f64) -> String {
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Horizontal bars, categories top to bottom, labels drawn in the left margin.
fn draw_bar_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    area: &DrawingArea<DB, Shift>,
    panel: &BarPanel,
    x_desc: &str,
    decimals: usize,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let n = panel.categories.len();
    let widest = panel
        .categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    let label_width = (widest * 7 + 16).clamp(60, 420) as u32;
    let max = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .map(|(v, sd)| v + sd)
        .fold(0.0f64, f64::max);
    if n == 0 || max <= 0.0 {
        area.draw_text(
            &format!("{}: no rows", panel.title),
            &text_style(15, Pos::new(HPos::Left, VPos::Top)),
            (20, 20),
        )
        .map_err(err)?;
        return Ok(());
    }
    // Two or more series get a legend strip on the right, outside the bars.
    let (plot, legend) = if panel.series.len() > 1 {
        let widest = panel
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let strip = (widest * 8 + 50) as u32;
        let (plot, legend) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(strip));
        (plot, Some(legend))
    } else {
        (area.clone(), None)
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(&panel.title, (FONT, 17))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..max * 1.25, 0.0..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(2)
        .y_labels(0)
        .y_label_formatter(&|_| String::new())
        .x_desc(x_desc)
        .x_labels(6)
        .x_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(err)?;

    let slots = panel.series.len().max(1) as f64;
    let band = 0.8 / slots;
    // Category i's band spans [n - i - 1, n - i]: the first category sits at the top.
    let bar = |i: usize, j: usize| {
        let top = n as f64 - i as f64 - 0.1 - j as f64 * band;
        (top - band, top)
    };
    for (j, series) in panel.series.iter().enumerate() {
        let color = series.color;
        let bars: Vec<_> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|(value, _)| (bar(i, j), value)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&((low, high), value)| {
                Rectangle::new([(0.0, low), (value, high)], color.filled())
            }))
            .map_err(err)?;
        let spreads: Vec<_> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|(_, sd)| *sd > 0.0).map(|v| (bar(i, j), v)))
            .collect();
        chart
            .draw_series(spreads.iter().map(|&((low, high), (value, sd))| {
                ErrorBar::new_horizontal(
                    (low + high) / 2.0,
                    (value - sd).max(0.0),
                    value,
                    value + sd,
                    BLACK.stroke_width(1),
                    6,
                )
            }))
            .map_err(err)?;
        for (i, value) in series.values.iter().enumerate() {
            let Some((value, sd)) = value else { continue };
            let (low, high) = bar(i, j);
            let (x, y) = chart.backend_coord(&(value + sd, (low + high) / 2.0));
            let text = if *sd > 0.0 {
                format!("{value:.decimals$} ± {sd:.decimals$}")
            } else {
                format!("{value:.decimals$}")
            };
            root.draw_text(
                &text,
                &text_style(12, Pos::new(HPos::Left, VPos::Center)),
                (x + 5, y),
            )
            .map_err(err)?;
        }
    }
    for (i, category) in panel.categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(0.0, n as f64 - i as f64 - 0.5));
        root.draw_text(
            category,
            &text_style(13, Pos::new(HPos::Right, VPos::Center)),
            (x - 6, y),
        )
        .map_err(err)?;
    }
    if let Some(legend) = legend {
        let entries: Vec<_> = panel
            .series
            .iter()
            .map(|s| (s.name.clone(), s.color, Mark::Bar))
            .collect();
        draw_legend(&legend.margin(40, 0, 0, 0), &entries, 1)?;
    }
    Ok(())
}

/// Ticks at 1, 2 and 5 times each power of ten in `low..high`: plotters labels only the
/// powers themselves, which leaves a narrow log axis with one label.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high {
        for step in [1.0, 2.0, 5.0] {
            let tick = decade * step;
            if (low..=high).contains(&tick) {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A log axis range around `values`, with room on both sides.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| *v > 0.0 && v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return (0.1, 10.0);
    }
    (low / 1.6, high * 1.6)
}

/// Splits `root` into the plot and, below it, a legend strip for `entries` rows.
fn split_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    entries: usize,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    root.split_vertically(root.dim_in_pixel().1.saturating_sub(legend_height(entries)))
}

type LogAxis = WithKeyPoints<LogCoord<f64>>;
type LogLogChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<LogAxis, LogAxis>>;

/// A log-log chart with ticks at 1, 2 and 5 of each decade and both axes described.
fn log_log_chart<'a, DB: DrawingBackend>(
    plot: &'a DrawingArea<DB, Shift>,
    title: &str,
    (x_low, x_high): (f64, f64),
    (y_low, y_high): (f64, f64),
    x_desc: &str,
    y_desc: &str,
) -> Result<LogLogChart<'a, DB>, String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let mut chart = ChartBuilder::on(plot)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_low..x_high)
                .log_scale()
                .with_key_points(log_ticks(x_low, x_high)),
            (y_low..y_high)
                .log_scale()
                .with_key_points(log_ticks(y_low, y_high)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| short_number(*v))
        .y_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// One dot per point, in its series' colour.
fn draw_dots<DB: DrawingBackend>(
    chart: &mut LogLogChart<'_, DB>,
    series: &[(String, RGBColor)],
    points: &[LabelledPoint],
) -> Result<(), String> {
    for (index, (_, color)) in series.iter().enumerate() {
        let color = *color;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.series == index)
                    .map(|p| Circle::new((p.x, p.y), 5, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn draw_memory<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    series: &[(String, RGBColor)],
    points: &[LabelledPoint],
    limits: &[Limit],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (x_low, x_high) = log_range(
        points
            .iter()
            .map(|p| p.x)
            .chain(limits.iter().map(|l| l.gib)),
    );
    let (y_low, y_high) = log_range(points.iter().map(|p| p.y));
    let entries: Vec<_> = series
        .iter()
        .map(|(n, c)| (n.clone(), *c, Mark::Dot))
        .collect();
    let (plot, legend) = split_legend(root, entries.len());
    let mut chart = log_log_chart(
        &plot,
        title,
        (x_low, x_high),
        (y_low, y_high),
        "peak resident memory (GiB, log scale)",
        y_desc,
    )?;
    // Past a handful, limit labels pile up; the legend's colours still tell the boxes apart.
    let label_limits = limits.len() <= 6;
    for (k, limit) in limits.iter().enumerate() {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(limit.gib, y_low), (limit.gib, y_high)],
                limit.color.stroke_width(2),
            )))
            .map_err(err)?;
        if !label_limits {
            continue;
        }
        // Stagger the labels so limits close together stay readable.
        let y = y_high / 1.15f64.powi(1 + k as i32 % 6);
        let (px, py) = chart.backend_coord(&(limit.gib, y));
        root.draw_text(
            &limit.label,
            &text_style(13, Pos::new(HPos::Right, VPos::Center)),
            (px - 4, py),
        )
        .map_err(err)?;
    }
    draw_dots(&mut chart, series, points)?;
    // Naming every point helps until they crowd each other.
    if points.len() <= 30 {
        for p in points {
            let (px, py) = chart.backend_coord(&(p.x, p.y));
            root.draw_text(
                &p.label,
                &text_style(11, Pos::new(HPos::Left, VPos::Bottom)),
                (px + 6, py - 3),
            )
            .map_err(err)?;
        }
    }
    draw_legend(&legend, &entries, 2)
}

fn draw_threads<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    sweeps: &[ThreadSweep],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let max_threads = sweeps
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    let max_ts = sweeps
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1 + p.2))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let entries: Vec<_> = sweeps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                format!("{} · {} · {}", s.key.host, s.key.model, s.key.test),
                color(i),
                Mark::Line,
            )
        })
        .collect();
    let (plot, legend) = split_legend(root, entries.len());
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..max_threads as f64 + 0.5, 0.0..max_ts * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .y_desc("tokens per second")
        .x_labels(max_threads.min(16))
        .max_light_lines(2)
        .x_label_formatter(&|v| format!("{}", v.round()))
        .y_label_formatter(&|v| short_number(*v))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)?;
    for (index, sweep) in sweeps.iter().enumerate() {
        let color = color(index);
        let line: Vec<(f64, f64)> = sweep.points.iter().map(|p| (p.0 as f64, p.1)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(
                line.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(err)?;
        chart
            .draw_series(sweep.points.iter().filter(|p| p.2 > 0.0).map(|p| {
                ErrorBar::new_vertical(
                    p.0 as f64,
                    (p.1 - p.2).max(0.0),
                    p.1,
                    p.1 + p.2,
                    color.stroke_width(1),
                    8,
                )
            }))
            .map_err(err)?;
    }
    draw_legend(&legend, &entries, 2)
}

fn draw_predicted<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[(String, RGBColor)],
    points: &[LabelledPoint],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (low, high) = log_range(points.iter().flat_map(|p| [p.x, p.y]));
    let band = RGBColor(120, 120, 120);
    let mut entries = vec![
        (
            "within ±25% of the estimate".to_string(),
            RGBColor(210, 210, 210),
            Mark::Bar,
        ),
        ("measured = predicted".to_string(), BLACK, Mark::Line),
    ];
    entries.extend(series.iter().map(|(n, c)| (n.clone(), *c, Mark::Dot)));
    let (plot, legend) = split_legend(root, entries.len());
    let mut chart = log_log_chart(
        &plot,
        title,
        (low, high),
        (low, high),
        "predicted tokens per second (log scale)",
        "measured tokens per second (log scale)",
    )?;
    chart
        .draw_series(std::iter::once(Polygon::new(
            vec![
                (low, low * 0.75),
                (high, high * 0.75),
                (high, high * 1.25),
                (low, low * 1.25),
            ],
            band.mix(0.18).filled(),
        )))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(low, low), (high, high)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    draw_dots(&mut chart, series, points)?;
    draw_legend(&legend, &entries, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(short_number(1234.6), "1235");
        assert_eq!(short_number(12.34), "12.3");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(2.0), "2");
    }

    #[test]
    fn log_axes_get_ticks_at_one_two_and_five() {
        assert_eq!(log_ticks(18.0, 130.0), [20.0, 50.0, 100.0]);
        assert_eq!(log_ticks(0.15, 2.0), [0.2, 0.5, 1.0, 2.0]);
    }

    #[test]
    fn formats_parse_in_any_case() {
        assert_eq!(Format::parse("PNG"), Some(Format::Png));
        assert_eq!(Format::parse(" svg"), Some(Format::Svg));
        assert_eq!(Format::parse("pdf"), None);
    }
}

//! One line chart, drawn with plotters: a title over the whole picture, a
//! framed plot with grid, tick labels and axis titles, the lines, vertical
//! markers (sleep jobs, restarts) labelled at the top of the plot, and a
//! legend to the right of the plot.
//!
//! Points are `(x, y)` in data units; a `None` value breaks a line. On a
//! log axis only values `> 0` are drawn.

use anyhow::Result;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::picture::FONT;

/// Line colours, in order of lines (wrapping after the last).
pub(crate) const LINE_COLOURS: [RGBColor; 10] = [
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
/// Colour of sleep markers (dashed).
pub(crate) const SLEEP: RGBColor = RGBColor(90, 90, 90);
/// Colour of restart markers (solid).
pub(crate) const RESTART: RGBColor = RGBColor(200, 0, 0);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Height in pixels of the band the title is drawn in.
pub(crate) const TITLE_BAND: u32 = 44;

/// One line: its legend and its points, in drawing order; a `None` value
/// and a step back in x (a restart) break it.
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, Option<f64>)>,
}

/// A vertical marker at `x` with a short label.
pub(crate) struct Marker {
    pub(crate) x: f64,
    pub(crate) label: String,
    /// Dashed grey (a sleep job) or solid red (a restart).
    pub(crate) dashed: bool,
}

/// What one chart shows.
pub(crate) struct Figure<'a> {
    pub(crate) title: &'a str,
    pub(crate) x_label: &'a str,
    pub(crate) y_label: &'a str,
    pub(crate) log: bool,
    pub(crate) lines: Vec<Line>,
    pub(crate) markers: Vec<Marker>,
    /// Legend entries for the markers, e.g. `("sleep job (3)", true)`:
    /// the text and whether the marker is dashed.
    pub(crate) marker_legend: Vec<(String, bool)>,
}

/// Draw `fig` on `area` (the whole picture, or a part of it).
pub(crate) fn draw(area: &DrawingArea<BitMapBackend<'_>, Shift>, fig: &Figure) -> Result<()> {
    let (width, _) = area.dim_in_pixel();
    let title = (FONT, 26).into_font().color(&BLACK);
    let (tw, _) = area.estimate_text_size(fig.title, &title)?;
    area.draw_text(
        fig.title,
        &title,
        ((width as i32 - tw as i32) / 2, (TITLE_BAND as i32 - 26) / 2),
    )?;
    let below = area.margin(TITLE_BAND, 8, 8, 8);
    let legend = legend_entries(fig);
    let text = (FONT, 15).into_font().color(&BLACK);
    let mut legend_w = 0;
    for (name, _) in &legend {
        legend_w = legend_w.max(below.estimate_text_size(name, &text)?.0);
    }
    let (plot, side) = below.split_horizontally(width.saturating_sub(legend_w + 60 + 16) as i32);

    let shown = |y: f64| !fig.log || y > 0.0;
    let ys = fig.lines.iter().flat_map(|l| {
        l.points
            .iter()
            .filter_map(|&(_, y)| y.filter(|&y| shown(y)))
    });
    let y_range = padded(ys, fig.log);
    let xs = fig
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|&(x, _)| x))
        .chain(fig.markers.iter().map(|m| m.x));
    let (x0, x1) = padded(xs, false).unwrap_or((0.0, 1.0));
    let (y0, y1) = y_range.unwrap_or((0.0, 1.0));
    let any = y_range.is_some();
    if fig.log {
        let (y0, y1) = (10f64.powf(y0), 10f64.powf(y1));
        let mut chart = builder(&plot).build_cartesian_2d(x0..x1, (y0..y1).log_scale())?;
        contents(&mut chart, fig, (x0, x1), (y0, y1), any)?;
    } else {
        let mut chart = builder(&plot).build_cartesian_2d(x0..x1, y0..y1)?;
        contents(&mut chart, fig, (x0, x1), (y0, y1), any)?;
    }
    draw_legend(&side, &legend, &text)
}

fn builder<'a, 'b>(
    plot: &'a DrawingArea<BitMapBackend<'b>, Shift>,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(plot);
    b.margin(6).x_label_area_size(50).y_label_area_size(80);
    b
}

/// A legend entry: its text and its swatch.
enum Swatch {
    Line(RGBColor),
    Marker { dashed: bool },
}

fn legend_entries(fig: &Figure) -> Vec<(String, Swatch)> {
    let mut entries: Vec<(String, Swatch)> = fig
        .lines
        .iter()
        .enumerate()
        .map(|(k, line)| {
            let any = line.points.iter().any(|(_, y)| y.is_some());
            let drawn = line
                .points
                .iter()
                .any(|(_, y)| y.is_some_and(|y| !fig.log || y > 0.0));
            let name = match (any, drawn) {
                (false, _) => format!("{} (no values)", line.name),
                (true, false) => format!("{} (<= 0, not shown)", line.name),
                _ => line.name.clone(),
            };
            (name, Swatch::Line(colour(k)))
        })
        .collect();
    for (text, dashed) in &fig.marker_legend {
        entries.push((text.clone(), Swatch::Marker { dashed: *dashed }));
    }
    entries
}

/// The colour of line `k`.
pub(crate) fn colour(k: usize) -> RGBColor {
    LINE_COLOURS[k % LINE_COLOURS.len()]
}

/// The grid, ticks and axis titles, the markers, the lines over them, and
/// a note when there is nothing to draw.
fn contents<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    fig: &Figure,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    any: bool,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .x_desc(fig.x_label)
        .y_desc(fig.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        // No fractional steps between integer steps.
        .x_labels(((x1 - x0).floor() as usize + 1).clamp(2, 10))
        .x_label_formatter(&|v| tick(*v, Some(x1 - x0)))
        .y_label_formatter(&|v| tick(*v, (!fig.log).then_some(y1 - y0)))
        .draw()?;
    let small = (FONT, 13).into_font().color(&BLACK);
    let mut last_label = f64::NEG_INFINITY;
    for m in &fig.markers {
        let style = if m.dashed { SLEEP } else { RESTART };
        let points = [(m.x, y0), (m.x, y1)];
        if m.dashed {
            chart.draw_series(std::iter::once(DashedPathElement::new(
                points,
                5,
                4,
                style.stroke_width(1),
            )))?;
        } else {
            chart.draw_series(std::iter::once(PathElement::new(
                points.to_vec(),
                style.stroke_width(2),
            )))?;
        }
        // Labels at the top, none closer than 60 pixels to the one before.
        let (px, _) = chart.backend_coord(&(m.x, y1));
        if f64::from(px) - last_label >= 60.0 {
            let text = Text::new(m.label.clone(), (4, 2), small.clone().color(&style));
            chart.draw_series(std::iter::once(EmptyElement::at((m.x, y1)) + text))?;
            last_label = f64::from(px);
        }
    }
    for (k, line) in fig.lines.iter().enumerate() {
        let style = colour(k).stroke_width(2);
        for segment in segments(&line.points, fig.log) {
            // Few points (checkpoints, a short run) are marked one by one.
            if segment.len() == 1 || line.points.len() <= 20 {
                let dots = segment.iter().map(|&p| Circle::new(p, 3, style.filled()));
                chart.draw_series(dots)?;
            }
            if segment.len() > 1 {
                chart.draw_series(LineSeries::new(segment, style))?;
            }
        }
    }
    if !any {
        let note = "no values in metrics.jsonl";
        let area = chart.plotting_area();
        let (w, h) = area.dim_in_pixel();
        let text = (FONT, 18).into_font().color(&BLACK);
        let (tw, _) = area.estimate_text_size(note, &text)?;
        let at = ((w as i32 - tw as i32) / 2, h as i32 / 2);
        area.strip_coord_spec().draw_text(note, &text, at)?;
    }
    Ok(())
}

/// The runs of consecutive drawable points of a line: broken at a missing
/// value, at a value a log axis cannot show, and where x steps back.
fn segments(points: &[(f64, Option<f64>)], log: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut last_x = f64::NEG_INFINITY;
    for &(x, y) in points {
        let y = y.filter(|&y| !log || y > 0.0);
        if (y.is_none() || x <= last_x) && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        last_x = x;
        if let Some(y) = y {
            current.push((x, y));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn draw_legend(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    entries: &[(String, Swatch)],
    text: &TextStyle,
) -> Result<()> {
    for (i, (name, swatch)) in entries.iter().enumerate() {
        let y = 20 + 24 * i as i32;
        let mid = y + 8;
        match swatch {
            Swatch::Line(c) => {
                area.draw(&PathElement::new(
                    vec![(8, mid), (40, mid)],
                    c.stroke_width(3),
                ))?;
            }
            Swatch::Marker { dashed: true } => {
                area.draw(&DashedPathElement::new(
                    [(24, y - 2), (24, y + 18)],
                    5,
                    4,
                    SLEEP.stroke_width(2),
                ))?;
            }
            Swatch::Marker { dashed: false } => {
                area.draw(&PathElement::new(
                    vec![(24, y - 2), (24, y + 18)],
                    RESTART.stroke_width(2),
                ))?;
            }
        }
        area.draw_text(name, text, (48, y))?;
    }
    Ok(())
}

/// The smallest range holding `values` (in log10 units on a `log` axis),
/// widened by 5% on each side; when all values are equal, by half a decade
/// on a log axis, else by a tenth of the value (1 around 0). `None`
/// without values.
pub(crate) fn padded(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .map(|v| if log { v.log10() } else { v })
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else if log {
        0.5
    } else if lo == 0.0 {
        1.0
    } else {
        0.1 * lo.abs()
    };
    Some((lo - pad, hi + pad))
}

/// A tick label without trailing zeros: on a linear axis spanning `span`,
/// enough decimals to tell ticks about an eighth of the span apart; else
/// (a log axis) up to four significant digits; scientific notation below
/// 0.001 and from a million.
pub(crate) fn tick(v: f64, span: Option<f64>) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = trim_zeros(mantissa);
        return format!("{mantissa}e{exp}");
    }
    let decimals = match span {
        Some(s) if s > 0.0 => (-(s / 8.0).log10()).ceil(),
        _ => 3.0 - a.log10().floor(),
    };
    let decimals = decimals.clamp(0.0, 6.0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 0.2, 0.30000000000000004, 1.0, 150.0, 2500.5, 1e-4, 2e7]
            .iter()
            .map(|&v| tick(v, None))
            .collect();
        assert_eq!(
            labels,
            ["0", "0.2", "0.3", "1", "150", "2500", "1e-4", "2e7"]
        );
        // Close ticks on a narrow linear axis stay apart.
        let close: Vec<String> = [15.982, 15.984, 15.986]
            .iter()
            .map(|&v| tick(v, Some(0.02)))
            .collect();
        assert_eq!(close, ["15.982", "15.984", "15.986"]);
        assert_eq!(tick(20.0, Some(30.0)), "20");
    }

    #[test]
    fn lines_break_at_gaps_log_zeros_and_restarts() {
        let points = [
            (1.0, Some(1.0)),
            (2.0, Some(2.0)),
            (3.0, None),
            (4.0, Some(0.0)),
            (5.0, Some(3.0)),
            (2.0, Some(4.0)),
            (3.0, Some(5.0)),
        ];
        let s = segments(&points, true);
        assert_eq!(
            s,
            [
                vec![(1.0, 1.0), (2.0, 2.0)],
                vec![(5.0, 3.0)],
                vec![(2.0, 4.0), (3.0, 5.0)]
            ]
        );
        assert_eq!(
            segments(&points, false).len(),
            3,
            "0 is drawn on a linear axis"
        );
    }

    #[test]
    fn ranges_are_padded() {
        let near = |a: Option<(f64, f64)>, b: (f64, f64)| {
            let a = a.unwrap();
            assert!(
                (a.0 - b.0).abs() < 1e-12 && (a.1 - b.1).abs() < 1e-12,
                "{a:?}"
            );
        };
        near(padded([1.0, 3.0].into_iter(), false), (0.9, 3.1));
        near(padded([2.0].into_iter(), false), (1.8, 2.2));
        near(padded([0.0].into_iter(), false), (-1.0, 1.0));
        near(padded([10.0].into_iter(), true), (0.5, 1.5));
        assert_eq!(padded(std::iter::empty(), false), None);
    }
}

//! `glom plot`: the training curves of a run, as PNG charts drawn from its
//! `metrics.jsonl` (one JSON object per logged step, see README.md, "What a
//! run writes").
//!
//! Charts ([`CHARTS`], each [`WIDTH`] x [`HEIGHT`] pixels): the loss terms
//! on a log scale, the three collapse measures with one line per level, and
//! the throughput. Awake records are the lines, in file order: a record
//! without a value (a missing key or `null`) breaks the line there. Records
//! with `"phase": "sleep"` are sleep jobs; each is a dashed vertical marker
//! at its `step` (at the step of the record before it when it has none).
//! Keys the charts do not use are ignored; a used key whose value has the
//! wrong type is an error naming the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::draw::{text_width, write_png, Canvas, TEXT_HEIGHT};

/// Size of every chart, in pixels.
pub(crate) const WIDTH: usize = 960;
/// Size of every chart, in pixels.
pub(crate) const HEIGHT: usize = 540;

/// The scalar keys of a record that the charts use.
const SCALARS: [&str; 11] = [
    "loss_recon",
    "loss_distill_bu",
    "loss_distill_td",
    "loss_negative",
    "loss_variance",
    "loss_covariance",
    "loss_contrastive",
    "loss_autoencoder",
    "loss_neighbour_distill",
    "loss_total",
    "images_per_s",
];
/// The per-level keys (one value per level) that the charts use.
const PER_LEVEL: [&str; 3] = [
    "effective_rank_by_level",
    "dim_std_by_level",
    "mean_cosine_by_level",
];

/// What one chart shows.
pub(crate) struct Chart {
    /// File name in the output directory.
    pub(crate) file: &'static str,
    title: &'static str,
    /// Scalar keys, one line each; empty for a per-level chart.
    keys: &'static [&'static str],
    /// Per-level key, one line per level.
    per_level: Option<&'static str>,
    log: bool,
}

/// Every chart `glom plot` writes, in order.
pub(crate) const CHARTS: [Chart; 5] = [
    Chart {
        file: "losses.png",
        title: "losses per term (log scale)",
        keys: &[
            "loss_recon",
            "loss_distill_bu",
            "loss_distill_td",
            "loss_negative",
            "loss_covariance",
            "loss_contrastive",
            "loss_autoencoder",
            "loss_neighbour_distill",
            "loss_total",
        ],
        per_level: None,
        log: true,
    },
    Chart {
        file: "effective_rank.png",
        title: "effective rank (rankme) per level",
        keys: &[],
        per_level: Some("effective_rank_by_level"),
        log: false,
    },
    Chart {
        file: "dim_std.png",
        title: "per-dimension std per level",
        keys: &[],
        per_level: Some("dim_std_by_level"),
        log: false,
    },
    Chart {
        file: "mean_cosine.png",
        title: "mean pairwise cosine per level",
        keys: &[],
        per_level: Some("mean_cosine_by_level"),
        log: false,
    },
    Chart {
        file: "images_per_s.png",
        title: "throughput (images/s)",
        keys: &["images_per_s"],
        per_level: None,
        log: false,
    },
];

/// One awake record: its step and the values the charts use.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) step: f64,
    pub(crate) scalars: BTreeMap<&'static str, f64>,
    pub(crate) per_level: BTreeMap<&'static str, Vec<Option<f64>>>,
}

/// The records of a `metrics.jsonl`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Metrics {
    /// Awake records, in file order.
    pub(crate) awake: Vec<Record>,
    /// Steps of the sleep records, in file order.
    pub(crate) sleep: Vec<f64>,
}

/// `glom plot RUN_DIR --out DIR`: write every chart of [`CHARTS`] into
/// `out` (created if missing; default `RUN_DIR/plots`).
pub(crate) fn run(run_dir: &Path, out: Option<&Path>) -> Result<()> {
    if !run_dir.is_dir() {
        bail!("run directory {} does not exist", run_dir.display());
    }
    let file = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let metrics = parse_metrics(&text, &file)?;
    let out: PathBuf = out.map_or_else(|| run_dir.join("plots"), Path::to_path_buf);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    for chart in &CHARTS {
        let path = out.join(chart.file);
        write_png(&path, &render(chart, &metrics))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Read the records of a `metrics.jsonl` (`file` names it in errors).
/// Blank lines are skipped; a file without any record is an error.
pub(crate) fn parse_metrics(text: &str, file: &Path) -> Result<Metrics> {
    let name = file.display();
    let mut metrics = Metrics::default();
    let mut records = 0;
    let mut last_step = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .with_context(|| format!("{name} line {n}: not valid JSON"))?;
        let Value::Object(obj) = value else {
            bail!("{name} line {n}: expected a JSON object, found {value}");
        };
        records += 1;
        let at = |key: &str| format!("{name} line {n}: {key:?}");
        let step = number(obj.get("step"), || at("step"))?;
        let sleep = match obj.get("phase") {
            None | Some(Value::Null) => false,
            Some(Value::String(p)) => p == "sleep",
            Some(other) => bail!("{} is {other}, not a string", at("phase")),
        };
        if sleep {
            if let Some(s) = step.or(last_step) {
                metrics.sleep.push(s);
            }
            continue;
        }
        let Some(step) = step else {
            bail!("{name} line {n}: an awake record needs a \"step\"");
        };
        last_step = Some(step);
        let mut record = Record {
            step,
            ..Record::default()
        };
        for key in SCALARS {
            if let Some(v) = number(obj.get(key), || at(key))? {
                record.scalars.insert(key, v);
            }
        }
        for key in PER_LEVEL {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    let values = items
                        .iter()
                        .enumerate()
                        .map(|(l, v)| number(Some(v), || format!("{}[{l}]", at(key))))
                        .collect::<Result<_>>()?;
                    record.per_level.insert(key, values);
                }
                Some(other) => bail!("{} is {other}, not an array of numbers", at(key)),
            }
        }
        metrics.awake.push(record);
    }
    if records == 0 {
        bail!("{name} is empty: no records to plot");
    }
    if metrics.awake.is_empty() {
        bail!("{name} has no awake records (only sleep jobs): nothing to plot");
    }
    Ok(metrics)
}

/// A number, `None` for a missing key or `null`; `what` names the value in
/// the error for any other type.
fn number(value: Option<&Value>, what: impl Fn() -> String) -> Result<Option<f64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => Ok(x.as_f64()),
        Some(other) => bail!("{} is {other}, not a number", what()),
    }
}

/// One line of a chart: its legend and a point per awake record (`None`
/// breaks the line).
struct Series {
    name: String,
    points: Vec<(f64, Option<f64>)>,
}

/// The series of `chart`: one per key, or one per level (as many as the
/// longest per-level array has).
fn series(chart: &Chart, metrics: &Metrics) -> Vec<Series> {
    if let Some(key) = chart.per_level {
        let levels = metrics
            .awake
            .iter()
            .filter_map(|r| r.per_level.get(key).map(Vec::len))
            .max()
            .unwrap_or(0);
        return (0..levels)
            .map(|l| Series {
                name: format!("level {l}"),
                points: metrics
                    .awake
                    .iter()
                    .map(|r| {
                        let v = r
                            .per_level
                            .get(key)
                            .and_then(|v| v.get(l).copied().flatten());
                        (r.step, v)
                    })
                    .collect(),
            })
            .collect();
    }
    chart
        .keys
        .iter()
        .map(|&key| Series {
            name: key.to_string(),
            points: metrics
                .awake
                .iter()
                .map(|r| (r.step, r.scalars.get(key).copied()))
                .collect(),
        })
        .collect()
}

/// Line colours, in order of series (wrapping after the last).
const LINE_COLOURS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const INK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];
const SLEEP: [u8; 3] = [90, 90, 90];
const TITLE_SCALE: usize = 3;
const LABEL_SCALE: usize = 2;
const MARGIN: usize = 14;

/// A value range `[lo, hi]` of an axis (in log10 units on a log axis).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Range {
    lo: f64,
    hi: f64,
}

impl Range {
    /// The smallest range holding `values`, widened by 5% on each side;
    /// when all values are equal, by half a decade on a `log` axis, else by
    /// a tenth of the value (1 around 0). `None` without values.
    fn of(values: impl Iterator<Item = f64>, log: bool) -> Option<Self> {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
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
        Some(Self {
            lo: lo - pad,
            hi: hi + pad,
        })
    }
}

/// Ticks of a linear axis: multiples of 1, 2 or 5 x 10^k, about five of
/// them, inside the range; with their labels.
fn linear_ticks(range: Range, integer: bool) -> Vec<(f64, String)> {
    let raw = (range.hi - range.lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    let mut step = m * mag;
    if integer {
        step = step.max(1.0).round();
    }
    let first = (range.lo / step).ceil() as i64;
    let last = (range.hi / step).floor() as i64;
    (first..=last)
        .map(|i| {
            let v = i as f64 * step;
            (v, label(v, step))
        })
        .collect()
}

/// The label of a tick `v` on an axis whose ticks are `step` apart: as
/// many decimals as the step needs, or scientific notation for very large
/// or very small numbers.
fn label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let step_exp = step.abs().log10().floor();
    if v.abs() >= 1e6 || step.abs() < 1e-4 {
        let digits = (v.abs().log10().floor() - step_exp).clamp(0.0, 6.0) as usize;
        return format!("{v:.digits$e}");
    }
    let decimals = (-step_exp).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// Ticks of a log axis (`range` in log10 units): the powers of ten inside
/// it; when fewer than two, also 2 and 5 x 10^k; when still fewer, linear
/// ticks of the values.
fn log_ticks(range: Range) -> Vec<(f64, String)> {
    let decade = |k: i32| {
        let v = 10f64.powi(k);
        let text = if (-4..=5).contains(&k) {
            label(v, v)
        } else {
            format!("1e{k}")
        };
        (f64::from(k), text)
    };
    let (lo, hi) = (range.lo.ceil() as i32, range.hi.floor() as i32);
    let decades: Vec<(f64, String)> = (lo..=hi).map(decade).collect();
    if decades.len() >= 2 {
        return decades;
    }
    let mut ticks = Vec::new();
    for k in (range.lo.floor() as i32)..=(range.hi.ceil() as i32) {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(k);
            let at = v.log10();
            if at >= range.lo && at <= range.hi {
                ticks.push((at, label(v, 10f64.powi(k))));
            }
        }
    }
    if ticks.len() >= 2 {
        return ticks;
    }
    let values = Range {
        lo: 10f64.powf(range.lo),
        hi: 10f64.powf(range.hi),
    };
    linear_ticks(values, false)
        .into_iter()
        .filter(|(v, _)| *v > 0.0)
        .map(|(v, text)| (v.log10(), text))
        .collect()
}

/// Draw `chart` from `metrics`: title, framed plot area with grid lines
/// and tick labels, x axis "step", the lines, the sleep markers and a
/// legend on the right.
fn render(chart: &Chart, metrics: &Metrics) -> Canvas {
    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    let all = series(chart, metrics);
    // Values as plotted (log10 on a log axis, where only positive values show).
    let shown = |v: f64| {
        if !chart.log {
            Some(v)
        } else if v > 0.0 {
            Some(v.log10())
        } else {
            None
        }
    };
    let lines: Vec<Vec<(f64, Option<f64>)>> = all
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|&(x, y)| (x, y.and_then(shown)))
                .collect()
        })
        .collect();
    let mut legend: Vec<(String, Option<[u8; 3]>)> = all
        .iter()
        .zip(&lines)
        .enumerate()
        .map(|(k, (s, line))| {
            let any = s.points.iter().any(|(_, y)| y.is_some());
            let plotted = line.iter().any(|(_, y)| y.is_some());
            let name = match (any, plotted) {
                (false, _) => format!("{} (no values)", s.name),
                (true, false) => format!("{} (<= 0, not shown)", s.name),
                _ => s.name.clone(),
            };
            (name, Some(LINE_COLOURS[k % LINE_COLOURS.len()]))
        })
        .collect();
    if !metrics.sleep.is_empty() {
        legend.push((format!("sleep ({})", metrics.sleep.len()), None));
    }

    let y_range = Range::of(lines.iter().flatten().filter_map(|&(_, y)| y), chart.log);
    let x_range = Range::of(
        metrics
            .awake
            .iter()
            .map(|r| r.step)
            .chain(metrics.sleep.iter().copied()),
        false,
    )
    .unwrap_or(Range { lo: 0.0, hi: 1.0 });
    let y_ticks = match y_range {
        Some(r) if chart.log => log_ticks(r),
        Some(r) => linear_ticks(r, false),
        None => Vec::new(),
    };
    let x_ticks = linear_ticks(x_range, true);

    // Layout.
    let glyph_h = TEXT_HEIGHT * LABEL_SCALE;
    let tick_w = y_ticks
        .iter()
        .map(|(_, t)| text_width(t, LABEL_SCALE))
        .max()
        .unwrap_or(0);
    let legend_w = legend
        .iter()
        .map(|(t, _)| text_width(t, LABEL_SCALE))
        .max()
        .unwrap_or(0)
        + 36;
    let left = (MARGIN + tick_w + 10) as i64;
    let right = (WIDTH - MARGIN - legend_w - MARGIN) as i64;
    let top = (MARGIN + TEXT_HEIGHT * TITLE_SCALE + MARGIN) as i64;
    let bottom = (HEIGHT - MARGIN - 2 * glyph_h - 12) as i64;
    let px = |x: f64| {
        left + ((x - x_range.lo) / (x_range.hi - x_range.lo) * (right - left) as f64).round() as i64
    };
    let y_of = |y: f64, r: Range| {
        bottom - ((y - r.lo) / (r.hi - r.lo) * (bottom - top) as f64).round() as i64
    };

    let title_x = (WIDTH.saturating_sub(text_width(chart.title, TITLE_SCALE)) / 2) as i64;
    canvas.text(title_x, MARGIN as i64, chart.title, TITLE_SCALE, INK);

    // Grid and ticks.
    for (x, text) in &x_ticks {
        let at = px(*x);
        canvas.line((at, top), (at, bottom), GRID, 1);
        canvas.line((at, bottom), (at, bottom + 5), INK, 1);
        let w = text_width(text, LABEL_SCALE) as i64;
        canvas.text(at - w / 2, bottom + 8, text, LABEL_SCALE, INK);
    }
    if let Some(r) = y_range {
        for (y, text) in &y_ticks {
            let at = y_of(*y, r);
            canvas.line((left, at), (right, at), GRID, 1);
            canvas.line((left - 5, at), (left, at), INK, 1);
            let w = text_width(text, LABEL_SCALE) as i64;
            let h = (7 * LABEL_SCALE) as i64;
            canvas.text(left - 8 - w, at - h / 2, text, LABEL_SCALE, INK);
        }
    }
    let x_label = "step";
    let w = text_width(x_label, LABEL_SCALE) as i64;
    canvas.text(
        (left + right) / 2 - w / 2,
        bottom + 8 + glyph_h as i64 + 4,
        x_label,
        LABEL_SCALE,
        INK,
    );

    // Sleep markers, then the lines over them.
    for &s in &metrics.sleep {
        canvas.dashed_vline(px(s), top, bottom, SLEEP, 4);
    }
    match y_range {
        Some(r) => {
            for (k, line) in lines.iter().enumerate() {
                let colour = LINE_COLOURS[k % LINE_COLOURS.len()];
                draw_line(&mut canvas, line, colour, px, |y| y_of(y, r));
            }
        }
        None => {
            let note = "no values in metrics.jsonl";
            let w = text_width(note, LABEL_SCALE) as i64;
            canvas.text(
                (left + right) / 2 - w / 2,
                (top + bottom) / 2,
                note,
                LABEL_SCALE,
                INK,
            );
        }
    }

    // Frame (over the grid and the line ends).
    canvas.line((left, top), (right, top), INK, 1);
    canvas.line((left, bottom), (right, bottom), INK, 1);
    canvas.line((left, top), (left, bottom), INK, 1);
    canvas.line((right, top), (right, bottom), INK, 1);

    // Legend.
    let lx = right + MARGIN as i64;
    for (i, (text, colour)) in legend.iter().enumerate() {
        let y = top + 6 + i as i64 * (glyph_h as i64 + 8);
        let mid = y + (7 * LABEL_SCALE / 2) as i64;
        match colour {
            Some(c) => canvas.line((lx, mid), (lx + 24, mid), *c, 3),
            None => {
                for x in [lx + 11, lx + 12] {
                    canvas.dashed_vline(x, y - 2, y + glyph_h as i64, SLEEP, 4);
                }
            }
        }
        canvas.text(lx + 32, y, text, LABEL_SCALE, INK);
    }
    canvas
}

/// Draw one series: segments between consecutive present points, a small
/// square for a point with no present neighbour.
fn draw_line(
    canvas: &mut Canvas,
    line: &[(f64, Option<f64>)],
    colour: [u8; 3],
    px: impl Fn(f64) -> i64,
    py: impl Fn(f64) -> i64,
) {
    let at = |i: usize| line.get(i).and_then(|&(x, y)| y.map(|y| (px(x), py(y))));
    for i in 0..line.len() {
        let Some(p) = at(i) else { continue };
        match at(i + 1) {
            Some(q) => canvas.line(p, q, colour, 2),
            None if i == 0 || at(i - 1).is_none() => canvas.line(p, p, colour, 4),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Metrics> {
        parse_metrics(text, Path::new("run/metrics.jsonl"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn records_keep_what_the_charts_use() {
        let m = parse(concat!(
            r#"{"step":1,"phase":"awake","loss_recon":0.5,"effective_rank_by_level":[3.0,null],"extra":"x"}"#,
            "\n\n",
            r#"{"step":2,"phase":"sleep","loss_negative":0.1}"#,
            "\n",
            r#"{"phase":"sleep"}"#,
            "\n",
            r#"{"step":3,"images_per_s":10}"#,
            "\n",
        ))
        .unwrap();
        assert_eq!(
            m.sleep,
            [2.0, 1.0],
            "a sleep record without a step sits at the last awake step"
        );
        assert_eq!(m.awake.len(), 2);
        assert_eq!(m.awake[0].step, 1.0);
        assert_eq!(m.awake[0].scalars.get("loss_recon"), Some(&0.5));
        assert_eq!(
            m.awake[0].per_level.get("effective_rank_by_level"),
            Some(&vec![Some(3.0), None])
        );
        assert_eq!(m.awake[1].scalars.get("images_per_s"), Some(&10.0));
        assert!(m.awake[1].per_level.is_empty());
    }

    #[test]
    fn bad_records_name_the_file_line_and_key() {
        let e = err("{\"step\":1}\n{\"step\":2,\n");
        assert!(
            e.contains("run/metrics.jsonl line 2: not valid JSON"),
            "{e}"
        );
        let e = err("{\"step\":1}\n[1,2]\n");
        assert!(e.contains("line 2: expected a JSON object"), "{e}");
        let e = err("{\"step\":1,\"loss_total\":\"high\"}");
        assert!(
            e.contains("line 1: \"loss_total\" is \"high\", not a number"),
            "{e}"
        );
        let e = err("{\"step\":1,\"dim_std_by_level\":[0.1,\"x\"]}");
        assert!(
            e.contains("line 1: \"dim_std_by_level\"[1] is \"x\""),
            "{e}"
        );
        let e = err("{\"step\":1,\"dim_std_by_level\":3}");
        assert!(e.contains("not an array of numbers"), "{e}");
        let e = err("{\"loss_total\":1}");
        assert!(
            e.contains("line 1: an awake record needs a \"step\""),
            "{e}"
        );
        let e = err("\n \n");
        assert!(e.contains("run/metrics.jsonl is empty"), "{e}");
        let e = err("{\"step\":1,\"phase\":\"sleep\"}");
        assert!(e.contains("no awake records"), "{e}");
    }

    #[test]
    fn linear_ticks_are_round_and_inside() {
        let t = linear_ticks(Range { lo: 0.0, hi: 1.0 }, false);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = linear_ticks(Range { lo: 0.6, hi: 3.4 }, true);
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1", "2", "3"], "steps get integer ticks");
        let t = linear_ticks(Range { lo: 1e-6, hi: 5e-6 }, false);
        assert!(t.iter().all(|(_, s)| s.contains('e')), "{t:?}");
    }

    #[test]
    fn log_ticks_are_decades_or_finer_when_the_range_is_narrow() {
        let t = log_ticks(Range { lo: -3.2, hi: 0.1 });
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.001", "0.01", "0.1", "1"]);
        let t = log_ticks(Range { lo: -0.9, hi: 0.5 });
        let labels: Vec<&str> = t.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.2", "0.5", "1", "2"]);
        let t = log_ticks(Range { lo: 0.2, hi: 0.25 });
        assert!(t.len() >= 2, "{t:?}");
    }

    #[test]
    fn every_chart_has_the_fixed_size_and_shows_its_lines() {
        let m = parse(concat!(
            r#"{"step":10,"loss_recon":0.01,"loss_total":1.0,"loss_negative":0,"images_per_s":100,"mean_cosine_by_level":[0.9,0.99]}"#,
            "\n",
            r#"{"step":20,"phase":"sleep"}"#,
            "\n",
            r#"{"step":30,"loss_recon":0.02,"loss_total":0.5,"loss_negative":0,"images_per_s":120,"mean_cosine_by_level":[0.5,0.98]}"#,
        ))
        .unwrap();
        for chart in &CHARTS {
            let c = render(chart, &m);
            assert_eq!((c.width, c.height), (WIDTH, HEIGHT), "{}", chart.file);
            let inked = |colour: [u8; 3]| c.rgb.chunks(3).filter(|p| *p == colour).count();
            assert!(inked(SLEEP) > 0, "{}: no sleep marker", chart.file);
            let lines: &[usize] = match chart.file {
                "losses.png" => &[0, 7], // recon, total
                "mean_cosine.png" => &[0, 1],
                "images_per_s.png" => &[0],
                _ => &[],
            };
            for &k in lines {
                // More ink than the legend swatch alone (25 x 3 pixels).
                assert!(inked(LINE_COLOURS[k]) > 100, "{}: line {k}", chart.file);
            }
        }
        let a = render(&CHARTS[0], &m);
        let b = render(&CHARTS[0], &m);
        assert_eq!(a.rgb, b.rgb, "deterministic");
    }
}

//! `glom plot`: the training curves of a run, as PNG charts drawn from its
//! `metrics.jsonl` (see [`metrics`]), and the evaluation over its
//! checkpoints (see [`checkpoints`]).
//!
//! Charts ([`CHARTS`], each [`WIDTH`] x [`HEIGHT`] pixels, drawn by
//! [`chart`]): the loss terms on a log scale, the three collapse measures
//! with one line per level, and the throughput, over the step. Sleep jobs
//! are dashed grey markers labelled "sleep"; restarts (a step back in the
//! log) and the step a resumed run started from (`resumed_from_step` of its
//! `summary.json`) are solid red markers.
//!
//! # Layout
//! - [`metrics`]: reading `metrics.jsonl`.
//! - [`chart`]: one line chart with plotters.
//! - [`checkpoints`]: `--eval-checkpoints` and `evaluation.png`.

pub(crate) mod chart;
pub(crate) mod checkpoints;
pub(crate) mod metrics;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use crate::picture::{init_fonts, white, write_png};
use chart::{Figure, Line, Marker};
use metrics::{parse_metrics, Metrics};

/// Width of every chart, in pixels.
pub(crate) const WIDTH: u32 = 960;
/// Height of every chart, in pixels.
pub(crate) const HEIGHT: u32 = 540;

/// What one chart shows.
pub(crate) struct Chart {
    /// File name in the output directory.
    pub(crate) file: &'static str,
    title: &'static str,
    /// Title of the y axis.
    y_label: &'static str,
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
        y_label: "loss",
        title: "Losses per term (log scale)",
        keys: &metrics::LOSS_KEYS,
        per_level: None,
        log: true,
    },
    Chart {
        file: "effective_rank.png",
        y_label: "effective rank",
        title: "Effective rank (RankMe) per level",
        keys: &[],
        per_level: Some("effective_rank_by_level"),
        log: false,
    },
    Chart {
        file: "dim_std.png",
        y_label: "std per dimension",
        title: "Per-dimension std per level",
        keys: &[],
        per_level: Some("dim_std_by_level"),
        log: false,
    },
    Chart {
        file: "mean_cosine.png",
        y_label: "mean cosine",
        title: "Mean pairwise cosine per level",
        keys: &[],
        per_level: Some("mean_cosine_by_level"),
        log: false,
    },
    Chart {
        file: "images_per_s.png",
        y_label: "images/s",
        title: "Throughput (images/s)",
        keys: &["images_per_s"],
        per_level: None,
        log: false,
    },
];

/// `glom plot RUN_DIR [--out DIR] [--eval-checkpoints]`: write every chart
/// of [`CHARTS`] into `out` (created if missing; default `RUN_DIR/plots`);
/// with `eval_checkpoints`, first evaluate the run's `checkpoints/step-N`
/// not evaluated yet. `evaluation.png` is written whenever the run has two
/// or more evaluated checkpoints.
pub(crate) fn run(run_dir: &Path, out: Option<&Path>, eval_checkpoints: bool) -> Result<()> {
    if !run_dir.is_dir() {
        bail!("run directory {} does not exist", run_dir.display());
    }
    let file = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let metrics = parse_metrics(&text, &file)?;
    let resumed = resumed_from(run_dir)?;
    let evaluated = if eval_checkpoints {
        checkpoints::evaluate_new(run_dir)?
    } else {
        checkpoints::read(run_dir)?
    };
    let out: PathBuf = out.map_or_else(|| run_dir.join("plots"), Path::to_path_buf);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output directory {}", out.display()))?;
    let marks = markers(&metrics, resumed);
    for chart in &CHARTS {
        let path = out.join(chart.file);
        write_png(&path, WIDTH, HEIGHT, &render(chart, &metrics, &marks)?)?;
        println!("wrote {}", path.display());
    }
    if evaluated.len() >= 2 {
        let path = out.join(checkpoints::FILE);
        let (w, h) = checkpoints::SIZE;
        write_png(&path, w, h, &checkpoints::render(&evaluated)?)?;
        println!("wrote {}", path.display());
    } else if eval_checkpoints {
        println!(
            "{} needs two or more evaluated checkpoints (checkpoints/step-N); {} has {}",
            checkpoints::FILE,
            run_dir.display(),
            evaluated.len()
        );
    }
    Ok(())
}

/// `resumed_from_step` of the run's `summary.json` when it is above 0;
/// `None` without a summary (a run still going).
fn resumed_from(run_dir: &Path) -> Result<Option<f64>> {
    let path = run_dir.join("summary.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(doc["resumed_from_step"].as_f64().filter(|&s| s > 0.0))
}

/// The sleep and restart markers of every chart, and their legend entries.
struct Marks {
    markers: Vec<(f64, &'static str, bool)>,
    legend: Vec<(String, bool)>,
}

fn markers(metrics: &Metrics, resumed: Option<f64>) -> Marks {
    let mut markers: Vec<(f64, &'static str, bool)> = Vec::new();
    let mut legend = Vec::new();
    if !metrics.sleep.is_empty() {
        markers.extend(metrics.sleep.iter().map(|&s| (s, "sleep", true)));
        legend.push((format!("sleep job ({})", metrics.sleep.len()), true));
    }
    let restarts = metrics.restarts.len() + usize::from(resumed.is_some());
    if restarts > 0 {
        markers.extend(resumed.map(|s| (s, "resumed", false)));
        markers.extend(metrics.restarts.iter().map(|&s| (s, "restart", false)));
        legend.push((format!("restart ({restarts})"), false));
    }
    Marks { markers, legend }
}

/// The series of `chart`: one per key, or one per level (as many as the
/// longest per-level array has).
fn series(chart: &Chart, metrics: &Metrics) -> Vec<Line> {
    if let Some(key) = chart.per_level {
        let levels = metrics
            .awake
            .iter()
            .filter_map(|r| r.per_level.get(key).map(Vec::len))
            .max()
            .unwrap_or(0);
        return (0..levels)
            .map(|l| Line {
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
        .map(|&key| Line {
            name: key.to_string(),
            points: metrics
                .awake
                .iter()
                .map(|r| (r.step, r.scalars.get(key).copied()))
                .collect(),
        })
        .collect()
}

/// Draw `chart` from `metrics` with `marks`: an RGB buffer of [`WIDTH`] x
/// [`HEIGHT`] pixels (see [`white`]).
fn render(chart: &Chart, metrics: &Metrics, marks: &Marks) -> Result<Vec<u8>> {
    init_fonts();
    let fig = Figure {
        title: chart.title,
        x_label: "step",
        y_label: chart.y_label,
        log: chart.log,
        lines: series(chart, metrics),
        markers: marks
            .markers
            .iter()
            .map(|&(x, label, dashed)| Marker {
                x,
                label: label.to_string(),
                dashed,
            })
            .collect(),
        marker_legend: marks.legend.clone(),
    };
    let mut rgb = white(WIDTH, HEIGHT);
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        chart::draw(&area, &fig)?;
        area.present()?;
    }
    Ok(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chart::{LINE_COLOURS, RESTART, SLEEP};

    fn parse(text: &str) -> Metrics {
        parse_metrics(text, Path::new("run/metrics.jsonl")).unwrap()
    }

    const TWO_RECORDS: &str = concat!(
        r#"{"step":10,"loss_recon":0.01,"loss_total":1.0,"loss_negative":0,"images_per_s":100,"mean_cosine_by_level":[0.9,0.99]}"#,
        "\n",
        r#"{"step":20,"phase":"sleep"}"#,
        "\n",
        r#"{"step":30,"loss_recon":0.02,"loss_total":0.5,"loss_negative":0,"images_per_s":120,"mean_cosine_by_level":[0.5,0.98]}"#,
    );

    fn count(rgb: &[u8], colour: RGBColor) -> usize {
        let c = [colour.0, colour.1, colour.2];
        rgb.chunks(3).filter(|p| *p == c).count()
    }

    /// Pixels darker than mid grey in rows `ys` and columns `xs`.
    fn ink(rgb: &[u8], ys: std::ops::Range<u32>, xs: std::ops::Range<u32>) -> usize {
        ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| rgb[3 * (y * WIDTH + x) as usize] < 128)
            .count()
    }

    #[test]
    fn every_chart_has_the_fixed_size_and_shows_its_lines_and_markers() {
        let m = parse(TWO_RECORDS);
        let marks = markers(&m, None);
        for chart in &CHARTS {
            let rgb = render(chart, &m, &marks).unwrap();
            assert_eq!(rgb.len(), (3 * WIDTH * HEIGHT) as usize, "{}", chart.file);
            assert!(count(&rgb, SLEEP) > 0, "{}: no sleep marker", chart.file);
            let lines: &[usize] = match chart.file {
                "losses.png" => &[0, 9], // recon, total
                "mean_cosine.png" => &[0, 1],
                "images_per_s.png" => &[0],
                _ => &[],
            };
            for &k in lines {
                // More ink than the legend swatch alone (33 x 3 pixels).
                assert!(
                    count(&rgb, LINE_COLOURS[k]) > 150,
                    "{}: line {k}",
                    chart.file
                );
            }
        }
        let a = render(&CHARTS[0], &m, &marks).unwrap();
        let b = render(&CHARTS[0], &m, &marks).unwrap();
        assert_eq!(a, b, "deterministic");
    }

    #[test]
    fn the_title_and_axis_titles_are_drawn() {
        let m = parse(TWO_RECORDS);
        let marks = markers(&m, None);
        let rgb = render(&CHARTS[4], &m, &marks).unwrap();
        let titled = ink(&rgb, 0..chart::TITLE_BAND, 0..WIDTH);
        assert!(titled > 200, "title band: {titled} dark pixels");
        // "step" under the x tick labels, centred under the plot.
        let x_title = ink(&rgb, HEIGHT - 30..HEIGHT, 300..600);
        assert!(x_title > 40, "x axis title: {x_title} dark pixels");
        // The y axis title runs upwards along the left edge.
        let y_title = ink(&rgb, 150..400, 0..30);
        assert!(y_title > 40, "y axis title: {y_title} dark pixels");

        let untitled = Chart {
            file: "x.png",
            title: "",
            y_label: "",
            keys: CHARTS[4].keys,
            per_level: None,
            log: false,
        };
        let rgb = render(&untitled, &m, &marks).unwrap();
        assert_eq!(ink(&rgb, 0..chart::TITLE_BAND, 0..WIDTH), 0);
        assert_eq!(ink(&rgb, 150..400, 0..30), 0);
    }

    #[test]
    fn restarts_and_resumes_are_red_markers_in_the_legend() {
        let m = parse("{\"step\":10,\"images_per_s\":1}\n{\"step\":20,\"images_per_s\":2}\n{\"step\":15,\"images_per_s\":3}\n");
        let marks = markers(&m, Some(5.0));
        assert_eq!(marks.legend, [("restart (2)".to_string(), false)]);
        let rgb = render(&CHARTS[4], &m, &marks).unwrap();
        assert!(count(&rgb, RESTART) > 300, "two full-height red lines");
        let none = markers(&parse("{\"step\":10,\"images_per_s\":1}\n"), None);
        assert!(none.markers.is_empty() && none.legend.is_empty());
    }
}

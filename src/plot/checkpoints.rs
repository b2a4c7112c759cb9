//! The evaluation over a run's checkpoints: `glom plot --eval-checkpoints`
//! evaluates every `checkpoints/step-N` of the run (as `glom eval` does,
//! without the random-init baseline) that `RUN_DIR/evaluations.jsonl` does
//! not hold yet, and appends one record per checkpoint there (`step`,
//! `checkpoint` and the fields of `glom eval --json`). From two records on,
//! `glom plot` draws [`FILE`]: the island ARIs and the probe accuracy
//! above, the reconstruction PSNR below, over the step.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glom_worker::checkpoint;
use glom_worker::eval::{evaluate, EvalReport};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::chart::{self, Figure, Line};
use crate::picture::{init_fonts, white};
use crate::run::{datasets, progress, whole_model};

/// File name of the chart in the output directory.
pub(crate) const FILE: &str = "evaluation.png";
/// Size of the chart `(width, height)`, in pixels.
pub(crate) const SIZE: (u32, u32) = (960, 900);
/// The records' file, in the run directory.
const RECORDS: &str = "evaluations.jsonl";

/// The evaluation of one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Evaluated {
    pub(crate) step: u64,
    /// The checkpoint directory evaluated.
    pub(crate) checkpoint: String,
    #[serde(flatten)]
    pub(crate) report: EvalReport,
}

/// The records of `RUN_DIR/evaluations.jsonl`, by step (none without the
/// file). A bad line is an error naming the file and the line.
pub(crate) fn read(run_dir: &Path) -> Result<Vec<Evaluated>> {
    let path = run_dir.join(RECORDS);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Evaluated> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Evaluated = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: not an evaluation record",
                path.display(),
                i + 1
            )
        })?;
        out.retain(|e| e.step != record.step);
        out.push(record);
    }
    out.sort_by_key(|e| e.step);
    Ok(out)
}

/// The run's complete `checkpoints/step-N` directories, by step. A
/// directory without `manifest.json` (a save that was interrupted, or the
/// shards of a step the divergence guard stopped) is not a checkpoint and
/// is skipped with a warning.
fn step_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let name = entry.file_name();
        let step = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step {
            let dir = entry.path();
            if dir.join(glom_protocol::manifest::MANIFEST_FILE).is_file() {
                out.push((step, dir));
            } else {
                tracing::warn!(dir = %dir.display(), "skipped: no manifest.json, not a complete checkpoint");
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Evaluate every `checkpoints/step-N` of the run not in
/// `evaluations.jsonl` yet, append them there; all records, by step.
pub(crate) fn evaluate_new(run_dir: &Path) -> Result<Vec<Evaluated>> {
    let mut done = read(run_dir)?;
    let path = run_dir.join(RECORDS);
    for (step, dir) in step_checkpoints(run_dir)? {
        if done.iter().any(|e| e.step == step) {
            continue;
        }
        let manifest = checkpoint::read_manifest(&dir)?;
        let cfg = manifest.config.clone();
        let model = whole_model(&cfg)?;
        checkpoint::load_into(&dir, &model, None)?;
        let data = datasets(&cfg)?;
        let bar = progress(0, &format!("eval step {step}"));
        let report = evaluate(
            &model,
            data.held_out.as_ref(),
            data.train.as_ref(),
            &mut |_, done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?;
        bar.finish_and_clear();
        let record = Evaluated {
            step: manifest.step,
            checkpoint: dir.display().to_string(),
            report,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(&record)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "evaluated {} (step {}): PSNR {:.2} dB",
            dir.display(),
            record.step,
            record.report.recon_psnr_db
        );
        done.push(record);
    }
    done.sort_by_key(|e| e.step);
    Ok(done)
}

/// Draw [`FILE`] from `evaluated`: an RGB buffer of [`SIZE`].
pub(crate) fn render(evaluated: &[Evaluated]) -> Result<Vec<u8>> {
    init_fonts();
    let line = |name: &str, value: fn(&EvalReport) -> Option<f64>| Line {
        name: name.to_string(),
        points: evaluated
            .iter()
            .map(|e| (e.step as f64, value(&e.report)))
            .collect(),
    };
    let scores = Figure {
        title: "Evaluation over checkpoints: islands and probe",
        x_label: "checkpoint step",
        y_label: "ARI / accuracy",
        log: false,
        lines: vec![
            line("ARI object (threshold)", |r| r.island_ari_object),
            line("ARI part (threshold)", |r| r.island_ari_part),
            line("ARI object (true k)", |r| r.island_ari_object_k),
            line("ARI part (true k)", |r| r.island_ari_part_k),
            line("probe accuracy", |r| r.probe_accuracy),
        ],
        markers: Vec::new(),
        marker_legend: Vec::new(),
    };
    let psnr = Figure {
        title: "Evaluation over checkpoints: reconstruction",
        x_label: "checkpoint step",
        y_label: "PSNR (dB)",
        log: false,
        lines: vec![line("recon PSNR, masked patches", |r| {
            Some(r.recon_psnr_db)
        })],
        markers: Vec::new(),
        marker_legend: Vec::new(),
    };
    let (w, h) = SIZE;
    let mut rgb = white(w, h);
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        let (top, bottom) = area.split_vertically(h / 2);
        chart::draw(&top, &scores)?;
        chart::draw(&bottom, &psnr)?;
        area.present()?;
    }
    Ok(rgb)
}

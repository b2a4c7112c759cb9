//! The per-level measures of a training step, for the telemetry and the
//! log, and what computing them costs.
//!
//! They run every `metrics.every_steps` steps on what the step already
//! produced (the settled embeddings) plus a few forward passes of the nets,
//! so their cost is a small, measured fraction of a step: `glom train` logs
//! it at the end and writes it to `summary.json` under `monitor`.

use std::time::Instant;

use anyhow::Result;
use candle_core::DType;
use glom_protocol::Config;
use glom_worker::analysis::CollapseStats;
use glom_worker::learn::{collapse_by_level, StepOutput};
use glom_worker::model::Glom;
use glom_worker::monitor;

use crate::metrics::LevelReport;

/// Images of the batch whose islands are counted (clustering is the dearest
/// measure, quadratic in the locations of an image).
const ISLAND_IMAGES: usize = 4;

/// Collapse measures and the full level reports of one step.
pub(crate) struct Measured {
    pub(crate) collapse: Vec<CollapseStats>,
    pub(crate) levels: Vec<LevelReport>,
    pub(crate) seconds: f64,
}

/// Every per-level measure of the step that produced `out` (step number `step`).
pub(crate) fn measure(cfg: &Config, model: &Glom, out: &StepOutput, step: u64) -> Result<Measured> {
    let started = Instant::now();
    let collapse = collapse_by_level(&out.levels, cfg.train.rank_sample, cfg.seed, step)?;
    let disagreement = monitor::disagreement_by_level(model)?;
    let agreement = monitor::prediction_agreement(model, &out.levels)?;
    let mut levels = Vec::with_capacity(out.levels.len());
    for (l, t) in out.levels.iter().enumerate() {
        let (p, b, d) = t.dims3()?;
        let rows: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (within, across) = monitor::cosine_within_across(&rows, p, b, d);
        levels.push(LevelReport {
            effective_rank: collapse[l].effective_rank,
            dim_std: collapse[l].mean_dim_std,
            mean_cosine: across,
            mean_cosine_within_image: within,
            islands_per_image: monitor::islands_per_image(
                &rows,
                p,
                b,
                d,
                ISLAND_IMAGES,
                cfg.eval.island_threshold,
            ),
            codistill_disagreement: disagreement.get(l).copied().unwrap_or(0.0),
            agreement: agreement.get(l).copied().unwrap_or_default(),
        });
    }
    Ok(Measured {
        collapse,
        levels,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Running totals of step and measurement time.
#[derive(Debug, Default)]
pub(crate) struct Cost {
    steps: u64,
    step_seconds: f64,
    passes: u64,
    pass_seconds: f64,
}

impl Cost {
    pub(crate) fn add_step(&mut self, seconds: f64) {
        self.steps += 1;
        self.step_seconds += seconds;
    }

    pub(crate) fn add_pass(&mut self, seconds: f64) {
        self.passes += 1;
        self.pass_seconds += seconds;
    }

    /// Mean pass time, mean step time, their ratio, and the share of the
    /// whole training time the passes took.
    pub(crate) fn summary(&self) -> serde_json::Value {
        let per_pass = self.pass_seconds / self.passes.max(1) as f64;
        let per_step = self.step_seconds / self.steps.max(1) as f64;
        serde_json::json!({
            "passes": self.passes,
            "seconds_per_pass": per_pass,
            "seconds_per_step": per_step,
            "pass_fraction_of_step": per_pass / per_step.max(1e-12),
            "fraction_of_training": self.pass_seconds
                / (self.pass_seconds + self.step_seconds).max(1e-12),
        })
    }
}

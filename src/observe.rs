//! The per-level measures of a training step, for the telemetry and the
//! log, and what computing them costs.
//!
//! Every `metrics.every_steps` steps (and wherever a metrics record is
//! logged) the workers report an observation of their locations; the
//! coordinator's driver puts them together in global order
//! ([`glom_coordinator::GridObservation`]) and computes here the numbers of
//! the whole grid, the same whatever the tiling. Their cost (the workers'
//! share plus this one) is a small, measured fraction of a step: `glom
//! train` logs it at the end and writes it to `summary.json` under `monitor`.

use std::time::Instant;

use glom_coordinator::GridObservation;
use glom_protocol::Config;
use glom_worker::analysis::{collapse_stats, CollapseStats};
use glom_worker::monitor::{self, Agreement};

use crate::metrics::LevelReport;

/// Collapse measures and the full level reports of one observed step.
pub(crate) struct Measured {
    pub(crate) collapse: Vec<CollapseStats>,
    pub(crate) levels: Vec<LevelReport>,
    /// What computing them took here (the workers' share comes on top).
    pub(crate) seconds: f64,
}

/// Every per-level measure of a grid observation.
pub(crate) fn measure(cfg: &Config, o: &GridObservation) -> Measured {
    let started = Instant::now();
    let (p, b, d) = (o.locations, o.images, o.dim);
    let mut collapse = Vec::with_capacity(o.levels.len());
    let mut levels = Vec::with_capacity(o.levels.len());
    for level in &o.levels {
        let rows = &level.embeddings;
        let stats = collapse_stats(rows, d);
        let (within, across) = monitor::cosine_within_across(rows, p, b, d);
        levels.push(LevelReport {
            effective_rank: stats.effective_rank,
            dim_std: stats.mean_dim_std,
            mean_cosine: across,
            mean_cosine_within_image: within,
            islands_per_image: monitor::islands_per_image(
                rows,
                p,
                b,
                d,
                b,
                cfg.eval.island_threshold,
            ),
            codistill_disagreement: monitor::disagreement_of(&level.probe, d),
            agreement: Agreement {
                bottom_up: level.agreement_bu,
                top_down: level.agreement_td,
            },
        });
        collapse.push(stats);
    }
    Measured {
        collapse,
        levels,
        seconds: started.elapsed().as_secs_f64(),
    }
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

#[cfg(test)]
mod tests {
    use glom_coordinator::GridLevel;

    use super::*;
    use crate::metrics::{PromTelemetry, RunInfo, Telemetry};

    /// Degenerate states (every vector zero, or every vector the same)
    /// give defined, finite measures, and the exposition never holds NaN.
    #[test]
    fn degenerate_states_give_finite_measures_and_no_nan_is_exported() {
        let cfg = Config::default();
        let (p, b, d) = (4, 3, 8);
        let info = RunInfo {
            weights: "per_location",
            learning: "local",
            dim: d,
            workers: 1,
            levels: 2,
        };
        let t = PromTelemetry::new(&info).unwrap();
        for value in [0.0f32, 0.5] {
            let level = GridLevel {
                embeddings: vec![value; p * b * d],
                probe: vec![value; p * d],
                agreement_bu: Some(0.0),
                agreement_td: None,
            };
            let o = GridObservation {
                images: b,
                dim: d,
                locations: p,
                levels: vec![level.clone(), level],
            };
            let m = measure(&cfg, &o);
            for r in &m.levels {
                let values = [
                    Some(r.effective_rank),
                    Some(r.dim_std),
                    r.mean_cosine,
                    r.mean_cosine_within_image,
                    Some(r.islands_per_image),
                    Some(r.codistill_disagreement),
                ];
                for v in values {
                    let v = v.expect("a batch of 3 images has every measure");
                    assert!(v.is_finite(), "value {value}: {r:?}");
                }
            }
            t.levels(&m.levels, m.seconds);
            let text = t.encode();
            assert!(!text.contains("NaN"), "value {value}: {text}");
        }
    }
}

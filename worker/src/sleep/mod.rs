//! The sleep job: offline negative learning (paper sections 7 and 12.2,
//! DESIGN.md section 3).
//!
//! Awake training is positive-only, and positive-only learning collapses
//! (FINDINGS item 1). The paper's section 12.2 proposes doing the negative
//! learning offline, "at night": the top-level embeddings generate, through
//! the top-down nets, embeddings at every level of every column ("dreams");
//! the bottom-up nets are then trained to keep their predictions from those
//! dreams apart from the consensus vectors of unrelated contexts, with a
//! hinge on similarity above a margin (section 7: separation, not distance).
//! A negative phase comes first, then short positive phases on the generated
//! inputs alternate with negative phases.
//!
//! Generation needs no perceptual inference, hence no attention between
//! columns: every location dreams alone, so a tile sleeps without any halo
//! and a worker without peers runs the job on its own locations.
//!
//! This module is pure computation: a [`ReplayBuffer`] of recent consensus
//! states, [`dream`], and [`run_sleep`] which updates the model's parameters
//! in place; [`run_job`] wraps it for one scheduled job of a worker (its
//! parameters from `[sleep]`, its seed from the coordinator's
//! `SleepStart`, a collapse measurement before and after), and
//! [`observe_bottom_up`] is that measurement: the initial bottom-up pass of
//! a fixed sample of images, which needs no halo either.

mod job;
mod replay;
mod run;
#[cfg(test)]
mod tests;

use glom_protocol::config::{Config, VarianceForm};

pub use crate::model::terms::{cosine, hinge};
pub use job::{
    dream, evaluate_negative, run_sleep, run_sleep_with, SleepReport, NEGATIVE_CANDIDATES,
};
pub use replay::ReplayBuffer;
pub use run::{
    bottom_up_pass, fill_replay, job_seed, observation_images, observe_bottom_up, replay_for,
    run_job, SleepOutcome,
};

/// Lengths, margin and rates of one sleep job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SleepParams {
    /// Total optimisation steps of the job (negative and positive together).
    pub steps: usize,
    /// Length of each negative phase, in steps (the job starts with one).
    pub negative_steps: usize,
    /// Length of each positive phase, in steps (0: negative-only sleep).
    pub positive_steps: usize,
    /// Cosine similarity above which a prediction and a negative are pushed
    /// apart; pairs already below it are left alone.
    pub margin: f64,
    /// Adam learning rate of both phases.
    pub learning_rate: f64,
    /// Standard deviation of the gaussian perturbation added to stored
    /// top-level vectors before dreaming (0: dream the stored states).
    pub noise: f64,
    /// Dreamed samples per location per step.
    pub batch: usize,
    /// Weights of the variance and decorrelation terms on the negative
    /// phase's bottom-up predictions, over the dreamed samples at each
    /// location (0 = off), and the variance term's form and target.
    pub variance_weight: f64,
    pub covariance_weight: f64,
    pub variance_form: VarianceForm,
    pub variance_target: f64,
    /// `sleep.frame_gap`: frame distances of the negatives within the
    /// dream's own sequence (`[0, 0]` = other stored items only).
    pub frame_gap: [usize; 2],
}

impl From<&Config> for SleepParams {
    /// The `[sleep]` keys, and the variance form and target of `[train]`.
    fn from(cfg: &Config) -> Self {
        let c = &cfg.sleep;
        Self {
            steps: c.steps as usize,
            negative_steps: c.negative_steps as usize,
            positive_steps: c.positive_steps as usize,
            margin: c.margin,
            learning_rate: c.learning_rate,
            noise: c.noise,
            batch: c.batch,
            variance_weight: c.variance_weight,
            covariance_weight: c.covariance_weight,
            variance_form: cfg.train.variance_form,
            variance_target: cfg.train.variance_target,
            frame_gap: c.frame_gap,
        }
    }
}

impl Default for SleepParams {
    /// The `[sleep]` defaults of the configuration.
    fn default() -> Self {
        Self::from(&Config::default())
    }
}

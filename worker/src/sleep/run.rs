//! One scheduled sleep job of a worker, and what is measured around it
//! (DESIGN.md section 3).
//!
//! The coordinator pauses awake training and sends every worker the same
//! `SleepStart`; each worker then calls [`run_job`] on its own tile with
//! its replay buffer and answers with the [`SleepOutcome`] turned into a
//! `SleepDone`. Nothing here takes a halo exchange or a peer: dreaming is
//! per location (paper section 12.2, "does not require any attention
//! between columns"), and so is the measurement, which is the initial
//! bottom-up pass of the settle (no lateral attention yet).
//!
//! The standalone job (`glom sleep`) has no awake steps behind it: it fills
//! a buffer with [`fill_replay`] by settling training images with the
//! loaded model, then runs the same [`run_job`].

use std::time::Instant;

use candle_core::{DType, Tensor};
use glom_protocol::config::Config;
use glom_protocol::message::{LevelObservation, Observation, SleepDone, SleepStart};

use super::{run_sleep_with, ReplayBuffer, SleepParams, SleepReport};
use crate::data::{Dataset, Image};
use crate::error::{Error, Result};
use crate::eval::settle_sequences;
use crate::model::{layer_norm, Glom};
use crate::rng::Rng;

/// Stream tags of [`Rng::from_key`].
const JOB_STREAM: u64 = 0x534c_4a42;
const OBSERVE_STREAM: u64 = 0x534c_4f42;
const REPLAY_STREAM: u64 = 0x534c_5250;

/// What one sleep job of a tile did and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SleepOutcome {
    /// Losses (totals over the tile and per-location shares) and steps.
    pub report: SleepReport,
    /// Wall time of the job, measurements included.
    pub seconds: f64,
    /// [`observe_bottom_up`] before and after the job (`None` without
    /// observation images).
    pub before: Option<Observation>,
    pub after: Option<Observation>,
}

impl SleepOutcome {
    /// The worker's answer to the coordinator's `SleepStart` `job`, for
    /// the tile of `model`.
    pub fn into_done(self, job: u64, model: &Glom) -> SleepDone {
        SleepDone {
            job,
            locations: model.tile.locs.iter().map(|&g| g as u32).collect(),
            losses: self.report.shares,
            steps: self.report.steps as u64,
            seconds: self.seconds,
            before: self.before,
            after: self.after,
        }
    }
}

/// The replay buffer a worker keeps while it trains: `sleep.replay_capacity`
/// items when sleep is scheduled, `None` otherwise (nothing to store).
/// Push every awake step's settled levels into it
/// ([`ReplayBuffer::push`] of `StepOutput::levels`).
pub fn replay_for(cfg: &Config) -> Option<ReplayBuffer> {
    cfg.sleep
        .scheduled()
        .then(|| ReplayBuffer::new(cfg.sleep.replay_capacity))
}

/// Seed of [`run_sleep`] for the job whose `SleepStart::seed` is `start_seed`:
/// the same on every worker, different for every run seed.
pub fn job_seed(cfg: &Config, start_seed: u64) -> u64 {
    Rng::from_key(&[cfg.seed, JOB_STREAM, start_seed]).next_u64()
}

/// The fixed sample of `sleep.observe_images` training images measured
/// before and after every job: drawn once from the run seed, so every job
/// of a run (and `glom sleep` on its checkpoints) measures the same images.
pub fn observation_images(cfg: &Config, data: &dyn Dataset) -> Vec<Image> {
    let n = data.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let mut rng = Rng::from_key(&[cfg.seed, OBSERVE_STREAM]);
    (0..cfg.sleep.observe_images)
        .map(|_| data.get(rng.below(n) as usize))
        .collect()
}

/// The state before the first settling iteration, computed alone per
/// location (no lateral attention, so no halo): `e[0] = LN(front(patches))`,
/// `e[l] = LN(BU[l](e[l-1]))`, each `[P, B, d]` (DESIGN.md section 1).
pub fn bottom_up_pass(model: &Glom, patches: &Tensor) -> Result<Vec<Tensor>> {
    let mut e = vec![layer_norm(&model.nets.front.forward(patches)?)?];
    for net in &model.nets.bottom_up {
        let up = net.forward(e.last().expect("level 0 is there"))?;
        e.push(layer_norm(&up)?);
    }
    Ok(e)
}

/// A halo-free collapse measurement of the tile: per level, the embeddings
/// of [`bottom_up_pass`] on the unmasked `images` (`[P, images, d]`) and
/// the level's bottom-up net (the front end at level 0) on the common
/// probe input of `crate::monitor`; agreements are left empty. What the
/// bottom-up nets make of fixed inputs is exactly what the negative phase
/// changes, so the same images before and after a job show its effect.
pub fn observe_bottom_up(model: &Glom, images: &[Image]) -> Result<Observation> {
    let cfg = &model.cfg;
    let batch = crate::eval::unmasked_batch(model, images)?;
    let levels = bottom_up_pass(model, &batch.input)?;
    let probes = crate::monitor::probe_outputs_by_level(model)?;
    let mut out = Vec::with_capacity(levels.len());
    for (e, probe) in levels.iter().zip(probes) {
        out.push(LevelObservation {
            embeddings: e.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            probe,
            agreement_bu: Vec::new(),
            agreement_td: Vec::new(),
        });
    }
    Ok(Observation {
        images: images.len() as u32,
        dim: cfg.model.dim as u32,
        levels: out,
    })
}

/// Run the sleep job `start` on the tile of `model` (updated in place)
/// from the states in `replay`: `start.steps` steps with the lengths,
/// margin and rates of `[sleep]`, negative phase first ([`run_sleep`]),
/// seeded by [`job_seed`]. With `observe` images, the tile is measured by
/// [`observe_bottom_up`] before and after. `progress` is called with (steps
/// done, steps) after every step: a long job must keep the control
/// connection alive with heartbeats. Touches no network: a tile without
/// peers runs it alike, and every location gets the update it would get
/// on the whole grid.
pub fn run_job(
    model: &Glom,
    replay: &ReplayBuffer,
    start: &SleepStart,
    observe: &[Image],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SleepOutcome> {
    let started = Instant::now();
    if replay.is_empty() {
        return Err(Error::Shape(format!(
            "sleep job {} after step {}: the replay buffer is empty (no settled state to dream from)",
            start.job, start.after_step
        )));
    }
    let params = SleepParams {
        steps: start.steps as usize,
        ..SleepParams::from(&model.cfg)
    };
    let measure = |model: &Glom| -> Result<Option<Observation>> {
        if observe.is_empty() {
            Ok(None)
        } else {
            Ok(Some(observe_bottom_up(model, observe)?))
        }
    };
    let before = measure(model)?;
    let seed = job_seed(&model.cfg, start.seed);
    let steps = params.steps;
    let report = run_sleep_with(model, replay, &params, seed, &mut |done| {
        progress(done, steps)
    })?;
    let after = measure(model)?;
    Ok(SleepOutcome {
        report,
        seconds: started.elapsed().as_secs_f64(),
        before,
        after,
    })
}

/// A replay buffer of `count` items settled by `model` (the evaluation's
/// settle: unmasked, fixed neighbour draws) from training items drawn from
/// `data` by a stream keyed by the run seed and `seed`: still images, or
/// sequences whose every frame's state is an item (`ceil(count / frames)`
/// sequences); `progress` is called with (items stored, count). The model
/// must hold the whole grid (a settle needs its halo): this is the
/// standalone job's way to get the states an awake run would have stored.
pub fn fill_replay(
    model: &Glom,
    data: &dyn Dataset,
    count: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ReplayBuffer> {
    if model.tile.locs.len() != model.tile.grid.len() {
        return Err(Error::Shape(format!(
            "fill_replay settles whole images: the model holds {} of the grid's {} locations",
            model.tile.locs.len(),
            model.tile.grid.len()
        )));
    }
    if data.is_empty() {
        return Err(Error::Shape("fill_replay: the dataset has no image".into()));
    }
    let mut rng = Rng::from_key(&[model.cfg.seed, REPLAY_STREAM, seed]);
    let mut replay = ReplayBuffer::new(count);
    let batch = model.cfg.train.batch_size.max(1);
    let frames = data.frames().max(1);
    let mut done = 0;
    while done < count {
        let n = batch.min((count - done).div_ceil(frames));
        let sequences: Vec<Vec<Image>> = (0..n)
            .map(|_| data.sequence(rng.below(data.len() as u64) as usize))
            .collect();
        let settled = settle_sequences(model, &sequences, false)?;
        replay.push_frames(&settled.frames)?;
        done = (done + n * frames).min(count);
        progress(done, count);
    }
    Ok(replay)
}

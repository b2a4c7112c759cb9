//! Learning: batches, masking, the objective and one training step
//! (DESIGN.md section 2).
//!
//! Objective terms, each normalised to a mean so that its size does not
//! depend on the grid or the tiling (sums are divided by the *global*
//! number of locations):
//! - reconstruction: squared error of the decoded patch pixels, weight 1 on
//!   hidden patches and `train.recon_visible_weight` on visible ones;
//! - distillation: squared error of every bottom-up (front end included) and
//!   top-down prediction toward the detached consensus, at every iteration;
//! - negative (awake, optional): hinge on cosine similarity to unrelated
//!   consensus vectors above `train.negative_margin`.

pub mod adam;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use glom_protocol::config::Config;
use serde::{Deserialize, Serialize};

use crate::analysis::{collapse_stats, CollapseStats};
use crate::data::{patchify, Dataset, Image};
use crate::error::Result;
use crate::model::{Glom, HaloExchange, Mode, NoHalo};
use crate::rng::Rng;
pub use adam::{Adam, AdamParams};

/// Stream tags of [`Rng::from_key`].
const MASK_STREAM: u64 = 0x4d41_534b;
const BATCH_STREAM: u64 = 0x4241_5443;
const SAMPLE_STREAM: u64 = 0x5341_4d50;

/// Key of the masks and neighbour draws used by evaluation (never a step).
pub const EVAL_KEY: u64 = u64::MAX - 1;

/// Indices of the training images of `step`: drawn uniformly with the run
/// seed, so every worker computes the same batch from the step number alone.
pub fn batch_indices(cfg: &Config, step: u64, len: usize) -> Vec<usize> {
    let mut rng = Rng::from_key(&[cfg.seed, BATCH_STREAM, step]);
    (0..cfg.train.batch_size)
        .map(|_| rng.below(len as u64) as usize)
        .collect()
}

/// A batch cut into the patches of a tile's locations.
#[derive(Debug)]
pub struct Batch {
    /// `[P, B, pixels]`: what the front end sees (hidden patches are zero).
    pub input: Tensor,
    /// `[P, B, pixels]`: the true pixels.
    pub target: Tensor,
    /// `[P, B, 1]`: 1 where the patch is hidden, 0 where visible.
    pub hidden: Tensor,
}

/// Cut `images` into the patches of `locs`, hiding each (image position,
/// location) with probability `mask_fraction` from the stream keyed by `mask_key`.
pub fn make_batch(
    cfg: &Config,
    images: &[Image],
    locs: &[usize],
    mask_key: u64,
    mask_fraction: f64,
    device: &Device,
    dtype: DType,
) -> Result<Batch> {
    let side = cfg.image_side();
    let shape = crate::data::ImageShape {
        channels: cfg.channels(),
        height: side,
        width: side,
    };
    let pix = cfg.model.patch * cfg.model.patch * cfg.channels();
    let b = images.len();
    let patches: Vec<Vec<f32>> = images
        .iter()
        .map(|im| patchify(&im.pixels, shape, cfg.model.patch))
        .collect();
    let mut input = Vec::with_capacity(locs.len() * b * pix);
    let mut target = Vec::with_capacity(locs.len() * b * pix);
    let mut hidden = Vec::with_capacity(locs.len() * b);
    for &g in locs {
        for (bi, p) in patches.iter().enumerate() {
            let src = &p[g * pix..(g + 1) * pix];
            let mut rng = Rng::from_key(&[cfg.seed, MASK_STREAM, mask_key, bi as u64, g as u64]);
            let is_hidden = rng.uniform() < mask_fraction;
            target.extend_from_slice(src);
            if is_hidden {
                input.extend(std::iter::repeat_n(0f32, pix));
            } else {
                input.extend_from_slice(src);
            }
            hidden.push(if is_hidden { 1f32 } else { 0.0 });
        }
    }
    let dims = (locs.len(), b, pix);
    Ok(Batch {
        input: Tensor::from_vec(input, dims, device)?.to_dtype(dtype)?,
        target: Tensor::from_vec(target, dims, device)?.to_dtype(dtype)?,
        hidden: Tensor::from_vec(hidden, (locs.len(), b, 1), device)?.to_dtype(dtype)?,
    })
}

/// Values of the loss terms of one step (means, see the module header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    pub loss_recon: f64,
    pub loss_distill_bu: f64,
    pub loss_distill_td: f64,
    pub loss_negative: f64,
    pub loss_total: f64,
}

/// The objective of a settled batch, as a differentiable scalar and values.
pub fn objective(
    model: &Glom,
    batch: &Batch,
    settled: &crate::model::Settled,
) -> Result<(Tensor, LossValues)> {
    let cfg = &model.cfg;
    let (_, b, pix) = batch.target.dims3()?;
    let n = model.tile.grid.len() as f64;
    let (k, t, d) = (
        cfg.model.levels as f64,
        cfg.model.iterations as f64,
        cfg.model.dim as f64,
    );
    let tr = &cfg.train;
    let visible = (1.0 - &batch.hidden)?;
    let weight = ((&batch.hidden + (visible * tr.recon_visible_weight)?)?)
        .broadcast_as(batch.target.shape())?;
    let sq = (&settled.recon - &batch.target)?.sqr()?;
    let recon = ((sq * weight)?.sum_all()? / (n * b as f64 * pix as f64))?;
    let bu = (settled.distill_bu.sum_all()? / (n * b as f64 * d * t * k))?;
    let td_count = (k - 1.0).max(1.0);
    let td = (settled.distill_td.sum_all()? / (n * b as f64 * d * t * td_count))?;
    let neg = (settled.negative.sum_all()? / (n * b as f64 * t * k))?;
    let total = ((&recon * tr.recon_weight)? + ((&bu + &td)? * tr.distill_weight)?)?;
    let total = (total + (&neg * tr.negative_weight)?)?;
    let scalar = |x: &Tensor| -> Result<f64> { Ok(x.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let values = LossValues {
        loss_recon: scalar(&recon)?,
        loss_distill_bu: scalar(&bu)?,
        loss_distill_td: scalar(&td)?,
        loss_negative: scalar(&neg)?,
        loss_total: scalar(&total)?,
    };
    Ok((total, values))
}

/// What one training step produced.
#[derive(Debug)]
pub struct StepOutput {
    pub losses: LossValues,
    /// Settled embeddings per level, `[P, B, d]`, for collapse measures.
    pub levels: Vec<Tensor>,
}

/// A model, its optimiser and its training data: one step at a time.
pub struct Trainer {
    pub model: Glom,
    pub opt: Adam,
    data: Arc<dyn Dataset>,
    /// The next step to run (0-based).
    pub step: u64,
}

impl Trainer {
    /// A trainer starting at step 0 with fresh optimiser state.
    pub fn new(model: Glom, data: Arc<dyn Dataset>) -> Result<Self> {
        let t = &model.cfg.train;
        let opt = Adam::new(
            model.params.vars(),
            AdamParams::new(t.learning_rate, t.weight_decay),
        )?;
        Ok(Self {
            model,
            opt,
            data,
            step: 0,
        })
    }

    /// Run training step `self.step` with the given halo exchange, then advance.
    pub fn step_with(&mut self, halo: &mut dyn HaloExchange) -> Result<StepOutput> {
        let cfg = &self.model.cfg;
        let idx = batch_indices(cfg, self.step, self.data.len());
        let images: Vec<Image> = idx.iter().map(|&i| self.data.get(i)).collect();
        let batch = make_batch(
            cfg,
            &images,
            &self.model.tile.locs,
            self.step,
            cfg.train.mask_fraction,
            self.model.device(),
            self.model.dtype(),
        )?;
        let mode = Mode::from(cfg.train.learning);
        let settled = self
            .model
            .settle(&batch.input, self.step, mode, halo, false)?;
        let (loss, losses) = objective(&self.model, &batch, &settled)?;
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        self.step += 1;
        Ok(StepOutput {
            losses,
            levels: settled.levels,
        })
    }

    /// One step on the whole grid (no halo).
    pub fn train_step(&mut self) -> Result<StepOutput> {
        self.step_with(&mut NoHalo)
    }
}

/// Collapse measures of each level on a seeded sample of at most `sample`
/// of the settled vectors `[P, B, d]`.
pub fn collapse_by_level(
    levels: &[Tensor],
    sample: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<CollapseStats>> {
    let mut out = Vec::with_capacity(levels.len());
    for (l, t) in levels.iter().enumerate() {
        let (p, b, d) = t.dims3()?;
        let rows: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut order: Vec<usize> = (0..p * b).collect();
        Rng::from_key(&[seed, SAMPLE_STREAM, step, l as u64]).shuffle(&mut order);
        order.truncate(sample);
        let picked: Vec<f32> = order
            .iter()
            .flat_map(|&i| rows[i * d..(i + 1) * d].iter().copied())
            .collect();
        out.push(collapse_stats(&picked, d));
    }
    Ok(out)
}

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
//!   consensus vectors above `train.negative_margin`;
//! - anti-collapse terms (optional, [`crate::model::terms`]): variance and
//!   covariance of every student's raw prediction over the batch at its
//!   location, InfoNCE against other images at the same location, and the
//!   local autoencoder of each level; the first three are means per
//!   student and iteration, InfoNCE also per image;
//! - neighbour co-distillation (optional): every bottom-up net above level
//!   0 regresses, on a neighbour's input, toward that neighbour's state
//!   ([`crate::model::Glom::neighbour_distill`]), a mean like distillation's.
//!
//! Of a video (a dataset whose items have several frames) the batch holds
//! every frame ([`make_sequence_batch`]), the means run over all the
//! iterations of [`Config::settle_iterations`], and reconstruction is of
//! the last frame.

pub mod adam;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use glom_protocol::config::Config;
use glom_protocol::message::{LossShares, LOSS_TERMS, LOSS_TERM_NAMES};
use serde::{Deserialize, Serialize};

use crate::data::{patchify, Dataset, Image};
use crate::error::Result;
use crate::model::{Glom, HaloExchange, Mode, NoHalo, Part};
use crate::rng::Rng;
pub use adam::{Adam, AdamParams};

/// Stream tags of [`Rng::from_key`].
const MASK_STREAM: u64 = 0x4d41_534b;
const BATCH_STREAM: u64 = 0x4241_5443;

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

/// A batch cut into the patches of a tile's locations. Of a batch of
/// sequences, `input`, `target` and `hidden` are of the last frame (the one
/// reconstruction is scored on) and `earlier` holds the frames before it.
#[derive(Debug)]
pub struct Batch {
    /// `[P, B, pixels]`: what the front end sees (hidden patches are zero).
    pub input: Tensor,
    /// `[P, B, pixels]`: the true pixels.
    pub target: Tensor,
    /// `[P, B, 1]`: 1 where the patch is hidden, 0 where visible.
    pub hidden: Tensor,
    /// What the front end sees of each frame before the last, oldest
    /// first, `[P, B, pixels]` each, with the same patches hidden; empty
    /// for still images.
    pub earlier: Vec<Tensor>,
}

impl Batch {
    /// The input of every frame, oldest first (what
    /// [`Glom::settle_frames`] reads).
    pub fn frames(&self) -> Vec<Tensor> {
        let mut all = self.earlier.clone();
        all.push(self.input.clone());
        all
    }
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
    let sequences: Vec<&[Image]> = images.iter().map(std::slice::from_ref).collect();
    make_sequence_batch(
        cfg,
        &sequences,
        locs,
        mask_key,
        mask_fraction,
        device,
        dtype,
    )
}

/// [`make_batch`] of sequences (every one of the same number of frames,
/// oldest first). A hidden (image position, location) is hidden in every
/// frame, like a blind spot the objects move through: hiding it only in
/// the last frame would let the state carried over from the frame before,
/// where it was seen, fill it in. One frame per sequence is [`make_batch`].
pub fn make_sequence_batch<S: AsRef<[Image]>>(
    cfg: &Config,
    sequences: &[S],
    locs: &[usize],
    mask_key: u64,
    mask_fraction: f64,
    device: &Device,
    dtype: DType,
) -> Result<Batch> {
    let frames = sequences.first().map_or(1, |s| s.as_ref().len());
    if frames == 0 || sequences.iter().any(|s| s.as_ref().len() != frames) {
        return Err(crate::error::Error::Shape(format!(
            "a batch needs sequences of one common, positive number of frames, got {:?}",
            sequences
                .iter()
                .map(|s| s.as_ref().len())
                .collect::<Vec<_>>()
        )));
    }
    let side = cfg.image_side();
    let shape = crate::data::ImageShape {
        channels: cfg.channels(),
        height: side,
        width: side,
    };
    let pix = cfg.model.patch * cfg.model.patch * cfg.channels();
    let b = sequences.len();
    // Per image, per frame: its patches.
    let patches: Vec<Vec<Vec<f32>>> = sequences
        .iter()
        .map(|seq| {
            seq.as_ref()
                .iter()
                .map(|im| patchify(&im.pixels, shape, cfg.model.patch))
                .collect()
        })
        .collect();
    let mut inputs = vec![Vec::with_capacity(locs.len() * b * pix); frames];
    let mut target = Vec::with_capacity(locs.len() * b * pix);
    let mut hidden = Vec::with_capacity(locs.len() * b);
    for &g in locs {
        for (bi, seq) in patches.iter().enumerate() {
            let mut rng = Rng::from_key(&[cfg.seed, MASK_STREAM, mask_key, bi as u64, g as u64]);
            let is_hidden = rng.uniform() < mask_fraction;
            for (input, p) in inputs.iter_mut().zip(seq) {
                let src = &p[g * pix..(g + 1) * pix];
                if is_hidden {
                    input.extend(std::iter::repeat_n(0f32, pix));
                } else {
                    input.extend_from_slice(src);
                }
            }
            let last = &seq[frames - 1];
            target.extend_from_slice(&last[g * pix..(g + 1) * pix]);
            hidden.push(if is_hidden { 1f32 } else { 0.0 });
        }
    }
    let dims = (locs.len(), b, pix);
    let mut inputs = inputs
        .into_iter()
        .map(|x| Ok(Tensor::from_vec(x, dims, device)?.to_dtype(dtype)?))
        .collect::<Result<Vec<_>>>()?;
    let input = inputs.pop().expect("at least one frame");
    Ok(Batch {
        input,
        target: Tensor::from_vec(target, dims, device)?.to_dtype(dtype)?,
        hidden: Tensor::from_vec(hidden, (locs.len(), b, 1), device)?.to_dtype(dtype)?,
        earlier: inputs,
    })
}

/// Values of the loss terms of one step (means, see the module header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    pub loss_recon: f64,
    pub loss_distill_bu: f64,
    pub loss_distill_td: f64,
    pub loss_negative: f64,
    pub loss_variance: f64,
    pub loss_covariance: f64,
    pub loss_contrastive: f64,
    pub loss_autoencoder: f64,
    pub loss_neighbour_distill: f64,
    pub loss_total: f64,
}

/// The objective of a settled batch: a differentiable scalar, its terms'
/// values, and each location's share of every term (in the order of
/// [`LOSS_TERM_NAMES`]; their sums over the grid's locations are the
/// values, added in location order by whoever holds the whole grid).
pub fn objective(
    model: &Glom,
    batch: &Batch,
    settled: &crate::model::Settled,
) -> Result<(Tensor, LossValues, Vec<LossShares>)> {
    let cfg = &model.cfg;
    let (_, b, pix) = batch.target.dims3()?;
    let (b, pix) = (b as f64, pix as f64);
    let n = model.tile.grid.len() as f64;
    let (k, t, d) = (
        cfg.model.levels as f64,
        cfg.settle_iterations() as f64,
        cfg.model.dim as f64,
    );
    let tr = &cfg.train;
    let visible = (1.0 - &batch.hidden)?;
    let weight = ((&batch.hidden + (visible * tr.recon_visible_weight)?)?)
        .broadcast_as(batch.target.shape())?;
    let sq = (&settled.recon - &batch.target)?.sqr()?;
    let below_top = (k - 1.0).max(1.0);
    // Every student: a bottom-up net per level, a top-down one per level
    // below the top, at every iteration.
    let students = t * (k + k - 1.0);
    let per_location = [
        ((sq * weight)?.sum(2)?.sum(1)? / (n * b * pix))?,
        (&settled.distill_bu / (n * b * d * t * k))?,
        (&settled.distill_td / (n * b * d * t * below_top))?,
        (&settled.negative / (n * b * t * k))?,
        (&settled.variance / (n * students))?,
        (&settled.covariance / (n * students))?,
        (&settled.contrastive / (n * b * students))?,
        (&settled.autoencoder / (n * b * d * t * below_top))?,
        (&settled.neighbour_distill / (n * b * d * t * below_top))?,
    ];
    let weights = term_weights(cfg);
    let mut total: Option<Tensor> = None;
    for (x, w) in per_location.iter().zip(weights) {
        if w != 0.0 {
            let term = (x.sum_all()? * w)?;
            total = Some(match total {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
    }
    let total = match total {
        Some(x) => x,
        None => per_location[0].sum_all()?.zeros_like()?,
    };
    let terms = per_location
        .iter()
        .map(|x| Ok(x.to_dtype(DType::F64)?.to_vec1::<f64>()?))
        .collect::<Result<Vec<_>>>()?;
    let shares: Vec<LossShares> = (0..terms[0].len())
        .map(|i| std::array::from_fn(|j| terms[j][i]))
        .collect();
    let values = LossValues::from_shares(cfg, &shares);
    Ok((total, values, shares))
}

/// The weight of every loss term in the total, in the order of [`LOSS_TERM_NAMES`].
pub fn term_weights(cfg: &Config) -> [f64; LOSS_TERMS] {
    let t = &cfg.train;
    [
        t.recon_weight,
        t.distill_weight,
        t.distill_weight,
        t.negative_weight,
        t.variance_weight,
        t.covariance_weight,
        t.contrastive_weight,
        t.autoencoder_weight,
        t.neighbour_distill_weight,
    ]
}

impl LossValues {
    /// The terms from every location's shares, added in the order given
    /// (the grid's location order gives the same bits on any tiling), and
    /// their weighted total.
    pub fn from_shares(cfg: &Config, shares: &[LossShares]) -> Self {
        let mut sums = [0f64; LOSS_TERMS];
        for s in shares {
            for (sum, v) in sums.iter_mut().zip(s) {
                *sum += v;
            }
        }
        let total = sums.iter().zip(term_weights(cfg)).map(|(v, w)| v * w).sum();
        let [recon, bu, td, neg, var, cov, con, ae, nd] = sums;
        Self {
            loss_recon: recon,
            loss_distill_bu: bu,
            loss_distill_td: td,
            loss_negative: neg,
            loss_variance: var,
            loss_covariance: cov,
            loss_contrastive: con,
            loss_autoencoder: ae,
            loss_neighbour_distill: nd,
            loss_total: total,
        }
    }

    /// `(name, value)` of every term, then `("total", loss_total)`.
    pub fn named(&self) -> [(&'static str, f64); LOSS_TERMS + 1] {
        let v = [
            self.loss_recon,
            self.loss_distill_bu,
            self.loss_distill_td,
            self.loss_negative,
            self.loss_variance,
            self.loss_covariance,
            self.loss_contrastive,
            self.loss_autoencoder,
            self.loss_neighbour_distill,
        ];
        std::array::from_fn(|i| {
            if i < LOSS_TERMS {
                (LOSS_TERM_NAMES[i], v[i])
            } else {
                ("total", self.loss_total)
            }
        })
    }
}

/// What one training step produced.
#[derive(Debug)]
pub struct StepOutput {
    pub losses: LossValues,
    /// Each location's share of the loss terms (see [`objective`]).
    pub loss_shares: Vec<LossShares>,
    /// Settled embeddings per level, `[P, B, d]`, for collapse measures.
    pub levels: Vec<Tensor>,
    /// The state after every frame (one for a still image), per level
    /// `[P, B, d]`, detached: what the replay buffer stores.
    pub frames: Vec<Vec<Tensor>>,
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
        // Its backward runs through `model::backward`: whole MLPs may be
        // one node each.
        crate::model::fusing(|| self.step_in(halo))
    }

    fn step_in(&mut self, halo: &mut dyn HaloExchange) -> Result<StepOutput> {
        let cfg = &self.model.cfg;
        let prof = &self.model.profile;
        let batch = prof.time(Part::Batch, || {
            let idx = batch_indices(cfg, self.step, self.data.len());
            // Each image drawn by one thread of the pool (an image depends
            // only on its index, so the batch is the same however they are
            // shared out).
            let mut sequences: Vec<Vec<Image>> = vec![Vec::new(); idx.len()];
            let data = &self.data;
            crate::model::for_each_chunk(&mut sequences, 1, true, |i, seq, _: &mut ()| {
                seq[0] = data.sequence(idx[i]);
            });
            make_sequence_batch(
                cfg,
                &sequences,
                &self.model.tile.locs,
                self.step,
                cfg.train.mask_fraction,
                self.model.device(),
                self.model.dtype(),
            )
        })?;
        let mode = Mode::from(cfg.train.learning);
        let settled = self
            .model
            .settle_frames(&batch.frames(), self.step, mode, halo, false)?;
        let (loss, losses, loss_shares) =
            prof.time(Part::Loss, || objective(&self.model, &batch, &settled))?;
        let grads = prof.time(Part::Backward, || crate::model::backward(&loss))?;
        prof.time(Part::Optimiser, || self.opt.step(&grads))?;
        self.step += 1;
        Ok(StepOutput {
            losses,
            loss_shares,
            levels: settled.levels,
            frames: settled.frames,
        })
    }

    /// One step on the whole grid (no halo).
    pub fn train_step(&mut self) -> Result<StepOutput> {
        self.step_with(&mut NoHalo)
    }
}

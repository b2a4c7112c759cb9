//! Dreaming and the two phases of a sleep job (paper section 12.2,
//! DESIGN.md section 3).
//!
//! - Dream: stored (optionally perturbed) top-level embeddings run down the
//!   top-down nets, each result layer-normalised like a settled state. Each
//!   location dreams alone: no lateral attention, so no halo.
//! - Negative phase: at every level l >= 1 the bottom-up prediction from the
//!   dreamed level below, `BU[l](dream[l-1])`, is held apart from the
//!   consensus of an unrelated context with `relu(cos - margin)`, and,
//!   where `sleep.variance_weight` / `sleep.covariance_weight` are set, kept
//!   spread over the dreamed samples at each location by the awake
//!   objective's variance and decorrelation terms. Only the bottom-up nets
//!   learn here: dreams and negatives are detached and the optimiser holds
//!   only `bu.*` parameters.
//! - Positive phase: the awake distillation form with the dream as the
//!   consensus: `BU[l](dream[l-1])` toward `dream[l]`, and
//!   `TD[l](dream[l+1])` toward `dream[l]` (both targets detached). Since a
//!   dream is the top-down nets' own normalised output, the top-down term
//!   only keeps their outputs on the scale of a normalised consensus; it
//!   teaches them nothing the day did not (the section's "the top level
//!   simply does not learn during REM sleep because those episodes did not
//!   happen"). The bottom-up term is what makes this phase matter: it keeps
//!   the bottom-up nets agreeing with what the top-down nets generate, so the
//!   negative phase cannot win by breaking the positive agreement.
//!
//! Choice of negatives: FINDINGS item 2 found that other images at the same
//! location make poor negatives - most such pairs are background against
//! background, which should agree, and the hinge grows instead of falling.
//! So for each dreamed sample and location, [`NEGATIVE_CANDIDATES`] other
//! stored images are drawn and the one whose stored level-l consensus at
//! that location has the LOWEST cosine to the dream's own level-l vector is
//! the negative: the stored context most likely to be a different entity
//! (another island, another object) rather than one that should agree.
//!
//! Losses are sums over this tile's locations divided by the number of
//! locations of the whole grid, as in the awake objective, so tiles of one
//! grid add up to the grid's loss and every location's gradient is its own.

use candle_core::{Tensor, Var};

use super::{cosine, hinge, ReplayBuffer, SleepParams};
use crate::error::{Error, Result};
use crate::learn::{Adam, AdamParams};
use crate::model::{layer_norm, terms, Glom};
use crate::rng::Rng;

/// Stored contexts compared per dreamed sample to choose its negative.
pub const NEGATIVE_CANDIDATES: usize = 4;

/// Stream tags of [`Rng::from_key`].
const SLEEP_STREAM: u64 = 0x534c_4550;
const EVAL_STREAM: u64 = 0x534c_4556;

/// What a sleep job did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SleepReport {
    /// Negative (hinge) loss of the first negative step, before its update.
    pub negative_loss_first: f64,
    /// Negative loss of the last negative step, before its update.
    pub negative_loss_last: f64,
    /// Positive loss of the last positive step (0 if none ran).
    pub positive_loss_last: f64,
    /// Optimisation steps run (negative and positive).
    pub steps: usize,
    /// Per location of the tile, in tile order: its share of the three
    /// losses above (already divided by the grid's location count), so the
    /// grid's values are the sums over every tile's locations, and the
    /// three totals above are the sums of these in tile order.
    pub shares: Vec<[f64; 3]>,
}

/// Generate every level top-down from top-level embeddings `top`
/// (`[P, n, d]`, P the tile's locations): `e[K-1] = LN(top)`,
/// `e[l] = LN(TD[l](e[l+1]))`. Returns levels `0..K`. Each location is
/// computed alone (no lateral attention, no halo); in shared mode the
/// location code is appended as the settle does.
pub fn dream(model: &Glom, top: &Tensor) -> Result<Vec<Tensor>> {
    let k = model.cfg.model.levels;
    let (p, _, d) = top.dims3()?;
    if p != model.tile.locs.len() || d != model.cfg.model.dim {
        return Err(Error::Shape(format!(
            "dream: top is {:?}, the tile needs [{}, n, {}]",
            top.dims(),
            model.tile.locs.len(),
            model.cfg.model.dim
        )));
    }
    let mut out = vec![layer_norm(top)?];
    for l in (0..k.saturating_sub(1)).rev() {
        let td = model.top_down(l, &out[0])?;
        out.insert(0, layer_norm(&td)?);
    }
    Ok(out)
}

/// One draw of a step: dreams (detached) and, per level, the negatives.
struct Draw {
    dreams: Vec<Tensor>,
    src: Vec<usize>,
}

/// Dream from `batch` stored top-level states, perturbed by `noise`.
fn draw_dreams(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    rng: &mut Rng,
) -> Result<Draw> {
    let k = model.cfg.model.levels;
    if replay.levels() != Some(k) {
        return Err(Error::Shape(format!(
            "sleep: replay holds {:?} levels, the model has {k} (or the buffer is empty)",
            replay.levels()
        )));
    }
    let src = replay.sample_indices(params.batch.max(1), rng)?;
    let mut top = replay.gather(k - 1, &src)?;
    if params.noise > 0.0 {
        // Keyed by global location, so any tiling perturbs alike.
        let base = rng.next_u64();
        let per_loc = top.elem_count() / model.tile.locs.len().max(1);
        let mut noise = Vec::with_capacity(top.elem_count());
        for &g in &model.tile.locs {
            let mut r = Rng::from_key(&[base, g as u64]);
            noise.extend((0..per_loc).map(|_| (r.normal() * params.noise) as f32));
        }
        let noise = Tensor::from_vec(noise, top.shape(), top.device())?.to_dtype(top.dtype())?;
        top = (top + noise)?;
    }
    let dreams = dream(model, &top.to_dtype(model.dtype())?)?
        .into_iter()
        .map(|t| t.detach())
        .collect();
    Ok(Draw { dreams, src })
}

/// Per dreamed sample, [`NEGATIVE_CANDIDATES`] stored items of other
/// sequences than its source's (other images, for still images; any item
/// but the source when the buffer holds one sequence), sample-major. With a frame
/// gap (`sleep.frame_gap`, a video) they are drawn from the source's own
/// sequence at the frames that far from its frame, where the buffer holds
/// any (paper section 12.2: nearby but not adjacent frames).
pub(super) fn candidates(
    replay: &ReplayBuffer,
    src: &[usize],
    frame_gap: [usize; 2],
    rng: &mut Rng,
) -> Vec<usize> {
    let len = replay.len() as u64;
    let mut out = Vec::with_capacity(src.len() * NEGATIVE_CANDIDATES);
    for &s in src {
        let near = if frame_gap == [0, 0] {
            Vec::new()
        } else {
            replay.nearby(s, frame_gap)
        };
        if !near.is_empty() {
            for _ in 0..NEGATIVE_CANDIDATES {
                out.push(near[rng.below(near.len() as u64) as usize]);
            }
            continue;
        }
        let others = replay.other_sequences(s);
        for _ in 0..NEGATIVE_CANDIDATES {
            let c = if !others.is_empty() {
                others[rng.below(others.len() as u64) as usize]
            } else if len > 1 {
                let c = rng.below(len - 1) as usize;
                if c >= s {
                    c + 1
                } else {
                    c
                }
            } else {
                0
            };
            out.push(c);
        }
    }
    out
}

/// For each location and sample, the candidate whose stored level-`level`
/// vector has the lowest cosine to `own` (`[P, n, d]`): `[P, n, d]`.
fn least_similar(
    replay: &ReplayBuffer,
    level: usize,
    cand: &[usize],
    own: &Tensor,
) -> Result<Tensor> {
    let (p, n, d) = own.dims3()?;
    let c = NEGATIVE_CANDIDATES;
    let stored = replay
        .gather(level, cand)?
        .to_dtype(own.dtype())?
        .reshape((p, n, c, d))?;
    let cos = cosine(&own.unsqueeze(2)?, &stored)?; // [P, n, C]
    let pick = cos
        .argmin_keepdim(2)?
        .unsqueeze(3)?
        .broadcast_as((p, n, 1, d))?
        .contiguous()?;
    Ok(stored.contiguous()?.gather(&pick, 2)?.squeeze(2)?)
}

/// The negative loss of one draw (differentiable in the `bu.*` nets only),
/// per location `[P]`: the mean over levels 1..K of the hinge averaged over
/// samples, plus the weighted variance and decorrelation terms of the
/// predictions over the samples at each location
/// (`sleep.variance_weight`, `sleep.covariance_weight`; the awake
/// anti-collapse terms taken offline), divided by the grid's location count. The loss is its
/// sum over the tile's locations.
fn negative_loss(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    rng: &mut Rng,
) -> Result<Tensor> {
    let k = model.cfg.model.levels;
    let draw = draw_dreams(model, replay, params, rng)?;
    let cand = candidates(replay, &draw.src, params.frame_gap, rng);
    let grid = model.tile.grid.len() as f64;
    let mut total: Option<Tensor> = None;
    for l in 1..k {
        let pred = model.nets.bottom_up[l - 1].forward(&draw.dreams[l - 1])?;
        let neg = least_similar(replay, l, &cand, &draw.dreams[l])?.detach();
        let h = hinge(&pred, &neg, params.margin)?; // [P, n]
        let mut term = h.mean(1)?;
        if params.variance_weight > 0.0 {
            let v = terms::variance(&pred, params.variance_form, params.variance_target)?;
            term = (term + (v * params.variance_weight)?)?;
        }
        if params.covariance_weight > 0.0 {
            term = (term + (terms::covariance(&pred)? * params.covariance_weight)?)?;
        }
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    let total = total.ok_or_else(|| Error::Shape("sleep needs at least two levels".into()))?;
    Ok((total / (grid * (k - 1) as f64))?)
}

/// The positive loss of one draw per location `[P]`: squared error of the
/// bottom-up and top-down predictions toward the (detached) dreamed
/// levels, averaged over terms, samples and dimensions and divided by the
/// grid's location count, like [`negative_loss`].
fn positive_loss(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    rng: &mut Rng,
) -> Result<Tensor> {
    let k = model.cfg.model.levels;
    let draw = draw_dreams(model, replay, params, rng)?;
    let e = &draw.dreams;
    let (_, n, d) = e[0].dims3()?;
    let scale = model.tile.grid.len() as f64 * (n * d) as f64;
    let mut terms = Vec::new();
    let per_location = |err: Tensor| -> Result<Tensor> { Ok((err.sqr()?.sum((1, 2))? / scale)?) };
    for l in 1..k {
        let pred = model.nets.bottom_up[l - 1].forward(&e[l - 1])?;
        terms.push(per_location((pred - &e[l])?)?);
    }
    for l in 0..k - 1 {
        let pred = model.top_down(l, &e[l + 1])?;
        terms.push(per_location((pred - &e[l])?)?);
    }
    let count = terms.len();
    let sum = Tensor::stack(&terms, 0)?.sum(0)?;
    Ok((sum / count.max(1) as f64)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// The values of a per-location loss `[P]`, in tile order.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?)
}

/// The variables whose names start with one of `prefixes`.
fn vars_named(model: &Glom, prefixes: &[&str]) -> Vec<Var> {
    model
        .params
        .entries
        .iter()
        .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The negative loss on a fixed draw keyed by `seed` (no update): a measure
/// to compare before and after a job.
pub fn evaluate_negative(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    seed: u64,
) -> Result<f64> {
    let mut rng = Rng::from_key(&[seed, EVAL_STREAM]);
    scalar(&negative_loss(model, replay, params, &mut rng)?.sum_all()?)
}

/// Run a sleep job on `model` (updated in place) from the states in
/// `replay`: `params.steps` steps in phases of `negative_steps` negative
/// then `positive_steps` positive steps, negative first. Step s draws from
/// the stream keyed by `(seed, s)`. The negative optimiser holds only the
/// `bu.*` parameters, the positive one `bu.*` and `td.*`; the front end and
/// the decoder never change.
pub fn run_sleep(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    seed: u64,
) -> Result<SleepReport> {
    run_sleep_with(model, replay, params, seed, &mut |_| {})
}

/// [`run_sleep`], calling `progress` with the steps done after each step
/// (to show progress, or to send heartbeats during a long job).
pub fn run_sleep_with(
    model: &Glom,
    replay: &ReplayBuffer,
    params: &SleepParams,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<SleepReport> {
    if model.cfg.model.levels < 2 {
        return Err(Error::Shape("sleep needs at least two levels".into()));
    }
    if params.steps > 0 && params.negative_steps + params.positive_steps == 0 {
        return Err(Error::Shape(
            "sleep: negative_steps and positive_steps are both 0".into(),
        ));
    }
    let decay = model.cfg.train.weight_decay;
    let mut neg_opt = Adam::new(
        vars_named(model, &["bu."]),
        AdamParams::new(params.learning_rate, decay),
    )?;
    let mut pos_opt = Adam::new(
        vars_named(model, &["bu.", "td."]),
        AdamParams::new(params.learning_rate, decay),
    )?;
    let p = model.tile.locs.len();
    let mut report = SleepReport {
        shares: vec![[0.0; 3]; p],
        ..SleepReport::default()
    };
    let mut first_negative = true;
    let mut step = 0usize;
    // Every backward below runs through `model::backward`: whole MLPs may
    // be one node each.
    crate::model::fusing(|| -> Result<()> {
        while step < params.steps {
            for _ in 0..params.negative_steps {
                if step >= params.steps {
                    break;
                }
                let mut rng = Rng::from_key(&[seed, SLEEP_STREAM, step as u64]);
                let per_location = negative_loss(model, replay, params, &mut rng)?;
                let loss = per_location.sum_all()?;
                for (share, v) in report.shares.iter_mut().zip(values(&per_location)?) {
                    if first_negative {
                        share[0] = v;
                    }
                    share[1] = v;
                }
                first_negative = false;
                neg_opt.step(&crate::model::backward(&loss)?)?;
                step += 1;
                progress(step);
            }
            for _ in 0..params.positive_steps {
                if step >= params.steps {
                    break;
                }
                let mut rng = Rng::from_key(&[seed, SLEEP_STREAM, step as u64]);
                let per_location = positive_loss(model, replay, params, &mut rng)?;
                let loss = per_location.sum_all()?;
                for (share, v) in report.shares.iter_mut().zip(values(&per_location)?) {
                    share[2] = v;
                }
                pos_opt.step(&crate::model::backward(&loss)?)?;
                step += 1;
                progress(step);
            }
        }
        Ok(())
    })?;
    report.steps = step;
    // The totals add the shares in tile order, as the grid's are added in
    // location order from every tile's shares.
    for share in &report.shares {
        report.negative_loss_first += share[0];
        report.negative_loss_last += share[1];
        report.positive_loss_last += share[2];
    }
    Ok(report)
}

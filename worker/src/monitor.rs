//! Measures for watching a run, on the tensors a training step already has.
//!
//! Dashboards catch collapse and failed co-distillation early only if the
//! numbers are cheap enough to compute every few steps and mean the same
//! thing in every run. This module computes, per level:
//! - [`codistill_disagreement`]: how differently the per-location nets of
//!   one level map a common probe input (0 when every location computes the
//!   same function; co-distillation should shrink it);
//! - [`agreement_by_location`]: mean cosine between what the bottom-up and
//!   top-down nets predict from the settled neighbouring levels and the
//!   settled consensus itself;
//! - [`cosine_within_across`]: mean pairwise cosine of the settled vectors
//!   within an image and across images, exactly, in `O(P B d)`;
//! - [`islands_per_image`]: threshold islands as the evaluation counts them.
//!
//! A worker computes the net-based measures on its own locations and
//! reports them, with a sample of its settled embeddings, as an
//! [`Observation`] ([`observe`]); whoever holds every tile's observation
//! computes the grid's numbers, the same on any tiling. Exporting them is
//! the binary's job.

use candle_core::{DType, Tensor, D};
use glom_protocol::config::WeightMode;
use glom_protocol::message::{LevelObservation, Observation};

use crate::analysis::unit_rows;
use crate::error::Result;
use crate::eval::threshold_islands;
use crate::model::{layer_norm, nets, Glom, Mlp};
use crate::rng::Rng;

/// Stream tag of the probe input in [`Rng::from_key`].
const PROBE_STREAM: u64 = 0x5052_4f42;

/// The common probe input of dimension `dim`: a seeded gaussian-like vector,
/// layer-normalised like the embeddings the bottom-up nets see, `[dim]`.
pub fn probe_input(seed: u64, dim: usize) -> Vec<f32> {
    let mut rng = Rng::from_key(&[seed, PROBE_STREAM]);
    let raw: Vec<f64> = (0..dim).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
    let mean = raw.iter().sum::<f64>() / dim as f64;
    let var = raw.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / dim as f64;
    let inv = 1.0 / (var + 1e-5).sqrt();
    raw.iter().map(|x| ((x - mean) * inv) as f32).collect()
}

/// Output of `net` on the same `probe` at each of `locations` locations,
/// row-major `[locations, out]`.
pub fn probe_outputs(net: &Mlp, probe: &[f32], locations: usize) -> Result<Vec<f32>> {
    let device = net.w1.device();
    let x = Tensor::from_slice(probe, (1, 1, probe.len()), device)?
        .to_dtype(net.w1.dtype())?
        .broadcast_as((locations, 1, probe.len()))?
        .contiguous()?;
    Ok(net
        .forward(&x)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// Mean over locations of the squared distance of each location's output
/// (`outputs`, row-major `[locations, width]`) to the mean output.
pub fn disagreement_of(outputs: &[f32], width: usize) -> f64 {
    if width == 0 || outputs.is_empty() {
        return 0.0;
    }
    let n = (outputs.len() / width) as f64;
    let mut mean = vec![0f64; width];
    for row in outputs.chunks_exact(width) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m += f64::from(v));
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let total: f64 = outputs
        .chunks_exact(width)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    total / n
}

/// Co-distillation disagreement of `net` over `locations` locations: feed
/// the same `probe` to every location's net and return the mean over
/// locations of the squared distance of its output to the mean output.
/// A shared net (one slot) gives 0 by construction.
pub fn codistill_disagreement(net: &Mlp, probe: &[f32], locations: usize) -> Result<f64> {
    let width = net.w2.dim(2)?;
    Ok(disagreement_of(
        &probe_outputs(net, probe, locations)?,
        width,
    ))
}

/// Every level's bottom-up net (the front end at level 0, fed a probe of
/// its own input width) on the common probe input, at each of the tile's
/// locations: per level, row-major `[P, d]`. The disagreement of the grid
/// is [`disagreement_of`] these outputs gathered from every tile.
pub fn probe_outputs_by_level(model: &Glom) -> Result<Vec<Vec<f32>>> {
    let p = model.tile.locs.len();
    let mut out = Vec::with_capacity(model.cfg.model.levels);
    let front_in = model.nets.front.w1.dim(1)?;
    let front_probe = probe_input(model.cfg.seed, front_in);
    out.push(probe_outputs(&model.nets.front, &front_probe, p)?);
    let probe = probe_input(model.cfg.seed, model.cfg.model.dim);
    for net in &model.nets.bottom_up {
        out.push(probe_outputs(net, &probe, p)?);
    }
    Ok(out)
}

/// Agreement of one level's predictions with its settled consensus.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Agreement {
    /// Mean cosine of the bottom-up prediction (from the settled level
    /// below) with the settled level; `None` at level 0, whose input is
    /// the pixels a step does not keep.
    pub bottom_up: Option<f64>,
    /// Same for the top-down prediction (from the level above); `None` at
    /// the top level.
    pub top_down: Option<f64>,
}

/// Per location, the mean over images of the cosine between `a` and `b`
/// (`[P, B, d]`): `[P]` values.
fn cosine_by_location(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let norms = (a.sqr()?.sum(D::Minus1)?.sqrt()? * b.sqr()?.sum(D::Minus1)?.sqrt()?)?;
    let cos = (dot / (norms + 1e-6)?)?;
    Ok(cos.to_dtype(DType::F64)?.mean(1)?.to_vec1()?)
}

/// Per level, per location: the mean cosine over the batch between the
/// layer-normalised bottom-up (`.0`, empty at level 0) and top-down (`.1`,
/// empty at the top level) predictions made from the settled neighbouring
/// levels and the settled level itself (`levels`: `[P, B, d]` each).
pub fn agreement_by_location(model: &Glom, levels: &[Tensor]) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let m = &model.cfg.model;
    let k = levels.len();
    let use_code = m.weights == WeightMode::Shared && m.location_code && m.location_code_dim > 0;
    let code = if use_code {
        Some(nets::location_code(
            model.tile.grid,
            &model.tile.locs,
            m.location_code_dim,
            model.device(),
            model.dtype(),
        )?)
    } else {
        None
    };
    let mut out = vec![(Vec::new(), Vec::new()); k];
    for l in 0..k {
        if l > 0 {
            let bu = model.nets.bottom_up[l - 1].forward(&levels[l - 1])?;
            out[l].0 = cosine_by_location(&layer_norm(&bu)?, &levels[l])?;
        }
        if l + 1 < k {
            let input = match &code {
                Some(c) => {
                    let (p, b, _) = levels[l + 1].dims3()?;
                    let c = c.broadcast_as((p, b, c.dim(2)?))?;
                    Tensor::cat(&[&levels[l + 1], &c], 2)?
                }
                None => levels[l + 1].clone(),
            };
            let td = model.nets.top_down[l].forward(&input)?;
            out[l].1 = cosine_by_location(&layer_norm(&td)?, &levels[l])?;
        }
    }
    Ok(out)
}

/// Images of a step's batch whose settled embeddings an observation keeps:
/// enough that the grid's locations times the images reach
/// `train.rank_sample` vectors per level, at most the batch.
pub fn observed_images(cfg: &glom_protocol::Config) -> usize {
    let locations = cfg.grid_side() * cfg.grid_side();
    cfg.train
        .rank_sample
        .div_ceil(locations.max(1))
        .clamp(1, cfg.train.batch_size)
}

/// What a tile reports of an observed step (see
/// [`glom_protocol::message::Observation`]): the settled `levels`
/// (`[P, B, d]`) of the first [`observed_images`] images, the probe
/// outputs and the per-location agreements.
pub fn observe(model: &Glom, levels: &[Tensor]) -> Result<Observation> {
    let wanted = observed_images(&model.cfg);
    let probes = probe_outputs_by_level(model)?;
    let agreement = agreement_by_location(model, levels)?;
    let (mut images, mut dim) = (0, 0);
    let mut out = Vec::with_capacity(levels.len());
    for ((t, probe), (bu, td)) in levels.iter().zip(probes).zip(agreement) {
        let (_, b, d) = t.dims3()?;
        (images, dim) = (wanted.min(b), d);
        let embeddings = t
            .narrow(1, 0, images)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        out.push(LevelObservation {
            embeddings,
            probe,
            agreement_bu: bu,
            agreement_td: td,
        });
    }
    Ok(Observation {
        images: images as u32,
        dim: dim as u32,
        levels: out,
    })
}

/// Mean pairwise cosine of `[P, B, d]` rows (`p`, `b`, `d`; row-major as a
/// tensor flattens) within an image (pairs of locations of one image) and
/// across images (pairs from two different images). `None` where there is
/// no such pair.
pub fn cosine_within_across(
    rows: &[f32],
    p: usize,
    b: usize,
    d: usize,
) -> (Option<f64>, Option<f64>) {
    let (unit, _) = unit_rows(rows, d);
    let mut per_image = vec![vec![0f64; d]; b];
    let mut all = vec![0f64; d];
    let mut self_terms = vec![0f64; b];
    for (i, u) in unit.chunks_exact(d).enumerate() {
        let img = i % b;
        for ((s, a), &v) in per_image[img].iter_mut().zip(all.iter_mut()).zip(u) {
            *s += v;
            *a += v;
        }
        self_terms[img] += u.iter().map(|v| v * v).sum::<f64>();
    }
    let sq = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
    let within_sum: f64 = (0..b)
        .map(|i| 0.5 * (sq(&per_image[i]) - self_terms[i]))
        .sum();
    let all_sum = 0.5 * (sq(&all) - self_terms.iter().sum::<f64>());
    let (pf, bf) = (p as f64, b as f64);
    let within_pairs = bf * pf * (pf - 1.0) / 2.0;
    let across_pairs = pf * pf * bf * (bf - 1.0) / 2.0;
    let within = (within_pairs > 0.0).then(|| within_sum / within_pairs);
    let across = (across_pairs > 0.0).then(|| (all_sum - within_sum) / across_pairs);
    (within, across)
}

/// Mean number of threshold islands (as the evaluation counts them, at
/// cosine distance `threshold`) over the first `images` images of `[P, B, d]` rows.
pub fn islands_per_image(
    rows: &[f32],
    p: usize,
    b: usize,
    d: usize,
    images: usize,
    threshold: f64,
) -> f64 {
    let n = images.min(b);
    if n == 0 || p == 0 {
        return 0.0;
    }
    let total: usize = (0..n)
        .map(|img| {
            let field: Vec<f32> = (0..p)
                .flat_map(|loc| {
                    rows[(loc * b + img) * d..(loc * b + img + 1) * d]
                        .iter()
                        .copied()
                })
                .collect();
            let labels = threshold_islands(&field, d, threshold);
            labels.iter().max().map_or(0, |m| m + 1)
        })
        .sum();
    total as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use glom_protocol::config::Activation;

    fn mlp(p: usize, perturb: bool) -> Mlp {
        let dev = Device::Cpu;
        let (i, h, o) = (4, 6, 3);
        let fill = |rows: usize, cols: usize, salt: usize| {
            let one: Vec<f32> = (0..rows * cols)
                .map(|k| (((k + salt) * 37 % 17) as f32 - 8.0) / 10.0)
                .collect();
            let mut all: Vec<f32> = (0..p).flat_map(|_| one.clone()).collect();
            if perturb && salt == 0 {
                all[rows * cols] += 0.5; // location 1, first weight
            }
            Tensor::from_vec(all, (p, rows, cols), &dev).unwrap()
        };
        Mlp {
            w1: fill(i, h, 0),
            b1: fill(1, h, 1),
            w2: fill(h, o, 2),
            b2: fill(1, o, 3),
            act: Activation::Gelu,
            sigmoid_out: false,
            skip: false,
        }
    }

    #[test]
    fn identical_nets_agree_and_perturbed_ones_do_not() {
        let probe = probe_input(7, 4);
        assert_eq!(
            codistill_disagreement(&mlp(5, false), &probe, 5).unwrap(),
            0.0
        );
        let d = codistill_disagreement(&mlp(5, true), &probe, 5).unwrap();
        assert!(d > 1e-6, "perturbed nets gave {d}");
        // A shared net (one slot serving every location) gives 0 as well.
        assert_eq!(
            codistill_disagreement(&mlp(1, false), &probe, 5).unwrap(),
            0.0
        );
    }

    #[test]
    fn probe_is_seeded_and_normalised() {
        let a = probe_input(3, 16);
        assert_eq!(a, probe_input(3, 16));
        assert_ne!(a, probe_input(4, 16));
        let mean: f32 = a.iter().sum::<f32>() / 16.0;
        assert!(mean.abs() < 1e-5);
    }

    #[test]
    fn cosine_within_and_across_images_by_hand() {
        // P = 2 locations, B = 2 images, d = 2, rows ordered [loc][img]:
        // image 0 has (1,0) and (0,1) (within cosine 0), image 1 has (1,0)
        // twice (within cosine 1): within = (0 + 1) / 2. Across pairs (4):
        // (1,0)-(1,0) twice = 1 each, (0,1)-(1,0) twice = 0 each: 0.5.
        let rows = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 0.0];
        let (w, a) = cosine_within_across(&rows, 2, 2, 2);
        assert!((w.unwrap() - 0.5).abs() < 1e-12);
        assert!((a.unwrap() - 0.5).abs() < 1e-12);
        // One image has no pair across images.
        assert_eq!(cosine_within_across(&rows[..4], 2, 1, 2).1, None);
    }

    #[test]
    fn islands_count_distinct_directions() {
        // Four locations of one image, two directions: two islands.
        let rows = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        assert_eq!(islands_per_image(&rows, 4, 1, 2, 3, 0.3), 2.0);
    }
}

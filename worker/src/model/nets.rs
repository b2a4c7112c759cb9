//! Parameters and the small MLPs of a column.
//!
//! Every net is a two-layer MLP `in -> hidden -> out`. In per-location mode
//! (paper section 12.1) each weight tensor has a leading location axis of
//! the tile's size, `[P, in, out]`, and a batched matmul applies location
//! p's own weights to location p's inputs; nothing is shared. In shared mode
//! the leading axis has size 1 and one large matmul serves every location.

use candle_core::{DType, Device, Tensor, Var, D};
use glom_protocol::config::{Activation, Config, InitMode, WeightMode};

use crate::error::Result;
use crate::rng::Rng;

/// Stream tag of weight initialisation in [`Rng::from_key`].
const INIT_STREAM: u64 = 0x494e_4954;

/// Stable 64-bit FNV-1a hash of a parameter name (keys its init stream).
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Every trainable tensor of a tile, in a fixed order, with its name.
#[derive(Debug, Clone)]
pub struct ParamSet {
    pub entries: Vec<(String, Var)>,
}

impl ParamSet {
    /// The variables, in order.
    pub fn vars(&self) -> Vec<Var> {
        self.entries.iter().map(|(_, v)| v.clone()).collect()
    }

    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Builds parameters for the locations of a tile, deterministically by seed.
pub(crate) struct ParamBuilder<'a> {
    pub(crate) cfg: &'a Config,
    /// Global ids of the tile's locations.
    pub(crate) locs: &'a [usize],
    pub(crate) device: &'a Device,
    pub(crate) dtype: DType,
    pub(crate) entries: Vec<(String, Var)>,
}

impl ParamBuilder<'_> {
    /// Size of the leading location axis.
    fn slots(&self) -> usize {
        match self.cfg.model.weights {
            WeightMode::PerLocation => self.locs.len(),
            WeightMode::Shared => 1,
        }
    }

    /// One `[slots, rows, cols]` tensor, entries uniform in +-`bound`. With
    /// common init every slot is the same draw; with independent init slot p
    /// is keyed by its global location id, so any tiling draws the same.
    fn tensor(&mut self, name: &str, rows: usize, cols: usize, bound: f64) -> Result<Tensor> {
        let n = rows * cols;
        let draw = |loc_key: u64| -> Vec<f32> {
            let mut rng = Rng::from_key(&[self.cfg.seed, INIT_STREAM, name_key(name), loc_key]);
            (0..n)
                .map(|_| rng.uniform_range(-bound, bound) as f32)
                .collect()
        };
        let independent = self.cfg.model.weights == WeightMode::PerLocation
            && self.cfg.model.init == InitMode::Independent;
        let mut data = Vec::with_capacity(self.slots() * n);
        if independent {
            for &g in self.locs {
                data.extend(draw(g as u64 + 1));
            }
        } else {
            let one = draw(0);
            for _ in 0..self.slots() {
                data.extend_from_slice(&one);
            }
        }
        let t = Tensor::from_vec(data, (self.slots(), rows, cols), self.device)?
            .to_dtype(self.dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.entries.push((name.to_string(), var));
        Ok(out)
    }

    /// An MLP `input -> hidden -> output` named `prefix`.
    pub(crate) fn mlp(
        &mut self,
        prefix: &str,
        input: usize,
        output: usize,
        act: Activation,
        sigmoid_out: bool,
    ) -> Result<Mlp> {
        let hidden = self.cfg.model.hidden;
        let b1 = 1.0 / (input as f64).sqrt();
        let b2 = 1.0 / (hidden as f64).sqrt();
        Ok(Mlp {
            w1: self.tensor(&format!("{prefix}.w1"), input, hidden, b1)?,
            b1: self.tensor(&format!("{prefix}.b1"), 1, hidden, b1)?,
            w2: self.tensor(&format!("{prefix}.w2"), hidden, output, b2)?,
            b2: self.tensor(&format!("{prefix}.b2"), 1, output, b2)?,
            act,
            sigmoid_out,
            skip: false,
        })
    }
}

/// A two-layer MLP applied location by location.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[slots, in, hidden]`; slots = tile locations, or 1 when shared.
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
    pub act: Activation,
    /// Squash the output into (0, 1) (the pixel decoder).
    pub sigmoid_out: bool,
    /// Add the input to the output (`model.bottom_up_skip`; in = out).
    pub skip: bool,
}

/// Whether one weight matrix `w [1, in, out]` serves every location of
/// `x [P, B, in]` (shared mode, P > 1): one large matmul rather than the
/// per-location products.
fn shares_weights(x: &Tensor, w: &Tensor) -> Result<bool> {
    Ok(w.dim(0)? == 1 && x.dim(0)? > 1)
}

/// `x [P, B, in] @ w [S, in, out] + b [S, 1, out]`, S = P or 1.
fn affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (p, batch, input) = x.dims3()?;
    if shares_weights(x, w)? {
        let out = w.dim(2)?;
        let y = x
            .reshape((p * batch, input))?
            .matmul(&w.squeeze(0)?)?
            .reshape((p, batch, out))?;
        Ok(super::locmm::shared_bias_add(&y, b)?)
    } else {
        Ok(super::locmm::loc_affine(x, w, b)?)
    }
}

impl Mlp {
    /// Apply to `x [P, B, in]`, giving `[P, B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.act {
            // One node for the whole MLP (`locmm.rs`).
            Activation::Gelu if !shares_weights(x, &self.w1)? => {
                super::locmm::loc_mlp_gelu(x, &self.w1, &self.b1, &self.w2, &self.b2)?
            }
            _ => self.two_layers(x)?,
        };
        Ok(if self.sigmoid_out {
            candle_nn::ops::sigmoid(&y)?
        } else if self.skip {
            (y + x)?
        } else {
            y
        })
    }

    /// The two layers as nodes of their own.
    fn two_layers(&self, x: &Tensor) -> Result<Tensor> {
        let h = match self.act {
            // One node: the product, the bias and GELU (`locmm.rs`).
            Activation::Gelu if !shares_weights(x, &self.w1)? => {
                super::locmm::loc_affine_gelu(x, &self.w1, &self.b1)?
            }
            Activation::Gelu => super::gelu::gelu(&affine(x, &self.w1, &self.b1)?)?,
            Activation::Sin => affine(x, &self.w1, &self.b1)?.sin()?,
        };
        affine(&h, &self.w2, &self.b2)
    }
}

/// The nets of a tile: front end, decoder, and per-level bottom-up and
/// top-down MLPs (different nets per level).
#[derive(Debug, Clone)]
pub struct Nets {
    /// Pixels of a patch -> level 0 (the level-0 bottom-up net).
    pub front: Mlp,
    /// Level 0 -> pixels of the patch.
    pub decoder: Mlp,
    /// `bottom_up[l - 1]` maps level l-1 to level l, for l = 1..K.
    pub bottom_up: Vec<Mlp>,
    /// `top_down[l]` maps level l+1 (plus the location code, if any) to level l, for l = 0..K-1.
    pub top_down: Vec<Mlp>,
}

impl Nets {
    /// Fresh nets for the tile's locations (see [`ParamBuilder::tensor`] for the init).
    pub(crate) fn build(
        cfg: &Config,
        locs: &[usize],
        code_dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<(Nets, ParamSet)> {
        let m = &cfg.model;
        let pix = m.patch * m.patch * cfg.channels();
        let mut b = ParamBuilder {
            cfg,
            locs,
            device,
            dtype,
            entries: Vec::new(),
        };
        let front = b.mlp("front", pix, m.dim, Activation::Gelu, false)?;
        let decoder = b.mlp("decoder", m.dim, pix, Activation::Gelu, true)?;
        let mut bottom_up = Vec::new();
        for l in 1..m.levels {
            let mut net = b.mlp(
                &format!("bu.{l}"),
                m.dim,
                m.dim,
                m.bottom_up_activation,
                false,
            )?;
            net.skip = m.bottom_up_skip;
            bottom_up.push(net);
        }
        let mut top_down = Vec::new();
        for l in 0..m.levels.saturating_sub(1) {
            top_down.push(b.mlp(
                &format!("td.{l}"),
                m.dim + code_dim,
                m.dim,
                m.top_down_activation,
                false,
            )?);
        }
        Ok((
            Nets {
                front,
                decoder,
                bottom_up,
                top_down,
            },
            ParamSet { entries: b.entries },
        ))
    }
}

/// Sinusoidal code of each location's (row, col), `[P, 1, dim]`, for the
/// shared top-down net, which otherwise could not tell locations apart.
pub(crate) fn location_code(
    grid: super::grid::Grid,
    locs: &[usize],
    dim: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    let freqs = dim / 4;
    let side = grid.rows.max(grid.cols) as f64;
    let mut data = Vec::with_capacity(locs.len() * dim);
    for &g in locs {
        let (r, c) = grid.coords(g);
        for pos in [r as f64, c as f64] {
            for k in 0..freqs {
                let a = pos / side * std::f64::consts::PI * (1u64 << k) as f64;
                data.push(a.sin() as f32);
                data.push(a.cos() as f32);
            }
        }
    }
    Ok(Tensor::from_vec(data, (locs.len(), 1, dim), device)?.to_dtype(dtype)?)
}

/// Layer normalisation without learned gain or bias, over the last axis.
pub fn layer_norm(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_net_adds_its_input_to_its_output() {
        let mut cfg = Config::default();
        cfg.model.dim = 4;
        cfg.model.hidden = 8;
        let locs = [0, 1];
        let mut b = ParamBuilder {
            cfg: &cfg,
            locs: &locs,
            device: &Device::Cpu,
            dtype: DType::F32,
            entries: Vec::new(),
        };
        let mut net = b.mlp("bu.1", 4, 4, Activation::Gelu, false).unwrap();
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let plain = net.forward(&x).unwrap();
        net.skip = true;
        let skip = net.forward(&x).unwrap();
        let diff: Vec<f32> = (skip - plain)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(diff.len(), want.len());
        for (d, w) in diff.iter().zip(&want) {
            assert!((d - w).abs() < 1e-4, "{d} vs {w}");
        }
    }
}

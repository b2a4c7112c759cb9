//! The GLOM engine: settling a tile of columns (DESIGN.md section 1).
//!
//! At settling iteration t the level-l embedding of location x becomes the
//! layer-normalised, weighted mean of four contributions, all read at t:
//! bottom-up `BU[l,x](e[l-1,x])` (level 0: the front end on the pixels),
//! top-down `TD[l,x](e[l+1,x])` (absent at the top), the previous state
//! `e[l,x]`, and lateral attention over sampled neighbours (paper sections
//! 3.4, 6 and 9.1). The engine computes one *tile* of locations given, at
//! every iteration, the embeddings of the halo around it; on one machine the
//! tile is the grid and the halo is empty.
//!
//! The state before the first iteration is one bottom-up pass:
//! `e[0] = LN(front(pixels))`, `e[l] = LN(BU[l](e[l-1]))`.
//!
//! A video settles as one run of iterations over its frames (paper section
//! 11): `model.iterations` on the first frame, then
//! `model.iterations_per_frame` on each further one, the front end reading
//! the frame of the iteration and the state carried over, never reset
//! ([`Config::settle_iterations`], [`Config::frame_of_iteration`]). The
//! schedule and beta ramp over the first frame's iterations and hold
//! their last values afterwards. A still image is a sequence of one frame
//! and settles exactly as it always did.

mod attend;
mod cpu;
pub(crate) use cpu::{contiguous, contiguous_mut, for_each_chunk};
pub mod flops;
mod gelu;
mod grads;
pub(crate) use grads::{backward, fusing};
pub mod grid;
mod locmm;
mod mixing;
pub mod nets;
pub mod profile;
mod sqerr;
mod stats;
pub mod terms;
#[cfg(test)]
mod testutil;

use candle_core::{DType, Device, Tensor, D};
use glom_protocol::config::{
    across_levels, Config, ContrastivePositive, DistillTarget, Learning, WeightMode,
};

use crate::error::{Error, Result};
use grid::{sample_neighbours, NeighbourSpec, Tile};
pub use nets::{layer_norm, Mlp, Nets, ParamSet};
pub use profile::{Part, Profile};

/// How a settle is differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Local learning: every student's input and target are detached; only
    /// one-step predictions carry gradients (paper section 12.3).
    Local,
    /// Backpropagation through every iteration.
    Bptt,
    /// No learning (evaluation): no loss terms are built.
    Inference,
}

impl From<Learning> for Mode {
    fn from(l: Learning) -> Self {
        match l {
            Learning::Local => Mode::Local,
            Learning::Bptt => Mode::Bptt,
        }
    }
}

/// Supplies the embeddings of a tile's halo at each iteration. A
/// distributed worker sends its boundary and receives its neighbours' here.
///
/// The exchange is split in two so that it overlaps with compute: the
/// engine hands over its state with [`HaloExchange::send`], computes every
/// bottom-up and top-down prediction (which need no halo), and only then
/// blocks in [`HaloExchange::receive`] for the halo that lateral attention
/// reads.
pub trait HaloExchange {
    /// Start the exchange of `iteration`: the tile's own embeddings per
    /// level (`[P, B, d]`) at the start of that iteration.
    fn send(&mut self, iteration: usize, own: &[Tensor]) -> Result<()>;
    /// Finish it: the halo's embeddings per level (`[H, B, d]`, in the
    /// order of [`Tile::halo`]) at the start of `iteration`.
    fn receive(&mut self, iteration: usize) -> Result<Vec<Tensor>>;
}

/// The halo of a tile that has none (the whole grid).
pub struct NoHalo;

impl HaloExchange for NoHalo {
    fn send(&mut self, _iteration: usize, _own: &[Tensor]) -> Result<()> {
        Ok(())
    }

    fn receive(&mut self, _iteration: usize) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// Weights of the four contributions at one iteration (paper section 9.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixWeights {
    pub bottom_up: f64,
    pub top_down: f64,
    pub previous: f64,
    pub lateral: f64,
}

impl MixWeights {
    /// The configured schedule at iteration `t`: it ramps over the
    /// first frame's `model.iterations` and holds its last value on the
    /// further frames of a video.
    pub fn at(cfg: &Config, t: usize) -> Self {
        let s = &cfg.model.schedule;
        let n = cfg.model.iterations;
        let t = t.min(n.saturating_sub(1));
        Self {
            bottom_up: s.bottom_up.at(t, n),
            top_down: s.top_down.at(t, n),
            previous: s.previous.at(t, n),
            lateral: s.lateral.at(t, n),
        }
    }
}

/// The weighted mean of the contributions (before normalisation). `td` is
/// `None` at the top level, whose weights are renormalised without it.
///
/// On the CPU, when only `bu` may carry a gradient (local learning), this
/// is one pass (`mixing.rs`), bitwise these operations.
pub fn mix(
    bu: &Tensor,
    td: Option<&Tensor>,
    prev: &Tensor,
    lat: &Tensor,
    w: MixWeights,
) -> Result<Tensor> {
    if let Some(out) = mixing::fused(bu, td, prev, lat, w)? {
        return Ok(out);
    }
    mix_ops(bu, td, prev, lat, w)
}

/// [`mix`] as candle operations: the path under BPTT and on other devices,
/// and the reference of the fused pass's tests.
pub(crate) fn mix_ops(
    bu: &Tensor,
    td: Option<&Tensor>,
    prev: &Tensor,
    lat: &Tensor,
    w: MixWeights,
) -> Result<Tensor> {
    let mut num = ((bu * w.bottom_up)? + (prev * w.previous)?)?;
    num = (num + (lat * w.lateral)?)?;
    let mut den = w.bottom_up + w.previous + w.lateral;
    if let Some(td) = td {
        num = (num + (td * w.top_down)?)?;
        den += w.top_down;
    }
    Ok((num / den)?)
}

/// Lateral attention with query = key = value = the embedding (paper
/// equation 3.1): `sum_y softmax_y(beta <e_x, e_y> / d) e_y` over the sampled
/// neighbours. `src` is `[P + H, B, d]` (own then halo), `idx` the flattened
/// `[P * n]` neighbour indices into it, `pad` `[P, n, 1]` holding 0 for real
/// neighbours and a large negative number for padding. The dot product is
/// divided by d, so beta is per unit of cosine similarity of normalised vectors.
///
/// On the CPU in f32 and f64 this is one pass per location, with its own
/// backward when a gradient flows (BPTT), within float rounding of
/// candle's ops (`attend.rs`); elsewhere candle's ops ([`lateral_ops`]).
pub fn lateral(e: &Tensor, src: &Tensor, idx: &Tensor, pad: &Tensor, beta: f64) -> Result<Tensor> {
    let d = e.dim(2)?;
    if let Some(out) = attend::lateral_kernel(e, src, idx, pad, beta / d as f64)? {
        return Ok(out);
    }
    lateral_ops(e, src, idx, pad, beta)
}

/// [`lateral`] as candle tensor operations (differentiable): the path on
/// other devices and dtypes, and the reference of the kernel's tests.
fn lateral_ops(e: &Tensor, src: &Tensor, idx: &Tensor, pad: &Tensor, beta: f64) -> Result<Tensor> {
    let (p, b, d) = e.dims3()?;
    let n = idx.dim(0)? / p.max(1);
    let g = src.index_select(idx, 0)?.reshape((p, n, b, d))?;
    let scores = g.broadcast_mul(&e.unsqueeze(1)?)?.sum(D::Minus1)?; // [P, n, B]
    let scores = ((scores * (beta / d as f64))?).broadcast_add(pad)?;
    let w = candle_nn::ops::softmax(&scores, 1)?;
    Ok(g.broadcast_mul(&w.unsqueeze(D::Minus1)?)?.sum(1)?)
}

/// Neighbour index tensors for one settle: per level, the flattened indices
/// into own-then-halo order and the padding mask.
struct NeighbourTensors {
    idx: Vec<Tensor>,
    pad: Vec<Tensor>,
}

/// Result of settling a batch on a tile.
#[derive(Debug)]
pub struct Settled {
    /// Final embedding of every level, `[P, B, d]` (detached in local mode).
    pub levels: Vec<Tensor>,
    /// Reconstructed pixels of every patch, `[P, B, pixels]`, from the
    /// settled level 0.
    pub recon: Tensor,
    /// Per location `[P]`: sum over iterations, levels, images and
    /// dimensions of the squared errors of the bottom-up (incl. front end)
    /// and top-down students toward the detached consensus (zero in
    /// inference). Kept per location so each location's loss is its own.
    pub distill_bu: Tensor,
    pub distill_td: Tensor,
    /// Per location `[P]`: sum of the awake hinge terms (zero unless
    /// `train.negative_weight > 0`).
    pub negative: Tensor,
    /// Per location `[P]`, zero unless its weight in `[train]` is positive:
    /// sums over iterations and students (every bottom-up and top-down
    /// prediction) of the variance and covariance terms
    /// ([`terms::variance`], [`terms::covariance`]: means over dimensions
    /// of statistics over the batch), of the InfoNCE term
    /// ([`terms::info_nce`]: summed over images), and the sum over
    /// iterations, levels below the top, images and dimensions of the
    /// local autoencoder's squared error `TD[l](BU[l+1](e[l])) - e[l]`.
    pub variance: Tensor,
    pub covariance: Tensor,
    pub contrastive: Tensor,
    pub autoencoder: Tensor,
    /// Per location `[P]`: neighbour co-distillation's squared errors
    /// ([`Glom::neighbour_distill`]), summed over iterations, levels above
    /// 0, images and dimensions (zero unless
    /// `train.neighbour_distill_weight > 0`).
    pub neighbour_distill: Tensor,
    /// Per iteration, per level: the weighted mean before normalisation and
    /// the new state (both detached); filled when asked for.
    pub trace: Vec<Vec<(Tensor, Tensor)>>,
    /// Per frame settled, per level: the state after that frame's last
    /// iteration (detached), `[P, B, d]`; one entry, equal to `levels`,
    /// for a still image.
    pub frames: Vec<Vec<Tensor>>,
}

/// A GLOM engine for one tile.
pub struct Glom {
    pub cfg: Config,
    pub tile: Tile,
    pub nets: Nets,
    pub params: ParamSet,
    /// Time per part of the computation, when switched on (`glom bench`).
    pub profile: Profile,
    device: Device,
    dtype: DType,
    /// `[P, 1, code]` location code of the shared top-down net, if used.
    code: Option<Tensor>,
    specs: Vec<NeighbourSpec>,
}

impl Glom {
    /// A freshly initialised engine for `tile` (validates `cfg`).
    pub fn new(cfg: &Config, tile: Tile, device: &Device, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        let side = cfg.grid_side();
        if tile.grid.rows != side || tile.grid.cols != side {
            return Err(Error::Shape(format!(
                "tile grid {}x{} does not match the configured {side}x{side} grid",
                tile.grid.rows, tile.grid.cols
            )));
        }
        let m = &cfg.model;
        let use_code =
            m.weights == WeightMode::Shared && m.location_code && m.location_code_dim > 0;
        let code_dim = if use_code { m.location_code_dim } else { 0 };
        let (nets, params) = Nets::build(cfg, &tile.locs, code_dim, device, dtype)?;
        let code = if use_code {
            Some(nets::location_code(
                tile.grid, &tile.locs, code_dim, device, dtype,
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            specs: neighbour_specs(cfg),
            tile,
            nets,
            params,
            profile: Profile::new(device),
            device: device.clone(),
            dtype,
            code,
        })
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The floating-point type of the parameters.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The neighbour-sampling gaussian of every level.
    pub fn neighbour_specs(&self) -> &[NeighbourSpec] {
        &self.specs
    }

    /// Inverse temperature of lateral attention at `level`, iteration `t`
    /// (rising over the first frame's iterations, like the schedule).
    pub fn beta(&self, level: usize, t: usize) -> f64 {
        let m = &self.cfg.model;
        let base = across_levels(m.beta[0], m.beta[1], level, m.levels);
        let rise = if m.iterations > 1 {
            t.min(m.iterations - 1) as f64 / (m.iterations - 1) as f64
        } else {
            0.0
        };
        base * (1.0 + (m.beta_rise - 1.0) * rise)
    }

    fn neighbour_tensors(&self, step_key: u64) -> Result<NeighbourTensors> {
        let p = self.tile.locs.len();
        let (mut idx, mut pad) = (Vec::new(), Vec::new());
        for (level, spec) in self.specs.iter().enumerate() {
            let n = spec.count;
            let mut ids = Vec::with_capacity(p * n);
            let mut mask = Vec::with_capacity(p * n);
            for (i, &g) in self.tile.locs.iter().enumerate() {
                let nb = sample_neighbours(self.tile.grid, g, spec, self.cfg.seed, step_key, level);
                for k in 0..n {
                    match nb.get(k) {
                        Some(&y) => {
                            let local = self.tile.local_index(y).ok_or_else(|| {
                                Error::Shape(format!("neighbour {y} of location {g} is outside the tile and its halo"))
                            })?;
                            ids.push(local as u32);
                            mask.push(0f32);
                        }
                        // Padding: attend to itself, masked out unless the
                        // location has no neighbour at all (a 1x1 grid).
                        None => {
                            ids.push(i as u32);
                            mask.push(if nb.is_empty() && k == 0 { 0.0 } else { -1e9 });
                        }
                    }
                }
            }
            idx.push(Tensor::from_vec(ids, p * n, &self.device)?);
            pad.push(Tensor::from_vec(mask, (p, n, 1), &self.device)?.to_dtype(self.dtype)?);
        }
        Ok(NeighbourTensors { idx, pad })
    }

    /// Settle a batch of still images: `patches` is `[P, B, pixels]`
    /// (masked where hidden), `step_key` keys the neighbour draws (the
    /// training step; a fixed key for evaluation). Under a video
    /// configuration the image stands for a sequence of identical frames.
    pub fn settle(
        &self,
        patches: &Tensor,
        step_key: u64,
        mode: Mode,
        halo: &mut dyn HaloExchange,
        want_trace: bool,
    ) -> Result<Settled> {
        self.settle_frames(
            std::slice::from_ref(patches),
            step_key,
            mode,
            halo,
            want_trace,
        )
    }

    /// Settle a batch of sequences: `frames` holds each frame's `[P, B,
    /// pixels]`, oldest first, either one (a still image, read at every
    /// iteration) or the configuration's [`Config::frames`]. Iteration `t`
    /// reads frame [`Config::frame_of_iteration`]`(t)`; the state is never
    /// reset; every student learns at every iteration toward the consensus
    /// of that iteration, so of its frame; reconstruction reads the state
    /// after the last iteration, so it is of the last frame.
    pub fn settle_frames(
        &self,
        frames: &[Tensor],
        step_key: u64,
        mode: Mode,
        halo: &mut dyn HaloExchange,
        want_trace: bool,
    ) -> Result<Settled> {
        let m = &self.cfg.model;
        let k = m.levels;
        let wanted = self.cfg.frames();
        if frames.is_empty() || (frames.len() != 1 && frames.len() != wanted) {
            return Err(Error::Shape(format!(
                "settling needs 1 or {wanted} frames (data.frames), got {}",
                frames.len()
            )));
        }
        let frame_at = |t: usize| {
            if frames.len() == 1 {
                0
            } else {
                self.cfg.frame_of_iteration(t)
            }
        };
        let iterations = self.cfg.settle_iterations();
        let prof = &self.profile;
        let nb = prof.time(Part::NeighbourDraw, || self.neighbour_tensors(step_key))?;
        let local = mode != Mode::Bptt;
        let learn = mode != Mode::Inference;
        let detach = |t: Tensor| if local { t.detach() } else { t };
        let mut acc = prof.time(Part::Loss, || {
            StudentTerms::new(
                &self.cfg,
                learn,
                self.tile.locs.len(),
                self.dtype,
                &self.device,
            )
        })?;
        let norm = |x: &Tensor| prof.time(Part::LayerNorm, || layer_norm(x));

        // Initial state: one bottom-up pass.
        let mut e = Vec::with_capacity(k);
        let front = prof.time(Part::FrontEnd, || self.nets.front.forward(&frames[0]))?;
        e.push(detach(norm(&front)?));
        for l in 1..k {
            let up = prof.time(Part::Nets, || self.nets.bottom_up[l - 1].forward(&e[l - 1]))?;
            e.push(detach(norm(&up)?));
        }

        let mut recon_src = None;
        let mut trace = Vec::new();
        let mut prev_srcs: Option<Vec<Tensor>> = None;
        let mut frame_states = Vec::with_capacity(frames.len());
        // Next-frame distillation: the students of a frame wait (`current`,
        // then `pending`) for the consensus at the end of the next frame.
        let last_frame = frames.len() - 1;
        let next_frame =
            learn && last_frame > 0 && self.cfg.train.distill_target == DistillTarget::NextFrame;
        let mut current: Vec<Student> = Vec::new();
        let mut pending: Vec<Student> = Vec::new();
        for t in 0..iterations {
            let w = MixWeights::at(&self.cfg, t);
            let patches = &frames[frame_at(t)];
            prof.time(Part::HaloSend, || halo.send(t, &e))?;
            // Everything that needs no halo, while the exchange is in flight.
            let mut predictions = Vec::with_capacity(k);
            for l in 0..k {
                let bu = if l == 0 {
                    prof.time(Part::FrontEnd, || self.nets.front.forward(patches))?
                } else {
                    prof.time(Part::Nets, || self.nets.bottom_up[l - 1].forward(&e[l - 1]))?
                };
                let td = if l + 1 < k {
                    Some(prof.time(Part::Nets, || self.top_down(l, &e[l + 1]))?)
                } else {
                    None
                };
                predictions.push((bu, td));
            }
            if acc.autoencoder_on {
                // Each level below the top as a local autoencoder: up one
                // level with its own bottom-up net, back down with the
                // top-down net of the level.
                for l in 0..k - 1 {
                    let back = prof.time(Part::Nets, || self.top_down(l, &predictions[l + 1].0))?;
                    prof.time(Part::Loss, || -> Result<()> {
                        let err = terms::squared_error(&back, &e[l].detach())?;
                        acc.autoencoder = (&acc.autoencoder + err)?;
                        Ok(())
                    })?;
                }
            }
            let halo_e = prof.time(Part::HaloWait, || halo.receive(t))?;
            // Every level's state at the tile's locations, then its halo's.
            let srcs = prof.time(Part::Lateral, || {
                (0..k)
                    .map(|l| match halo_e.get(l) {
                        Some(h) if h.dim(0)? > 0 => Ok(Tensor::cat(&[&e[l], h], 0)?),
                        _ => Ok(e[l].clone()),
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            if acc.neighbour_on {
                let before = prev_srcs.as_ref().unwrap_or(&srcs);
                let term = self.neighbour_distill(before, &srcs, &nb, t)?;
                acc.neighbour = prof.time(Part::Loss, || &acc.neighbour + term)?;
            }
            let mut new = Vec::with_capacity(k);
            let mut step_trace = Vec::new();
            for (l, (bu, td)) in predictions.into_iter().enumerate() {
                let src = &srcs[l];
                let lat = prof.time(Part::Lateral, || {
                    lateral(&e[l], src, &nb.idx[l], &nb.pad[l], self.beta(l, t))
                })?;
                // In local mode only the bottom-up prediction carries a
                // gradient into the mean: at level 0 of the last iteration
                // that is the one step through which reconstruction trains
                // the front end.
                let td_mix = if local {
                    td.as_ref().map(|x| x.detach())
                } else {
                    td.clone()
                };
                let mixed = prof.time(Part::Mix, || mix(&bu, td_mix.as_ref(), &e[l], &lat, w))?;
                let settled = norm(&mixed)?;
                if next_frame && frame_at(t) < last_frame {
                    current.push(Student {
                        level: l,
                        bu: bu.clone(),
                        td: td.clone(),
                        lat: lat.clone(),
                    });
                } else if learn {
                    prof.time(Part::Loss, || {
                        acc.add(&bu, td.as_ref(), &settled.detach(), &lat, frame_at(t), l)
                    })?;
                }
                if want_trace {
                    step_trace.push((mixed.detach(), settled.detach()));
                }
                if l == 0 && t + 1 == iterations {
                    recon_src = Some(settled.clone());
                }
                new.push(detach(settled));
            }
            if want_trace {
                trace.push(step_trace);
            }
            if acc.neighbour_on {
                prev_srcs = Some(srcs);
            }
            e = new;
            if t + 1 == iterations || frame_at(t + 1) != frame_at(t) {
                frame_states.push(e.iter().map(Tensor::detach).collect::<Vec<_>>());
                if next_frame {
                    // The frame before this one predicted this frame's end.
                    let end = frame_states.last().expect("just pushed");
                    prof.time(Part::Loss, || -> Result<()> {
                        for s in pending.drain(..) {
                            let (l, f) = (s.level, frame_at(t));
                            acc.add(&s.bu, s.td.as_ref(), &end[l], &s.lat, f, l)?;
                        }
                        Ok(())
                    })?;
                    pending = std::mem::take(&mut current);
                }
            }
        }
        prof.time(Part::Loss, || acc.finish(&frame_states))?;
        let recon_src = recon_src.expect("at least one iteration (validated)");
        let recon = prof.time(Part::FrontEnd, || self.nets.decoder.forward(&recon_src))?;
        Ok(Settled {
            levels: e,
            recon,
            distill_bu: acc.distill_bu,
            distill_td: acc.distill_td,
            negative: acc.negative,
            variance: acc.variance,
            covariance: acc.covariance,
            contrastive: acc.contrastive,
            autoencoder: acc.autoencoder,
            neighbour_distill: acc.neighbour,
            trace,
            frames: frame_states,
        })
    }

    /// Neighbour co-distillation at iteration `t` (paper section 12.1:
    /// corresponding nets at different locations should compute the same
    /// function). For every level `l >= 1`, location `x` takes one sampled
    /// neighbour `y` (column `t mod n` of the level's draw) and its
    /// bottom-up net regresses, on `y`'s state one level down from the
    /// previous iteration (`before`), toward `y`'s state now (`now`): the
    /// pair `y`'s own bottom-up student was trained on one iteration
    /// earlier (at `t = 0`, the initial bottom-up pass). `before` and `now`
    /// are per level `[P + H, B, d]` (tile, then halo); the result is the
    /// per-location `[P]` sum of squared errors, with gradients only into
    /// location `x`'s own net.
    fn neighbour_distill(
        &self,
        before: &[Tensor],
        now: &[Tensor],
        nb: &NeighbourTensors,
        t: usize,
    ) -> Result<Tensor> {
        let p = self.tile.locs.len();
        let prof = &self.profile;
        let mut sum = Tensor::zeros(p, self.dtype, &self.device)?;
        for l in 1..self.cfg.model.levels {
            let (input, target) = prof.time(Part::Loss, || -> Result<_> {
                let n = nb.idx[l].dim(0)? / p.max(1);
                let ids = nb.idx[l]
                    .reshape((p, n))?
                    .narrow(1, t % n, 1)?
                    .flatten_all()?;
                let input = before[l - 1].index_select(&ids, 0)?.detach();
                let target = now[l].index_select(&ids, 0)?.detach();
                Ok((input, target))
            })?;
            let pred = prof.time(Part::Nets, || self.nets.bottom_up[l - 1].forward(&input))?;
            sum = prof.time(Part::Loss, || -> Result<_> {
                Ok((sum + terms::squared_error(&pred, &target)?)?)
            })?;
        }
        Ok(sum)
    }

    /// The top-down prediction `TD[level](above)` (`above`: `[P, B, d]`,
    /// the level above, for the tile's P locations), with the location code
    /// appended in shared mode.
    pub fn top_down(&self, level: usize, above: &Tensor) -> Result<Tensor> {
        let input = match &self.code {
            Some(code) => {
                let (p, b, _) = above.dims3()?;
                let c = code.broadcast_as((p, b, code.dim(2)?))?;
                Tensor::cat(&[above, &c], 2)?
            }
            None => above.clone(),
        };
        self.nets.top_down[level].forward(&input)
    }
}

/// The students' loss terms of one settle, summed per location as the
/// iterations go (see the fields of [`Settled`]).
struct StudentTerms {
    train: glom_protocol::config::TrainConfig,
    /// Which terms are built (learning, and a positive weight).
    negative_on: bool,
    variance_on: bool,
    covariance_on: bool,
    contrastive_on: bool,
    autoencoder_on: bool,
    neighbour_on: bool,
    distill_bu: Tensor,
    distill_td: Tensor,
    negative: Tensor,
    variance: Tensor,
    covariance: Tensor,
    contrastive: Tensor,
    autoencoder: Tensor,
    neighbour: Tensor,
    /// Every raw prediction the batch terms read (`[P, B, d]` each) and,
    /// for InfoNCE, its positive: the terms are computed once over all of
    /// them in [`StudentTerms::finish`], not once per student.
    preds: Vec<Tensor>,
    positives: Vec<Tensor>,
    /// Of every entry of `preds`: the frame whose consensus it is
    /// distilled toward, and its level.
    pred_frames: Vec<(usize, usize)>,
}

/// A student's predictions at one level and iteration, kept until the
/// consensus it is distilled toward exists (next-frame distillation).
struct Student {
    level: usize,
    bu: Tensor,
    td: Option<Tensor>,
    lat: Tensor,
}

impl StudentTerms {
    fn new(cfg: &Config, learn: bool, p: usize, dtype: DType, device: &Device) -> Result<Self> {
        let t = &cfg.train;
        let zero = Tensor::zeros(p, dtype, device)?;
        Ok(Self {
            train: t.clone(),
            negative_on: learn && t.negative_weight > 0.0,
            variance_on: learn && t.variance_weight > 0.0,
            covariance_on: learn && t.covariance_weight > 0.0,
            contrastive_on: learn && t.contrastive_weight > 0.0,
            autoencoder_on: learn && t.autoencoder_weight > 0.0 && cfg.model.levels > 1,
            neighbour_on: learn && t.neighbour_distill_weight > 0.0 && cfg.model.levels > 1,
            distill_bu: zero.clone(),
            distill_td: zero.clone(),
            negative: zero.clone(),
            variance: zero.clone(),
            covariance: zero.clone(),
            contrastive: zero.clone(),
            autoencoder: zero.clone(),
            neighbour: zero,
            preds: Vec::new(),
            positives: Vec::new(),
            pred_frames: Vec::new(),
        })
    }

    /// Add the terms of one level at one iteration: the bottom-up and
    /// top-down predictions (raw, `[P, B, d]`), the consensus they are
    /// distilled toward (detached), the lateral attention output, the
    /// frame of that consensus and the level.
    fn add(
        &mut self,
        bu: &Tensor,
        td: Option<&Tensor>,
        target: &Tensor,
        lat: &Tensor,
        frame: usize,
        level: usize,
    ) -> Result<()> {
        let tr = &self.train;
        self.distill_bu = (&self.distill_bu + terms::squared_error(bu, target)?)?;
        if let Some(td) = td {
            self.distill_td = (&self.distill_td + terms::squared_error(td, target)?)?;
        }
        if self.negative_on {
            self.negative =
                (&self.negative + terms::hinge_negative(bu, target, tr.negative_margin)?)?;
        }
        if self.variance_on || self.covariance_on || self.contrastive_on {
            let positive = match tr.contrastive_positive {
                ContrastivePositive::Consensus => target.clone(),
                ContrastivePositive::Lateral => lat.detach(),
            };
            for pred in std::iter::once(bu).chain(td) {
                self.preds.push(pred.clone());
                self.pred_frames.push((frame, level));
                if self.contrastive_on {
                    self.positives.push(positive.clone());
                }
            }
        }
        Ok(())
    }

    /// Compute the batch terms over every prediction collected, each
    /// location's values added over the n predictions: the variance and
    /// decorrelation terms one prediction at a time
    /// ([`terms::variance_and_covariance`]), InfoNCE over all of them
    /// stacked along the location axis (`[n P, B, d]`; with it on, the
    /// other two read that stack too).
    /// `frame_states` holds every level's state at the end of each frame
    /// (`[P, B, d]`), the negatives of `train.contrastive_frame_gap`.
    fn finish(&mut self, frame_states: &[Vec<Tensor>]) -> Result<()> {
        if self.preds.is_empty() {
            return Ok(());
        }
        let n = self.preds.len();
        let p = self.preds[0].dim(0)?;
        let per_location = |x: Tensor| -> Result<Tensor> { Ok(x.reshape((n, p))?.sum(0)?) };
        let tr = &self.train;
        let var = self
            .variance_on
            .then_some((tr.variance_form, tr.variance_target));
        // InfoNCE takes the predictions stacked; with it on, the other two
        // batch terms read that stack too, and a prediction's gradient
        // from the three is summed in the stack's gradient.
        let all = match self.contrastive_on {
            true => Some(Tensor::cat(&self.preds, 0)?),
            false => None,
        };
        let (variance, covariance) = match &all {
            Some(all) => terms::variance_and_covariance_of_stack(all, n, var, self.covariance_on)?,
            None => terms::variance_and_covariance(&self.preds, var, self.covariance_on)?,
        };
        if let Some(v) = variance {
            self.variance = v;
        }
        if let Some(c) = covariance {
            self.covariance = c;
        }
        if let Some(all) = all {
            let positives = Tensor::cat(&self.positives, 0)?;
            let extra = self.frame_negatives(frame_states)?;
            self.contrastive = per_location(terms::info_nce_with(
                &all,
                &positives,
                extra.as_ref().map(|(c, m)| (c, m)),
                tr.contrastive_temperature,
            )?)?;
        }
        Ok(())
    }

    /// The further InfoNCE negatives of `train.contrastive_frame_gap` for
    /// every collected prediction, as [`terms::info_nce_with`] takes them:
    /// the cosine similarity `[n P, B, G]` of each prediction about frame
    /// `f` at level `l` to the state of its own location and sequence at
    /// the end of frames `f - g` and `f + g` (`min <= g <= max`, G = 2
    /// slots per g), and the mask `[n P, 1, G]` of the slots outside the
    /// sequence. `None` when the gap is off or the item is one frame.
    fn frame_negatives(&self, frame_states: &[Vec<Tensor>]) -> Result<Option<(Tensor, Tensor)>> {
        let [lo, hi] = self.train.contrastive_frame_gap;
        if lo == 0 || frame_states.len() < 2 {
            return Ok(None);
        }
        let frames = frame_states.len();
        let units = frame_states
            .iter()
            .map(|levels| levels.iter().map(terms::unit).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let (mut cos, mut mask) = (Vec::new(), Vec::new());
        for (pred, &(f, l)) in self.preds.iter().zip(&self.pred_frames) {
            let (p, b, _) = pred.dims3()?;
            let q = terms::unit(pred)?;
            let mut slots = Vec::new();
            let mut slot_mask = Vec::new();
            for g in lo..=hi {
                for other in [f.checked_sub(g), Some(f + g).filter(|&o| o < frames)] {
                    match other {
                        Some(o) => {
                            slots.push((&q * &units[o][l])?.sum_keepdim(2)?);
                            slot_mask.push(0f32);
                        }
                        None => {
                            slots.push(Tensor::zeros((p, b, 1), q.dtype(), q.device())?);
                            slot_mask.push(-1e9);
                        }
                    }
                }
            }
            let n = slot_mask.len();
            cos.push(Tensor::cat(&slots, 2)?);
            mask.push(
                Tensor::from_vec(slot_mask, (1, 1, n), q.device())?
                    .to_dtype(q.dtype())?
                    .broadcast_as((p, 1, n))?
                    .contiguous()?,
            );
        }
        Ok(Some((Tensor::cat(&cos, 0)?, Tensor::cat(&mask, 0)?)))
    }
}

/// The neighbour-sampling gaussian of every level: wider at higher levels
/// (with `model.attention = "all"`, a radius past the grid's diagonal and
/// a count of every other location: the draw takes them all).
pub fn neighbour_specs(cfg: &Config) -> Vec<NeighbourSpec> {
    let m = &cfg.model;
    (0..m.levels)
        .map(|l| NeighbourSpec {
            count: cfg.lateral_count(),
            sigma: m.neighbour_sigma_at(l),
            radius: cfg.lateral_radius(l),
        })
        .collect()
}

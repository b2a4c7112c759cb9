//! `glom bench`: where a step's time goes, measured side by side in one
//! process, so that ratios (not absolute times, which a shared machine
//! makes noisy) are the result.
//!
//! Rows, each the median of `--repeats` timed calls after one warm-up call,
//! on the configured model, whole grid, one process, f32 on the CPU:
//! - the machine's attainable f32 GEMM rate (candle matmul, 1024^3), the
//!   reference line of every "% of GEMM" figure. It is timed once before
//!   each timed call of every other row, and each row's percentage is
//!   taken against the median of the GEMM timings between its own calls,
//!   so a row and its reference share the machine's speed of the moment;
//!   the reference row is the median of all of them;
//! - one bottom-up MLP at the model's shapes, per-location weights (one
//!   small product per location) and shared weights (one large product),
//!   equal FLOPs: their ratio is what per-location nets cost;
//! - a settle in inference mode, a local training step and a BPTT training
//!   step with per-location weights (whatever `model.weights` says: they
//!   are the design's nets), and a local step with shared weights:
//!   images/s, and GFLOP/s from the exact count of
//!   [`glom_worker::model::flops`] (with `--preset peer`, the per-location
//!   local step and the public PyTorch port's training: [`preset`]);
//! - where each training step's time goes, part by part ([`parts`]), and
//!   the halo wait of the per-location local step on two in-process
//!   workers ([`halo`]).
//!
//! # Layout
//! - [`preset`]: `--preset peer` and the training steps of each preset.
//! - [`parts`]: the step profile as fractions of the step.
//! - [`halo`]: the halo wait, from a two-worker `glom train`.
//! - [`table`]: the report as text.

mod halo;
mod parts;
mod preset;
mod table;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use glom_protocol::config::{Attention, Config, WeightMode};
use glom_worker::learn::{make_batch, Trainer, EVAL_KEY};
use glom_worker::model::flops::flops;
use glom_worker::model::{Mode, NoHalo};
use serde::Serialize;

use crate::run::{datasets, device, whole_model};
pub(crate) use preset::Preset;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    /// Median seconds of one call.
    pub(crate) seconds: f64,
    /// Images per second (None for rows that are not about images).
    pub(crate) images_per_s: Option<f64>,
    /// Floating-point operations of one call (matrix products only).
    pub(crate) flops: f64,
    pub(crate) gflop_per_s: f64,
    /// `gflop_per_s` as a percentage of the GEMM rate timed between this
    /// row's own calls.
    pub(crate) percent_of_gemm: f64,
    /// Median seconds of those GEMM timings (for the reference row, of
    /// every GEMM timing of the run).
    pub(crate) gemm_seconds: f64,
}

/// Everything `glom bench` prints, as written by `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) config_hash: String,
    /// `--preset`, if any.
    pub(crate) preset: Option<&'static str>,
    /// What was timed: grid side, d, hidden, levels, iterations, batch.
    pub(crate) shape: Shape,
    pub(crate) threads: usize,
    pub(crate) repeats: usize,
    /// The GEMM reference rate: the median of every GEMM timing of the run.
    pub(crate) gemm_gflop_per_s: f64,
    /// The local training step's rate as a percentage of it.
    pub(crate) local_step_percent_of_gemm: f64,
    /// Per-location local step time over the shared step's (the local
    /// one; with `--preset peer` the port's BPTT one), per FLOP and as is.
    pub(crate) per_location_over_shared_step: f64,
    pub(crate) per_location_over_shared_step_time: f64,
    /// Per-location MLP time over shared MLP time at equal FLOPs.
    pub(crate) per_location_over_shared_mlp: f64,
    pub(crate) rows: Vec<Row>,
    /// Where each training step row's time goes, in the order of the rows.
    pub(crate) breakdown: Vec<parts::Breakdown>,
    /// The per-location local step's halo wait on two in-process workers.
    pub(crate) halo: Option<halo::HaloWait>,
    /// Why `halo` is missing, when it is.
    pub(crate) halo_skipped: Option<String>,
}

/// The configuration's sizes, as the report shows them.
#[derive(Debug, Serialize)]
pub(crate) struct Shape {
    pub(crate) image_side: usize,
    pub(crate) channels: usize,
    pub(crate) grid_side: usize,
    pub(crate) dim: usize,
    pub(crate) hidden: usize,
    pub(crate) levels: usize,
    pub(crate) iterations: usize,
    pub(crate) batch_size: usize,
    /// `"sampled"` or `"all"`, and the neighbours each location attends to.
    pub(crate) attention: Attention,
    pub(crate) neighbours: usize,
}

/// The GEMM reference (candle matmul, `n x n` by `n x n`, f32), timed once
/// before each timed call of every row: a shared machine's speed moves by
/// up to 2x within minutes, so each row is compared with the GEMM timings
/// taken in the same seconds as its own, not with one taken at the start.
struct Reference {
    a: Tensor,
    b: Tensor,
    /// Every timing so far, in seconds, in the order taken.
    samples: Vec<f64>,
}

impl Reference {
    const N: usize = 1024;

    fn new(dev: &candle_core::Device) -> Result<Self> {
        let n = Self::N;
        let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
        let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
        a.matmul(&b)?; // warm-up
        Ok(Self {
            a,
            b,
            samples: Vec::new(),
        })
    }

    /// FLOPs of one product.
    fn flops() -> f64 {
        2.0 * (Self::N as f64).powi(3)
    }

    /// GFLOP/s of one product that took `seconds`.
    fn rate(seconds: f64) -> f64 {
        Self::flops() / seconds / 1e9
    }

    /// Time one product; returns its seconds.
    fn sample(&mut self) -> Result<f64> {
        let t = Instant::now();
        self.a.matmul(&self.b)?;
        let s = t.elapsed().as_secs_f64();
        self.samples.push(s);
        Ok(s)
    }
}

/// Median of a non-empty slice (the mean of the middle two for an even
/// count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[h - 1] + v[h]) / 2.0
    } else {
        v[h]
    }
}

/// `repeats` timed calls of `f`, each after one GEMM reference timing.
/// Returns the calls' seconds, in order, and the median seconds of the
/// GEMM timings taken between them.
fn timed(
    reference: &mut Reference,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, f64)> {
    let mut s = Vec::with_capacity(repeats);
    let mut g = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        g.push(reference.sample()?);
        let t = Instant::now();
        f()?;
        s.push(t.elapsed().as_secs_f64());
    }
    Ok((s, median(&g)))
}

/// Median seconds of `repeats` calls of `f`, after one untimed call, and
/// the median GEMM reference seconds taken between them.
fn time(
    reference: &mut Reference,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    f()?;
    let (s, g) = timed(reference, repeats, f)?;
    Ok((median(&s), g))
}

/// Median seconds of one training step of `cfg` (a fresh model, after one
/// untimed step), the median GEMM reference seconds taken between the
/// steps, and where the time of the timed steps went.
fn step_seconds(
    reference: &mut Reference,
    name: &str,
    cfg: &Config,
    repeats: usize,
) -> Result<(f64, f64, parts::Breakdown)> {
    let data = datasets(cfg)?.train;
    let mut model = whole_model(cfg)?;
    model.profile.set_on(true);
    let mut trainer = Trainer::new(model, data)?;
    trainer.train_step()?;
    trainer.model.profile.reset();
    let (s, g) = timed(reference, repeats, || {
        trainer.train_step()?;
        Ok(())
    })?;
    let total = s.iter().sum();
    let b = parts::breakdown(name, &trainer.model.profile, repeats, total);
    Ok((median(&s), g, b))
}

/// Run every row for `cfg` (with `preset`'s steps) and return the report.
pub(crate) fn measure(cfg: &Config, preset: Option<Preset>, repeats: usize) -> Result<Report> {
    let repeats = repeats.max(1);
    let dev = device(cfg)?;
    let mut reference = Reference::new(&dev)?;
    let mut rows = Vec::new();
    // Adds a row, compared with the GEMM timings taken between its own
    // calls (`gemm` seconds), and returns its percentage of that rate.
    let mut add = |name: &str, (seconds, gemm): (f64, f64), images: Option<f64>, flops: f64| {
        let gflop_per_s = flops / seconds / 1e9;
        let percent_of_gemm = 100.0 * gflop_per_s / Reference::rate(gemm);
        rows.push(Row {
            name: name.to_string(),
            seconds,
            images_per_s: images.map(|n| n / seconds),
            flops,
            gflop_per_s,
            percent_of_gemm,
            gemm_seconds: gemm,
        });
        percent_of_gemm
    };

    // One process computes the whole grid, whatever `cluster.workers` says.
    let mut cfg = cfg.clone();
    cfg.cluster.workers = 1;
    let cfg = &cfg;
    let mut per = cfg.clone();
    per.model.weights = WeightMode::PerLocation;
    let mut shared = cfg.clone();
    shared.model.weights = WeightMode::Shared;
    let batch = cfg.train.batch_size;
    let locations = cfg.grid_side() * cfg.grid_side();
    let (d, h) = (cfg.model.dim, cfg.model.hidden);
    let x = Tensor::randn(0f32, 1.0, (locations, batch, d), &dev)?;
    // One bottom-up MLP at the model's shapes, per-location and shared
    // weights.
    let mlp_flops = 2.0 * (locations * batch) as f64 * (d * h + h * d) as f64;
    let mut mlp = |c: &Config, name: &str| -> Result<f64> {
        let model = whole_model(c)?;
        let net = model
            .nets
            .bottom_up
            .first()
            .with_context(|| {
                format!(
                    "model.levels = {}: glom bench times a bottom-up net, which needs at least 2 levels",
                    c.model.levels
                )
            })?;
        let s = time(&mut reference, repeats, || {
            net.forward(&x)?;
            Ok(())
        })?;
        add(name, s, None, mlp_flops);
        Ok(s.0)
    };
    let mlp_per = mlp(&per, "bottom-up MLP, per-location weights")?;
    let mlp_shared = mlp(&shared, "bottom-up MLP, shared weights")?;

    let data = datasets(cfg)?;
    let images: Vec<_> = (0..batch).map(|i| data.train.get(i)).collect();
    let model = whole_model(&per)?;
    let input = make_batch(&per, &images, &model.tile.locs, 0, 0.0, &dev, DType::F32)?.input;
    let settle = time(&mut reference, repeats, || {
        model.settle(&input, EVAL_KEY, Mode::Inference, &mut NoHalo, false)?;
        Ok(())
    })?;
    add(
        "settle (inference)",
        settle,
        Some(batch as f64),
        flops(&per).settle,
    );

    let mut steps = Vec::new();
    let mut breakdown = Vec::new();
    let mut local_step_percent_of_gemm = 0.0;
    let cases = preset::steps(cfg, preset);
    for (name, c) in &cases {
        let (s, g, b) = step_seconds(&mut reference, name, c, repeats)?;
        let f = flops(c).train_step;
        let percent = add(name, (s, g), Some(batch as f64), f);
        // The first of these rows is the per-location local step.
        if steps.is_empty() {
            local_step_percent_of_gemm = percent;
        }
        steps.push((s, f));
        breakdown.push(b);
    }
    let (halo, halo_skipped) = match halo::unsplittable(&cases[0].1) {
        Some(why) => (None, Some(why)),
        None => (Some(halo::measure(&cases[0].1, repeats as u64 + 2)?), None),
    };
    // The reference row: every GEMM timing of the run.
    let gemm = median(&reference.samples);
    rows.insert(
        0,
        Row {
            name: "gemm 1024^3 (reference)".to_string(),
            seconds: gemm,
            images_per_s: None,
            flops: Reference::flops(),
            gflop_per_s: Reference::rate(gemm),
            percent_of_gemm: 100.0,
            gemm_seconds: gemm,
        },
    );
    let per_flop = |(s, f): (f64, f64)| s / f;
    let (first, last) = (steps[0], steps[steps.len() - 1]);
    let m = &cfg.model;
    Ok(Report {
        config_hash: cfg.hash(),
        preset: preset.map(Preset::name),
        shape: Shape {
            image_side: cfg.image_side(),
            channels: cfg.channels(),
            grid_side: cfg.grid_side(),
            dim: m.dim,
            hidden: m.hidden,
            levels: m.levels,
            iterations: m.iterations,
            batch_size: cfg.train.batch_size,
            attention: m.attention,
            neighbours: cfg.lateral_count(),
        },
        threads: candle_core::utils::get_num_threads(),
        repeats,
        gemm_gflop_per_s: Reference::rate(gemm),
        local_step_percent_of_gemm,
        per_location_over_shared_step: per_flop(first) / per_flop(last),
        per_location_over_shared_step_time: first.0 / last.0,
        per_location_over_shared_mlp: mlp_per / mlp_shared,
        rows,
        breakdown,
        halo,
        halo_skipped,
    })
}

/// `glom bench`: measure, print the table, write `json` if asked.
pub(crate) fn run(
    cfg: &Config,
    preset: Option<Preset>,
    repeats: usize,
    json: Option<&Path>,
) -> Result<()> {
    let out = JsonOut::create(json)?;
    let report = measure(cfg, preset, repeats)?;
    print!("{}", table::table(&report));
    out.map_or(Ok(()), |o| o.write(&report))
}

/// Where `--json FILE` goes. The path is tried before the measuring (one
/// that cannot be written fails at once), and FILE is replaced only when
/// the measuring succeeded: the figures go to `FILE.partial` beside it,
/// then over FILE in one rename, so a failed run leaves an earlier FILE as
/// it was (and removes its partial file).
pub(crate) struct JsonOut {
    path: PathBuf,
    partial: PathBuf,
    file: std::fs::File,
    /// The partial file was renamed over the path.
    done: bool,
}

impl JsonOut {
    /// Opens `FILE.partial` for `path`, if any.
    ///
    /// # Errors
    /// The path is a directory or has no file name, or its partial file
    /// cannot be created (the message names `--json` and the path).
    pub(crate) fn create(path: Option<&Path>) -> Result<Option<Self>> {
        let Some(path) = path else { return Ok(None) };
        if path.is_dir() {
            anyhow::bail!("--json {}: is a directory", path.display());
        }
        let mut name = path
            .file_name()
            .with_context(|| format!("--json {}: not a file name", path.display()))?
            .to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("--json {}", path.display()))?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            partial,
            file,
            done: false,
        }))
    }

    /// Writes `value` as pretty JSON and puts it in place.
    ///
    /// # Errors
    /// Writing or renaming fails (the message names the path).
    pub(crate) fn write(mut self, value: &impl Serialize) -> Result<()> {
        use std::io::Write;
        let mut f = &self.file;
        serde_json::to_writer_pretty(f, value)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(writeln!(f)?))
            .and_then(|()| Ok(f.sync_all()?))
            .with_context(|| format!("writing {}", self.partial.display()))?;
        std::fs::rename(&self.partial, &self.path).with_context(|| {
            format!(
                "moving {} to {}",
                self.partial.display(),
                self.path.display()
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for JsonOut {
    fn drop(&mut self) {
        // The run or the writing failed: an earlier FILE stays as it was,
        // and the partial file goes.
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

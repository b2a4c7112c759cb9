//! `glom bench`: where a step's time goes, measured side by side in one
//! process, so that ratios (not absolute times, which a shared machine
//! makes noisy) are the result.
//!
//! Rows, each the median of `--repeats` timed calls after one warm-up call,
//! on the configured model, whole grid, one process, f32 on the CPU:
//! - the machine's attainable f32 GEMM rate (candle matmul, 1024^3), the
//!   reference line of every "% of GEMM" figure;
//! - one bottom-up MLP at the model's shapes, per-location weights (one
//!   small product per location) and shared weights (one large product),
//!   equal FLOPs: their ratio is what per-location nets cost;
//! - a settle in inference mode, a local training step and a BPTT training
//!   step with per-location weights (whatever `model.weights` says: they
//!   are the design's nets), and a local step with shared weights:
//!   images/s, and GFLOP/s from the exact count of
//!   [`glom_worker::model::flops`].

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use glom_protocol::config::{Config, Learning, WeightMode};
use glom_worker::learn::{make_batch, Trainer, EVAL_KEY};
use glom_worker::model::flops::flops;
use glom_worker::model::{Mode, NoHalo};
use serde::Serialize;

use crate::run::{datasets, whole_model};

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
    /// `gflop_per_s` as a percentage of the GEMM reference row.
    pub(crate) percent_of_gemm: f64,
}

/// Everything `glom bench` prints, as written by `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) config_hash: String,
    /// What was timed: grid side, d, hidden, levels, iterations, batch.
    pub(crate) shape: Shape,
    pub(crate) threads: usize,
    pub(crate) repeats: usize,
    /// The GEMM reference rate.
    pub(crate) gemm_gflop_per_s: f64,
    /// The local training step's rate as a percentage of it.
    pub(crate) local_step_percent_of_gemm: f64,
    /// Per-location local step time over the shared local step's, per FLOP.
    pub(crate) per_location_over_shared_step: f64,
    /// Per-location MLP time over shared MLP time at equal FLOPs.
    pub(crate) per_location_over_shared_mlp: f64,
    pub(crate) rows: Vec<Row>,
}

/// The configuration's sizes, as the report shows them.
#[derive(Debug, Serialize)]
pub(crate) struct Shape {
    pub(crate) grid_side: usize,
    pub(crate) dim: usize,
    pub(crate) hidden: usize,
    pub(crate) levels: usize,
    pub(crate) iterations: usize,
    pub(crate) batch_size: usize,
}

/// Median seconds of `repeats` calls of `f`, after one untimed call.
fn time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut s = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        f()?;
        s.push(t.elapsed().as_secs_f64());
    }
    s.sort_by(f64::total_cmp);
    Ok(s[s.len() / 2])
}

/// Seconds of one training step of `cfg` (a fresh model).
fn step_seconds(cfg: &Config, repeats: usize) -> Result<f64> {
    let data = datasets(cfg)?.train;
    let mut trainer = Trainer::new(whole_model(cfg)?, data)?;
    time(repeats, || {
        trainer.train_step()?;
        Ok(())
    })
}

/// Run every row for `cfg` and return the report.
pub(crate) fn measure(cfg: &Config, repeats: usize) -> Result<Report> {
    let repeats = repeats.max(1);
    let dev = Device::Cpu;
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let gemm = time(repeats, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    let gemm_flops = 2.0 * (n as f64).powi(3);
    let gemm_rate = gemm_flops / gemm / 1e9;
    let mut rows = Vec::new();
    // Adds a row and returns its percentage of the GEMM rate.
    let mut add = |name: &str, seconds: f64, images: Option<f64>, flops: f64| {
        let gflop_per_s = flops / seconds / 1e9;
        let percent_of_gemm = 100.0 * gflop_per_s / gemm_rate;
        rows.push(Row {
            name: name.to_string(),
            seconds,
            images_per_s: images.map(|n| n / seconds),
            flops,
            gflop_per_s,
            percent_of_gemm,
        });
        percent_of_gemm
    };
    add("gemm 1024^3 (reference)", gemm, None, gemm_flops);

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
        let s = time(repeats, || {
            net.forward(&x)?;
            Ok(())
        })?;
        add(name, s, None, mlp_flops);
        Ok(s)
    };
    let mlp_per = mlp(&per, "bottom-up MLP, per-location weights")?;
    let mlp_shared = mlp(&shared, "bottom-up MLP, shared weights")?;

    let data = datasets(cfg)?;
    let images: Vec<_> = (0..batch).map(|i| data.train.get(i)).collect();
    let model = whole_model(&per)?;
    let input = make_batch(&per, &images, &model.tile.locs, 0, 0.0, &dev, DType::F32)?.input;
    let settle = time(repeats, || {
        model.settle(&input, EVAL_KEY, Mode::Inference, &mut NoHalo, false)?;
        Ok(())
    })?;
    add(
        "settle (inference)",
        settle,
        Some(batch as f64),
        flops(&per).settle,
    );

    let mut local = per.clone();
    local.train.learning = Learning::Local;
    let mut bptt = per.clone();
    bptt.train.learning = Learning::Bptt;
    let mut shared_local = local.clone();
    shared_local.model.weights = WeightMode::Shared;
    let mut steps = Vec::new();
    let mut local_step_percent_of_gemm = 0.0;
    for (name, c) in [
        ("training step, local", &local),
        ("training step, BPTT", &bptt),
        ("training step, local, shared weights", &shared_local),
    ] {
        let s = step_seconds(c, repeats)?;
        let f = flops(c).train_step;
        let percent = add(name, s, Some(batch as f64), f);
        // The first of these rows is the per-location local step.
        if steps.is_empty() {
            local_step_percent_of_gemm = percent;
        }
        steps.push((s, f));
    }
    let per_flop = |(s, f): (f64, f64)| s / f;
    let m = &cfg.model;
    Ok(Report {
        config_hash: cfg.hash(),
        shape: Shape {
            grid_side: cfg.grid_side(),
            dim: m.dim,
            hidden: m.hidden,
            levels: m.levels,
            iterations: m.iterations,
            batch_size: cfg.train.batch_size,
        },
        threads: candle_core::utils::get_num_threads(),
        repeats,
        gemm_gflop_per_s: gemm_rate,
        local_step_percent_of_gemm,
        per_location_over_shared_step: per_flop(steps[0]) / per_flop(steps[2]),
        per_location_over_shared_mlp: mlp_per / mlp_shared,
        rows,
    })
}

/// The report as a table.
pub(crate) fn table(r: &Report) -> String {
    let s = &r.shape;
    let mut out = format!(
        "glom bench: {0}x{0} locations, d {1}, hidden {2}, {3} levels, {4} iterations, batch {5}; \
         {6} threads, median of {7} timed calls (config {8})\n\n",
        s.grid_side,
        s.dim,
        s.hidden,
        s.levels,
        s.iterations,
        s.batch_size,
        r.threads,
        r.repeats,
        &r.config_hash[..12.min(r.config_hash.len())]
    );
    out.push_str(&format!(
        "{:<40} {:>10} {:>10} {:>9} {:>8}\n",
        "row", "ms", "images/s", "GFLOP/s", "% GEMM"
    ));
    for row in &r.rows {
        let images = row
            .images_per_s
            .map_or("-".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "{:<40} {:>10.2} {:>10} {:>9.2} {:>8.1}\n",
            row.name,
            row.seconds * 1e3,
            images,
            row.gflop_per_s,
            row.percent_of_gemm
        ));
    }
    out.push_str(&format!(
        "\nper-location / shared, one MLP at equal FLOPs: {:.2}x the time\n\
         per-location / shared, local training step per FLOP: {:.2}x the time\n",
        r.per_location_over_shared_mlp, r.per_location_over_shared_step
    ));
    out
}

/// `glom bench`: measure, print the table, write `json` if asked.
pub(crate) fn run(cfg: &Config, repeats: usize, json: Option<&Path>) -> Result<()> {
    // Open the JSON file first: a path that cannot be written fails now,
    // not after the measuring.
    let file = json
        .map(|p| std::fs::File::create(p).with_context(|| format!("--json {}", p.display())))
        .transpose()?;
    let report = measure(cfg, repeats)?;
    print!("{}", table(&report));
    if let (Some(mut f), Some(path)) = (file, json) {
        use std::io::Write;
        serde_json::to_writer_pretty(&mut f, &report)?;
        writeln!(f).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

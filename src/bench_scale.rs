//! `glom bench --scale WHAT`: how the cost grows with the problem and the
//! cluster (docs/experiments/performance.md, "Scale").
//!
//! - `grid`: a local training step of the whole grid in one process, for
//!   every grid side in `--sides` (`data.image_size` = side x
//!   `model.patch`) and embedding size in `--dims` (`model.hidden` = 2 x
//!   d, the default's ratio): step time, images/s, GFLOP/s, the process's
//!   peak resident memory, and the bytes of parameters and AdamW state per
//!   location. Each case runs in a process of its own (this binary, with
//!   the hidden `--scale-case`), so that its peak RSS is its own. Peak
//!   memory grows in proportion to the locations at a given d (the
//!   activations of a step dominate it), so a case whose estimate from the
//!   same d on a smaller grid exceeds 80% of the memory available is
//!   skipped and listed with its estimate instead of run.
//! - `coordinator`: the coordinator's cost per step with simulated workers
//!   ([`crate::bench_coordinator`]).
//! - `halo`: halo bytes per step against the minimum the tiling implies
//!   ([`crate::bench_halo`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use glom_protocol::config::{Learning, WeightMode};
use glom_protocol::Config;
use glom_worker::learn::Trainer;
use glom_worker::model::flops::flops;
use serde::{Deserialize, Serialize};

use crate::run::{datasets, whole_model};
use crate::{bench_coordinator, bench_halo, settings, ConfigArgs};

/// What `--scale` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scale {
    /// Step time, images/s, peak RSS and bytes per location against grid side and d.
    Grid,
    /// The coordinator's cost per step against the number of workers.
    Coordinator,
    /// Halo bytes per step against the number of tiles, with the minimum.
    Halo,
}

/// The flags of `glom bench --scale`.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct ScaleArgs {
    /// Scale figures instead of the rows above: `grid` (step time, images/s,
    /// peak RSS, bytes per location against grid side and d; a process per
    /// case), `coordinator` (its cost per step for 16 to 1,024 simulated
    /// workers), `halo` (halo bytes per step against the plan's minimum).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub(crate) scale: Option<Scale>,
    /// grid: grid sides (locations per side; data.image_size = side x model.patch).
    #[arg(long, value_delimiter = ',', value_name = "N,...", default_values_t = [8, 16, 32])]
    pub(crate) sides: Vec<usize>,
    /// grid: embedding sizes d (model.hidden = 2 d).
    #[arg(long, value_delimiter = ',', value_name = "D,...", default_values_t = [32, 64, 128])]
    pub(crate) dims: Vec<usize>,
    /// coordinator, halo: numbers of workers (default 16, 32, ..., 1024 for
    /// coordinator; 1, 2, 4, 8, 16 for halo).
    #[arg(long = "scale-workers", value_delimiter = ',', value_name = "N,...")]
    pub(crate) workers: Vec<usize>,
    /// coordinator: steps of each simulated run.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) steps: u64,
    /// One grid case in this process (`SIDE,D`), its figures as JSON on
    /// stdout: what `--scale grid` runs per case.
    #[arg(long, hide = true, value_name = "SIDE,D")]
    pub(crate) scale_case: Option<String>,
}

/// `glom bench` with `--scale` or `--scale-case`.
pub(crate) fn run(
    args: &ScaleArgs,
    config: &ConfigArgs,
    repeats: usize,
    json: Option<&Path>,
) -> Result<()> {
    let cfg = settings::load(config.config.as_deref(), &config.sets)?;
    if let Some(case) = &args.scale_case {
        let (side, dim) = parse_case(case)?;
        let r = measure_case(&cfg, side, dim, repeats)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let out = crate::bench::JsonOut::create(json)?;
    let (text, value) = match args.scale {
        Some(Scale::Grid) => {
            let g = grid(args, config, repeats)?;
            (grid_table(&g, repeats), serde_json::to_value(&g)?)
        }
        Some(Scale::Coordinator) => {
            let workers = or_default(&args.workers, &[16, 32, 64, 128, 256, 512, 1024]);
            // A first, short run warms the allocator and the caches.
            bench_coordinator::simulate(&cfg, workers[0], args.steps.min(20))?;
            let mut rows = Vec::new();
            for n in workers {
                let r = bench_coordinator::median(&cfg, n, args.steps, repeats)?;
                eprintln!("{n} workers: {:.4} ms/step", r.ms_per_step());
                rows.push(r);
            }
            (
                bench_coordinator::table(&cfg, &rows, repeats),
                serde_json::to_value(&rows)?,
            )
        }
        Some(Scale::Halo) => {
            let workers = or_default(&args.workers, &[1, 2, 4, 8, 16]);
            let rows = bench_halo::measure(&cfg, &workers)?;
            (bench_halo::table(&cfg, &rows), serde_json::to_value(&rows)?)
        }
        None => bail!("glom bench: --scale needs one of grid, coordinator, halo"),
    };
    print!("{text}");
    out.map_or(Ok(()), |o| o.write(&value))
}

fn or_default(given: &[usize], default: &[usize]) -> Vec<usize> {
    if given.is_empty() { default } else { given }.to_vec()
}

fn parse_case(case: &str) -> Result<(usize, usize)> {
    let bad = || format!("--scale-case {case:?}: expected SIDE,D, e.g. 16,64");
    let (side, dim) = case.split_once(',').with_context(bad)?;
    Ok((
        side.trim().parse().with_context(bad)?,
        dim.trim().parse().with_context(bad)?,
    ))
}

/// `cfg` at grid side `side` and embedding size `dim`: one process, the
/// whole grid, per-location nets, local learning.
pub(crate) fn case_config(cfg: &Config, side: usize, dim: usize) -> Result<Config> {
    let mut c = cfg.clone();
    c.data.image_size = side * c.model.patch;
    (c.model.dim, c.model.hidden) = (dim, 2 * dim);
    c.cluster.workers = 1;
    c.model.weights = WeightMode::PerLocation;
    c.train.learning = Learning::Local;
    c.validate()?;
    if c.grid_side() != side {
        bail!(
            "grid side {side}: data.source {:?} fixes its own image size (use the scenes)",
            c.data.source
        );
    }
    Ok(c)
}

/// The figures of one grid case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Case {
    pub(crate) side: usize,
    pub(crate) dim: usize,
    pub(crate) hidden: usize,
    pub(crate) batch_size: usize,
    /// Median seconds of one local training step.
    pub(crate) step_seconds: f64,
    /// CPU seconds of the process (all threads, user and system) per
    /// timed step, the mean; None off Linux. Unlike `step_seconds`, time
    /// lost to other processes on a shared machine does not count.
    pub(crate) cpu_seconds_per_step: Option<f64>,
    pub(crate) images_per_s: f64,
    pub(crate) gflop_per_s: f64,
    /// Seconds to build the model and its optimiser.
    pub(crate) build_seconds: f64,
    /// Peak resident memory of the process (VmHWM), bytes; None off Linux.
    pub(crate) peak_rss_bytes: Option<u64>,
    /// Parameters over the grid, and bytes of parameters and of the AdamW
    /// moments, per location.
    pub(crate) parameters: u64,
    pub(crate) param_bytes_per_location: f64,
    pub(crate) adam_bytes_per_location: f64,
}

/// Measure one case in this process: a warm-up step, then `repeats` timed.
fn measure_case(cfg: &Config, side: usize, dim: usize, repeats: usize) -> Result<Case> {
    let c = case_config(cfg, side, dim)?;
    let t = Instant::now();
    let mut trainer = Trainer::new(whole_model(&c)?, datasets(&c)?.train)?;
    let build_seconds = t.elapsed().as_secs_f64();
    trainer.train_step()?;
    let mut times = Vec::with_capacity(repeats);
    let cpu_before = process_cpu_seconds();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        trainer.train_step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let cpu_seconds_per_step = match (cpu_before, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) / repeats.max(1) as f64),
        _ => None,
    };
    times.sort_by(f64::total_cmp);
    let step_seconds = times[times.len() / 2];
    let bytes = |ts: &[candle_core::Tensor]| -> u64 {
        let each = ts
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes());
        each.sum::<usize>() as u64
    };
    let vars: Vec<_> = trainer
        .model
        .params
        .vars()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    let parameters = vars.iter().map(|t| t.elem_count() as u64).sum();
    let locations = (side * side) as f64;
    let batch = c.train.batch_size;
    Ok(Case {
        side,
        dim,
        hidden: c.model.hidden,
        batch_size: batch,
        step_seconds,
        cpu_seconds_per_step,
        images_per_s: batch as f64 / step_seconds,
        gflop_per_s: flops(&c).train_step / step_seconds / 1e9,
        build_seconds,
        peak_rss_bytes: peak_rss(),
        parameters,
        param_bytes_per_location: bytes(&vars) as f64 / locations,
        adam_bytes_per_location: (bytes(&trainer.opt.m) + bytes(&trainer.opt.v)) as f64 / locations,
    })
}

/// CPU seconds of this process so far, user and system (utime and stime
/// of /proc/self/stat, in clock ticks of 1/100 s, the usual USER_HZ).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The peak resident set of this process (VmHWM of /proc/self/status).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A case not run: its peak memory would not fit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Skipped {
    pub(crate) side: usize,
    pub(crate) dim: usize,
    /// Estimated peak RSS (bytes): a measured case of the same d, scaled by
    /// the ratio of locations.
    pub(crate) estimated_rss_bytes: u64,
    /// Memory available when it was skipped (MemAvailable).
    pub(crate) available_bytes: u64,
}

/// What `--scale grid` measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GridReport {
    pub(crate) cases: Vec<Case>,
    pub(crate) skipped: Vec<Skipped>,
}

/// MemAvailable of /proc/meminfo, bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Every case of `--sides` x `--dims`, each in a child process.
fn grid(args: &ScaleArgs, config: &ConfigArgs, repeats: usize) -> Result<GridReport> {
    let exe = std::env::current_exe().context("finding this binary to run the cases")?;
    let cfg = settings::load(config.config.as_deref(), &config.sets)?;
    let mut rows: Vec<Case> = Vec::new();
    let mut skipped = Vec::new();
    let mut sides = args.sides.clone();
    sides.sort_unstable();
    for &side in &sides {
        for &dim in &args.dims {
            case_config(&cfg, side, dim)?;
            // The largest measured grid of the same d, scaled up.
            let estimate = rows
                .iter()
                .filter(|r| r.dim == dim)
                .filter_map(|r| Some((r.side, r.peak_rss_bytes?)))
                .max()
                .map(|(s, rss)| rss as f64 * (side * side) as f64 / (s * s) as f64);
            if let (Some(est), Some(avail)) = (estimate, available_memory()) {
                if est > 0.8 * avail as f64 {
                    eprintln!(
                        "{side}x{side}, d {dim}: skipped, about {:.1} GiB of peak memory \
                         against {:.1} GiB available",
                        est / GIB,
                        avail as f64 / GIB
                    );
                    skipped.push(Skipped {
                        side,
                        dim,
                        estimated_rss_bytes: est as u64,
                        available_bytes: avail,
                    });
                    continue;
                }
            }
            let mut cmd = Command::new(&exe);
            cmd.arg("bench")
                .args(["--repeats", &repeats.to_string()])
                .args(["--scale-case", &format!("{side},{dim}")]);
            if let Some(path) = &config.config {
                cmd.arg("--config").arg(path);
            }
            for s in &config.sets {
                cmd.args(["--set", s]);
            }
            let out = cmd.stderr(Stdio::inherit()).output()?;
            if !out.status.success() {
                bail!("case {side}x{side}, d {dim} failed ({})", out.status);
            }
            let case: Case = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("reading the figures of case {side}x{side}, d {dim}"))?;
            eprintln!(
                "{side}x{side}, d {dim}: {:.1} ms/step",
                1e3 * case.step_seconds
            );
            rows.push(case);
        }
    }
    Ok(GridReport {
        cases: rows,
        skipped,
    })
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The table of `--scale grid`.
fn grid_table(report: &GridReport, repeats: usize) -> String {
    let rows = &report.cases;
    let batch = rows.first().map_or(0, |r| r.batch_size);
    let mut out = format!(
        "glom bench --scale grid: local training step of the whole grid, one process per case, \
         batch {batch}, {} threads, median of {repeats} timed steps after one warm-up\n\n",
        candle_core::utils::get_num_threads()
    );
    out.push_str(&format!(
        "{:>6} {:>9} {:>4} {:>7} {:>10} {:>10} {:>9} {:>9} {:>13} {:>13} {:>10} {:>12}\n",
        "grid",
        "locations",
        "d",
        "hidden",
        "ms/step",
        "CPU s/step",
        "images/s",
        "GFLOP/s",
        "CPU us/loc/im",
        "peak RSS MiB",
        "params KiB",
        "+AdamW KiB"
    ));
    for r in rows {
        let locations = r.side * r.side;
        // CPU time per location and image: what a location costs.
        let per = r.cpu_seconds_per_step.map_or("-".into(), |s| {
            format!("{:.1}", 1e6 * s / (locations * r.batch_size) as f64)
        });
        let rss = r
            .peak_rss_bytes
            .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0));
        out.push_str(&format!(
            "{:>6} {:>9} {:>4} {:>7} {:>10.1} {:>10} {:>9.2} {:>9.2} {:>13} {:>13} {:>10.1} {:>12.1}\n",
            format!("{0}x{0}", r.side),
            locations,
            r.dim,
            r.hidden,
            1e3 * r.step_seconds,
            r.cpu_seconds_per_step
                .map_or("-".into(), |s| format!("{s:.2}")),
            r.images_per_s,
            r.gflop_per_s,
            per,
            rss,
            r.param_bytes_per_location / 1024.0,
            (r.param_bytes_per_location + r.adam_bytes_per_location) / 1024.0,
        ));
    }
    for s in &report.skipped {
        out.push_str(&format!(
            "{:>6} {:>9} {:>4}   skipped: about {:.1} GiB of peak memory, {:.1} GiB available\n",
            format!("{0}x{0}", s.side),
            s.side * s.side,
            s.dim,
            s.estimated_rss_bytes as f64 / GIB,
            s.available_bytes as f64 / GIB,
        ));
    }
    out
}

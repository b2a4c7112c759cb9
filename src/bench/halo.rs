//! The halo wait of `glom bench`: the per-location local step of the
//! configuration trained by `glom train` on two in-process workers (the
//! embedded cluster: coordinator and workers over loopback QUIC), in a
//! child process of this binary so that its threads and its share of the
//! cores are those of a real run.
//!
//! Of `n` steps the first and the last are left out: the first sets up the
//! connections, and both are observed for the metrics records (the
//! collapse measures count in their step time). The figures come from the
//! run's `summary.json` (totals over all steps) less its `metrics.jsonl`
//! records of those two steps.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use glom_protocol::Config;
use serde::Serialize;

/// Workers of the measurement.
const WORKERS: usize = 2;

/// What the two-worker run measured.
#[derive(Debug, Serialize)]
pub(crate) struct HaloWait {
    pub(crate) workers: usize,
    /// Steps the figures are over (the run's steps less the first and last).
    pub(crate) steps: u64,
    /// The slowest worker's step, mean over those steps.
    pub(crate) seconds_per_step: f64,
    /// Time the worker that waited longest spent blocked on its halo, as a
    /// fraction of the slowest worker's step (`glom_halo_wait_fraction`).
    pub(crate) wait_fraction: f64,
    /// Framed halo bytes all workers sent per step.
    pub(crate) bytes_per_step: f64,
}

/// Why the measurement was not made, if `cfg` cannot be split over two
/// workers (a one-location grid); `None` when it can.
pub(crate) fn unsplittable(cfg: &Config) -> Option<String> {
    cfg.validate_workers(WORKERS).err().map(|e| e.to_string())
}

/// Train `cfg` (per-location, local) for `steps` (at least 3) steps on two
/// in-process workers and return its halo wait.
pub(crate) fn measure(cfg: &Config, steps: u64) -> Result<HaloWait> {
    let steps = steps.max(3);
    let dir = std::env::temp_dir().join(format!("glom-bench-halo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, cfg, steps);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(dir: &Path, cfg: &Config, steps: u64) -> Result<HaloWait> {
    let mut cfg = cfg.clone();
    cfg.cluster.workers = WORKERS;
    cfg.train.steps = steps;
    // Only the first and last steps are logged (and observed).
    cfg.train.log_every = steps + 1;
    cfg.checkpoint.every_steps = 0;
    cfg.metrics.enabled = false;
    let config = dir.join("config.toml");
    std::fs::write(&config, toml::to_string(&cfg)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let run = dir.join("run");
    let exe = std::env::current_exe().context("finding the glom binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--no-eval")
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&run);
    // The configuration is complete: no GLOM_* variable (a configuration
    // key, or the fault injection of tests) reaches the child.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().to_lowercase().starts_with("glom_") {
            cmd.env_remove(var);
        }
    }
    let out = cmd
        .output()
        .context("starting glom train for the halo wait")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(anyhow!(
            "glom train on {WORKERS} workers (the halo wait) failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    read(&run, steps)
}

/// The figures of the run in `run`, less its first and last step.
fn read(run: &Path, steps: u64) -> Result<HaloWait> {
    let json = |p: PathBuf| -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let summary = json(run.join("summary.json"))?;
    let number = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .ok_or_else(|| anyhow!("{key} missing from the run's records"))
    };
    let halo = &summary["halo"];
    let step_total = number(halo, "seconds_per_step")? * steps as f64;
    let wait_total = number(halo, "wait_fraction")? * step_total;
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (mut step_ends, mut wait_ends) = (0.0, 0.0);
    let mut logged = 0;
    for line in text.lines() {
        let rec: serde_json::Value = serde_json::from_str(line)?;
        if rec["phase"] != "awake" {
            continue;
        }
        let s = number(&rec, "step_seconds")?;
        step_ends += s;
        wait_ends += s * number(&rec, "halo_wait_fraction")?;
        logged += 1;
    }
    if logged != 2 {
        return Err(anyhow!(
            "{}: expected the records of the first and last step, found {logged}",
            path.display()
        ));
    }
    let inner = (steps - 2) as f64;
    let step_inner = (step_total - step_ends).max(0.0);
    Ok(HaloWait {
        workers: WORKERS,
        steps: steps - 2,
        seconds_per_step: step_inner / inner,
        wait_fraction: (wait_total - wait_ends).max(0.0) / step_inner.max(1e-12),
        bytes_per_step: number(halo, "bytes_per_step")?,
    })
}

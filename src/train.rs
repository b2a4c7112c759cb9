//! `glom train`: train on one machine, log metrics, write checkpoints, then
//! evaluate against the same model at random initialisation.
//!
//! The run directory holds `config.toml` (the resolved configuration),
//! `metrics.jsonl` (one JSON object per logged step), `checkpoints/step-<N>/`
//! and `checkpoints/final/`, and `summary.json` (the evaluation plus
//! `steps` and `wall_seconds`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use glom_protocol::Config;
use glom_worker::analysis::CollapseStats;
use glom_worker::checkpoint;
use glom_worker::learn::{collapse_by_level, LossValues, Trainer};
use serde::Serialize;

use crate::metrics::server::Endpoint;
use crate::metrics::{NoTelemetry, Phase, PromTelemetry, RunInfo, StepReport, Telemetry};
use crate::observe::{measure, Cost};
use crate::run::{create_run_dir, datasets, default_run_dir, progress, whole_model};

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsRecord<'a> {
    step: u64,
    phase: &'a str,
    images_per_s: f64,
    wall_seconds: f64,
    #[serde(flatten)]
    losses: LossValues,
    effective_rank_by_level: Vec<f64>,
    dim_std_by_level: Vec<f64>,
    mean_cosine_by_level: Vec<f64>,
}

impl<'a> MetricsRecord<'a> {
    fn new(
        step: u64,
        phase: &'a str,
        images_per_s: f64,
        wall: f64,
        losses: LossValues,
        c: &[CollapseStats],
    ) -> Self {
        Self {
            step,
            phase,
            images_per_s,
            wall_seconds: wall,
            losses,
            effective_rank_by_level: c.iter().map(|s| s.effective_rank).collect(),
            dim_std_by_level: c.iter().map(|s| s.mean_dim_std).collect(),
            mean_cosine_by_level: c.iter().map(|s| s.mean_cosine).collect(),
        }
    }
}

/// Set by Ctrl-C: finish the current step, checkpoint, and stop.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to abort)");
            f.store(true, Ordering::SeqCst);
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                std::process::exit(130);
            }
        }
    });
    flag
}

/// The telemetry of a run and, when metrics are enabled, its endpoint
/// (bound now, so an address in use fails before any training).
fn telemetry(cfg: &Config) -> Result<(Box<dyn Telemetry>, Option<Endpoint>)> {
    if !cfg.metrics.enabled {
        return Ok((Box::new(NoTelemetry), None));
    }
    // The config's own spelling of the modes (`per_location`, `local`).
    let label = |v: serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let (weights, learning) = (
        label(serde_json::to_value(cfg.model.weights)?),
        label(serde_json::to_value(cfg.train.learning)?),
    );
    let info = RunInfo {
        weights: &weights,
        learning: &learning,
        dim: cfg.model.dim,
    };
    let prom = PromTelemetry::new(&info)?;
    let endpoint = Endpoint::start(&cfg.metrics.listen, prom.registry.clone())?;
    Ok((Box::new(prom), Some(endpoint)))
}

/// Train `cfg` into `out` (default `runs/<timestamp>`), then evaluate if `eval`.
pub(crate) fn run(cfg: Config, out: Option<PathBuf>, eval: bool) -> Result<()> {
    let started = Instant::now();
    let dir = out.unwrap_or_else(default_run_dir);
    // Open the data, build the model and bind the metrics endpoint first: a
    // bad data path or an address in use leaves no run directory behind.
    let data = datasets(&cfg)?;
    let model = whole_model(&cfg)?;
    let (telemetry, endpoint) = telemetry(&cfg)?;
    create_run_dir(&dir)?;
    if let Some(addr) = endpoint.as_ref().map(Endpoint::addr) {
        let path = dir.join("metrics_addr.txt");
        std::fs::write(&path, format!("{addr}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    std::fs::write(dir.join("config.toml"), toml::to_string(&cfg)?)
        .with_context(|| format!("writing {}", dir.join("config.toml").display()))?;
    tracing::info!(dir = %dir.display(), steps = cfg.train.steps, weights = ?cfg.model.weights,
        learning = ?cfg.train.learning, data = ?cfg.data.source, "training");

    let mut trainer = Trainer::new(model, data.train.clone())?;
    let metrics_path = dir.join("metrics.jsonl");
    let mut metrics = File::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;
    telemetry.phase(Phase::Awake);
    let mut cost = Cost::default();
    let stop = interrupt_flag();

    let bar = progress(cfg.train.steps, "train");
    let batch = cfg.train.batch_size as f64;
    let train_started = Instant::now();
    let mut window = (Instant::now(), 0u64);
    let mut last_save = None;
    while trainer.step < cfg.train.steps {
        let step_started = Instant::now();
        let out = trainer.train_step()?;
        let step_seconds = step_started.elapsed().as_secs_f64();
        cost.add_step(step_seconds);
        let step = trainer.step; // steps completed
        window.1 += 1;
        let images_per_s = window.1 as f64 * batch / window.0.elapsed().as_secs_f64().max(1e-9);
        telemetry.step(&StepReport {
            seconds: step_seconds,
            images_per_second: images_per_s,
            losses: out.losses,
        });
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.4} | {:.1} img/s",
            out.losses.loss_total, images_per_s
        ));
        if !out.losses.loss_total.is_finite() {
            anyhow::bail!(
                "loss became {} at step {step}: lower train.learning_rate",
                out.losses.loss_total
            );
        }
        let last = step == cfg.train.steps || stop.load(Ordering::SeqCst);
        let mut collapse = None;
        if cfg.metrics.enabled && (step % cfg.metrics.every_steps == 0 || step == 1 || last) {
            let m = measure(&cfg, &trainer.model, &out, step)?;
            cost.add_pass(m.seconds);
            telemetry.levels(&m.levels, m.seconds);
            collapse = Some(m.collapse);
        }
        if step % cfg.train.log_every == 0 || step == 1 || last {
            let collapse = match collapse {
                Some(c) => c,
                None => collapse_by_level(&out.levels, cfg.train.rank_sample, cfg.seed, step)?,
            };
            let wall = train_started.elapsed().as_secs_f64();
            let rec = MetricsRecord::new(step, "awake", images_per_s, wall, out.losses, &collapse);
            serde_json::to_writer(&mut metrics, &rec)?;
            metrics.write_all(b"\n")?;
            metrics.flush()?;
            let ranks: Vec<String> = rec
                .effective_rank_by_level
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect();
            bar.suspend(|| {
                tracing::info!(
                    step,
                    loss = format!("{:.4}", out.losses.loss_total),
                    recon = format!("{:.4}", out.losses.loss_recon),
                    images_per_s = format!("{images_per_s:.1}"),
                    effective_rank = ranks.join(" "),
                    "step"
                )
            });
            window = (Instant::now(), 0);
        }
        let every = cfg.checkpoint.every_steps;
        if (every > 0 && step % every == 0) || last {
            let ck = dir.join("checkpoints").join(format!("step-{step}"));
            checkpoint::save(&ck, &trainer.model, &trainer.opt, step)?;
            last_save = Some(step);
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    bar.finish_and_clear();
    drop(endpoint);
    let train_seconds = train_started.elapsed().as_secs_f64();
    let monitor = cost.summary();
    if cfg.metrics.enabled {
        tracing::info!(
            passes = %monitor["passes"],
            seconds_per_pass = format!("{:.4}", monitor["seconds_per_pass"].as_f64().unwrap_or(0.0)),
            fraction_of_step = format!("{:.3}", monitor["pass_fraction_of_step"].as_f64().unwrap_or(0.0)),
            "cost of the per-level measures"
        );
    }
    let steps = trainer.step;
    if last_save != Some(steps) {
        let ck = dir.join("checkpoints").join(format!("step-{steps}"));
        checkpoint::save(&ck, &trainer.model, &trainer.opt, steps)?;
    }
    let final_dir = dir.join("checkpoints").join("final");
    checkpoint::save(&final_dir, &trainer.model, &trainer.opt, steps)?;
    tracing::info!(steps, seconds = format!("{train_seconds:.1}"), checkpoint = %final_dir.display(), "trained");

    let mut summary = serde_json::json!({
        "steps": steps,
        "train_seconds": train_seconds,
        "images_per_s": steps as f64 * batch / train_seconds.max(1e-9),
        "config_hash": cfg.hash(),
        "interrupted": steps < cfg.train.steps,
        "monitor": monitor,
    });
    if eval {
        let report = crate::evaluate::evaluate_model(&trainer.model, &data)?;
        crate::evaluate::print_table(&report);
        if let (serde_json::Value::Object(s), serde_json::Value::Object(r)) =
            (&mut summary, serde_json::to_value(&report)?)
        {
            s.extend(r);
        }
    }
    summary["wall_seconds"] = started.elapsed().as_secs_f64().into();
    write_json(&dir.join("summary.json"), &summary)?;
    println!("run directory: {}", dir.display());
    Ok(())
}

/// Write pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

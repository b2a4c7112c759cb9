//! `glom sleep`: one offline sleep job on a checkpoint (paper section 12.2,
//! DESIGN.md section 3), so that an external scheduler (cron, a Kubernetes
//! CronJob, a SLURM job; examples in `scripts/sleep/`) can run the night
//! phase between training runs.
//!
//! The checkpoint's model holds the whole grid in this process. With no
//! awake steps behind it, the replay buffer is filled by settling
//! `sleep.replay_capacity` training images with the loaded model; then the
//! same job a worker runs when the coordinator schedules one
//! (`glom_worker::sleep::run_job`, seeded by the checkpoint's step) updates
//! the bottom-up and top-down nets, and a new checkpoint of the same format
//! and step is written to `--out`, with `sleep.json` beside it (the job's
//! losses and the collapse measures before and after).
//!
//! Nothing is written unless everything succeeds: the checkpoint is built
//! in a temporary directory next to `--out` and renamed at the end; an
//! existing `--out` is refused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use glom_protocol::message::{Observation, SleepStart};
use glom_protocol::Config;
use glom_worker::analysis::{collapse_stats, CollapseStats};
use glom_worker::checkpoint;
use glom_worker::learn::{Adam, AdamParams};
use glom_worker::sleep::{fill_replay, observation_images, run_job};
use serde_json::json;

use crate::run::{datasets, progress, whole_model};
use crate::train::write_json;

/// Sections of the checkpoint's configuration that `--config`/`--set` may
/// not change: they define the model the checkpoint holds and the data it
/// was trained on (`data.path` aside).
fn check_same_model(saved: &Config, cfg: &Config) -> Result<()> {
    let mut data = cfg.data.clone();
    data.path.clone_from(&saved.data.path);
    let changed = [
        ("seed", saved.seed != cfg.seed),
        ("model", saved.model != cfg.model),
        ("train", saved.train != cfg.train),
        ("data", saved.data != data),
    ];
    if let Some((section, _)) = changed.iter().find(|(_, c)| *c) {
        bail!(
            "--config/--set change {section} of the checkpoint's configuration; only sleep.*, \
             data.path, eval.*, metrics.*, checkpoint.* and cluster.* may differ from the \
             checkpoint's"
        );
    }
    Ok(())
}

/// The checkpoint's configuration with `file` and `sets` layered over it.
fn configuration(saved: &Config, file: Option<&Path>, sets: &[String]) -> Result<Config> {
    if file.is_none() && sets.is_empty() {
        return Ok(saved.clone());
    }
    let base = toml::to_string(saved)?;
    let cfg = crate::settings::load_over(&base, "the checkpoint's configuration", file, sets)?;
    check_same_model(saved, &cfg)?;
    Ok(cfg)
}

/// Collapse measures per level of an observation (all locations and images).
fn measures(o: &Observation) -> Vec<CollapseStats> {
    o.levels
        .iter()
        .map(|l| collapse_stats(&l.embeddings, o.dim as usize))
        .collect()
}

/// A temporary directory removed when dropped, unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `glom sleep --checkpoint IN --out OUT [--config F] [--set k=v]`.
pub(crate) fn run(input: &Path, out: &Path, file: Option<&Path>, sets: &[String]) -> Result<()> {
    if out.exists() {
        bail!(
            "{} already exists: glom sleep writes a new checkpoint and never replaces one; \
             choose another --out",
            out.display()
        );
    }
    // The error names the checkpoint's path already.
    let manifest = checkpoint::read_manifest(input)?;
    let cfg = configuration(&manifest.config, file, sets)?;
    let model = whole_model(&cfg)?;
    let t = &cfg.train;
    let mut opt = Adam::new(
        model.params.vars(),
        AdamParams::new(t.learning_rate, t.weight_decay),
    )?;
    checkpoint::load_into(input, &model, Some(&mut opt))
        .with_context(|| format!("loading the checkpoint {}", input.display()))?;
    let data = datasets(&cfg)?;
    let step = manifest.step;
    let s = &cfg.sleep;
    tracing::info!(checkpoint = %input.display(), step, steps = s.steps,
        replay = s.replay_capacity, "sleep job");

    let bar = progress(s.replay_capacity as u64, "replay");
    let replay = fill_replay(
        &model,
        data.train.as_ref(),
        s.replay_capacity,
        step,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();

    let images = observation_images(&cfg, data.train.as_ref());
    let start = SleepStart {
        job: 0,
        after_step: step,
        steps: s.steps,
        seed: step,
    };
    let bar = progress(s.steps, "sleep");
    let outcome = run_job(&model, &replay, &start, &images, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();

    // Write next to OUT, then rename: a failure leaves no OUT behind.
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out
        .file_name()
        .ok_or_else(|| anyhow!("--out {} names no directory", out.display()))?;
    let mut scratch = Scratch {
        path: parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        )),
        keep: false,
    };
    checkpoint::save(&scratch.path, &model, &opt, step)?;
    let before = outcome.before.as_ref().map(measures);
    let after = outcome.after.as_ref().map(measures);
    let r = &outcome.report;
    let record = json!({
        "phase": "sleep",
        "checkpoint": input.display().to_string(),
        "step": step,
        "sleep_steps": r.steps,
        "seconds": outcome.seconds,
        "loss_negative_first": r.negative_loss_first,
        "loss_negative_last": r.negative_loss_last,
        "loss_positive_last": r.positive_loss_last,
        "observed_images": images.len(),
        "before": by_level(before.as_deref()),
        "after": by_level(after.as_deref()),
    });
    write_json(&scratch.path.join("sleep.json"), &record)?;
    fs::rename(&scratch.path, out)
        .with_context(|| format!("renaming {} to {}", scratch.path.display(), out.display()))?;
    scratch.keep = true;

    println!(
        "sleep job on {} (step {step}): {} steps in {:.1} s",
        input.display(),
        r.steps,
        outcome.seconds
    );
    println!(
        "  negative loss {:.5} -> {:.5}, positive loss {:.5}",
        r.negative_loss_first, r.negative_loss_last, r.positive_loss_last
    );
    match (before, after) {
        (Some(b), Some(a)) => print_measures(&b, &a, images.len()),
        _ => println!("  no collapse measures (sleep.observe_images = 0)"),
    }
    println!("checkpoint: {}", out.display());
    Ok(())
}

/// The measures as `metrics.jsonl` names them, per level.
fn by_level(m: Option<&[CollapseStats]>) -> serde_json::Value {
    match m {
        None => serde_json::Value::Null,
        Some(m) => json!({
            "effective_rank_by_level": m.iter().map(|s| s.effective_rank).collect::<Vec<_>>(),
            "dim_std_by_level": m.iter().map(|s| s.mean_dim_std).collect::<Vec<_>>(),
            "mean_cosine_by_level": m.iter().map(|s| s.mean_cosine).collect::<Vec<_>>(),
        }),
    }
}

fn print_measures(before: &[CollapseStats], after: &[CollapseStats], images: usize) {
    println!(
        "\ncollapse measures of the bottom-up pass ({images} training images, every location)"
    );
    println!("  level  effective rank      dim std             mean cosine");
    for (l, (b, a)) in before.iter().zip(after).enumerate() {
        println!(
            "  {l:>5}  {:>6.2} -> {:<6.2}    {:>6.3} -> {:<6.3}    {:>6.3} -> {:<6.3}",
            b.effective_rank,
            a.effective_rank,
            b.mean_dim_std,
            a.mean_dim_std,
            b.mean_cosine,
            a.mean_cosine
        );
    }
}

//! `glom eval`: evaluate a checkpoint beside the same model at random
//! initialisation, computed by the same code in the same run.

use std::path::Path;

use anyhow::{anyhow, Result};
use glom_worker::checkpoint;
use glom_worker::eval::{evaluate_with_baseline, EvalReport, Evaluation};
use glom_worker::model::Glom;

use crate::run::{datasets, progress, whole_model, Datasets};

/// Evaluate `model` (trained) and its random initialisation, with progress bars.
pub(crate) fn evaluate_model(model: &Glom, data: &Datasets) -> Result<Evaluation> {
    let bar = progress(0, "eval");
    let mut phase = String::new();
    let mut report = |what: &str, done: usize, total: usize| {
        if what != phase {
            phase = what.to_string();
            bar.set_message(phase.clone());
            bar.set_length(total as u64);
        }
        bar.set_position(done as u64);
    };
    let eval = evaluate_with_baseline(
        model,
        data.held_out.as_ref(),
        data.train.as_ref(),
        &mut report,
    )?;
    bar.finish_and_clear();
    Ok(eval)
}

fn fmt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
}

fn row(name: &str, trained: Option<f64>, baseline: Option<f64>) {
    println!("  {name:<30} {:>9} {:>12}", fmt(trained), fmt(baseline));
}

/// Print the trained figures beside the random-init ones.
pub(crate) fn print_table(e: &Evaluation) {
    let (t, b): (&EvalReport, &EvalReport) = (&e.trained, &e.baseline.random_init);
    println!("\nevaluation (held-out)           trained  random init");
    row(
        "recon PSNR, masked patches (dB)",
        Some(t.recon_psnr_db),
        Some(b.recon_psnr_db),
    );
    row(
        "island ARI object (threshold)",
        t.island_ari_object,
        b.island_ari_object,
    );
    row(
        "island ARI part (threshold)",
        t.island_ari_part,
        b.island_ari_part,
    );
    row(
        "ARI object, true k",
        t.island_ari_object_k,
        b.island_ari_object_k,
    );
    row("ARI part, true k", t.island_ari_part_k, b.island_ari_part_k);
    row(
        "foreground ARI object, true k",
        t.fg_ari_object_k,
        b.fg_ari_object_k,
    );
    row(
        "pixel FG-ARI object (threshold)",
        t.pixel_fg_ari_object,
        b.pixel_fg_ari_object,
    );
    row(
        "pixel FG-ARI object, true k",
        t.pixel_fg_ari_object_k,
        b.pixel_fg_ari_object_k,
    );
    if let Some(k) = &e.baseline.kmeans_colour {
        row(
            "k-means colour: ARI object",
            None,
            Some(k.island_ari_object_k),
        );
        row("k-means colour: FG ARI object", None, k.fg_ari_object_k);
        row(
            "k-means colour: pixel FG-ARI",
            None,
            k.pixel_fg_ari_object_k,
        );
    }
    row(
        "pixel FG-ARI ceiling (patches)",
        None,
        e.pixel_fg_ari_ceiling,
    );
    row("linear probe accuracy", t.probe_accuracy, b.probe_accuracy);
    row(
        "raw-pixel probe accuracy",
        None,
        e.baseline.probe_accuracy_raw_pixels,
    );
    let islands: Vec<String> = t
        .islands_per_image_by_level
        .iter()
        .map(|x| format!("{x:.1}"))
        .collect();
    println!("  islands per image by level: {}", islands.join(" "));
}

/// Keys `glom eval --set` may change: evaluation settings, where the data
/// lies, and which data the checkpoint is evaluated on (a still model on
/// videos or the other way round: the source, its frames and the settling
/// iterations per frame), none of which changes a weight.
pub(crate) const EVAL_KEYS: [&str; 5] = [
    "eval.",
    "data.path",
    "data.source",
    "data.frames",
    "model.iterations_per_frame",
];

/// `glom eval --checkpoint DIR [--json] [--set KEY=V]` ([`EVAL_KEYS`]).
pub(crate) fn run(dir: &Path, json: bool, sets: &[String]) -> Result<()> {
    let manifest = checkpoint::read_manifest(dir)?;
    let mut cfg = manifest.config.clone();
    for set in sets {
        if !EVAL_KEYS.iter().any(|k| set.trim_start().starts_with(k)) {
            return Err(anyhow!(
                "--set {set:?}: only eval.* keys, data.path, data.source, data.frames and \
                 model.iterations_per_frame may be changed when evaluating a checkpoint"
            ));
        }
    }
    if !sets.is_empty() {
        // Keys that shape training alone and need a video (next-frame
        // targets, nearby-frame negatives) change nothing in evaluation:
        // off, so a video checkpoint evaluates on still images too.
        cfg.train.distill_target = glom_protocol::config::DistillTarget::SameFrame;
        cfg.train.contrastive_frame_gap = [0, 0];
        cfg.sleep.frame_gap = [0, 0];
        let base = toml::to_string(&cfg)?;
        cfg = crate::settings::load_over(&base, "the checkpoint's configuration", None, sets)?;
        let shape = |c: &glom_protocol::config::Config| (c.image_side(), c.channels());
        let (want, got) = (shape(&manifest.config), shape(&cfg));
        if want != got {
            return Err(anyhow!(
                "--set data.source = {:?}: its images are {}x{} with {} channel(s), the \
                 checkpoint's model reads {}x{} with {}",
                cfg.data.source,
                got.0,
                got.0,
                got.1,
                want.0,
                want.0,
                want.1
            ));
        }
    }
    let model = whole_model(&cfg)?;
    checkpoint::load_into(dir, &model, None)?;
    let data = datasets(&cfg)?;
    let eval = evaluate_model(&model, &data)?;
    if json {
        let mut v = serde_json::to_value(&eval)?;
        v["step"] = manifest.step.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("checkpoint {} (step {})", dir.display(), manifest.step);
        print_table(&eval);
    }
    Ok(())
}

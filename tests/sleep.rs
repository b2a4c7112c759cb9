//! `glom sleep` end to end: a real tiny run slept on, and the refusals
//! (missing, corrupt or interrupted checkpoints, an existing output, a
//! changed model) that must leave nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::{failure, ok};

/// A small, fast model, evaluation and sleep job.
const TINY: &[&str] = &[
    "model.levels=3",
    "model.dim=8",
    "model.hidden=16",
    "model.iterations=3",
    "data.image_size=16",
    "train.batch_size=4",
    "train.log_every=2",
    "eval.images=8",
    "eval.probe_images=16",
    "metrics.enabled=false",
    "cluster.workers=1",
    "sleep.steps=6",
    "sleep.negative_steps=2",
    "sleep.positive_steps=1",
    "sleep.batch=4",
    "sleep.replay_capacity=8",
    "sleep.observe_images=4",
];

fn glom(args: &[&str], sets: &[&str]) -> Output {
    support::glom(args, sets)
        .output()
        .expect("the glom binary runs")
}

fn sleep(input: &Path, out: &Path, sets: &[&str]) -> Output {
    let args = [
        "sleep",
        "--checkpoint",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    glom(&args, sets)
}

/// A 3-step run of [`TINY`] in `dir`; its final checkpoint.
fn trained(dir: &Path) -> PathBuf {
    let mut sets = TINY.to_vec();
    sets.push("train.steps=3");
    ok(&glom(
        &["train", "--no-eval", "--out", dir.to_str().unwrap()],
        &sets,
    ));
    dir.join("checkpoints").join("final")
}

/// Nothing but `keep` is left in `dir` (no output, no temporary directory).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "left in {}", dir.display());
}

#[test]
fn a_missing_checkpoint_fails_naming_it_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-checkpoint");
    let out = tmp.path().join("slept");
    let err = failure(&sleep(&missing, &out, &[]));
    assert!(err.contains("no-such-checkpoint"), "{err}");
    assert!(err.contains("no such directory"), "{err}");
    only(tmp.path(), &[]);
}

#[test]
fn sleep_on_a_trained_checkpoint_writes_one_that_eval_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(&tmp.path().join("run"));
    let out = tmp.path().join("nights").join("slept");
    let stdout = ok(&sleep(&ck, &out, &[]));
    assert!(stdout.contains("effective rank"), "{stdout}");
    assert!(stdout.contains("negative loss"), "{stdout}");

    // Same format and step; the slept parameters differ from the input's.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 3);
    let before = std::fs::read(ck.join("shard-0.safetensors")).unwrap();
    let after = std::fs::read(out.join("shard-0.safetensors")).unwrap();
    assert_ne!(before, after);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sleep.json")).unwrap()).unwrap();
    assert_eq!(record["phase"], "sleep");
    assert_eq!(record["sleep_steps"], 6);
    assert_eq!(record["step"], 3);
    for side in ["before", "after"] {
        let ranks = record[side]["effective_rank_by_level"].as_array().unwrap();
        assert_eq!(ranks.len(), 3, "{record}");
        assert!(ranks.iter().all(|r| r.as_f64().unwrap() >= 1.0), "{record}");
    }
    assert!(record["loss_negative_first"].as_f64().unwrap() >= 0.0);
    only(out.parent().unwrap(), &["slept"]);

    // glom eval reads it.
    let report = ok(&glom(
        &["eval", "--checkpoint", out.to_str().unwrap(), "--json"],
        &[],
    ));
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["step"], 3);
    assert!(report["recon_psnr_db"].as_f64().is_some(), "{report}");

    // The same job twice gives the same checkpoint (seeded by the step).
    let again = tmp.path().join("again");
    ok(&sleep(&ck, &again, &[]));
    let twice = std::fs::read(again.join("shard-0.safetensors")).unwrap();
    assert_eq!(after, twice);

    // An existing output is refused and left alone.
    let err = failure(&sleep(&ck, &out, &[]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(out.join("shard-0.safetensors")).unwrap(),
        after
    );

    // Sleep settings may change; the model may not.
    let other = tmp.path().join("other");
    ok(&sleep(&ck, &other, &["sleep.steps=2", "sleep.margin=0.5"]));
    let bad = tmp.path().join("bad");
    let err = failure(&sleep(&ck, &bad, &["model.dim=4"]));
    assert!(err.contains("model"), "{err}");
    let err = failure(&sleep(&ck, &bad, &["sleep.margin=3"]));
    assert!(err.contains("sleep.margin"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn a_corrupt_or_interrupted_checkpoint_fails_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained(&tmp.path().join("run"));
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();

    // A shard whose bytes no longer match the manifest's checksum.
    let corrupt = work.join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    for f in ["manifest.json", "shard-0.safetensors"] {
        std::fs::copy(ck.join(f), corrupt.join(f)).unwrap();
    }
    let shard = corrupt.join("shard-0.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x55;
    std::fs::write(&shard, bytes).unwrap();
    let out = work.join("slept");
    let err = failure(&sleep(&corrupt, &out, &[]));
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains("shard-0.safetensors"), "{err}");
    only(&work, &["corrupt"]);

    // A manifest that is not JSON.
    std::fs::write(corrupt.join("manifest.json"), "{ not json").unwrap();
    let err = failure(&sleep(&corrupt, &out, &[]));
    assert!(err.contains("manifest.json"), "{err}");
    only(&work, &["corrupt"]);

    // An interrupted save: no manifest at all.
    std::fs::remove_file(corrupt.join("manifest.json")).unwrap();
    let err = failure(&sleep(&corrupt, &out, &[]));
    assert!(
        err.contains("corrupt") && err.contains("interrupted"),
        "{err}"
    );
    only(&work, &["corrupt"]);
}

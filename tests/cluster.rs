//! The cluster end to end, over real QUIC on loopback: sharding invariance
//! (1, 2 and 4 workers train the same bits), a run of four separate
//! processes that `glom eval` reads, and a coordinator that answers bad
//! input and bad peers with a clear error and goes on.

mod support;

use std::path::Path;

use serde_json::Value;
use support::cluster::{certs, coordinator, glom, records, sets, tensors, train, wait_ok, worker};
use support::{ok, Running};

/// The same seed and config trained for 20 steps on 1, 2 and 4 workers
/// (real QUIC on loopback) end with bitwise identical per-location weights
/// and optimiser state, and identical losses and collapse measures: the
/// halo exchange gives every tile exactly what the whole grid would.
#[test]
fn one_two_and_four_workers_train_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = ["train.steps=20", "train.log_every=5"];
    let mut runs = Vec::new();
    for workers in [1, 2, 4] {
        let dir = tmp.path().join(format!("w{workers}"));
        ok(&train(&dir, workers, &extra));
        let plan: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).unwrap()).unwrap();
        assert_eq!(plan["tiles"].as_array().unwrap().len(), workers);
        runs.push(dir);
    }
    let base = tensors(&runs[0].join("checkpoints/final"));
    assert!(base.len() > 100, "only {} tensors", base.len());
    assert!(base.keys().any(|k| k.starts_with("adam_m/")));
    let base_records = records(&runs[0]);
    assert_eq!(base_records.len(), 5, "steps 1, 5, 10, 15, 20");
    for dir in &runs[1..] {
        let other = tensors(&dir.join("checkpoints/final"));
        assert_eq!(
            base.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>()
        );
        let differ: Vec<&String> = base.keys().filter(|k| base[*k] != other[*k]).collect();
        assert!(
            differ.is_empty(),
            "{}: {} tensors differ, e.g. {:?}",
            dir.display(),
            differ.len(),
            &differ[..differ.len().min(3)]
        );
        assert_eq!(base_records, records(dir), "{}", dir.display());
    }
    // Halos cross the network only between tiles.
    assert_eq!(halo(&runs[0], "bytes_per_step"), 0.0);
    assert!(halo(&runs[1], "bytes_per_step") > 0.0);
    assert!(halo(&runs[2], "bytes_per_step") > halo(&runs[1], "bytes_per_step"));
    // What goes on the wire is the plan's minimum plus under 5% of framing.
    for dir in &runs[1..] {
        let overhead = halo(dir, "framing_overhead");
        assert!(
            overhead > 0.0 && overhead < 0.05,
            "{}: {overhead}",
            dir.display()
        );
    }
}

/// Videos (paper section 11) train the same bits on 1 and 2 workers: the
/// halo of every iteration of every frame gives each tile what the whole
/// grid would; learning from time (next-frame distillation, negatives from
/// frames 2 apart) and a sleep job taking its negatives from frames 2
/// apart included.
#[test]
fn moving_scenes_train_the_same_bits_on_one_and_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "data.source=\"moving_scenes\"",
        "data.frames=3",
        "model.iterations_per_frame=2",
        "train.distill_target=\"next_frame\"",
        "train.contrastive_weight=0.5",
        "train.contrastive_frame_gap=[2, 2]",
        "sleep.every_steps=3",
        "sleep.steps=4",
        "sleep.negative_steps=2",
        "sleep.positive_steps=1",
        "sleep.batch=4",
        "sleep.replay_capacity=24",
        "sleep.frame_gap=[2, 2]",
        "sleep.observe_images=2",
        "train.steps=6",
        "train.log_every=2",
    ];
    let runs: Vec<_> = [1, 2]
        .iter()
        .map(|&workers| {
            let dir = tmp.path().join(format!("w{workers}"));
            ok(&train(&dir, workers, &extra));
            dir
        })
        .collect();
    let (a, b) = (
        tensors(&runs[0].join("checkpoints/final")),
        tensors(&runs[1].join("checkpoints/final")),
    );
    assert!(a.len() > 50, "only {} tensors", a.len());
    assert!(a == b, "the checkpoints of 1 and 2 workers differ");
    let records = records(&runs[0]);
    assert_eq!(records.len(), 4, "steps 1, 2, 4, 6");
    assert_eq!(records, support::cluster::records(&runs[1]));
    assert!(halo(&runs[1], "bytes_per_step") > 0.0);
    for run in &runs {
        let slept = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["phase"] == "sleep")
            .count();
        assert_eq!(slept, 1, "one sleep job, after step 3");
    }
}

/// bf16 halo frames carry half the payload of f32 ones.
#[test]
fn bf16_halos_halve_the_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    ok(&train(&a, 2, &["train.steps=2"]));
    ok(&train(
        &b,
        2,
        &["train.steps=2", "cluster.halo_precision=\"bf16\""],
    ));
    let (fa, fb) = (
        halo(&a, "payload_bytes_per_step"),
        halo(&b, "payload_bytes_per_step"),
    );
    assert!(fa > 0.0 && fb * 2.0 == fa, "{fa} {fb}");
    assert!(halo(&b, "framing_overhead") < 0.05);
}

/// `summary.json` → `halo` → `key` of run `dir`.
fn halo(dir: &Path, key: &str) -> f64 {
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    s["halo"][key].as_f64().unwrap()
}

/// Shared weights and BPTT cannot be split: asking is a clear error.
#[test]
fn runs_that_cannot_be_split_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out = train(&tmp.path().join("r"), 2, &["model.weights=shared"]);
    let err = support::failure(&out);
    assert!(
        err.contains("cluster.workers") && err.contains("shared"),
        "{err}"
    );
    assert!(
        !tmp.path().join("r").exists(),
        "a refused run left a directory"
    );
}

/// One coordinator and three workers, four processes on loopback, train
/// to completion; the checkpoint they write together is one `glom eval` reads.
#[test]
fn four_processes_train_a_checkpoint_that_eval_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = certs(dir, 3);
    let extra = ["train.steps=8", "checkpoint.every_steps=4"];
    let (coord, addr) = coordinator(dir, &certs, 3, &extra);
    let workers: Vec<Running> = (0..3)
        .map(|i| worker(dir, &certs, &addr, &format!("worker-{i}"), &extra))
        .collect();
    wait_ok(coord, &dir.join("coordinator.log"));
    for (i, w) in workers.into_iter().enumerate() {
        wait_ok(w, &dir.join(format!("worker-{i}.log")));
    }
    let run = dir.join("run");
    for ck in ["step-4", "step-8", "final"] {
        let shards = std::fs::read_dir(run.join("checkpoints").join(ck))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "safetensors")
            })
            .count();
        assert_eq!(shards, 3, "{ck}");
    }
    let out = glom()
        .args(["eval", "--json", "--checkpoint"])
        .arg(run.join("checkpoints/final"))
        .args(["--set", "eval.images=8", "--set", "eval.probe_images=16"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(report["recon_psnr_db"].as_f64().unwrap() > 0.0, "{report}");
}

/// A run stopped at a checkpoint and resumed from it, on another number
/// of workers, ends with the same bits as the run that never stopped;
/// resuming with another configuration, or past `train.steps`, is refused
/// before anything is written.
#[test]
fn resuming_on_another_number_of_workers_gives_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, resumed) = (tmp.path().join("whole"), tmp.path().join("resumed"));
    let extra = ["train.steps=10", "checkpoint.every_steps=5"];
    ok(&train(&whole, 2, &extra));
    let step5 = whole.join("checkpoints/step-5");
    let mut cmd = glom();
    cmd.args(["train", "--no-eval", "--workers", "4", "--out"])
        .arg(&resumed)
        .arg("--resume")
        .arg(&step5);
    sets(&mut cmd, &extra);
    ok(&cmd.output().unwrap());
    assert_eq!(
        tensors(&whole.join("checkpoints/final")),
        tensors(&resumed.join("checkpoints/final"))
    );
    let last = |dir: &Path| records(dir).pop().unwrap();
    assert_eq!(last(&whole), last(&resumed));
    let steps: Vec<Value> = records(&resumed)
        .iter()
        .map(|r| r["step"].clone())
        .collect();
    assert_eq!(
        steps,
        [10],
        "only the steps after the checkpoint are trained"
    );

    for (name, bad, needle) in [
        ("other-config", "seed=3", "another configuration"),
        ("done", "train.steps=5", "already holds 5 steps"),
    ] {
        let dir = tmp.path().join(name);
        let mut cmd = glom();
        cmd.args(["train", "--no-eval", "--out"])
            .arg(&dir)
            .arg("--resume")
            .arg(&step5);
        sets(
            &mut cmd,
            &["checkpoint.every_steps=5", "train.steps=10", bad],
        );
        let err = support::failure(&cmd.output().unwrap());
        assert!(err.contains(needle), "{err}");
        assert!(!dir.exists(), "a refused resume left {}", dir.display());
    }
}

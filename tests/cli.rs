//! End-to-end tests of the `glom` command line, run the way a user runs it.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::{failure, ok};

/// A small, fast model and evaluation (a few seconds per run).
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
    // Tests run in parallel: each endpoint takes a free port.
    "metrics.listen=127.0.0.1:0",
];

fn glom(args: &[&str], sets: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = support::glom(args, sets);
    cmd.envs(env.iter().copied());
    cmd.output().expect("the glom binary runs")
}

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut sets = TINY.to_vec();
    sets.extend_from_slice(extra);
    glom(&["train", "--out", dir.to_str().unwrap()], &sets, &[])
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn train_writes_a_complete_run_that_eval_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&train(&run, &["train.steps=4", "checkpoint.every_steps=2"]));

    assert!(run.join("config.toml").is_file());
    for ck in ["step-2", "step-4", "final"] {
        assert!(
            run.join("checkpoints")
                .join(ck)
                .join("manifest.json")
                .is_file(),
            "{ck}"
        );
    }
    let records = metrics(&run);
    let steps: Vec<u64> = records
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 4]);
    for r in &records {
        assert_eq!(r["phase"], "awake");
        assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
        for key in [
            "loss_recon",
            "loss_distill_bu",
            "loss_distill_td",
            "loss_negative",
            "loss_variance",
            "loss_covariance",
            "loss_contrastive",
            "loss_autoencoder",
            "loss_neighbour_distill",
            "loss_total",
        ] {
            assert!(r[key].as_f64().unwrap().is_finite(), "{key}");
        }
        let ranks = r["effective_rank_by_level"].as_array().unwrap();
        assert_eq!(ranks.len(), 3);
        assert!(ranks
            .iter()
            .all(|x| (1.0..=8.0 + 1e-9).contains(&x.as_f64().unwrap())));
    }

    let summary = read_json(&run.join("summary.json"));
    assert_eq!(summary["steps"], 4);
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);
    for key in [
        "recon_psnr_db",
        "island_ari_part",
        "island_ari_object",
        "island_ari_part_k",
        "island_ari_object_k",
        "fg_ari_object_k",
        "probe_accuracy",
    ] {
        assert!(summary[key].is_number(), "summary.{key} = {}", summary[key]);
        assert!(summary["baseline"][key].is_number(), "baseline.{key}");
    }
    assert_eq!(summary["island_ari_by_level"].as_array().unwrap().len(), 3);
    // Video figures only for video.
    assert!(summary.get("temporal_stability_by_level").is_none());
    assert!(summary["baseline"]["probe_accuracy_raw_pixels"].is_number());

    // `glom eval` on the final checkpoint reproduces the training run's evaluation.
    let final_dir = run.join("checkpoints/final");
    let report: Value = serde_json::from_str(&ok(&glom(
        &[
            "eval",
            "--checkpoint",
            final_dir.to_str().unwrap(),
            "--json",
        ],
        &[],
        &[],
    )))
    .unwrap();
    assert_eq!(report["step"], 4);
    for key in ["recon_psnr_db", "island_ari_object_k", "probe_accuracy"] {
        assert_eq!(report[key], summary[key], "{key}");
        assert_eq!(
            report["baseline"][key], summary["baseline"][key],
            "baseline.{key}"
        );
    }

    // The same still model evaluated on moving scenes (same image shape):
    // video figures appear; data of another shape, or a training key, is
    // refused naming what was wrong.
    let moving: Value = serde_json::from_str(&ok(&glom(
        &[
            "eval",
            "--checkpoint",
            final_dir.to_str().unwrap(),
            "--json",
        ],
        &["data.source=\"moving_scenes\"", "data.frames=3"],
        &[],
    )))
    .unwrap();
    assert_eq!(
        moving["temporal_stability_by_level"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let err = failure(&glom(
        &["eval", "--checkpoint", final_dir.to_str().unwrap()],
        &["data.source=\"fashion_mnist\""],
        &[],
    ));
    assert!(err.contains("28x28") && err.contains("16x16"), "{err}");
    let err = failure(&glom(
        &["eval", "--checkpoint", final_dir.to_str().unwrap()],
        &["train.learning_rate=1"],
        &[],
    ));
    assert!(err.contains("only eval.* keys"), "{err}");
}

/// A video source trains and evaluates end to end: the report scores the
/// last frame as usual and adds, per level, the island ARI over every
/// frame and the temporal stability of the islands.
#[test]
fn moving_scenes_train_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&train(
        &run,
        &[
            "data.source=\"moving_scenes\"",
            "data.frames=3",
            "model.iterations_per_frame=2",
            "train.steps=2",
        ],
    ));
    let summary = read_json(&run.join("summary.json"));
    for key in ["island_ari_object", "probe_accuracy", "recon_psnr_db"] {
        assert!(summary[key].is_number(), "summary.{key} = {}", summary[key]);
    }
    for key in [
        "island_ari_object_over_frames_by_level",
        "temporal_stability_by_level",
    ] {
        let by_level = summary[key].as_array().unwrap_or_else(|| panic!("{key}"));
        assert_eq!(by_level.len(), 3, "{key}");
        for v in by_level {
            let v = v.as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&v), "{key}: {v}");
        }
        assert!(summary["baseline"][key].is_array(), "baseline.{key}");
    }
    let stability = summary["temporal_stability_by_level"].as_array().unwrap();
    assert!(stability.iter().all(|v| v.as_f64().unwrap() >= 0.0));
    // A model trained with next-frame targets evaluates on still scenes
    // (the training-only video keys are off in evaluation).
    let next = tmp.path().join("next");
    ok(&train(
        &next,
        &[
            "data.source=\"moving_scenes\"",
            "data.frames=3",
            "train.distill_target=\"next_frame\"",
            "train.steps=2",
        ],
    ));
    let still: Value = serde_json::from_str(&ok(&glom(
        &[
            "eval",
            "--checkpoint",
            next.join("checkpoints/final").to_str().unwrap(),
            "--json",
        ],
        &["data.source=\"scenes\""],
        &[],
    )))
    .unwrap();
    assert!(still.get("temporal_stability_by_level").is_none());
    assert!(still["probe_accuracy"].is_number());
    // A bad frame count names its key.
    let err = failure(&train(
        &tmp.path().join("bad"),
        &["data.source=\"moving_scenes\"", "data.frames=0"],
    ));
    assert!(err.contains("data.frames"), "{err}");
}

/// Moving sprites (64 pixels a side unless set, like the still sprites)
/// train and evaluate: object figures only (no parts, no labels).
#[test]
fn moving_sprites_train_and_evaluate() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&train(
        &run,
        &[
            "data.source=\"moving_sprites\"",
            "data.frames=2",
            "data.image_size=16",
            "train.steps=2",
        ],
    ));
    let summary = read_json(&run.join("summary.json"));
    assert!(summary["island_ari_object"].is_number(), "{summary}");
    let stability = summary["temporal_stability_by_level"].as_array().unwrap();
    assert_eq!(stability.len(), 3);
    let err = failure(&train(
        &tmp.path().join("bad"),
        &["data.source=\"moving_sprites\"", "data.image_size=8"],
    ));
    assert!(err.contains("data.image_size"), "{err}");
}

#[test]
fn the_same_seed_and_config_give_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let extra = ["train.steps=3", "eval.images=4", "--no-eval"];
    let (sets, flags): (Vec<&str>, Vec<&str>) = extra.iter().partition(|s| !s.starts_with("--"));
    for dir in [&a, &b] {
        let mut args = vec!["train", "--out", dir.to_str().unwrap()];
        args.extend(&flags);
        let mut all = TINY.to_vec();
        all.extend(&sets);
        ok(&glom(&args, &all, &[]));
    }
    let strip = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut r| {
                let o = r.as_object_mut().unwrap();
                for timing in support::TIMING_KEYS {
                    o.remove(timing);
                }
                r
            })
            .collect()
    };
    assert_eq!(strip(metrics(&a)), strip(metrics(&b)));
    let shards = |d: &Path| read_json(&d.join("checkpoints/final/manifest.json"))["shards"].clone();
    assert_eq!(shards(&a), shards(&b), "checkpoint checksums differ");

    // Another seed is another run.
    let mut all = TINY.to_vec();
    all.extend(["train.steps=3", "seed=7"]);
    ok(&glom(
        &["train", "--no-eval", "--out", c.to_str().unwrap()],
        &all,
        &[],
    ));
    assert_ne!(strip(metrics(&a)), strip(metrics(&c)));
}

#[test]
fn environment_and_file_layers_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("c.toml");
    std::fs::write(&file, "[train]\nsteps = 5\nlog_every = 1\n").unwrap();
    let run = tmp.path().join("run");
    let mut args = vec!["train", "--no-eval", "--out", run.to_str().unwrap()];
    args.extend(["--config", file.to_str().unwrap()]);
    // The environment (3 steps) overrides the file (5 steps).
    ok(&glom(&args, TINY, &[("GLOM_TRAIN__STEPS", "3")]));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("steps = 3"), "{config}");
    assert_eq!(metrics(&run).len(), 3, "log_every = 1 from the file");
}

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for (set, key) in [
        ("model.levels=0", "model.levels"),
        ("model.dim=0", "model.dim"),
        ("model.weights=sharded", "weights"),
        ("model.levls=3", "levls"),
        ("train.mask_fraction=2", "train.mask_fraction"),
        ("metrics.listen=\"nowhere\"", "metrics.listen"),
    ] {
        let err = failure(&train(&run, &[set]));
        assert!(
            err.contains(key),
            "--set {set}: error does not name {key}: {err}"
        );
        assert!(!run.join("summary.json").exists());
    }
    let err = failure(&glom(
        &["train", "--config", "/nonexistent/x.toml"],
        &[],
        &[],
    ));
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}

#[test]
fn a_used_run_directory_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("summary.json"), "{}").unwrap();
    let err = failure(&train(&run, &["train.steps=1"]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("summary.json")).unwrap(),
        "{}"
    );
}

#[test]
fn eval_of_a_missing_or_broken_checkpoint_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = failure(&glom(
        &["eval", "--checkpoint", tmp.path().to_str().unwrap()],
        &[],
        &[],
    ));
    assert!(err.contains("manifest.json"), "{err}");

    let run = tmp.path().join("run");
    ok(&train(&run, &["train.steps=1"]));
    let ck = run.join("checkpoints/final");
    let shard = ck.join("shard-0.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let err = failure(&glom(
        &["eval", "--checkpoint", ck.to_str().unwrap()],
        &[],
        &[],
    ));
    assert!(err.contains("shard-0.safetensors"), "{err}");
}

/// Fashion-MNIST from the Debian package's files: trains, and the probe
/// (labels) is reported while the ARI keys (no maps) are null.
#[test]
fn fashion_mnist_trains_and_evaluates() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
        assert!(
            std::env::var_os("REQUIRE_FASHION_MNIST").is_none(),
            "Fashion-MNIST is required but missing: apt-get install dataset-fashion-mnist"
        );
        eprintln!(
            "skipped: {} missing (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = [
        "model.levels=2",
        "model.dim=8",
        "model.hidden=16",
        "model.iterations=2",
        "train.steps=2",
        "train.batch_size=4",
        "data.train_limit=64",
        "eval.images=8",
        "eval.probe_images=32",
        "metrics.listen=127.0.0.1:0",
    ];
    let args = [
        "train",
        "--config",
        "configs/fashion-mnist.toml",
        "--out",
        run.to_str().unwrap(),
    ];
    ok(&glom(&args, &sets, &[]));
    let s = read_json(&run.join("summary.json"));
    assert!(s["recon_psnr_db"].is_number());
    assert!(s["probe_accuracy"].is_number());
    assert!(s["baseline"]["probe_accuracy_raw_pixels"].is_number());
    assert!(
        s["island_ari_object"].is_null(),
        "no object maps in Fashion-MNIST"
    );
}

#[test]
fn a_missing_dataset_is_a_clear_error_and_leaves_no_run_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let missing = tmp.path().join("no-such-dir");
    let path = format!("data.path=\"{}\"", missing.display());
    let err = failure(&train(
        &run,
        &["data.source=fashion_mnist", "model.patch=4", &path],
    ));
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("dataset-fashion-mnist"), "{err}");
    assert!(!run.exists(), "a failed start left {}", run.display());
}

/// A finite blow-up of the loss (a learning rate far too high) stops the
/// run with an error naming the step, the largest term and the last good
/// checkpoint, instead of finishing with a checkpoint of garbage; every
/// checkpoint it did write holds finite weights (`glom eval` reads it).
#[test]
fn a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let diverge = |name: &str, every: &str| {
        let run = tmp.path().join(name);
        let every = format!("checkpoint.every_steps={every}");
        let err = failure(&train(
            &run,
            &["train.steps=60", "train.learning_rate=1000", &every],
        ));
        assert!(!run.join("summary.json").exists());
        let written = std::fs::read_dir(run.join("checkpoints"))
            .into_iter()
            .flatten();
        for entry in written {
            let dir = entry.unwrap().path();
            if dir.join("manifest.json").exists() {
                ok(&glom(
                    &["eval", "--checkpoint", dir.to_str().unwrap(), "--json"],
                    &[],
                    &[],
                ));
            }
        }
        err
    };
    // The loss guard: the blow-up comes before any checkpoint.
    let err = diverge("late-checkpoints", "10");
    for part in [
        "diverged at step 2",
        "largest term",
        "no checkpoint was written",
        "learning_rate",
    ] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    // A checkpoint every step: step 1 is good; whichever of the loss guard
    // and the workers' refusal to save non-finite optimiser state stops the
    // run first, the error says it diverged and where to go on from.
    let err = diverge("every-step", "1");
    for part in ["diverged", "checkpoints/step-1"] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
}

/// Where the time of each of `steps` training step rows went, and the
/// halo wait of two in-process workers, in the JSON and the table.
fn check_breakdown_and_halo(r: &Value, out: &str, steps: usize) {
    let breakdown = r["breakdown"].as_array().unwrap();
    assert_eq!(breakdown.len(), steps);
    for b in breakdown {
        let parts = b["parts"].as_array().unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p["part"].as_str().unwrap()).collect();
        for part in [
            "batch",
            "front_end",
            "bu_td_nets",
            "neighbour_draw",
            "lateral_attention",
            "weighted_mean",
            "layer_norm",
            "loss_terms",
            "halo_send",
            "halo_wait",
            "backward",
            "optimiser",
            "other",
        ] {
            assert!(names.contains(&part), "{part} missing from {names:?}");
        }
        let fraction = |p: &Value| p["fraction"].as_f64().unwrap();
        let sum: f64 = parts.iter().map(fraction).sum();
        assert!((sum - 1.0).abs() < 1e-6, "the parts add up to {sum}");
        for p in parts {
            let f = fraction(p);
            assert!((0.0..=1.0).contains(&f), "{p}");
            let busy = !["halo_send", "halo_wait", "other"].contains(&p["part"].as_str().unwrap());
            assert!(!busy || f > 0.0, "{p} took no time");
        }
    }
    assert!(out.contains("where a step's time goes"), "{out}");
    for label in [
        "lateral attention",
        "layer norm",
        "backward (autograd, all parts)",
    ] {
        assert!(
            out.contains(label),
            "{label} missing from the table:\n{out}"
        );
    }
    let halo = &r["halo"];
    assert_eq!(halo["workers"].as_u64(), Some(2), "{r}");
    let wait = halo["wait_fraction"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&wait), "{halo}");
    assert!(halo["seconds_per_step"].as_f64().unwrap() > 0.0, "{halo}");
    assert!(halo["bytes_per_step"].as_f64().unwrap() > 0.0, "{halo}");
    assert!(
        out.contains("halo wait, step 1 on 2 in-process workers"),
        "{out}"
    );
}

/// A `glom bench` that fails after it started leaves an earlier `--json`
/// file as it was, and no partial file beside it.
#[test]
fn a_failed_bench_keeps_the_earlier_json() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    std::fs::write(&json, "{\"earlier\": true}\n").unwrap();
    let mut sets = TINY.to_vec();
    // One level: no bottom-up net to time, found only while measuring.
    sets.push("model.levels=1");
    let err = failure(&glom(
        &["bench", "--repeats", "1", "--json", json.to_str().unwrap()],
        &sets,
        &[],
    ));
    assert!(err.contains("at least 2 levels"), "{err}");
    assert_eq!(read_json(&json)["earlier"], Value::Bool(true));
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only bench.json is left: {left:?}");
}

/// `glom bench` measures every row on a tiny model and writes them as JSON:
/// the GEMM reference at 100%, positive rates, and the exact FLOP counts.
#[test]
fn bench_prints_and_writes_every_row() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let out = ok(&glom(
        &["bench", "--repeats", "1", "--json", json.to_str().unwrap()],
        TINY,
        &[],
    ));
    let r = read_json(&json);
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|x| x["name"].as_str().unwrap()).collect();
    for name in [
        "gemm 1024^3 (reference)",
        "bottom-up MLP, per-location weights",
        "bottom-up MLP, shared weights",
        "settle (inference)",
        "training step, local",
        "training step, BPTT",
        "training step, local, shared weights",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
        assert!(out.contains(name), "{name} missing from the table:\n{out}");
    }
    assert_eq!(rows[0]["percent_of_gemm"].as_f64(), Some(100.0));
    assert_eq!(rows[0]["flops"].as_f64(), Some(2.0 * 1024f64.powi(3)));
    for row in rows {
        for key in [
            "seconds",
            "flops",
            "gflop_per_s",
            "percent_of_gemm",
            "gemm_seconds",
        ] {
            let v = row[key].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{key} of {row}");
        }
    }
    // A BPTT step does the settle's products three times over.
    let settle = rows[3]["flops"].as_f64().unwrap();
    let bptt = rows[5]["flops"].as_f64().unwrap();
    assert!(bptt > 2.9 * settle, "{bptt} vs {settle}");
    assert!(r["per_location_over_shared_step"].as_f64().unwrap() > 0.0);
    // Each row's percentage is against the GEMM timed between its calls.
    for row in &rows[1..] {
        let gemm_rate = 2.0 * 1024f64.powi(3) / row["gemm_seconds"].as_f64().unwrap() / 1e9;
        let percent = 100.0 * row["gflop_per_s"].as_f64().unwrap() / gemm_rate;
        let got = row["percent_of_gemm"].as_f64().unwrap();
        assert!((percent - got).abs() <= 1e-9 * percent.max(1.0), "{row}");
    }
    assert_eq!(
        r["local_step_percent_of_gemm"].as_f64(),
        rows[4]["percent_of_gemm"].as_f64()
    );
    assert_eq!(
        r["shape"]["grid_side"].as_u64(),
        Some(4),
        "16-pixel images, patch 4"
    );
    assert!(out.contains("4x4 locations, d 8"), "{out}");
    check_breakdown_and_halo(&r, &out, 3);
    // Bad input is refused before anything is measured.
    let err = failure(&glom(&["bench", "--repeats", "0"], TINY, &[]));
    assert!(err.contains("--repeats"), "{err}");
    let dir = tmp.path().to_str().unwrap();
    let err = failure(&glom(&["bench", "--json", dir], TINY, &[]));
    assert!(err.contains("--json") && err.contains(dir), "{err}");
}

/// `glom bench --preset peer`: the public PyTorch port's benchmark shapes
/// (3x28x28 images, a 7x7 grid, attention over the other 48 locations),
/// here with small nets and few iterations set over the preset, timed as
/// the per-location local step beside the port's shared BPTT step.
#[test]
fn bench_preset_peer_times_the_ports_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("peer.json");
    let small = [
        "model.levels=3",
        "model.dim=8",
        "model.hidden=16",
        "model.iterations=2",
        "train.batch_size=4",
    ];
    let out = ok(&glom(
        &[
            "bench",
            "--preset",
            "peer",
            "--repeats",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        &small,
        &[],
    ));
    let r = read_json(&json);
    assert_eq!(r["preset"].as_str(), Some("peer"));
    let s = &r["shape"];
    for (key, want) in [
        ("image_side", 28),
        ("channels", 3),
        ("grid_side", 7),
        ("neighbours", 48),
        ("dim", 8),
    ] {
        assert_eq!(s[key].as_u64(), Some(want), "{key} of {s}");
    }
    assert_eq!(s["attention"].as_str(), Some("all"));
    assert!(out.contains("3x28x28 images, 7x7 locations"), "{out}");
    assert!(
        out.contains("attention over all 48 other locations"),
        "{out}"
    );
    assert!(out.contains("scenes drawn at 28x28"), "{out}");
    let names: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for name in [
        "training step, local (per-location nets)",
        "training step, peer (shared nets, BPTT, recon only)",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(r["per_location_over_shared_step_time"].as_f64().unwrap() > 0.0);
    check_breakdown_and_halo(&r, &out, 2);
    let err = failure(&glom(&["bench", "--preset", "pytorch"], &[], &[]));
    assert!(err.contains("pytorch") && err.contains("peer"), "{err}");
}

/// A binary built without the `cuda` feature refuses `train.device =
/// "cuda:0"` before anything starts, naming the key and the feature.
#[test]
fn a_cpu_build_refuses_a_gpu_device() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    for out in [
        glom(&["bench", "--repeats", "1"], &["train.device=cuda:0"], &[]),
        train(&run, &["train.device=cuda:0", "train.steps=2"]),
    ] {
        let err = failure(&out);
        assert!(
            err.contains("train.device") && err.contains("without the `cuda` feature"),
            "{err}"
        );
    }
    assert!(!run.exists(), "no run directory is left behind");
}

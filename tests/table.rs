//! `glom table` on hand-written runs (a `config.toml` and a `summary.json`
//! each, as `glom train` writes them): the rows of the variants, the
//! random-init and raw-pixel baselines, and the share of the gap to shared
//! weights that co-distillation closes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use support::{failure, ok};

fn table(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glom"))
        .arg("table")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the glom binary runs")
}

/// Write a run: the keys of config.toml that name the variant, and a summary.
fn write_run(
    root: &Path,
    name: &str,
    (weights, learning, distill): (&str, &str, f64),
    source: &str,
    (ari, psnr, probe): (f64, f64, f64),
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "seed = 0\n[model]\nweights = \"{weights}\"\n[train]\nsteps = 300\n\
         learning = \"{learning}\"\ndistill_weight = {distill:?}\n[data]\nsource = \"{source}\"\n"
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let shared = weights == "shared";
    let baseline = json!({
        "island_ari_part": if shared { 0.03 } else { 0.06 },
        "island_ari_object": if shared { 0.033 } else { 0.064 },
        "island_ari_part_k": 0.09,
        "island_ari_object_k": 0.093,
        "recon_psnr_db": 15.95,
        "probe_accuracy": if shared { 0.7 } else { 0.745 },
        "probe_accuracy_raw_pixels": 0.853,
    });
    let summary = json!({
        "island_ari_part": ari,
        "island_ari_object": ari + 0.01,
        "island_ari_part_k": null,
        "island_ari_object_k": 0.2,
        "recon_psnr_db": psnr,
        "probe_accuracy": probe,
        "images_per_s": 100.0,
        "train_seconds": 40.0,
        "wall_seconds": 61.4,
        "steps": 300,
        "baseline": baseline,
        "islands_centred": false,
        "some_other_key": [1, 2],
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    dir
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn table_has_a_row_per_variant_the_baselines_and_the_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // No co-distillation 0.60, co-distillation 0.70, shared + local 1.00:
    // probe gap closed = (0.70 - 0.60) / (1.00 - 0.60) = 25%.
    let co = write_run(
        t,
        "co",
        ("per_location", "local", 1.0),
        "scenes",
        (0.2, 17.0, 0.7),
    );
    let none = write_run(
        t,
        "none",
        ("per_location", "local", 0.0),
        "scenes",
        (0.1, 16.0, 0.6),
    );
    let shared = write_run(
        t,
        "shared",
        ("shared", "local", 1.0),
        "scenes",
        (0.5, 18.0, 1.0),
    );
    std::fs::write(co.join("command.txt"), "glom train --out co\n").unwrap();
    let out = t.join("docs").join("variants.md");
    let stdout = ok(&table(&[
        arg(&co),
        arg(&none),
        arg(&shared),
        "--out",
        arg(&out),
        "--command",
        "scripts/experiments.sh 300",
    ]));
    assert!(stdout.contains("variants.md"), "{stdout}");
    let md = std::fs::read_to_string(&out).unwrap();
    let has = |line: &str| assert!(md.contains(line), "missing {line:?} in\n{md}");

    has("Produced by `scripts/experiments.sh 300`");
    has("## Synthetic part-whole scenes (`data.source = \"scenes\"`), 300 steps each");
    has("| variant | run | ARI part | ARI object | ARI part k | ARI object k | PSNR dB | probe | images/s | train s | wall s |");
    // Rows in the fixed variant order: shared before per-location.
    has("| shared + local | `shared` | 0.500 | 0.510 | - | 0.200 | 18.00 | 1.000 | 100.0 | 40 | 61 |\n\
         | per-location + local (co-distillation) | `co` | 0.200 | 0.210 | - | 0.200 | 17.00 | 0.700 | 100.0 | 40 | 61 |\n\
         | per-location + local (no co-distillation) | `none` | 0.100 | 0.110 | - | 0.200 | 16.00 | 0.600 | 100.0 | 40 | 61 |\n");
    has("| random init (per-location nets) | `co` | 0.060 | 0.064 | 0.090 | 0.093 | 15.95 | 0.745 | - | - | - |");
    has("| random init (shared nets) | `shared` | 0.030 | 0.033 | 0.090 | 0.093 | 15.95 | 0.700 | - | - | - |");
    has("| raw pixels | `shared` | - | - | - | - | - | 0.853 | - | - | - |");
    has("closed = (co-distillation - no co-distillation) / (shared - no co-distillation)");
    has("| probe accuracy | 0.600 | 0.700 | 1.000 | 25% |");
    // ARI part: (0.2 - 0.1) / (0.5 - 0.1) = 25%; PSNR: (17 - 16) / (18 - 16) = 50%.
    has("| ARI part | 0.100 | 0.200 | 0.500 | 25% |");
    has("| PSNR dB | 16.00 | 17.00 | 18.00 | 50% |");
    has("- probe accuracy, against shared + local: the gap is 0.400; co-distillation closes 25% of it.");
    has(
        "In short: of 4 comparisons with a gap, co-distillation closes all of it in 0, \
         part of it in 4 and none of it in 0; in 0 more, unshared nets without distillation \
         already match or beat shared weights.",
    );
    has("- `co`: `glom train --out co`");
    assert!(
        !md.contains("shared + BPTT ("),
        "no BPTT run, no BPTT column:\n{md}"
    );
}

#[test]
fn table_says_when_there_is_no_gap_or_co_distillation_widens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let co = write_run(
        t,
        "fm-co",
        ("per_location", "local", 1.0),
        "fashion_mnist",
        (0.0, 10.0, 0.5),
    );
    let none = write_run(
        t,
        "fm-none",
        ("per_location", "local", 0.0),
        "fashion_mnist",
        (0.0, 11.6, 0.7),
    );
    let bptt = write_run(
        t,
        "fm-bptt",
        ("shared", "bptt", 1.0),
        "fashion_mnist",
        (0.0, 12.6, 0.3),
    );
    let stdout = ok(&table(&[arg(&co), arg(&none), arg(&bptt)]));
    // PSNR: (10 - 11.6) / (12.6 - 11.6) = -160%; probe: shared below none.
    assert!(stdout.contains("## Fashion-MNIST"), "{stdout}");
    assert!(
        stdout.contains("| PSNR dB | 11.60 | 10.00 | 12.60 | -160% |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("co-distillation does not close it (-160%)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| probe accuracy | 0.700 | 0.500 | 0.300 | no gap |"),
        "{stdout}"
    );
    assert!(stdout.contains("none of it in 1; in 3 more"), "{stdout}");
}

#[test]
fn table_rejects_runs_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let err = failure(&table(&[arg(&t.join("nowhere"))]));
    assert!(
        err.contains("nowhere") && err.contains("does not exist"),
        "{err}"
    );

    let run = write_run(t, "r", ("shared", "bptt", 1.0), "scenes", (0.1, 16.0, 0.6));
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let err = failure(&table(&[arg(&run)]));
    assert!(err.contains("r/summary.json"), "{err}");

    std::fs::write(run.join("summary.json"), "{\"probe_accuracy\": \"high\"}").unwrap();
    let err = failure(&table(&[arg(&run)]));
    assert!(
        err.contains("r/summary.json") && err.contains("\"probe_accuracy\" is \"high\""),
        "{err}"
    );

    std::fs::write(
        run.join("config.toml"),
        "[model]\nweights = \"shared\"\n[train]\nsteps = 3\n[data]\nsource = \"scenes\"\n",
    )
    .unwrap();
    let err = failure(&table(&[arg(&run)]));
    assert!(err.contains("r/config.toml has no train.learning"), "{err}");

    let err = failure(&table(&[]));
    assert!(err.contains("RUN_DIR"), "{err}");
}

/// A sweep run: its anti-collapse terms appear in its label, and the
/// evaluations of its checkpoints (`curve/step-N.json`) as rows over steps,
/// in step order, with the smallest effective rank over levels.
#[test]
fn table_names_the_objective_terms_and_shows_checkpoint_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = write_run(
        t,
        "sweep-run",
        ("per_location", "local", 1.0),
        "scenes",
        (0.3, 17.0, 0.7),
    );
    let mut config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    config = config.replace(
        "[train]\n",
        "[train]\nvariance_weight = 10.0\nvariance_form = \"log\"\ncovariance_weight = 10.0\n\
         contrastive_weight = 0.0\nautoencoder_weight = 1.0\n",
    );
    std::fs::write(run.join("config.toml"), config).unwrap();
    std::fs::create_dir_all(run.join("curve")).unwrap();
    for (step, ari) in [(200, 0.25), (100, 0.125)] {
        let eval = json!({
            "island_ari_part": ari,
            "island_ari_object": ari,
            "island_ari_object_k": 0.5,
            "recon_psnr_db": 17.0,
            "probe_accuracy": 0.6,
            "effective_rank_by_level": [7.0, 5.5, 4.25],
        });
        std::fs::write(
            run.join("curve").join(format!("step-{step}.json")),
            eval.to_string(),
        )
        .unwrap();
    }
    std::fs::write(run.join("curve").join("notes.txt"), "not a step").unwrap();
    let stdout = ok(&table(&[arg(&run)]));
    assert!(
        stdout.contains("per-location + local (co-distillation) + var 10 (log), cov 10, AE 1"),
        "{stdout}"
    );
    let first = stdout
        .find("| `sweep-run` | 100 | 0.125 | 0.125 | 0.500 | 4.2 | 17.00 | 0.600 |")
        .unwrap_or_else(|| panic!("no step-100 row: {stdout}"));
    let second = stdout
        .find("| `sweep-run` | 200 | 0.250 |")
        .unwrap_or_else(|| panic!("no step-200 row: {stdout}"));
    assert!(first < second, "steps out of order: {stdout}");
    assert!(!stdout.contains("Warning"), "{stdout}");

    // A summary from before the islands were scored uncentred is flagged.
    let summary = std::fs::read_to_string(run.join("summary.json")).unwrap();
    let old = summary.replace("\"islands_centred\": false,", "");
    assert_ne!(old, summary);
    std::fs::write(run.join("summary.json"), old).unwrap();
    let stdout = ok(&table(&[arg(&run)]));
    assert!(
        stdout
            .contains("**Warning**: the threshold-island ARIs of sweep-run were scored on centred"),
        "{stdout}"
    );

    std::fs::write(run.join("curve").join("step-300.json"), "{").unwrap();
    let err = failure(&table(&[arg(&run)]));
    assert!(err.contains("step-300.json"), "{err}");
}

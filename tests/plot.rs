//! `glom plot` run the way a user runs it: a hand-written `metrics.jsonl`
//! (awake records, a sleep record lacking most keys, a missing value, an
//! unknown key) becomes one valid PNG per chart, of the fixed chart size,
//! with the lines drawn; bad input fails with a message naming the file
//! and the line; `--eval-checkpoints` evaluates a real run's checkpoints
//! once and charts them.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{failure, ok};

/// Every chart `glom plot` writes.
const CHARTS: [&str; 5] = [
    "losses.png",
    "effective_rank.png",
    "dim_std.png",
    "mean_cosine.png",
    "images_per_s.png",
];
/// The size of every chart.
const SIZE: (u32, u32) = (960, 540);

const METRICS: &str = r#"{"step":10,"phase":"awake","images_per_s":100.0,"wall_seconds":1.0,"loss_recon":0.02,"loss_distill_bu":0.6,"loss_distill_td":0.9,"loss_negative":0.0,"loss_total":1.5,"effective_rank_by_level":[3.0,2.0,1.5],"dim_std_by_level":[0.02,0.01,0.005],"mean_cosine_by_level":[0.9,0.95,0.99],"unknown":{"a":1}}
{"step":20,"phase":"awake","images_per_s":110.0,"wall_seconds":2.0,"loss_recon":0.015,"loss_distill_bu":0.5,"loss_distill_td":0.8,"loss_negative":0.0,"loss_total":1.3,"effective_rank_by_level":[2.5,1.5,1.2],"dim_std_by_level":[0.015,0.008,0.004],"mean_cosine_by_level":[0.92,0.97,0.995]}
{"step":25,"phase":"sleep","loss_negative":0.3}

{"step":30,"phase":"awake","images_per_s":105.0,"wall_seconds":3.0,"loss_recon":0.012,"loss_distill_bu":null,"loss_distill_td":0.7,"loss_negative":0.0,"loss_total":1.1,"effective_rank_by_level":[2.0,1.2,1.1],"dim_std_by_level":[0.01,0.006,0.003],"mean_cosine_by_level":[0.95,0.98,0.997]}
{"step":40,"phase":"awake","images_per_s":108.0,"loss_recon":0.01,"loss_distill_bu":0.3,"loss_distill_td":0.6,"loss_total":0.9}
"#;

fn plot(run: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glom"))
        .args([
            "plot",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("the glom binary runs")
}

/// Decode a PNG: (width, height, colour type, pixels).
fn decode(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a valid PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// A run directory holding `metrics` as its metrics.jsonl.
fn run_dir(tmp: &Path, metrics: &str) -> std::path::PathBuf {
    let run = tmp.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    run
}

#[test]
fn plot_writes_one_png_per_chart_of_the_chart_size() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), METRICS);
    let out = tmp.path().join("charts").join("nested");
    let stdout = ok(&plot(&run, &out));
    for chart in CHARTS {
        let path = out.join(chart);
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        let (w, h, colour, rgb) = decode(&path);
        assert_eq!((w, h), SIZE, "{chart}");
        assert_eq!(colour, png::ColorType::Rgb, "{chart}");
        // Black text and frame, white background, and coloured lines.
        let pixels: Vec<&[u8]> = rgb.chunks(3).collect();
        assert!(pixels.contains(&[0, 0, 0].as_slice()), "{chart}: no ink");
        assert!(pixels.contains(&[255, 255, 255].as_slice()), "{chart}");
        let coloured = pixels
            .iter()
            .filter(|p| p[0].abs_diff(p[1]) > 40 || p[1].abs_diff(p[2]) > 40)
            .count();
        assert!(coloured > 300, "{chart}: {coloured} coloured pixels");
        // The title: text in the band across the top (44 pixels).
        let title = pixels[..(44 * SIZE.0) as usize]
            .iter()
            .filter(|p| p.iter().all(|&c| c < 100))
            .count();
        assert!(
            title > 200,
            "{chart}: {title} dark pixels in the title band"
        );
    }
    // The same input draws the same pictures.
    let again = tmp.path().join("again");
    ok(&plot(&run, &again));
    for chart in CHARTS {
        assert_eq!(
            std::fs::read(out.join(chart)).unwrap(),
            std::fs::read(again.join(chart)).unwrap(),
            "{chart}"
        );
    }
}

#[test]
fn plot_defaults_to_the_plots_directory_of_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_dir(tmp.path(), METRICS);
    let out = Command::new(env!("CARGO_BIN_EXE_glom"))
        .args(["plot", run.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out);
    for chart in CHARTS {
        assert_eq!(decode(&run.join("plots").join(chart)).0, SIZE.0);
    }
}

#[test]
fn plot_rejects_a_missing_run_or_metrics_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("no-such-run");
    let err = failure(&plot(&missing, &out));
    assert!(
        err.contains("no-such-run") && err.contains("does not exist"),
        "{err}"
    );

    let empty_dir = tmp.path().join("bare");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = failure(&plot(&empty_dir, &out));
    assert!(err.contains("bare/metrics.jsonl"), "{err}");
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn plot_rejects_bad_metrics_naming_the_file_and_line() {
    let cases: [(&str, &[&str]); 5] = [
        ("", &["metrics.jsonl is empty"]),
        ("\n\n", &["metrics.jsonl is empty"]),
        (
            "{\"step\":1,\"loss_total\":1.0}\n{\"step\":2,\"loss_tot",
            &["metrics.jsonl line 2", "not valid JSON"],
        ),
        (
            "{\"step\":1}\n\n{\"step\":3,\"mean_cosine_by_level\":\"flat\"}\n",
            &[
                "metrics.jsonl line 3",
                "\"mean_cosine_by_level\" is \"flat\"",
            ],
        ),
        (
            "{\"step\":1,\"phase\":\"sleep\"}\n",
            &["metrics.jsonl has no awake records"],
        ),
    ];
    for (text, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_dir(tmp.path(), text);
        let err = failure(&plot(&run, &tmp.path().join("out")));
        for e in expected {
            assert!(err.contains(e), "{text:?}: {err}");
        }
        assert!(
            err.contains(&run.join("metrics.jsonl").display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn plot_evaluates_the_checkpoints_once_and_charts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.args(["train", "--no-eval", "--out", run.to_str().unwrap()]);
    // A checkpoint after every step.
    for set in support::TWO_STEPS
        .iter()
        .chain(&["checkpoint.every_steps=1"])
    {
        cmd.args(["--set", set]);
    }
    ok(&cmd.env("RUST_LOG", "warn").output().unwrap());
    let out = tmp.path().join("charts");

    // Without the flag nothing is evaluated and there is no evaluation chart.
    ok(&plot(&run, &out));
    assert!(!out.join("evaluation.png").exists());
    // A directory of shards without a manifest (an interrupted save, or a
    // step the divergence guard stopped) is not a checkpoint: skipped.
    let partial = run.join("checkpoints").join("step-3");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("shard-0.safetensors"), b"half").unwrap();

    let plot_eval = |out: &Path, flag: bool| {
        let mut args = vec![
            "plot",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if flag {
            args.push("--eval-checkpoints");
        }
        let output = Command::new(env!("CARGO_BIN_EXE_glom"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        ok(&output)
    };
    let stdout = plot_eval(&out, true);
    assert_eq!(stdout.matches("evaluated ").count(), 2, "{stdout}");
    let (w, h, _, _) = decode(&out.join("evaluation.png"));
    assert_eq!((w, h), (960, 900));
    let records = std::fs::read_to_string(run.join("evaluations.jsonl")).unwrap();
    let steps: Vec<u64> = records
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2]);

    // Later plots reuse the records, with or without the flag.
    let again = tmp.path().join("again");
    let stdout = plot_eval(&again, true);
    assert!(!stdout.contains("evaluated "), "{stdout}");
    assert_eq!(
        std::fs::read(out.join("evaluation.png")).unwrap(),
        std::fs::read(again.join("evaluation.png")).unwrap()
    );
    let plain = tmp.path().join("plain");
    plot_eval(&plain, false);
    assert!(plain.join("evaluation.png").exists());
}

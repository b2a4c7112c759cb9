//! `glom table`: the variants table, in Markdown, from finished run
//! directories (their `config.toml` and `summary.json`, and `command.txt`
//! when the run was started by `scripts/experiments.sh`).
//!
//! Runs are grouped by dataset (`data.source`). A run's variant is read off
//! its configuration: `model.weights` (shared or per-location nets),
//! `train.learning` (BPTT or local) and, for per-location local learning,
//! whether the distillation term is on (co-distillation) or off. Each
//! dataset gets one table (ARI part and object, threshold and true-k,
//! reconstruction PSNR, probe accuracy, images/s, training and wall time),
//! the random-initialisation baselines the runs evaluated beside
//! themselves (one row per weight mode) and the raw-pixel probe, then the
//! central question: how much of the gap between unshared nets without
//! distillation and shared weights does co-distillation close, per
//! measure, as
//!
//! `closed = (co-distillation - no co-distillation) / (shared - no co-distillation)`
//!
//! against both shared variants (local and BPTT), from the unrounded values.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What a run trained, read off its `config.toml`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Setup {
    /// `data.source`.
    pub(crate) dataset: String,
    /// `model.weights == "shared"`.
    pub(crate) shared: bool,
    /// `train.learning == "bptt"`.
    pub(crate) bptt: bool,
    /// `train.distill_weight`.
    pub(crate) distill_weight: f64,
    /// `train.steps`.
    pub(crate) steps: i64,
    /// The anti-collapse terms that are on, e.g. `var 1 (log), cov 10`
    /// (empty: positive-only).
    pub(crate) terms: String,
}

/// The roles of the central question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Variant {
    SharedBptt,
    SharedLocal,
    CoDistillation,
    NoCoDistillation,
    PerLocationBptt,
}

impl Setup {
    /// The variant of the experiment table this run is, if any.
    pub(crate) fn variant(&self) -> Option<Variant> {
        let distill = self.distill_weight != 0.0;
        match (self.shared, self.bptt) {
            (true, true) if distill => Some(Variant::SharedBptt),
            (true, false) if distill => Some(Variant::SharedLocal),
            (false, false) if distill => Some(Variant::CoDistillation),
            (false, false) => Some(Variant::NoCoDistillation),
            (false, true) if distill => Some(Variant::PerLocationBptt),
            _ => None,
        }
    }

    /// A short description: weights + learning (+ the distillation term).
    pub(crate) fn label(&self) -> String {
        let weights = if self.shared {
            "shared"
        } else {
            "per-location"
        };
        let learning = if self.bptt { "BPTT" } else { "local" };
        let distill = self.distill_weight != 0.0;
        let extra = match (self.shared, self.bptt, distill) {
            (false, false, true) => " (co-distillation)",
            (false, false, false) => " (no co-distillation)",
            (_, _, false) => ", no distillation term",
            _ => "",
        };
        let terms = if self.terms.is_empty() {
            String::new()
        } else {
            format!(" + {}", self.terms)
        };
        format!("{weights} + {learning}{extra}{terms}")
    }
}

/// One finished run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// The directory as given.
    pub(crate) dir: PathBuf,
    pub(crate) setup: Setup,
    /// The evaluation of the trained model (`summary.json`).
    pub(crate) trained: Figures,
    /// The same model at random initialisation (`summary.json` `baseline`).
    pub(crate) baseline: Figures,
    /// `baseline.probe_accuracy_raw_pixels`.
    pub(crate) raw_pixel_probe: Option<f64>,
    /// The command that trained it (`command.txt`), when written.
    pub(crate) command: Option<String>,
    /// Whether its threshold islands were scored on centred vectors (a
    /// `summary.json` from before the islands were scored as they are).
    pub(crate) centred: bool,
    /// Evaluations of its checkpoints over training, by step: the
    /// `glom eval --json` outputs saved as `curve/step-<N>.json`.
    pub(crate) curve: Vec<(u64, Figures)>,
}

impl Run {
    /// The directory's last component.
    fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }
}

/// The figures of one evaluation (`None`: missing or `null`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Figures {
    pub(crate) ari_part: Option<f64>,
    pub(crate) ari_object: Option<f64>,
    pub(crate) ari_part_k: Option<f64>,
    pub(crate) ari_object_k: Option<f64>,
    pub(crate) psnr_db: Option<f64>,
    pub(crate) probe: Option<f64>,
    pub(crate) images_per_s: Option<f64>,
    pub(crate) train_seconds: Option<f64>,
    pub(crate) wall_seconds: Option<f64>,
    /// The smallest effective rank of the settled embeddings over levels.
    pub(crate) min_rank: Option<f64>,
}

/// Reads one figure off an evaluation.
type Measure = fn(&Figures) -> Option<f64>;

/// The measures of the central question: name, how to read it off.
const MEASURES: [(&str, Measure); 4] = [
    ("ARI part", |f| f.ari_part),
    ("ARI object", |f| f.ari_object),
    ("PSNR dB", |f| f.psnr_db),
    ("probe accuracy", |f| f.probe),
];

/// `glom table RUN_DIR... [--out FILE] [--command TEXT]`: the Markdown to
/// `out` (its directory created if missing), or to stdout.
pub(crate) fn run(dirs: &[PathBuf], out: Option<&Path>, command: Option<&str>) -> Result<()> {
    if dirs.is_empty() {
        bail!("give at least one run directory");
    }
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    let mut invocation = String::from("glom table");
    for d in dirs {
        invocation += &format!(" {}", d.display());
    }
    if let Some(path) = out {
        invocation += &format!(" --out {}", path.display());
    }
    if let Some(c) = command {
        invocation += &format!(" --command {}", shell_quote(c));
    }
    let text = markdown(&runs, command, &invocation);
    match out {
        Some(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Read one run directory.
pub(crate) fn read_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        bail!("run directory {} does not exist", dir.display());
    }
    let config_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", config_path.display()))?;
    let setup = setup(&config, &config_path)?;

    let summary_path = dir.join("summary.json");
    let text = std::fs::read_to_string(&summary_path).with_context(|| {
        format!(
            "cannot read {} (did the run finish, evaluation included?)",
            summary_path.display()
        )
    })?;
    let summary: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", summary_path.display()))?;
    if !summary.is_object() {
        bail!("{} is not a JSON object", summary_path.display());
    }
    let name = summary_path.display().to_string();
    let trained = figures(&summary, "", &name)?;
    let baseline = match summary.get("baseline") {
        None | Some(Value::Null) => Figures::default(),
        Some(b) if b.is_object() => figures(b, "baseline.", &name)?,
        Some(other) => bail!("{name}: \"baseline\" is {other}, not an object"),
    };
    let raw_pixel_probe = match summary.get("baseline") {
        Some(b) => number(b, "probe_accuracy_raw_pixels", "baseline.", &name)?,
        None => None,
    };
    let command = match std::fs::read_to_string(dir.join("command.txt")) {
        Ok(text) => Some(text.trim().to_string()).filter(|t| !t.is_empty()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", dir.join("command.txt").display()),
    };
    Ok(Run {
        dir: dir.to_path_buf(),
        setup,
        trained,
        baseline,
        raw_pixel_probe,
        command,
        // Reports before `islands_centred` existed were centred, except
        // those that already had the inpainting baseline, which came with
        // the uncentred islands.
        centred: summary
            .get("islands_centred")
            .and_then(Value::as_bool)
            .unwrap_or_else(|| summary.get("inpaint_baseline_psnr_db").is_none()),
        curve: read_curve(&dir.join("curve"))?,
    })
}

/// The `step-<N>.json` evaluations in `dir` (none when it does not exist),
/// in step order.
fn read_curve(dir: &Path) -> Result<Vec<(u64, Figures)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    };
    let mut curve = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        curve.push((step, figures(&v, "", &path.display().to_string())?));
    }
    curve.sort_by_key(|(step, _)| *step);
    Ok(curve)
}

/// Every run's evaluations over training, one row per evaluated checkpoint.
fn curves(w: &mut String, rows: &[&Run]) {
    if rows.iter().all(|r| r.curve.is_empty()) {
        return;
    }
    let _ = writeln!(
        w,
        "\n### Over training (`glom eval` of checkpoints)\n\n\
         | run | step | ARI part | ARI object | ARI object k | min rank | PSNR dB | probe |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        for (step, f) in &r.curve {
            let _ = writeln!(
                w,
                "| `{}` | {step} | {} | {} | {} | {} | {} | {} |",
                r.name(),
                cell(f.ari_part, 3),
                cell(f.ari_object, 3),
                cell(f.ari_object_k, 3),
                cell(f.min_rank, 1),
                cell(f.psnr_db, 2),
                cell(f.probe, 3)
            );
        }
    }
}

/// The variant keys of a resolved `config.toml`.
fn setup(config: &toml::Table, path: &Path) -> Result<Setup> {
    let get = |section: &str, key: &str| -> Result<&toml::Value> {
        config
            .get(section)
            .and_then(|s| s.get(key))
            .with_context(|| format!("{} has no {section}.{key}", path.display()))
    };
    let string = |section: &str, key: &str| -> Result<String> {
        let v = get(section, key)?;
        v.as_str()
            .map(str::to_string)
            .with_context(|| format!("{}: {section}.{key} is {v}, not a string", path.display()))
    };
    let float = |section: &str, key: &str| -> Result<f64> {
        let v = get(section, key)?;
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .with_context(|| format!("{}: {section}.{key} is {v}, not a number", path.display()))
    };
    let steps = get("train", "steps")?;
    // Keys that older runs' configurations lack read as off.
    let optional = |key: &str, off: f64| -> Result<f64> {
        match config.get("train").and_then(|t| t.get(key)) {
            None => Ok(off),
            Some(_) => float("train", key),
        }
    };
    let text = |key: &str| {
        config
            .get("train")
            .and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let mut terms = Vec::new();
    let var = optional("variance_weight", 0.0)?;
    if var > 0.0 {
        terms.push(match text("variance_form").as_str() {
            "hinge" => format!("var {var} (hinge {})", optional("variance_target", 1.0)?),
            form => format!("var {var} ({form})"),
        });
    }
    for (key, name) in [
        ("covariance_weight", "cov"),
        ("autoencoder_weight", "AE"),
        ("neighbour_distill_weight", "neighbour distill"),
    ] {
        let w = optional(key, 0.0)?;
        if w > 0.0 {
            terms.push(format!("{name} {w}"));
        }
    }
    let nce = optional("contrastive_weight", 0.0)?;
    if nce > 0.0 {
        terms.push(format!(
            "InfoNCE {nce} ({}, tau {})",
            text("contrastive_positive"),
            optional("contrastive_temperature", 0.1)?
        ));
    }
    let neg = optional("negative_weight", 0.0)?;
    if neg > 0.0 {
        terms.push(format!("hinge {neg}"));
    }
    Ok(Setup {
        dataset: string("data", "source")?,
        shared: string("model", "weights")? == "shared",
        bptt: string("train", "learning")? == "bptt",
        distill_weight: float("train", "distill_weight")?,
        steps: steps.as_integer().with_context(|| {
            format!("{}: train.steps is {steps}, not an integer", path.display())
        })?,
        terms: terms.join(", "),
    })
}

/// The figures of one evaluation object (`prefix` and `file` name it in errors).
fn figures(v: &Value, prefix: &str, file: &str) -> Result<Figures> {
    let n = |key: &str| number(v, key, prefix, file);
    Ok(Figures {
        ari_part: n("island_ari_part")?,
        ari_object: n("island_ari_object")?,
        ari_part_k: n("island_ari_part_k")?,
        ari_object_k: n("island_ari_object_k")?,
        psnr_db: n("recon_psnr_db")?,
        probe: n("probe_accuracy")?,
        images_per_s: n("images_per_s")?,
        train_seconds: n("train_seconds")?,
        wall_seconds: n("wall_seconds")?,
        min_rank: v
            .get("effective_rank_by_level")
            .and_then(Value::as_array)
            .and_then(|ranks| ranks.iter().filter_map(Value::as_f64).reduce(f64::min)),
    })
}

/// `v[key]` as a number; `None` when missing or `null`.
fn number(v: &Value, key: &str, prefix: &str, file: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(x)) => Ok(x.as_f64()),
        Some(other) => bail!("{file}: \"{prefix}{key}\" is {other}, not a number"),
    }
}

/// The heading of a dataset's section.
fn dataset_title(source: &str) -> String {
    match source {
        "scenes" => "Synthetic part-whole scenes".into(),
        "fashion_mnist" => "Fashion-MNIST".into(),
        "tetrominoes" => "Tetrominoes-style data".into(),
        "sprites" => "Multi-dSprites-style sprites".into(),
        "moving_scenes" => "Moving part-whole scenes".into(),
        "moving_sprites" => "Moving Multi-dSprites-style sprites".into(),
        other => other.into(),
    }
}

fn cell(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// The share of the gap closed: `(co - none) / (shared - none)`; `None`
/// when a figure is missing or there is no gap (shared not above none).
pub(crate) fn gap_closed(none: f64, co: f64, shared: f64) -> Option<f64> {
    let gap = shared - none;
    (gap > 0.0).then(|| (co - none) / gap)
}

/// The whole document.
pub(crate) fn markdown(runs: &[Run], command: Option<&str>, invocation: &str) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# Variants: shared or per-location nets, BPTT or local learning\n"
    );
    match command {
        Some(c) => {
            let _ = writeln!(w, "Produced by `{c}`; the table by `{invocation}`.\n");
        }
        None => {
            let _ = writeln!(w, "Produced by `{invocation}`.\n");
        }
    }
    let _ = writeln!(
        w,
        "Every figure is from the runs' `summary.json`: ARI = `island_ari_part` / \
         `island_ari_object` (threshold islands, best level) and their `_k` forms \
         (clustering told the true number of segments), PSNR = `recon_psnr_db` \
         (masked patches), probe = `probe_accuracy` (linear probe on the top level), \
         images/s and seconds of training (`train_seconds`) and in all (`wall_seconds`, \
         evaluation included). The random-init rows are the same evaluation of each \
         weight mode's model at its initialisation; raw pixels is a linear probe on \
         the pixels."
    );

    let centred: Vec<String> = runs
        .iter()
        .filter(|r| r.centred)
        .map(|r| r.name())
        .collect();
    if !centred.is_empty() {
        let _ = writeln!(
            w,
            "**Warning**: the threshold-island ARIs of {} were scored on centred vectors \
             (the image's mean removed, as evaluations did before `islands_centred` was \
             reported); they are not comparable with the others.\n",
            centred.join(", ")
        );
    }

    let mut datasets: Vec<&str> = Vec::new();
    for r in runs {
        if !datasets.contains(&r.setup.dataset.as_str()) {
            datasets.push(&r.setup.dataset);
        }
    }
    let rank = |d: &str| match d {
        "scenes" => 0,
        "fashion_mnist" => 1,
        "tetrominoes" => 2,
        "sprites" => 3,
        "moving_scenes" => 4,
        "moving_sprites" => 5,
        _ => 6,
    };
    datasets.sort_by_key(|d| rank(d));
    for dataset in datasets {
        let mut rows: Vec<&Run> = runs.iter().filter(|r| r.setup.dataset == dataset).collect();
        rows.sort_by_key(|r| r.setup.variant().map_or(5, |v| v as usize));
        section(w, dataset, &rows);
    }

    let commands: Vec<&Run> = runs.iter().filter(|r| r.command.is_some()).collect();
    if !commands.is_empty() {
        let _ = writeln!(w, "\n## Commands\n");
        for r in commands {
            let _ = writeln!(
                w,
                "- `{}`: `{}`",
                r.name(),
                r.command.as_deref().unwrap_or_default()
            );
        }
    }
    md
}

/// One dataset: table, baselines, gap.
fn section(w: &mut String, dataset: &str, rows: &[&Run]) {
    let mut steps: Vec<i64> = rows.iter().map(|r| r.setup.steps).collect();
    steps.sort_unstable();
    steps.dedup();
    let budget = match steps.as_slice() {
        [s] => format!("{s} steps each"),
        _ => format!(
            "**budgets differ**: {}",
            rows.iter()
                .map(|r| format!("{} {}", r.name(), r.setup.steps))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(
        w,
        "\n## {} (`data.source = \"{dataset}\"`), {budget}\n",
        dataset_title(dataset)
    );
    let ari = rows.iter().any(|r| {
        [
            r.trained.ari_part,
            r.trained.ari_object,
            r.baseline.ari_part,
            r.baseline.ari_object,
        ]
        .iter()
        .any(Option::is_some)
    });
    let mut header = vec!["variant", "run"];
    if ari {
        header.extend(["ARI part", "ARI object", "ARI part k", "ARI object k"]);
    }
    header.extend(["PSNR dB", "probe", "images/s", "train s", "wall s"]);
    let _ = writeln!(w, "| {} |", header.join(" | "));
    let _ = writeln!(w, "|{}", " --- |".repeat(header.len()));
    let line = |w: &mut String, name: String, run: String, f: &Figures, probe: Option<f64>| {
        let mut cells = vec![name, run];
        if ari {
            cells.extend(
                [f.ari_part, f.ari_object, f.ari_part_k, f.ari_object_k].map(|x| cell(x, 3)),
            );
        }
        cells.extend([
            cell(f.psnr_db, 2),
            cell(probe, 3),
            cell(f.images_per_s, 1),
            cell(f.train_seconds, 0),
            cell(f.wall_seconds, 0),
        ]);
        let _ = writeln!(w, "| {} |", cells.join(" | "));
    };
    for r in rows {
        line(
            w,
            r.setup.label(),
            format!("`{}`", r.name()),
            &r.trained,
            r.trained.probe,
        );
    }
    for shared in [false, true] {
        if let Some(r) = rows.iter().find(|r| r.setup.shared == shared) {
            let mode = if shared { "shared" } else { "per-location" };
            line(
                w,
                format!("random init ({mode} nets)"),
                format!("`{}`", r.name()),
                &r.baseline,
                r.baseline.probe,
            );
        }
    }
    if let Some(r) = rows.iter().find(|r| r.raw_pixel_probe.is_some()) {
        line(
            w,
            "raw pixels".into(),
            format!("`{}`", r.name()),
            &Figures::default(),
            r.raw_pixel_probe,
        );
    }
    if !ari {
        let _ = writeln!(w, "\nNo part/object maps in this data: no ARI.");
    }
    curves(w, rows);
    gap(w, rows);
}

/// The central question for one dataset's runs.
fn gap(w: &mut String, rows: &[&Run]) {
    let _ = writeln!(
        w,
        "\n### How much of the gap to shared weights does co-distillation close?\n"
    );
    let find = |v: Variant| rows.iter().find(|r| r.setup.variant() == Some(v));
    let (Some(none), Some(co)) = (
        find(Variant::NoCoDistillation),
        find(Variant::CoDistillation),
    ) else {
        let _ = writeln!(
            w,
            "Not answered: it needs a per-location + local run with distillation and one \
             without (`train.distill_weight=0`)."
        );
        return;
    };
    let shared: Vec<(&str, &Run)> = [
        ("shared + local", Variant::SharedLocal),
        ("shared + BPTT", Variant::SharedBptt),
    ]
    .into_iter()
    .filter_map(|(name, v)| find(v).map(|r| (name, *r)))
    .collect();
    if shared.is_empty() {
        let _ = writeln!(
            w,
            "Not answered: it needs a shared-weights run (shared + local or shared + BPTT)."
        );
        return;
    }
    let _ = writeln!(
        w,
        "closed = (co-distillation - no co-distillation) / (shared - no co-distillation), \
         per measure, from the unrounded figures: 100% = co-distillation reaches shared \
         weights, 0% = no better than unshared nets without distillation, below 0% = \
         worse than those; \"no gap\" where unshared nets without distillation already \
         match or beat shared weights.\n"
    );
    let mut header = vec![
        "measure".to_string(),
        format!("no co-distillation (`{}`)", none.name()),
        format!("co-distillation (`{}`)", co.name()),
    ];
    for (name, r) in &shared {
        header.push(format!("{name} (`{}`)", r.name()));
        header.push("closed".into());
    }
    let _ = writeln!(w, "| {} |", header.join(" | "));
    let _ = writeln!(w, "|{}", " --- |".repeat(header.len()));
    let mut verdicts: Vec<String> = Vec::new();
    // Comparisons where co-distillation closes all, part, none of the gap; without a gap.
    let mut tally = [0usize; 4];
    for (measure, get) in MEASURES {
        let (Some(n), Some(c)) = (get(&none.trained), get(&co.trained)) else {
            continue;
        };
        let decimals = if measure == "PSNR dB" { 2 } else { 3 };
        let mut cells = vec![
            measure.to_string(),
            cell(Some(n), decimals),
            cell(Some(c), decimals),
        ];
        for (name, r) in &shared {
            let s = get(&r.trained);
            cells.push(cell(s, decimals));
            let Some(s) = s else {
                cells.push("-".into());
                continue;
            };
            let text = match gap_closed(n, c, s) {
                Some(f) => {
                    let pct = format!("{:.0}%", 100.0 * f);
                    let (k, verdict) = if f >= 1.0 {
                        (0, format!("closes all of it ({pct})"))
                    } else if f > 0.0 {
                        (1, format!("closes {pct} of it"))
                    } else {
                        (2, format!("does not close it ({pct})"))
                    };
                    tally[k] += 1;
                    verdicts.push(format!(
                        "{measure}, against {name}: the gap is {}; co-distillation {verdict}.",
                        cell(Some(s - n), decimals)
                    ));
                    pct
                }
                None => {
                    tally[3] += 1;
                    verdicts.push(format!(
                        "{measure}, against {name}: no gap; unshared nets without \
                         distillation already reach {} against {}.",
                        cell(Some(n), decimals),
                        cell(Some(s), decimals)
                    ));
                    "no gap".into()
                }
            };
            cells.push(text);
        }
        let _ = writeln!(w, "| {} |", cells.join(" | "));
    }
    if !verdicts.is_empty() {
        let _ = writeln!(w);
        for v in verdicts {
            let _ = writeln!(w, "- {v}");
        }
        let [all, part, none, no_gap] = tally;
        let _ = writeln!(
            w,
            "\nIn short: of {} comparisons with a gap, co-distillation closes all of it in \
             {all}, part of it in {part} and none of it in {none}; in {no_gap} more, unshared \
             nets without distillation already match or beat shared weights.",
            all + part + none
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(shared: bool, bptt: bool, distill_weight: f64) -> Setup {
        Setup {
            dataset: "scenes".into(),
            shared,
            bptt,
            distill_weight,
            steps: 300,
            terms: String::new(),
        }
    }

    #[test]
    fn variants_and_labels_follow_the_configuration() {
        let cases = [
            (
                setup(true, true, 1.0),
                Some(Variant::SharedBptt),
                "shared + BPTT",
            ),
            (
                setup(true, false, 1.0),
                Some(Variant::SharedLocal),
                "shared + local",
            ),
            (
                setup(false, false, 1.0),
                Some(Variant::CoDistillation),
                "per-location + local (co-distillation)",
            ),
            (
                setup(false, false, 0.0),
                Some(Variant::NoCoDistillation),
                "per-location + local (no co-distillation)",
            ),
            (
                setup(false, true, 0.5),
                Some(Variant::PerLocationBptt),
                "per-location + BPTT",
            ),
            (
                setup(true, true, 0.0),
                None,
                "shared + BPTT, no distillation term",
            ),
        ];
        for (s, variant, label) in cases {
            assert_eq!(s.variant(), variant, "{s:?}");
            assert_eq!(s.label(), label);
        }
    }

    #[test]
    fn gap_closed_is_the_stated_ratio() {
        assert_eq!(gap_closed(0.5, 0.75, 1.5), Some(0.25));
        assert_eq!(gap_closed(0.5, 0.25, 1.0), Some(-0.5));
        assert_eq!(gap_closed(0.5, 2.0, 1.0), Some(3.0));
        assert_eq!(gap_closed(0.5, 0.6, 0.5), None, "no gap");
        assert_eq!(
            gap_closed(0.8, 0.6, 0.5),
            None,
            "shared below no distillation"
        );
    }

    #[test]
    fn shell_quote_keeps_plain_words() {
        assert_eq!(
            shell_quote("scripts/experiments.sh"),
            "scripts/experiments.sh"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

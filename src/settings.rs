//! Reading the run configuration: the embedded default, then an optional
//! file, then `GLOM_*` environment variables, then `--set key=value`
//! overrides, each layer over the last (the `config` crate), into the
//! validated [`Config`] of the protocol crate.
//!
//! A bad value is refused with the layer it came from ([`Layer`]), its key
//! and value, and what is accepted: "invalid configuration: data.source =
//! "cifar" (from --set data.source=cifar): unknown variant `cifar`,
//! expected one of `scenes`, `fashion_mnist`, `tetrominoes`, `sprites`,
//! `moving_scenes`, `moving_sprites`".
//!
//! One default depends on another key: `data.image_size` is 64 for
//! `data.source = "sprites"` and `"moving_sprites"` (the published
//! Multi-dSprites size) unless a layer over the embedded default sets it.
//!
//! Self-contained (no `crate::` paths): the `settings` fuzz target (fuzz/)
//! compiles this file on its own, and builds with `cfg(fuzzing)` may give
//! the environment layer explicitly ([`Env::Vars`]) as tests do.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use config::builder::DefaultState;
use config::{ConfigBuilder, Environment, File, FileFormat};
use glom_protocol::config::DataSource;
use glom_protocol::Config;

/// `configs/default.toml`, built into the binary so `glom train` runs anywhere.
pub(crate) const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// The fault injection of recovery tests (`glom_worker::runtime::fault`),
/// the one `GLOM_*` variable that is not a configuration key (named here
/// so that this file stays self-contained; a test ties the two).
const FAULT_VAR: &str = "GLOM_FAIL_AT_STEP";

/// What errors call the embedded default.
pub(crate) const DEFAULT_NAME: &str = "the embedded default (configs/default.toml)";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Layer {
    /// The document under all others, by name (the embedded default, or a
    /// checkpoint's configuration).
    Base(String),
    /// `--config FILE`.
    File(PathBuf),
    /// One `GLOM_*` environment variable, by name.
    Env(String),
    /// One `--set key=value`, as given.
    Set(String),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Base(name) => write!(f, "{name}"),
            Layer::File(path) => write!(f, "--config {}", path.display()),
            Layer::Env(var) => write!(f, "environment variable {var}"),
            Layer::Set(set) => write!(f, "--set {set}"),
        }
    }
}

/// The environment layer: the process's `GLOM_*` variables, none, or given
/// ones (tests and fuzzing).
pub(crate) enum Env {
    Process,
    Off,
    #[cfg(any(test, fuzzing))]
    Vars(Vec<(String, String)>),
}

/// The layers of one configuration, lowest first.
pub(crate) struct Layers<'a> {
    /// The base document (TOML) and what to call it in errors.
    pub(crate) base: (&'a str, &'a str),
    pub(crate) file: Option<&'a Path>,
    pub(crate) env: Env,
    pub(crate) sets: &'a [String],
}

/// One `--set key=value` as a TOML document. The value is read as TOML
/// (`20`, `true`, `[1.0, 2.0]`, `"x"`), and as a bare string otherwise
/// (`model.weights=shared`).
fn override_doc(set: &str) -> Result<String> {
    let (key, value) = set
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {set:?}: expected key=value, e.g. --set train.steps=20"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(anyhow!(
            "--set {set:?}: {key:?} is not a dotted config key like train.steps"
        ));
    }
    let value = value.trim();
    let doc = format!("{key} = {value}");
    if doc.parse::<toml::Table>().is_ok() {
        return Ok(doc);
    }
    let quoted = toml::Value::String(value.to_string()).to_string();
    Ok(format!("{key} = {quoted}"))
}

/// The configuration: the embedded default < `file` < `GLOM_*`
/// environment (`GLOM_TRAIN__STEPS=20` sets `train.steps`) < `sets`.
///
/// # Errors
/// A `--set` that is not `key=value`, a missing or unreadable file, and
/// any bad value, named as [`explain`] does.
pub(crate) fn load(file: Option<&Path>, sets: &[String]) -> Result<Config> {
    load_layers(Layers {
        base: (DEFAULT_TOML, DEFAULT_NAME),
        file,
        env: Env::Process,
        sets,
    })
}

/// As [`load`], over the base document `base` called `name` in errors,
/// without the environment (a checkpoint's configuration changed by
/// `file` and `sets`).
pub(crate) fn load_over(
    base: &str,
    name: &str,
    file: Option<&Path>,
    sets: &[String],
) -> Result<Config> {
    load_layers(Layers {
        base: (base, name),
        file,
        env: Env::Off,
        sets,
    })
}

/// As [`load`], over the base document `base` called `name` in errors (a
/// preset of `glom bench`; keys it leaves out keep the built-in defaults).
pub(crate) fn load_with_base(
    base: &str,
    name: &str,
    file: Option<&Path>,
    sets: &[String],
) -> Result<Config> {
    load_layers(Layers {
        base: (base, name),
        file,
        env: Env::Process,
        sets,
    })
}

/// What a layer holds, to be added to a `config` builder.
enum Source {
    Toml(String),
    File(PathBuf),
    Env(String, String),
}

fn add(b: ConfigBuilder<DefaultState>, source: &Source) -> ConfigBuilder<DefaultState> {
    match source {
        Source::Toml(text) => b.add_source(File::from_str(text, FileFormat::Toml)),
        Source::File(path) => b.add_source(
            File::from(path.as_path())
                .format(FileFormat::Toml)
                .required(true),
        ),
        Source::Env(var, value) => b.add_source(
            Environment::with_prefix("GLOM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some([(var.clone(), value.clone())].into_iter().collect())),
        ),
    }
}

/// Whether the layer `source` sets `key` (`data.image_size`).
fn sets_key(source: &Source, key: &str) -> bool {
    add(config::Config::builder(), source)
        .build()
        .is_ok_and(|c| c.get::<config::Value>(key).is_ok())
}

/// Read and validate the configuration of `layers`.
pub(crate) fn load_layers(layers: Layers) -> Result<Config> {
    let base_is_default = layers.base.0 == DEFAULT_TOML;
    let mut all: Vec<(Layer, Source)> = vec![(
        Layer::Base(layers.base.1.to_string()),
        Source::Toml(layers.base.0.to_string()),
    )];
    if let Some(path) = layers.file {
        if !path.is_file() {
            return Err(anyhow!("config file {} does not exist", path.display()));
        }
        all.push((Layer::File(path.to_path_buf()), Source::File(path.into())));
    }
    let vars: Vec<(String, String)> = match layers.env {
        Env::Off => Vec::new(),
        // Every `GLOM_*` variable is a key, but the fault injection of
        // recovery tests (`glom_worker::runtime::fault`).
        Env::Process => std::env::vars()
            .filter(|(k, _)| k.to_lowercase().starts_with("glom_") && k != FAULT_VAR)
            .collect(),
        #[cfg(any(test, fuzzing))]
        Env::Vars(vars) => vars,
    };
    for (var, value) in vars {
        all.push((Layer::Env(var.clone()), Source::Env(var, value)));
    }
    for set in layers.sets {
        all.push((Layer::Set(set.clone()), Source::Toml(override_doc(set)?)));
    }
    let merged = all
        .iter()
        .fold(config::Config::builder(), |b, (_, s)| add(b, s));
    let raw = merged.build().map_err(|e| {
        // Name the layer that does not read (a file that is not TOML).
        let culprit = all
            .iter()
            .find(|(_, s)| add(config::Config::builder(), s).build().is_err())
            .map_or_else(|| "the configuration".to_string(), |(l, _)| l.to_string());
        anyhow!("reading {culprit}: {e}")
    })?;
    let mut cfg: Config = match raw.clone().try_deserialize() {
        Ok(cfg) => cfg,
        Err(e) => {
            // The same value through serde alone names the path and, for an
            // enumeration or a section's keys, what is accepted.
            let detail = raw
                .clone()
                .try_deserialize::<serde_json::Value>()
                .ok()
                .and_then(|v| serde_path_to_error::deserialize::<_, Config>(v).err());
            return Err(match detail {
                Some(d) => explain(&all, &raw, &d.path().to_string(), &d.inner().to_string()),
                None => anyhow!("invalid configuration: {e}"),
            });
        }
    };
    // Sprites are 64 pixels a side unless a layer says otherwise (a
    // checkpoint's configuration as the base always says).
    if cfg.data.source.is_sprites()
        && base_is_default
        && !all[1..].iter().any(|(_, s)| sets_key(s, "data.image_size"))
    {
        cfg.data.image_size = DataSource::SPRITES_DEFAULT_SIZE;
    }
    if let Err(e) = cfg.validate() {
        return Err(match e {
            glom_protocol::Error::Config { key, message } => explain(&all, &raw, &key, &message),
            other => anyhow!("invalid configuration: {other}"),
        });
    }
    Ok(cfg)
}

/// serde's Rust type names in an error message said in words: "expected
/// u64" becomes "expected a whole number >= 0".
fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        ("expected u64", "expected a whole number >= 0"),
        ("expected usize", "expected a whole number >= 0"),
        ("expected u32", "expected a whole number >= 0"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_string();
    for (rust, words) in WORDS {
        if let Some(i) = out.find(rust) {
            // Only a whole word: "expected u64" but not "expected u64x".
            let end = i + rust.len();
            if !out[end..].starts_with(|c: char| c.is_alphanumeric()) {
                out.replace_range(i..end, words);
            }
        }
    }
    out
}

/// The error for the value at `path` (`model.beta[1]`, `data.source`):
/// its key and value, the highest layer that sets it, and `message`. When
/// that is the base document and other layers are given, they are listed
/// (a value may be refused for another key's sake).
fn explain(
    all: &[(Layer, Source)],
    raw: &config::Config,
    path: &str,
    message: &str,
) -> anyhow::Error {
    let key = path.split('[').next().unwrap_or(path);
    let layer = all
        .iter()
        .rev()
        .find(|(_, s)| sets_key(s, key))
        .map(|(l, _)| l)
        .unwrap_or(&all[0].0);
    let value = raw
        .get::<serde_json::Value>(path)
        .map(|v| format!(" = {v}"))
        .unwrap_or_default();
    let message = plain_types(message);
    let mut text = format!("invalid configuration: {path}{value} (from {layer}): {message}");
    if matches!(layer, Layer::Base(_)) && all.len() > 1 {
        let over: Vec<String> = all[1..].iter().map(|(l, _)| l.to_string()).collect();
        text.push_str(&format!(" (layered over it: {})", over.join(", ")));
    }
    anyhow!(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_variable_is_the_workers() {
        assert_eq!(FAULT_VAR, glom_worker::runtime::fault::VAR);
    }

    fn with_sets(sets: &[&str]) -> Result<Config> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load_layers(Layers {
            base: (DEFAULT_TOML, DEFAULT_NAME),
            file: None,
            env: Env::Off,
            sets: &sets,
        })
    }

    fn error_of(sets: &[&str]) -> String {
        format!("{:#}", with_sets(sets).unwrap_err())
    }

    #[test]
    fn embedded_default_equals_the_built_in_defaults() {
        assert_eq!(with_sets(&[]).unwrap(), Config::default());
    }

    #[test]
    fn set_overrides_numbers_strings_and_lists() {
        let cfg = with_sets(&[
            "train.steps=20",
            "model.weights=shared",
            "model.beta=[1.0, 2.0]",
            "train.learning = \"bptt\"",
        ])
        .unwrap();
        assert_eq!(cfg.train.steps, 20);
        assert_eq!(cfg.model.weights, glom_protocol::config::WeightMode::Shared);
        assert_eq!(cfg.model.beta, [1.0, 2.0]);
        assert_eq!(cfg.train.learning, glom_protocol::config::Learning::Bptt);
    }

    #[test]
    fn a_bad_set_names_itself_the_key_the_value_and_what_is_accepted() {
        let e = error_of(&["train.steps=5", "data.source=cifar"]);
        assert!(
            e.contains("data.source = \"cifar\" (from --set data.source=cifar)"),
            "{e}"
        );
        for source in ["scenes", "fashion_mnist", "tetrominoes", "sprites"] {
            assert!(e.contains(&format!("`{source}`")), "{e}");
        }
        assert!(!e.contains("default"), "{e}");

        let e = error_of(&["model.levels=0"]);
        assert!(
            e.contains("model.levels = 0 (from --set model.levels=0): 0 must be at least 1"),
            "{e}"
        );
        let e = error_of(&["model.dim=-3"]);
        assert!(
            e.contains("model.dim = -3 (from --set model.dim=-3)"),
            "{e}"
        );
        let e = error_of(&["model.weights=sharded"]);
        assert!(e.contains("model.weights = \"sharded\""), "{e}");
        assert!(e.contains("`shared`"), "{e}");
        let e = error_of(&["model.levelz=3"]);
        assert!(
            e.contains("levelz") && e.contains("(from --set model.levelz=3)"),
            "{e}"
        );
        assert!(
            e.contains("`levels`"),
            "the keys of the section are listed: {e}"
        );
        let e = error_of(&["bogus"]);
        assert!(e.contains("key=value"), "{e}");
        // Types are said in words, not Rust's names.
        let e = error_of(&["train.steps=abc"]);
        assert!(e.contains("expected a whole number >= 0"), "{e}");
        let e = error_of(&["train.learning_rate=fast"]);
        assert!(e.contains("expected a number") && !e.contains("f64"), "{e}");
    }

    #[test]
    fn the_attention_and_device_keys_name_themselves_and_what_is_accepted() {
        use glom_protocol::config::Attention;
        let cfg = with_sets(&["model.attention=all", "train.device=cuda:1"]).unwrap();
        assert_eq!(cfg.model.attention, Attention::All);
        assert_eq!(cfg.train.device, "cuda:1");
        let e = error_of(&["model.attention=global"]);
        assert!(
            e.contains("model.attention = \"global\" (from --set model.attention=global)"),
            "{e}"
        );
        assert!(e.contains("`sampled`") && e.contains("`all`"), "{e}");
        let e = error_of(&["train.device=gpu"]);
        assert!(
            e.contains("train.device = \"gpu\" (from --set train.device=gpu)")
                && e.contains("\"cpu\" or \"cuda:N\""),
            "{e}"
        );
        let e = error_of(&["train.device=cuda:x"]);
        assert!(e.contains("train.device"), "{e}");
    }

    #[test]
    fn sprites_default_to_64_pixels_unless_a_layer_sets_the_size() {
        let cfg = with_sets(&["data.source=sprites"]).unwrap();
        assert_eq!((cfg.data.image_size, cfg.grid_side()), (64, 16));
        let cfg = with_sets(&["data.source=sprites", "data.image_size=32"]).unwrap();
        assert_eq!(cfg.data.image_size, 32);
        let cfg = with_sets(&["data.source=tetrominoes"]).unwrap();
        assert_eq!((cfg.image_side(), cfg.grid_side()), (28, 7));
        assert_eq!(
            with_sets(&["data.source=scenes"]).unwrap().data.image_size,
            32
        );
        // A checkpoint's configuration as the base keeps its size.
        let base =
            toml::to_string(&with_sets(&["data.source=sprites", "data.image_size=32"]).unwrap())
                .unwrap();
        let cfg = load_over(&base, "the checkpoint's configuration", None, &[]).unwrap();
        assert_eq!(cfg.data.image_size, 32);
        let e = error_of(&["data.source=sprites", "data.image_size=30"]);
        assert!(
            e.contains("data.image_size = 30 (from --set data.image_size=30)")
                && e.contains("not a multiple of model.patch"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_environment_variable_is_named() {
        let vars = vec![
            ("GLOM_TRAIN__STEPS".to_string(), "7".to_string()),
            ("GLOM_DATA__SOURCE".to_string(), "cifar".to_string()),
        ];
        let layers = |vars| Layers {
            base: (DEFAULT_TOML, DEFAULT_NAME),
            file: None,
            env: Env::Vars(vars),
            sets: &[],
        };
        let e = format!("{:#}", load_layers(layers(vars.clone())).unwrap_err());
        assert!(
            e.contains("data.source = \"cifar\" (from environment variable GLOM_DATA__SOURCE)"),
            "{e}"
        );
        assert!(e.contains("`fashion_mnist`"), "{e}");
        let cfg = load_layers(layers(vars[..1].to_vec())).unwrap();
        assert_eq!(cfg.train.steps, 7);
    }

    #[test]
    fn a_bad_file_value_names_the_file_and_a_set_over_it_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, "[model]\nlevels = 40\n").unwrap();
        let e = format!("{:#}", load(Some(&path), &[]).unwrap_err());
        let from = format!("model.levels = 40 (from --config {})", path.display());
        assert!(e.contains(&from), "{e}");
        assert!(e.contains("more than 16"), "{e}");
        let cfg = load(Some(&path), &["model.levels=3".to_string()]).unwrap();
        assert_eq!(cfg.model.levels, 3);

        std::fs::write(&path, "[model\nlevels = 4\n").unwrap();
        let e = format!("{:#}", load(Some(&path), &[]).unwrap_err());
        assert!(
            e.contains(&format!("reading --config {}", path.display())),
            "{e}"
        );
    }

    #[test]
    fn a_bad_base_value_names_the_base_and_the_layers_over_it() {
        let base = "[train]\nlearning = \"backprop\"\n";
        let e = format!(
            "{:#}",
            load_over(base, "the checkpoint's configuration", None, &[]).unwrap_err()
        );
        assert!(
            e.contains("train.learning = \"backprop\" (from the checkpoint's configuration)"),
            "{e}"
        );
        assert!(e.contains("`bptt`"), "{e}");
        let e = format!(
            "{:#}",
            load_over(base, "the base", None, &["eval.images=4".to_string()]).unwrap_err()
        );
        assert!(e.contains("(layered over it: --set eval.images=4)"), "{e}");
        // The embedded default itself is valid, so only a broken build would
        // blame it; a test base stands in for it here.
        let e = format!(
            "{:#}",
            load_over("[data]\nsource = 3\n", DEFAULT_NAME, None, &[]).unwrap_err()
        );
        assert!(
            e.contains("data.source = 3 (from the embedded default"),
            "{e}"
        );
    }
}

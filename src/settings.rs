//! Reading the run configuration: the embedded default, then an optional
//! file, then `GLOM_*` environment variables, then `--set key=value`
//! overrides, each layer over the last (the `config` crate), into the
//! validated [`Config`] of the protocol crate.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use config::{Environment, File, FileFormat};
use glom_protocol::Config;

/// `configs/default.toml`, built into the binary so `glom train` runs anywhere.
pub(crate) const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

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

/// The configuration: `default` (embedded TOML) < `file` < `GLOM_*`
/// environment (`GLOM_TRAIN__STEPS=20` sets `train.steps`) < `sets`.
pub(crate) fn load(file: Option<&Path>, sets: &[String]) -> Result<Config> {
    load_from(DEFAULT_TOML, file, sets, true)
}

/// As [`load`], over a given base document; `env` switches the environment layer.
pub(crate) fn load_from(
    base: &str,
    file: Option<&Path>,
    sets: &[String],
    env: bool,
) -> Result<Config> {
    let mut b = config::Config::builder().add_source(File::from_str(base, FileFormat::Toml));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(anyhow!("config file {} does not exist", path.display()));
        }
        b = b.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    if env {
        b = b.add_source(
            Environment::with_prefix("GLOM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        );
    }
    for set in sets {
        b = b.add_source(File::from_str(&override_doc(set)?, FileFormat::Toml));
    }
    let what = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the default config".into());
    let raw = b.build().with_context(|| format!("reading {what}"))?;
    let cfg: Config = raw
        .try_deserialize()
        .map_err(|e| anyhow!("invalid configuration ({what}): {e}"))?;
    cfg.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_equals_the_built_in_defaults() {
        let cfg = load_from(DEFAULT_TOML, None, &[], false).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn set_overrides_numbers_strings_and_lists() {
        let sets = [
            "train.steps=20".to_string(),
            "model.weights=shared".to_string(),
            "model.beta=[1.0, 2.0]".to_string(),
            "train.learning = \"bptt\"".to_string(),
        ];
        let cfg = load_from(DEFAULT_TOML, None, &sets, false).unwrap();
        assert_eq!(cfg.train.steps, 20);
        assert_eq!(cfg.model.weights, glom_protocol::config::WeightMode::Shared);
        assert_eq!(cfg.model.beta, [1.0, 2.0]);
        assert_eq!(cfg.train.learning, glom_protocol::config::Learning::Bptt);
    }

    fn error_of(sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!(
            "{:#}",
            load_from(DEFAULT_TOML, None, &sets, false).unwrap_err()
        )
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let e = error_of(&["model.levels=0"]);
        assert!(e.contains("model.levels"), "{e}");
        let e = error_of(&["model.dim=-3"]);
        assert!(e.contains("dim"), "{e}");
        let e = error_of(&["model.dim=0"]);
        assert!(e.contains("model.dim"), "{e}");
        let e = error_of(&["model.weights=sharded"]);
        assert!(e.contains("sharded") && e.contains("weights"), "{e}");
        let e = error_of(&["model.levelz=3"]);
        assert!(e.contains("levelz"), "{e}");
        let e = error_of(&["bogus"]);
        assert!(e.contains("key=value"), "{e}");
    }
}

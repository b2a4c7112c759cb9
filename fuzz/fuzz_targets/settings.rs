//! Configuration layering (src/settings.rs, compiled here by path): a base
//! TOML document, `GLOM_*` environment variables and `--set key=value`
//! overrides, in that order, through the `config` crate into the validated
//! `Config`.
//!
//! Input: text split at NUL bytes. The first part is the base document (the
//! embedded default when empty); each later part is an environment variable
//! `NAME=value` when it starts with `GLOM_`, a `--set` otherwise.
//! Checked: no panic; an error message is produced for every refusal; an
//! accepted configuration validates.

#![no_main]

#[allow(dead_code)]
#[path = "../../src/settings.rs"]
mod settings;

use libfuzzer_sys::fuzz_target;
use settings::{load_layers, Env, Layers, DEFAULT_NAME, DEFAULT_TOML};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let base = match parts.next() {
        Some(b) if !b.is_empty() => b,
        _ => DEFAULT_TOML,
    };
    let (mut vars, mut sets) = (Vec::new(), Vec::new());
    for part in parts {
        match part.split_once('=') {
            Some((name, value)) if name.starts_with("GLOM_") => {
                vars.push((name.to_string(), value.to_string()))
            }
            _ => sets.push(part.to_string()),
        }
    }
    match load_layers(Layers {
        base: (base, DEFAULT_NAME),
        file: None,
        env: Env::Vars(vars),
        sets: &sets,
    }) {
        Ok(cfg) => cfg.validate().expect("an accepted configuration validates"),
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
});

//! A tile's parameters and optimiser state on disk (DESIGN.md section 7).
//!
//! A checkpoint is a directory of `shard-<i>.safetensors` files, one per
//! worker tile, and a `manifest.json` (see [`glom_protocol::manifest`])
//! written last and atomically. Tensors are keyed by *global* location id,
//! `loc<id:05>/<param>` (per-location weights, one `[rows, cols]` slot per
//! location) or `shared/<param>` (shared weights), with the Adam moments of
//! the same tensors under `adam_m/` and `adam_v/`. Any tiling can therefore
//! load any checkpoint of the same model: a run resumes on a different
//! number of workers.
//!
//! Crash safety: every file is written under a temporary name, fsynced and
//! renamed, and the directory is fsynced after each rename; the manifest,
//! which records the size and SHA-256 of every shard, comes last. A
//! directory without a manifest is an interrupted save and is refused, as
//! is a shard whose bytes do not match its checksum.

mod load;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Write as _};
use std::path::Path;

use candle_core::Tensor;
use glom_protocol::config::WeightMode;
use glom_protocol::manifest::{shard_file_name, MANIFEST_FILE};
pub use glom_protocol::manifest::{Manifest, ShardEntry};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::learn::Adam;
use crate::model::Glom;
pub use load::load_into;

/// Prefixes of the optimiser's first and second moments.
const ADAM_M: &str = "adam_m/";
const ADAM_V: &str = "adam_v/";

/// Key prefix of the parameters of global location `gid` (per-location mode).
fn location_prefix(gid: usize) -> String {
    format!("loc{gid:05}")
}

/// Key prefix of the shared parameters.
const SHARED_PREFIX: &str = "shared";

/// The key prefix of each slot of the model's parameter tensors, in slot order.
fn slot_prefixes(model: &Glom) -> Vec<String> {
    match model.cfg.model.weights {
        WeightMode::PerLocation => model
            .tile
            .locs
            .iter()
            .map(|&g| location_prefix(g))
            .collect(),
        WeightMode::Shared => vec![SHARED_PREFIX.to_string()],
    }
}

/// Lowercase hex SHA-256 of `bytes`.
fn hex_sha256(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Fsync a directory so that the renames inside it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Check that `opt` has one moment pair per parameter of `model`, each of
/// the parameter's shape.
fn check_optimiser(model: &Glom, opt: &Adam) -> Result<()> {
    let entries = &model.params.entries;
    if opt.m.len() != entries.len() || opt.v.len() != entries.len() {
        return Err(Error::Shape(format!(
            "the optimiser has {} first and {} second moments for {} parameters",
            opt.m.len(),
            opt.v.len(),
            entries.len()
        )));
    }
    for (i, (name, var)) in entries.iter().enumerate() {
        if opt.m[i].dims() != var.dims() || opt.v[i].dims() != var.dims() {
            return Err(Error::Shape(format!(
                "the optimiser moments of {name} have shapes {:?} and {:?}, the parameter {:?}",
                opt.m[i].dims(),
                opt.v[i].dims(),
                var.dims()
            )));
        }
    }
    Ok(())
}

/// Every tensor of a shard file, by key.
fn shard_tensors(model: &Glom, opt: &Adam) -> Result<HashMap<String, Tensor>> {
    check_optimiser(model, opt)?;
    let prefixes = slot_prefixes(model);
    let mut out = HashMap::new();
    for (i, (name, var)) in model.params.entries.iter().enumerate() {
        let t = var.as_tensor();
        if t.dim(0)? != prefixes.len() {
            return Err(Error::Shape(format!(
                "parameter {name} has {} slots, the tile needs {}",
                t.dim(0)?,
                prefixes.len()
            )));
        }
        for (s, prefix) in prefixes.iter().enumerate() {
            let key = format!("{prefix}/{name}");
            let slot = |x: &Tensor| -> Result<Tensor> { Ok(x.narrow(0, s, 1)?.squeeze(0)?) };
            out.insert(format!("{ADAM_M}{key}"), slot(&opt.m[i])?);
            out.insert(format!("{ADAM_V}{key}"), slot(&opt.v[i])?);
            out.insert(key, slot(t)?);
        }
    }
    Ok(out)
}

/// Write this tile's shard file into `dir` (created if needed) and return
/// its manifest entry. The file is written under a temporary name, fsynced
/// and renamed, so a crash leaves no half file under the final name.
///
/// # Errors
/// [`Error::Checkpoint`] naming the first parameter (in key order) that
/// holds a NaN or an infinity, in the weights or the optimiser state: a
/// checkpoint of a diverged model is never written.
pub fn write_shard(dir: &Path, shard: usize, model: &Glom, opt: &Adam) -> Result<ShardEntry> {
    let tensors = shard_tensors(model, opt)?;
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let t = &tensors[key];
        // 0 x is 0 for a finite x and NaN otherwise.
        let probe = (t * 0.0)?.sum_all()?.to_dtype(candle_core::DType::F64)?;
        if !probe.to_scalar::<f64>()?.is_finite() {
            return Err(Error::checkpoint(
                dir,
                format!("refusing to write non-finite values ({key}): the model diverged"),
            ));
        }
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file = shard_file_name(shard);
    let path = dir.join(&file);
    let tmp = dir.join(format!("{file}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::checkpoint(&tmp, format!("cannot write the shard: {e}")))?;
    let bytes = fs::read(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(ShardEntry {
        file,
        locations: model.tile.locs.clone(),
        sha256: hex_sha256(&bytes),
        bytes: bytes.len() as u64,
    })
}

/// Write the manifest last, atomically: `manifest.json.tmp` is written and
/// fsynced, renamed to `manifest.json`, and the directory fsynced. Refuses
/// an invalid manifest or one naming a shard file that is not there at the
/// recorded size, so a manifest never vouches for missing data. Shard
/// files the manifest does not name (left by an attempt of the cluster
/// that was rolled back, with more workers) are removed first.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    manifest
        .validate()
        .map_err(|e| Error::checkpoint(&path, e.0))?;
    remove_stray_shards(dir, manifest)?;
    for s in &manifest.shards {
        let shard = dir.join(&s.file);
        let len = fs::metadata(&shard)
            .map_err(|e| Error::io(&shard, e))?
            .len();
        if len != s.bytes {
            return Err(Error::checkpoint(
                &shard,
                format!("has {len} bytes but its entry records {}", s.bytes),
            ));
        }
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::checkpoint(&path, format!("cannot serialise: {e}")))?;
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// Remove the `shard-<i>.safetensors` files of `dir` that `manifest` does
/// not name.
fn remove_stray_shards(dir: &Path, manifest: &Manifest) -> Result<()> {
    let named: std::collections::HashSet<&str> =
        manifest.shards.iter().map(|s| s.file.as_str()).collect();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let shard = name
            .strip_prefix("shard-")
            .and_then(|n| n.strip_suffix(".safetensors"))
            .is_some_and(|i| i.parse::<usize>().is_ok());
        if shard && !named.contains(name) {
            tracing::debug!(file = %entry.path().display(), "removing a shard of an abandoned attempt");
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Checkpoint a whole-grid model in one process: shard 0, then the
/// manifest. `step` is the number of training steps completed. A manifest
/// left in `dir` by an earlier save is removed first, so a crash while the
/// shard is being replaced leaves a directory that reads as an interrupted
/// save rather than one whose manifest vouches for other bytes.
pub fn save(dir: &Path, model: &Glom, opt: &Adam, step: u64) -> Result<Manifest> {
    if model.tile.locs.len() != model.tile.grid.len() {
        return Err(Error::checkpoint(
            dir,
            format!(
                "the model holds {} of the grid's {} locations: write one shard per tile \
                 with write_shard, then one manifest with write_manifest",
                model.tile.locs.len(),
                model.tile.grid.len()
            ),
        ));
    }
    let old = dir.join(MANIFEST_FILE);
    match fs::remove_file(&old) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&old, e)),
    }
    let entry = write_shard(dir, 0, model, opt)?;
    let manifest = Manifest::new(step, opt.t, &model.cfg, vec![entry]);
    write_manifest(dir, &manifest)?;
    Ok(manifest)
}

/// Read and check the manifest of the checkpoint in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::checkpoint(dir, "no such directory"));
        }
        Err(e) => return Err(Error::io(dir, e)),
        Ok(m) if !m.is_dir() => return Err(Error::checkpoint(dir, "not a directory")),
        Ok(_) => {}
    }
    let path = dir.join(MANIFEST_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::checkpoint(
                dir,
                format!("not a checkpoint (no {MANIFEST_FILE}): an interrupted save?"),
            ));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    Manifest::from_json(&text).map_err(|e| Error::checkpoint(&path, e.0))
}

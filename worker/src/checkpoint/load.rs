//! Loading a checkpoint into a tile of any shape.
//!
//! Everything is read and checked before anything is written: the model and
//! the optimiser are either fully restored or left untouched.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use candle_core::safetensors::SliceSafetensors;
use candle_core::Tensor;
use glom_protocol::config::{Config, WeightMode};
use glom_protocol::manifest::MANIFEST_FILE;

use super::{
    check_optimiser, hex_sha256, location_prefix, read_manifest, slot_prefixes, Manifest,
    ShardEntry, ADAM_M, ADAM_V, SHARED_PREFIX,
};
use crate::error::{Error, Result};
use crate::learn::Adam;
use crate::model::Glom;

fn mode_name(m: WeightMode) -> &'static str {
    match m {
        WeightMode::PerLocation => "per_location",
        WeightMode::Shared => "shared",
    }
}

/// Why tensors of the checkpoint may not fit the model: the architecture
/// keys on which the two configurations differ.
fn architecture_hint(saved: &Config, now: &Config) -> String {
    let (a, b) = (&saved.model, &now.model);
    let pairs = [
        ("model.levels", a.levels.to_string(), b.levels.to_string()),
        ("model.dim", a.dim.to_string(), b.dim.to_string()),
        ("model.hidden", a.hidden.to_string(), b.hidden.to_string()),
        ("model.patch", a.patch.to_string(), b.patch.to_string()),
        (
            "model.location_code",
            a.location_code.to_string(),
            b.location_code.to_string(),
        ),
        (
            "model.location_code_dim",
            a.location_code_dim.to_string(),
            b.location_code_dim.to_string(),
        ),
        (
            "data.source",
            format!("{:?}", saved.data.source),
            format!("{:?}", now.data.source),
        ),
    ];
    let diffs: Vec<String> = pairs
        .iter()
        .filter(|(_, x, y)| x != y)
        .map(|(k, x, y)| format!("{k} ({x} in the checkpoint, {y} in the config)"))
        .collect();
    if diffs.is_empty() {
        "the checkpoint was made with a different model architecture".into()
    } else {
        format!(
            "the checkpoint was made with a different {}",
            diffs.join(", ")
        )
    }
}

/// The bytes of a shard file, checked against its manifest entry.
fn read_verified(dir: &Path, entry: &ShardEntry) -> Result<Vec<u8>> {
    let path = dir.join(&entry.file);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::checkpoint(
                &path,
                format!("{} is listed in {MANIFEST_FILE} but missing", entry.file),
            ));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    if bytes.len() as u64 != entry.bytes {
        return Err(Error::checkpoint(
            &path,
            format!(
                "checksum mismatch: {} has {} bytes, {MANIFEST_FILE} records {}: the file is damaged",
                entry.file,
                bytes.len(),
                entry.bytes
            ),
        ));
    }
    let sum = hex_sha256(&bytes);
    if sum != entry.sha256 {
        return Err(Error::checkpoint(
            &path,
            format!(
                "checksum mismatch: {} has sha256 {sum}, {MANIFEST_FILE} records {}: the file is corrupt",
                entry.file, entry.sha256
            ),
        ));
    }
    Ok(bytes)
}

/// The verified, parsed shard files a tile needs, by shard index.
struct Shards<'a> {
    dir: &'a Path,
    manifest: &'a Manifest,
    files: BTreeMap<usize, SliceSafetensors<'a>>,
    names: BTreeMap<usize, HashSet<String>>,
}

impl Shards<'_> {
    fn file(&self, shard: usize) -> &str {
        &self.manifest.shards[shard].file
    }

    /// Tensor `key` of `shard`, which must have shape `want`, on the model's
    /// device and in its dtype.
    fn tensor(&self, model: &Glom, shard: usize, key: &str, want: &[usize]) -> Result<Tensor> {
        let file = self.file(shard);
        let path = self.dir.join(file);
        if !self.names[&shard].contains(key) {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "tensor {key} missing from {file}: {}",
                    architecture_hint(&self.manifest.config, &model.cfg)
                ),
            ));
        }
        let t = self.files[&shard]
            .load(key, model.device())
            .map_err(|e| Error::checkpoint(&path, format!("cannot read tensor {key}: {e}")))?;
        if t.dims() != want {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "{key} has shape {:?} in the checkpoint but the config gives {want:?}: {}",
                    t.dims(),
                    architecture_hint(&self.manifest.config, &model.cfg)
                ),
            ));
        }
        Ok(t.to_dtype(model.dtype())?)
    }

    /// Every slot of parameter `name` (`kind` is "" or an Adam prefix),
    /// stacked into the model's `[S, rows, cols]`.
    fn gather(
        &self,
        model: &Glom,
        slots: &[(String, usize)],
        kind: &str,
        name: &str,
        want: &[usize],
    ) -> Result<Tensor> {
        let parts = slots
            .iter()
            .map(|(prefix, shard)| {
                self.tensor(model, *shard, &format!("{kind}{prefix}/{name}"), want)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&parts, 0)?)
    }

    /// Refuse a tensor under one of the tile's slot prefixes that the model
    /// has no parameter for (a checkpoint with more levels, say).
    fn check_no_extra(&self, model: &Glom, slots: &[(String, usize)]) -> Result<()> {
        let params: HashSet<&str> = model
            .params
            .entries
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        for (prefix, shard) in slots {
            for key in &self.names[shard] {
                let bare = key
                    .strip_prefix(ADAM_M)
                    .or_else(|| key.strip_prefix(ADAM_V))
                    .unwrap_or(key);
                let Some((p, name)) = bare.split_once('/') else {
                    continue;
                };
                if p == prefix && !params.contains(name) {
                    return Err(Error::checkpoint(
                        self.dir.join(self.file(*shard)),
                        format!(
                            "tensor {key} of {} has no counterpart in the model: {}",
                            self.file(*shard),
                            architecture_hint(&self.manifest.config, &model.cfg)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Load parameters (and optimiser state if `opt` is given) for `model`'s
/// tile from the checkpoint in `dir`. Every shard holding one of the tile's
/// locations is verified against its checksum before use; tensors missing,
/// of the wrong shape or without counterpart, and a different weights mode
/// or grid, are refused with a message naming the cause. On success the
/// model's variables, the optimiser's moments and its step counter hold the
/// checkpoint's values; on failure nothing has changed. Returns the manifest.
pub fn load_into(dir: &Path, model: &Glom, opt: Option<&mut Adam>) -> Result<Manifest> {
    let manifest = read_manifest(dir)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let (saved, now) = (manifest.config.model.weights, model.cfg.model.weights);
    if saved != now {
        return Err(Error::checkpoint(
            &manifest_path,
            format!(
                "the checkpoint was made with model.weights = {} but the config gives {}",
                mode_name(saved),
                mode_name(now)
            ),
        ));
    }
    let grid = [model.tile.grid.rows, model.tile.grid.cols];
    if manifest.grid != grid {
        return Err(Error::checkpoint(
            &manifest_path,
            format!(
                "the checkpoint's grid is {}x{} but the model's is {}x{}: {}",
                manifest.grid[0],
                manifest.grid[1],
                grid[0],
                grid[1],
                architecture_hint(&manifest.config, &model.cfg)
            ),
        ));
    }
    if let Some(opt) = &opt {
        check_optimiser(model, opt)?;
    }

    // The shard each slot of the tile's tensors comes from.
    let shard_of = |gid: usize| {
        manifest.shard_of(gid).ok_or_else(|| {
            Error::checkpoint(&manifest_path, format!("no shard holds location {gid}"))
        })
    };
    let slots: Vec<(String, usize)> = match now {
        WeightMode::PerLocation => model
            .tile
            .locs
            .iter()
            .map(|&g| Ok((location_prefix(g), shard_of(g)?)))
            .collect::<Result<_>>()?,
        WeightMode::Shared => {
            let first = model
                .tile
                .locs
                .first()
                .copied()
                .ok_or_else(|| Error::Shape("the model's tile has no location".into()))?;
            vec![(SHARED_PREFIX.to_string(), shard_of(first)?)]
        }
    };
    debug_assert_eq!(
        slots.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        slot_prefixes(model)
    );

    let mut bytes = BTreeMap::new();
    for &(_, s) in &slots {
        if let Entry::Vacant(e) = bytes.entry(s) {
            e.insert(read_verified(dir, &manifest.shards[s])?);
        }
    }
    let mut shards = Shards {
        dir,
        manifest: &manifest,
        files: BTreeMap::new(),
        names: BTreeMap::new(),
    };
    for (&s, b) in &bytes {
        let st = SliceSafetensors::new(b).map_err(|e| {
            Error::checkpoint(
                dir.join(shards.file(s)),
                format!("not a safetensors file: {e}"),
            )
        })?;
        shards
            .names
            .insert(s, st.tensors().into_iter().map(|(n, _)| n).collect());
        shards.files.insert(s, st);
    }
    shards.check_no_extra(model, &slots)?;

    let with_opt = opt.is_some();
    let (mut params, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for (name, var) in &model.params.entries {
        let want = &var.dims()[1..];
        params.push(shards.gather(model, &slots, "", name, want)?);
        if with_opt {
            m.push(shards.gather(model, &slots, ADAM_M, name, want)?);
            v.push(shards.gather(model, &slots, ADAM_V, name, want)?);
        }
    }

    for ((_, var), t) in model.params.entries.iter().zip(&params) {
        var.set(t)?;
    }
    if let Some(opt) = opt {
        opt.m = m;
        opt.v = v;
        opt.t = manifest.adam_t;
    }
    Ok(manifest)
}

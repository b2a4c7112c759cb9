//! The manifest of a checkpoint directory (DESIGN.md section 7).
//!
//! A checkpoint is one safetensors file per shard (a worker's tile) plus
//! this manifest, which is written last and atomically: a directory without
//! one is an interrupted save, never a checkpoint. The manifest records the
//! step, the configuration, which shard holds which global locations (so a
//! run can resume on a different number of workers) and a checksum of every
//! shard file. In a distributed run the coordinator writes it once every
//! worker has reported its shard entry; this module only defines and checks
//! it (no I/O).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Version of the checkpoint layout this build reads and writes.
pub const FORMAT: u32 = 1;

/// Name of the manifest inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Name of the parameter file of shard `index`.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index}.safetensors")
}

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid checkpoint manifest: {0}")]
pub struct ManifestError(pub String);

/// One shard file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name relative to the checkpoint directory.
    pub file: String,
    /// Global ids of the locations whose tensors the file holds.
    pub locations: Vec<usize>,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// The index of a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Training steps completed when the checkpoint was taken.
    pub step: u64,
    /// Updates the optimiser had applied (its bias-correction counter).
    pub adam_t: u64,
    pub config: Config,
    /// [`Config::hash`] of `config`, so a reader can tell whether its own
    /// configuration is the one the checkpoint was made with.
    pub config_hash: String,
    /// `[rows, cols]` of the location grid.
    pub grid: [usize; 2],
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// A manifest of the current format for `config`, with the hash and
    /// grid derived from it.
    pub fn new(step: u64, adam_t: u64, config: &Config, shards: Vec<ShardEntry>) -> Self {
        let side = config.grid_side();
        Self {
            format: FORMAT,
            step,
            adam_t,
            config: config.clone(),
            config_hash: config.hash(),
            grid: [side, side],
            shards,
        }
    }

    /// Number of locations of the grid (saturating: a manifest's grid comes
    /// from a file and [`Manifest::validate`] refuses one that does not fit).
    pub fn num_locations(&self) -> usize {
        self.grid[0].saturating_mul(self.grid[1])
    }

    /// Parse and check the bytes of a `manifest.json`: JSON, a format
    /// number this build reads (checked first, so a manifest of another
    /// format is refused as such rather than as malformed), the fields of
    /// [`Manifest`], then [`Manifest::validate`]. The checkpoint reader
    /// calls this on the file's bytes; it does no I/O.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let err = |m: String| ManifestError(m);
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("not valid JSON: {e}")))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            None => return Err(err("no format number".into())),
            Some(f) if f != u64::from(FORMAT) => {
                return Err(err(format!(
                    "format {f} is not supported (this build reads format {FORMAT})"
                )));
            }
            Some(_) => {}
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| err(format!("malformed manifest: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Index into `shards` of the shard holding location `loc`.
    pub fn shard_of(&self, loc: usize) -> Option<usize> {
        self.shards.iter().position(|s| s.locations.contains(&loc))
    }

    /// Check the manifest is complete and consistent: current format, a
    /// valid configuration matching its hash and grid, safe file names, hex
    /// checksums, and shards that hold every location of the grid exactly once.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let err = |m: String| Err(ManifestError(m));
        if self.format != FORMAT {
            return err(format!(
                "format {} is not supported (this build reads format {FORMAT})",
                self.format
            ));
        }
        if let Err(e) = self.config.validate() {
            return err(format!("its configuration is invalid: {e}"));
        }
        if self.config_hash != self.config.hash() {
            return err("config_hash does not match the recorded configuration".into());
        }
        let side = self.config.grid_side();
        if self.grid != [side, side] {
            return err(format!(
                "grid {:?} does not match the configured {side}x{side} grid",
                self.grid
            ));
        }
        if self.shards.is_empty() {
            return err("no shards".into());
        }
        // Owners by location, sized by the locations listed rather than by
        // the grid, which the file may claim to be of any size.
        let n = self.num_locations();
        let mut owner: HashMap<usize, usize> = HashMap::new();
        for (i, s) in self.shards.iter().enumerate() {
            let plain = !s.file.is_empty()
                && s.file != "."
                && s.file != ".."
                && s.file != MANIFEST_FILE
                && !s.file.contains(['/', '\\', '\0']);
            if !plain {
                return err(format!(
                    "shard {i} has file name {:?}, not a plain name inside the directory",
                    s.file
                ));
            }
            if let Some(j) = self.shards[..i].iter().position(|o| o.file == s.file) {
                return err(format!("shards {j} and {i} both name {}", s.file));
            }
            let hex = s.sha256.len() == 64
                && s.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return err(format!(
                    "{}: sha256 {:?} is not 64 lowercase hex digits",
                    s.file, s.sha256
                ));
            }
            if s.locations.is_empty() {
                return err(format!("{} holds no location", s.file));
            }
            for &loc in &s.locations {
                if loc >= n {
                    return err(format!(
                        "{} lists location {loc}, outside the {n}-location grid",
                        s.file
                    ));
                }
                if let Some(j) = owner.insert(loc, i) {
                    return err(format!(
                        "location {loc} is in both {} and {}",
                        self.shards[j].file, s.file
                    ));
                }
            }
        }
        // Every listed location is below n, so if some are missing the
        // first one is found among the first owner.len() + 1.
        if let Some(loc) = (0..n).find(|loc| !owner.contains_key(loc)) {
            return err(format!("no shard holds location {loc}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file: &str, locations: Vec<usize>) -> ShardEntry {
        ShardEntry {
            file: file.into(),
            locations,
            sha256: "ab".repeat(32),
            bytes: 10,
        }
    }

    /// The default config has an 8x8 grid: two shards of 32 locations.
    fn two_shards() -> Manifest {
        let cfg = Config::default();
        let n = cfg.grid_side() * cfg.grid_side();
        Manifest::new(
            7,
            7,
            &cfg,
            vec![
                entry(&shard_file_name(0), (0..n / 2).collect()),
                entry(&shard_file_name(1), (n / 2..n).collect()),
            ],
        )
    }

    fn reason(m: &Manifest) -> String {
        m.validate().expect_err("should be refused").0
    }

    #[test]
    fn a_complete_manifest_validates_and_survives_json() {
        let m = two_shards();
        m.validate().unwrap();
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.shard_of(0), Some(0));
        assert_eq!(m.shard_of(63), Some(1));
        assert_eq!(m.shard_of(64), None);
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut m = two_shards();
        m.format = 2;
        assert!(reason(&m).contains("format 2"));

        let mut m = two_shards();
        m.config.model.dim = 8;
        assert!(reason(&m).contains("config_hash"));

        let mut m = two_shards();
        m.shards[1].locations.pop();
        assert!(reason(&m).contains("no shard holds location 63"));

        let mut m = two_shards();
        m.shards[1].locations.push(0);
        assert!(reason(&m).contains("location 0 is in both"));

        let mut m = two_shards();
        m.shards[1].locations.push(64);
        assert!(reason(&m).contains("outside"));

        let mut m = two_shards();
        m.shards[1].file = "../shard-1.safetensors".into();
        assert!(reason(&m).contains("plain name"));

        let mut m = two_shards();
        m.shards[1].file = m.shards[0].file.clone();
        assert!(reason(&m).contains("both name"));

        let mut m = two_shards();
        m.shards[0].sha256 = "AB".repeat(32);
        assert!(reason(&m).contains("sha256"));

        let mut m = two_shards();
        m.grid = [4, 16];
        assert!(reason(&m).contains("grid"));
    }

    /// A manifest whose (valid, correctly hashed) configuration claims a
    /// grid of 2^40 or 2^64 locations: validation used to allocate one slot
    /// per location of the grid (an abort), or overflow computing their
    /// number. Now it costs what the listed locations cost.
    #[test]
    fn a_huge_claimed_grid_is_refused_without_allocating_it() {
        for image_size in [1usize << 20, 1 << 40] {
            let mut cfg = Config::default();
            cfg.data.image_size = image_size;
            cfg.model.patch = 1;
            cfg.validate().unwrap();
            let m = Manifest::new(1, 1, &cfg, vec![entry("shard-0.safetensors", vec![0, 1])]);
            assert_eq!(m.grid, [image_size, image_size]);
            assert_eq!(reason(&m), "no shard holds location 2");
        }
    }

    #[test]
    fn from_json_reads_what_is_written_and_names_what_is_wrong() {
        let m = two_shards();
        let json = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        let e = |text: &str| Manifest::from_json(text.as_bytes()).unwrap_err().0;
        assert!(e("{").starts_with("not valid JSON"));
        assert_eq!(e("{}"), "no format number");
        assert!(e(r#"{"format": 2}"#).starts_with("format 2 is not supported"));
        assert!(e(r#"{"format": 1}"#).starts_with("malformed manifest"));
    }
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use glom_protocol::config::{Config, InitMode, WeightMode};

use super::*;
use crate::data::{SceneParams, SyntheticScenes};
use crate::learn::{AdamParams, Trainer};
use crate::model::grid::{Grid, Tile};

/// A 2x2 grid of 4-pixel patches on 8-pixel scenes.
fn tiny(dim: usize) -> Config {
    let mut c = Config::default();
    c.model.levels = 2;
    c.model.dim = dim;
    c.model.hidden = 8;
    c.model.iterations = 2;
    c.model.patch = 4;
    c.data.image_size = 8;
    c.data.train_images = 4;
    c.train.batch_size = 2;
    c
}

/// A directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "glom-checkpoint-{name}-{}-{nanos}",
            std::process::id()
        ));
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model(cfg: &Config, tile: Tile) -> Glom {
    Glom::new(cfg, tile, &Device::Cpu, DType::F32).unwrap()
}

fn whole(cfg: &Config) -> Tile {
    Tile::whole(Grid::square(cfg.grid_side()))
}

fn fresh_adam(m: &Glom) -> Adam {
    let t = &m.cfg.train;
    Adam::new(
        m.params.vars(),
        AdamParams::new(t.learning_rate, t.weight_decay),
    )
    .unwrap()
}

/// A whole-grid trainer after `steps` training steps.
fn trained(cfg: &Config, steps: usize) -> Trainer {
    let data = SyntheticScenes::new(
        SceneParams {
            size: cfg.data.image_size,
            num_images: cfg.data.train_images,
            ..Default::default()
        },
        1,
    );
    let mut tr = Trainer::new(model(cfg, whole(cfg)), Arc::new(data)).unwrap();
    for _ in 0..steps {
        tr.train_step().unwrap();
    }
    tr
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

fn param_bits(m: &Glom) -> Vec<Vec<u32>> {
    m.params
        .entries
        .iter()
        .map(|(_, v)| bits(v.as_tensor()))
        .collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn err_text(r: Result<Manifest>) -> String {
    r.expect_err("the load should be refused").to_string()
}

#[test]
fn round_trip_restores_parameters_and_optimiser_bitwise() {
    let cfg = tiny(4);
    let mut tr = trained(&cfg, 2);
    let dir = Scratch::new("round-trip");
    let saved = save(&dir.0, &tr.model, &tr.opt, tr.step).unwrap();
    assert_eq!((saved.step, saved.adam_t), (2, 2));
    assert_eq!(
        listing(&dir.0),
        ["manifest.json", "shard-0.safetensors"],
        "no temporary file is left behind"
    );
    assert_eq!(read_manifest(&dir.0).unwrap(), saved);

    let fresh = model(&cfg, whole(&cfg));
    let mut opt = fresh_adam(&fresh);
    assert_ne!(
        param_bits(&fresh),
        param_bits(&tr.model),
        "training moved the weights"
    );
    let got = load_into(&dir.0, &fresh, Some(&mut opt)).unwrap();
    assert_eq!(got, saved);
    assert_eq!(param_bits(&fresh), param_bits(&tr.model));
    assert_eq!(opt.t, tr.opt.t);
    for i in 0..opt.m.len() {
        assert_eq!(bits(&opt.m[i]), bits(&tr.opt.m[i]), "adam m {i}");
        assert_eq!(bits(&opt.v[i]), bits(&tr.opt.v[i]), "adam v {i}");
    }
    assert!(opt.m.iter().any(|m| bits(m).iter().any(|&b| b != 0)));

    // Same checkpoint, same seed: the next step is the same.
    let mut resumed = trained(&cfg, 0);
    load_into(&dir.0, &resumed.model, Some(&mut resumed.opt)).unwrap();
    resumed.step = got.step;
    let a = tr.train_step().unwrap().losses;
    let b = resumed.train_step().unwrap().losses;
    assert_eq!(a.loss_total.to_bits(), b.loss_total.to_bits());
    assert_eq!(param_bits(&resumed.model), param_bits(&tr.model));
}

#[test]
fn a_checkpoint_loads_into_any_tiling() {
    let mut cfg = tiny(4);
    cfg.model.init = InitMode::Independent;
    let tr = trained(&cfg, 2);
    let grid = Grid::square(cfg.grid_side());
    assert_eq!(grid.len(), 4);
    let quarter = |r: usize, c: usize| Tile::rect(grid, r..r + 1, c..c + 1, 1);
    let slot = |t: &Tensor, s: usize| bits(&t.narrow(0, s, 1).unwrap());

    // Whole grid -> four single-location tiles.
    let dir = Scratch::new("reshard-split");
    save(&dir.0, &tr.model, &tr.opt, tr.step).unwrap();
    let mut quarters = Vec::new();
    for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let q = model(&cfg, quarter(r, c));
        let mut opt = fresh_adam(&q);
        load_into(&dir.0, &q, Some(&mut opt)).unwrap();
        let gid = q.tile.locs[0];
        for (i, ((name, var), (_, big))) in q
            .params
            .entries
            .iter()
            .zip(&tr.model.params.entries)
            .enumerate()
        {
            assert_eq!(var.dims()[0], 1);
            assert_eq!(
                bits(var.as_tensor()),
                slot(big.as_tensor(), gid),
                "{name} at {gid}"
            );
            assert_eq!(bits(&opt.m[i]), slot(&tr.opt.m[i], gid), "adam m {name}");
            assert_eq!(bits(&opt.v[i]), slot(&tr.opt.v[i], gid), "adam v {name}");
        }
        quarters.push((q, opt));
    }
    let (a, b) = (&quarters[0].0.params.entries, &quarters[3].0.params.entries);
    assert_ne!(
        bits(a[0].1.as_tensor()),
        bits(b[0].1.as_tensor()),
        "slots differ"
    );

    // Four shards (in a scrambled order) -> one whole-grid model.
    let dir2 = Scratch::new("reshard-join");
    let mut entries = Vec::new();
    for (i, (q, opt)) in quarters.iter().enumerate().rev() {
        entries.push(write_shard(&dir2.0, i, q, opt).unwrap());
    }
    let manifest = Manifest::new(tr.step, tr.opt.t, &cfg, entries);
    write_manifest(&dir2.0, &manifest).unwrap();
    let joined = model(&cfg, whole(&cfg));
    let mut opt = fresh_adam(&joined);
    load_into(&dir2.0, &joined, Some(&mut opt)).unwrap();
    assert_eq!(param_bits(&joined), param_bits(&tr.model));
    for i in 0..opt.m.len() {
        assert_eq!(bits(&opt.m[i]), bits(&tr.opt.m[i]));
    }
    assert_eq!(opt.t, tr.opt.t);
}

#[test]
fn shared_weights_load_into_a_tile_and_modes_do_not_mix() {
    let mut cfg = tiny(4);
    cfg.model.weights = WeightMode::Shared;
    let tr = trained(&cfg, 1);
    let dir = Scratch::new("shared");
    save(&dir.0, &tr.model, &tr.opt, tr.step).unwrap();
    let grid = Grid::square(cfg.grid_side());
    let q = model(&cfg, Tile::rect(grid, 1..2, 0..2, 1));
    load_into(&dir.0, &q, None).unwrap();
    assert_eq!(param_bits(&q), param_bits(&tr.model));

    let mut per_loc = cfg.clone();
    per_loc.model.weights = WeightMode::PerLocation;
    let other = model(&per_loc, whole(&per_loc));
    let before = param_bits(&other);
    let msg = err_text(load_into(&dir.0, &other, None));
    assert!(msg.contains("model.weights = shared"), "{msg}");
    assert!(msg.contains("per_location"), "{msg}");
    assert_eq!(param_bits(&other), before);
}

#[test]
fn a_different_dim_is_refused_naming_tensor_and_shapes() {
    let tr = trained(&tiny(4), 0);
    let dir = Scratch::new("shape");
    save(&dir.0, &tr.model, &tr.opt, 0).unwrap();
    let files = listing(&dir.0);

    let bigger = model(&tiny(6), whole(&tiny(6)));
    let before = param_bits(&bigger);
    let mut opt = fresh_adam(&bigger);
    let msg = err_text(load_into(&dir.0, &bigger, Some(&mut opt)));
    // front.w1 is [pixels, hidden] either way; front.w2 is [hidden, dim].
    assert!(msg.contains("loc00000/front.w2"), "{msg}");
    assert!(msg.contains("[8, 4]") && msg.contains("[8, 6]"), "{msg}");
    assert!(msg.contains("model.dim"), "{msg}");
    assert_eq!(
        param_bits(&bigger),
        before,
        "a refused load changes nothing"
    );
    assert!(opt.m.iter().all(|m| bits(m).iter().all(|&b| b == 0)));
    assert_eq!(listing(&dir.0), files, "a refused load writes nothing");

    // A checkpoint with a level more has tensors the model lacks.
    let mut deeper = tiny(4);
    deeper.model.levels = 3;
    let dir3 = Scratch::new("levels");
    let d = trained(&deeper, 0);
    save(&dir3.0, &d.model, &d.opt, 0).unwrap();
    let msg = err_text(load_into(&dir3.0, &tr.model, None));
    assert!(
        msg.contains("no counterpart") && msg.contains("model.levels"),
        "{msg}"
    );
    // And the other way round, one missing.
    let msg = err_text(load_into(&dir.0, &d.model, None));
    assert!(msg.contains("missing from shard-0.safetensors"), "{msg}");
}

#[test]
fn a_corrupt_shard_is_refused_naming_the_file() {
    let tr = trained(&tiny(4), 1);
    let dir = Scratch::new("corrupt");
    save(&dir.0, &tr.model, &tr.opt, 1).unwrap();
    let shard = dir.0.join("shard-0.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let files = listing(&dir.0);

    let fresh = model(&tiny(4), whole(&tiny(4)));
    let before = param_bits(&fresh);
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(
        msg.contains("shard-0.safetensors") && msg.contains("checksum"),
        "{msg}"
    );
    assert_eq!(param_bits(&fresh), before);

    bytes.truncate(mid);
    std::fs::write(&shard, &bytes).unwrap();
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(
        msg.contains("shard-0.safetensors") && msg.contains("checksum"),
        "{msg}"
    );

    std::fs::remove_file(&shard).unwrap();
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(
        msg.contains("shard-0.safetensors") && msg.contains("missing"),
        "{msg}"
    );
    let mut left = files.clone();
    left.retain(|f| f != "shard-0.safetensors");
    assert_eq!(listing(&dir.0), left, "a refused load writes nothing");
}

#[test]
fn a_directory_without_a_valid_manifest_is_not_a_checkpoint() {
    let tr = trained(&tiny(4), 0);
    let fresh = model(&tiny(4), whole(&tiny(4)));

    let absent = Scratch::new("absent");
    let msg = err_text(load_into(&absent.0, &fresh, None));
    assert!(msg.contains("no such directory"), "{msg}");
    assert!(!absent.0.exists(), "a refused load creates nothing");

    let dir = Scratch::new("no-manifest");
    save(&dir.0, &tr.model, &tr.opt, 0).unwrap();
    let manifest = dir.0.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::remove_file(&manifest).unwrap();
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(
        msg.contains("no manifest.json") && msg.contains("interrupted save"),
        "{msg}"
    );
    assert_eq!(listing(&dir.0), ["shard-0.safetensors"]);

    std::fs::write(&manifest, "{ not json").unwrap();
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(
        msg.contains("manifest.json") && msg.contains("JSON"),
        "{msg}"
    );

    std::fs::write(&manifest, text.replace("\"format\": 1", "\"format\": 9")).unwrap();
    let msg = err_text(load_into(&dir.0, &fresh, None));
    assert!(msg.contains("format 9 is not supported"), "{msg}");

    // A second save over the first replaces it whole.
    std::fs::write(&manifest, &text).unwrap();
    let again = save(&dir.0, &tr.model, &tr.opt, 5).unwrap();
    assert_eq!(read_manifest(&dir.0).unwrap().step, 5);
    assert_eq!(again.step, 5);
}

#[test]
fn a_tile_cannot_save_alone_and_a_manifest_needs_its_shards() {
    let cfg = tiny(4);
    let grid = Grid::square(cfg.grid_side());
    let q = model(&cfg, Tile::rect(grid, 0..1, 0..2, 1));
    let opt = fresh_adam(&q);
    let dir = Scratch::new("partial");
    let msg = save(&dir.0, &q, &opt, 0).unwrap_err().to_string();
    assert!(msg.contains("write_shard"), "{msg}");

    let entry = write_shard(&dir.0, 0, &q, &opt).unwrap();
    assert_eq!(entry.locations, [0, 1]);
    let half = Manifest::new(0, 0, &cfg, vec![entry.clone()]);
    let msg = write_manifest(&dir.0, &half).unwrap_err().to_string();
    assert!(msg.contains("no shard holds location 2"), "{msg}");
    let mut ghost = entry;
    ghost.file = "shard-1.safetensors".into();
    ghost.locations = vec![2, 3];
    let m = Manifest::new(
        0,
        0,
        &cfg,
        vec![write_shard(&dir.0, 0, &q, &opt).unwrap(), ghost],
    );
    assert!(
        write_manifest(&dir.0, &m).is_err(),
        "shard-1 was never written"
    );
    assert!(!dir.0.join("manifest.json").exists());
}

#[test]
fn a_model_with_non_finite_weights_is_never_checkpointed() {
    let cfg = tiny(4);
    let tr = trained(&cfg, 1);
    let (name, var) = &tr.model.params.entries[1];
    let mut values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    values[3] = f32::INFINITY;
    var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
    let dir = Scratch::new("non-finite");
    let err = save(&dir.0, &tr.model, &tr.opt, tr.step)
        .expect_err("a diverged model must not be saved")
        .to_string();
    assert!(
        err.contains("non-finite") && err.contains(name.as_str()),
        "{err}"
    );
    assert!(
        !dir.0.join(MANIFEST_FILE).exists() && !dir.0.join(shard_file_name(0)).exists(),
        "nothing was written: {:?}",
        dir.0.read_dir().map(|d| d.count()).unwrap_or(0)
    );
}

#[test]
fn a_manifest_removes_the_shards_it_does_not_name() {
    // A rolled-back attempt with more workers left shard-1 behind; the
    // restarted cluster's checkpoint there has only shard 0.
    let cfg = tiny(4);
    let q = model(&cfg, whole(&cfg));
    let opt = fresh_adam(&q);
    let dir = Scratch::new("stray");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join(shard_file_name(1)), b"old attempt").unwrap();
    std::fs::write(dir.0.join("notes.txt"), b"kept").unwrap();
    save(&dir.0, &q, &opt, 3).unwrap();
    assert!(!dir.0.join(shard_file_name(1)).exists());
    assert!(dir.0.join(shard_file_name(0)).exists());
    assert!(dir.0.join("notes.txt").exists(), "only shard files go");
    assert_eq!(read_manifest(&dir.0).unwrap().step, 3);
}

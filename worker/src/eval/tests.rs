//! Tests of the evaluation: per-image scoring on hand-built embedding
//! fields, and the whole evaluation on a tiny model.

use candle_core::{DType, Device};
use glom_protocol::config::Config;

use super::*;
use crate::data::{ImageShape, SceneParams, SyntheticScenes};
use crate::model::grid::{Grid, Tile};

/// One row per location: `kinds[i]` picks a one-hot direction in `dim` 4.
fn field(kinds: &[usize]) -> Vec<f32> {
    kinds
        .iter()
        .flat_map(|&k| (0..4).map(move |j| if j == k { 1.0 } else { 0.0 }))
        .collect()
}

#[test]
fn two_islands_matching_two_objects_score_one() {
    // 4x4 grid: left half object 1, right half object 2; the parts are the
    // objects. The field holds two islands of identical vectors that match.
    let object: Vec<u16> = (0..16).map(|i| if i % 4 < 2 { 1 } else { 2 }).collect();
    let kinds: Vec<usize> = object.iter().map(|&o| usize::from(o) - 1).collect();
    let s = score_image(&field(&kinds), 4, &object, &object, 0.3);
    assert_eq!(s.islands, 2);
    let ones = AriSet {
        part: 1.0,
        object: 1.0,
        part_k: 1.0,
        object_k: 1.0,
    };
    assert_eq!(s.all, ones);
    assert_eq!(s.fg, Some(ones), "no background: foreground is everything");
}

#[test]
fn k_clusters_recover_an_object_that_threshold_islands_split() {
    // Left half background; the right half is one object of two parts
    // (top and bottom), each its own island. Centred, the two part
    // directions are closer to each other than to the background, so two
    // clusters give background vs object.
    let object: Vec<u16> = (0..16).map(|i| u16::from(i % 4 >= 2)).collect();
    let part: Vec<u16> = (0..16)
        .map(|i| match (i % 4 >= 2, i / 4 < 2) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        })
        .collect();
    let kinds: Vec<usize> = part.iter().map(|&p| usize::from(p)).collect();
    let s = score_image(&field(&kinds), 4, &part, &object, 0.3);
    assert_eq!(s.islands, 3);
    assert_eq!(s.all.part, 1.0);
    assert!(
        s.all.object < 0.9,
        "threshold islands split the object: {:?}",
        s.all
    );
    assert_eq!(s.all.part_k, 1.0);
    assert_eq!(s.all.object_k, 1.0);
    let fg = s.fg.expect("8 foreground locations");
    // On the object alone the truth is one segment: two islands score 0.
    assert_eq!(
        (fg.part, fg.object, fg.part_k, fg.object_k),
        (1.0, 0.0, 1.0, 1.0)
    );
}

#[test]
fn foreground_scores_need_two_foreground_locations() {
    let object: Vec<u16> = (0..16).map(|i| u16::from(i == 5)).collect();
    let kinds: Vec<usize> = object.iter().map(|&o| usize::from(o)).collect();
    let s = score_image(&field(&kinds), 4, &object, &object, 0.3);
    assert_eq!(s.fg, None);
    assert_eq!(s.all.object_k, 1.0);
}

fn tiny() -> Config {
    let mut c = Config::default();
    c.model.levels = 2;
    c.model.dim = 8;
    c.model.hidden = 16;
    c.model.iterations = 2;
    c.eval.images = 8;
    c.eval.probe_images = 16;
    c.data.image_size = 16;
    c.model.patch = 4;
    c
}

fn model(cfg: &Config) -> Glom {
    let tile = Tile::whole(Grid::square(cfg.grid_side()));
    Glom::new(cfg, tile, &Device::Cpu, DType::F32).unwrap()
}

fn scenes(cfg: &Config, n: usize, seed: u64) -> SyntheticScenes {
    let params = SceneParams {
        size: cfg.data.image_size,
        num_images: n,
        ..SceneParams::default()
    };
    SyntheticScenes::new(params, seed)
}

/// Scenes without maps or labels, like an unlabelled image collection.
struct Bare(SyntheticScenes);

impl Dataset for Bare {
    fn shape(&self) -> ImageShape {
        self.0.shape()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> Image {
        Image {
            part_map: None,
            object_map: None,
            label: None,
            ..self.0.get(index)
        }
    }
    fn num_classes(&self) -> Option<usize> {
        None
    }
}

fn in_range(x: Option<f64>, lo: f64, hi: f64, what: &str) {
    let x = x.unwrap_or_else(|| panic!("{what} missing"));
    assert!(x.is_finite() && (lo..=hi).contains(&x), "{what} = {x}");
}

fn check_report(r: &EvalReport, levels: usize) {
    assert!(
        r.recon_psnr_db.is_finite() && r.recon_psnr_db > 0.0,
        "psnr {}",
        r.recon_psnr_db
    );
    for (v, what) in [
        (r.island_ari_part, "part"),
        (r.island_ari_object, "object"),
        (r.island_ari_part_k, "part_k"),
        (r.island_ari_object_k, "object_k"),
        (r.fg_ari_part_k, "fg_part_k"),
        (r.fg_ari_object_k, "fg_object_k"),
    ] {
        in_range(v, -1.0, 1.0, what);
    }
    assert_eq!(r.island_ari_by_level.len(), levels);
    for (l, a) in r.island_ari_by_level.iter().enumerate() {
        assert_eq!(a.level, l);
        for v in [
            a.part.unwrap(),
            a.object,
            a.part_k.unwrap(),
            a.object_k,
            a.fg_part.unwrap(),
            a.fg_object,
            a.fg_part_k.unwrap(),
            a.fg_object_k,
            a.pixel_fg_object.unwrap(),
            a.pixel_fg_object_k.unwrap(),
        ] {
            assert!((-1.0..=1.0).contains(&v), "level {l}: {a:?}");
        }
        assert!(a.islands_per_image >= 1.0);
    }
    let best = r.best_level_object.unwrap();
    assert_eq!(
        r.island_ari_by_level[best].object_k,
        r.island_ari_object_k.unwrap()
    );
    assert!(r.best_level_part.unwrap() < levels);
    in_range(r.probe_accuracy, 0.0, 1.0, "probe accuracy");
    assert_eq!(r.islands_per_image_by_level.len(), levels);
}

#[test]
fn evaluation_with_baseline_on_a_tiny_model() {
    let cfg = tiny();
    let m = model(&cfg);
    let (held, train) = (scenes(&cfg, 16, 7), scenes(&cfg, 64, 8));
    let mut calls = Vec::new();
    let e = evaluate_with_baseline(&m, &held, &train, &mut |phase, done, total| {
        assert!(done <= total);
        calls.push(phase.to_string());
    })
    .unwrap();
    check_report(&e.trained, 2);
    check_report(&e.baseline.random_init, 2);
    in_range(
        e.baseline.probe_accuracy_raw_pixels,
        0.0,
        1.0,
        "raw-pixel probe",
    );
    // An untrained model is its own random initialisation.
    assert_eq!(e.trained, e.baseline.random_init);
    assert!(calls.iter().any(|p| p.starts_with("trained: ")));
    assert!(calls.iter().any(|p| p.starts_with("random init: ")));

    let json = serde_json::to_value(&e).unwrap();
    for key in [
        "recon_psnr_db",
        "island_ari_part",
        "island_ari_object",
        "island_ari_part_k",
        "island_ari_object_k",
        "fg_ari_object_k",
        "island_ari_by_level",
        "probe_accuracy",
        "baseline",
    ] {
        assert!(json.get(key).is_some(), "missing key {key}");
    }
    assert!(json["baseline"]["probe_accuracy_raw_pixels"].is_number());
    assert!(json["baseline"]["recon_psnr_db"].is_number());
    let back: Evaluation = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);
}

#[test]
fn data_without_maps_or_labels_gives_no_ari_and_no_probe() {
    let cfg = tiny();
    let m = model(&cfg);
    let (held, train) = (Bare(scenes(&cfg, 16, 7)), Bare(scenes(&cfg, 16, 8)));
    let r = evaluate(&m, &held, &train, &mut |_, _, _| {}).unwrap();
    assert!(r.recon_psnr_db.is_finite());
    assert_eq!(r.island_ari_part, None);
    assert_eq!(r.island_ari_object, None);
    assert_eq!(r.island_ari_part_k, None);
    assert_eq!(r.island_ari_object_k, None);
    assert_eq!(r.fg_ari_object_k, None);
    assert_eq!(r.best_level_object, None);
    assert!(r.island_ari_by_level.is_empty());
    assert_eq!(r.probe_accuracy, None);
    assert_eq!(r.islands_per_image_by_level.len(), 2);
    assert!(r.islands_per_image_by_level.iter().all(|&n| n >= 1.0));
    assert_eq!(raw_pixel_probe(&cfg, &held, &train), None);
}

#[test]
fn evaluation_is_deterministic() {
    let cfg = tiny();
    let m = model(&cfg);
    let (held, train) = (scenes(&cfg, 16, 3), scenes(&cfg, 16, 4));
    let a = evaluate(&m, &held, &train, &mut |_, _, _| {}).unwrap();
    let b = evaluate(&m, &held, &train, &mut |_, _, _| {}).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_tile_smaller_than_the_grid_is_refused() {
    let cfg = tiny();
    let grid = Grid::square(cfg.grid_side());
    let m = Glom::new(
        &cfg,
        Tile::rect(grid, 0..2, 0..4, 2),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let held = scenes(&cfg, 8, 1);
    let err = evaluate(&m, &held, &held, &mut |_, _, _| {}).unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
}

#[test]
fn threshold_islands_are_not_centred_so_a_shared_vector_is_one_island() {
    // Every location carries the same large direction plus a small private
    // one: centring would make 16 islands of the private parts, but the
    // vectors as they are all agree within the threshold.
    let rows: Vec<f32> = (0..16)
        .flat_map(|i| {
            let mut v = vec![10.0, 0.0, 0.0, 0.0];
            v[1 + i % 3] = 1.0;
            v
        })
        .collect();
    assert_eq!(threshold_islands(&rows, 4, 0.3), vec![0; 16]);
    let object: Vec<u16> = (0..16).map(|i| u16::from(i % 4 >= 2)).collect();
    let s = score_image(&rows, 4, &object, &object, 0.3);
    assert_eq!((s.islands, s.all.object), (1, 0.0));
}

#[test]
fn the_inpainting_baseline_averages_the_visible_neighbours() {
    // 2x2 grid, one image, 1-pixel patches of values 1, 2, 3, 4; location 0
    // hidden: its neighbours 1, 2, 3 are all visible, mean 3.
    let t = |v: Vec<f32>, shape: (usize, usize, usize)| {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let batch = Batch {
        input: t(vec![0.0, 2.0, 3.0, 4.0], (4, 1, 1)),
        target: t(vec![1.0, 2.0, 3.0, 4.0], (4, 1, 1)),
        hidden: t(vec![1.0, 0.0, 0.0, 0.0], (4, 1, 1)),
        earlier: Vec::new(),
    };
    let got: Vec<f32> = inpaint_neighbour_mean(&batch, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, vec![3.0, 2.0, 3.0, 4.0]);
    // Every patch hidden: nothing to average, the hidden zeros stay.
    let none = Batch {
        input: t(vec![0.0; 4], (4, 1, 1)),
        hidden: t(vec![1.0; 4], (4, 1, 1)),
        ..batch
    };
    let got: Vec<f32> = inpaint_neighbour_mean(&none, 2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, vec![0.0; 4]);
    assert!(
        inpaint_neighbour_mean(&none, 3).is_err(),
        "grid of 9, batch of 4"
    );
}

#[test]
fn tetrominoes_are_scored_on_objects_and_pixels_without_parts() {
    use crate::data::Tetrominoes;
    use glom_protocol::config::DataSource;
    let mut cfg = tiny();
    cfg.data.source = DataSource::Tetrominoes;
    let m = model(&cfg);
    let (held, train) = (Tetrominoes::new(4, 8, 2), Tetrominoes::new(4, 8, 1));
    let e = evaluate_with_baseline(&m, &held, &train, &mut |_, _, _| {}).unwrap();
    let r = &e.trained;
    assert_eq!(
        (r.island_ari_part, r.island_ari_part_k, r.fg_ari_part_k),
        (None, None, None)
    );
    assert_eq!(r.best_level_part, None);
    in_range(r.island_ari_object_k, -1.0, 1.0, "object_k");
    in_range(r.pixel_fg_ari_object, -1.0, 1.0, "pixel fg");
    in_range(r.pixel_fg_ari_object_k, -1.0, 1.0, "pixel fg k");
    assert!(r.island_ari_by_level.iter().all(|a| a.part.is_none()));
    // Blocks are patches: the grid costs nothing.
    assert_eq!(e.pixel_fg_ari_ceiling, Some(1.0));
    let k = e.baseline.kmeans_colour.as_ref().expect("object maps");
    in_range(k.pixel_fg_ari_object_k, -1.0, 1.0, "k-means pixel fg");
    in_range(k.fg_ari_object_k, -1.0, 1.0, "k-means fg");
    let json = serde_json::to_value(&e).unwrap();
    assert!(json["island_ari_part"].is_null());
    assert!(json["pixel_fg_ari_object_k"].is_number());
    assert!(json["baseline"]["pixel_fg_ari_object_k"].is_number());
    assert!(json["baseline"]["kmeans_colour"]["pixel_fg_ari_object_k"].is_number());
    assert_eq!(serde_json::from_value::<Evaluation>(json).unwrap(), e);
}

#[test]
fn sprites_ceiling_is_below_one_on_a_patch_grid() {
    use crate::data::Sprites;
    use glom_protocol::config::DataSource;
    let mut cfg = tiny();
    cfg.data.source = DataSource::Sprites;
    cfg.data.image_size = 32;
    cfg.model.levels = 1;
    let m = model(&cfg);
    let held = Sprites::new(32, 8, 2);
    let e = evaluate_with_baseline(&m, &held, &held, &mut |_, _, _| {}).unwrap();
    let ceiling = e.pixel_fg_ari_ceiling.unwrap();
    assert!(ceiling > 0.5 && ceiling < 1.0, "ceiling {ceiling}");
    in_range(e.trained.pixel_fg_ari_object_k, -1.0, 1.0, "pixel fg k");
}

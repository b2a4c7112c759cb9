//! Tests of the sleep job: the hinge, the replay buffer, locality (no halo,
//! only bottom-up nets in the negative phase) and its effect on a collapsed
//! model.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use glom_protocol::config::{Config, WeightMode};

use super::*;
use crate::data::{Dataset, SceneParams, SyntheticScenes};
use crate::error::Result;
use crate::learn::{make_batch, Trainer};
use crate::model::grid::{Grid, Tile};
use crate::model::{Glom, Mode, NoHalo};
use crate::rng::Rng;

fn small_cfg() -> Config {
    let mut cfg = Config::default();
    cfg.model.levels = 3;
    cfg.model.dim = 6;
    cfg.model.hidden = 8;
    cfg.model.patch = 4;
    cfg.model.iterations = 3;
    cfg.model.neighbours = 4;
    cfg.data.image_size = 16;
    cfg.train.batch_size = 3;
    cfg
}

fn scenes(cfg: &Config) -> SyntheticScenes {
    SyntheticScenes::new(
        SceneParams {
            size: cfg.data.image_size,
            ..Default::default()
        },
        5,
    )
}

/// Settled levels of the whole grid for `count` images, `[P, count, d]`.
fn settled_levels(model: &Glom, count: usize) -> Result<Vec<Tensor>> {
    let data = scenes(&model.cfg);
    let images: Vec<_> = (0..count).map(|i| data.get(i)).collect();
    let batch = make_batch(
        &model.cfg,
        &images,
        &model.tile.locs,
        1,
        0.0,
        &Device::Cpu,
        DType::F32,
    )?;
    Ok(model
        .settle(&batch.input, 1, Mode::Inference, &mut NoHalo, false)?
        .levels)
}

fn snapshot(model: &Glom) -> Vec<(String, Vec<f32>)> {
    model
        .params
        .entries
        .iter()
        .map(|(n, v)| {
            let x = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            (n.clone(), x)
        })
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// pred (1,0) against (-1,0.2) has cosine -0.98 < margin 0.2: zero loss and
/// zero gradient. pred (1,0) against (1,1) has cosine 1/sqrt 2 = 0.70711:
/// loss 0.50711, and a gradient.
#[test]
fn hinge_is_zero_beyond_the_margin_and_positive_above() -> Result<()> {
    let dev = Device::Cpu;
    let apart = Var::new(&[[1.0f64, 0.0]], &dev)?;
    let close = Var::new(&[[1.0f64, 0.0]], &dev)?;
    let neg_apart = Tensor::new(&[[-1.0f64, 0.2]], &dev)?;
    let neg_close = Tensor::new(&[[1.0f64, 1.0]], &dev)?;
    let h_apart = hinge(apart.as_tensor(), &neg_apart, 0.2)?;
    let h_close = hinge(close.as_tensor(), &neg_close, 0.2)?;
    let va: Vec<f64> = h_apart.to_vec1()?;
    let vc: Vec<f64> = h_close.to_vec1()?;
    assert_eq!(va, vec![0.0]);
    let want = 1.0 / 2f64.sqrt() - 0.2;
    assert!((vc[0] - want).abs() < 1e-5, "{vc:?} vs {want}");
    let grads = (h_apart + h_close)?.sum_all()?.backward()?;
    let g_apart: Vec<f64> = grads
        .get(apart.as_tensor())
        .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
        .unwrap_or_else(|| vec![0.0, 0.0]);
    assert!(g_apart.iter().all(|&g| g == 0.0), "{g_apart:?}");
    let g_close: Vec<f64> = grads
        .get(close.as_tensor())
        .expect("gradient")
        .flatten_all()?
        .to_vec1()?;
    assert!(g_close.iter().any(|&g| g.abs() > 1e-3), "{g_close:?}");
    Ok(())
}

/// One location, one level, d = 1: item i holds the value i.
fn push_values(buf: &mut ReplayBuffer, values: &[f32]) -> Result<()> {
    let t = Tensor::from_vec(values.to_vec(), (1, values.len(), 1), &Device::Cpu)?;
    buf.push(&[t])
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn replay_is_bounded_and_fifo() -> Result<()> {
    let mut buf = ReplayBuffer::new(3);
    assert!(buf.is_empty());
    push_values(&mut buf, &[0.0, 1.0])?;
    assert_eq!(buf.len(), 2);
    push_values(&mut buf, &[2.0, 3.0, 4.0])?;
    assert_eq!(buf.len(), 3);
    assert_eq!(values(&buf.gather(0, &[0, 1, 2])?), vec![2.0, 3.0, 4.0]);
    push_values(&mut buf, &[5.0])?;
    assert_eq!(values(&buf.gather(0, &[0, 1, 2])?), vec![3.0, 4.0, 5.0]);
    // A state of another shape is refused.
    let wrong = Tensor::zeros((2, 1, 1), DType::F32, &Device::Cpu)?;
    assert!(buf.push(&[wrong]).is_err());
    assert!(ReplayBuffer::new(2)
        .sample_top(1, &mut Rng::new(0))
        .is_err());
    Ok(())
}

#[test]
fn replay_sampling_is_deterministic() -> Result<()> {
    let mut buf = ReplayBuffer::new(16);
    push_values(&mut buf, &(0..16).map(|i| i as f32).collect::<Vec<_>>())?;
    let a = values(&buf.sample_top(8, &mut Rng::new(7))?);
    let b = values(&buf.sample_top(8, &mut Rng::new(7))?);
    let c = values(&buf.sample_level(0, 8, &mut Rng::new(8))?);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(buf.sample_top(8, &mut Rng::new(7))?.dims(), &[1, 8, 1]);
    Ok(())
}

fn replay_of(levels: &[Tensor]) -> Result<ReplayBuffer> {
    let mut buf = ReplayBuffer::new(32);
    buf.push(levels)?;
    Ok(buf)
}

/// A negative-only sleep moves the bottom-up nets and nothing else.
#[test]
fn negative_phase_changes_only_bottom_up_nets() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let replay = replay_of(&settled_levels(&model, 6)?)?;
    let before = snapshot(&model);
    let params = SleepParams {
        steps: 3,
        positive_steps: 0,
        batch: 4,
        margin: -1.0, // every pair is above it: every step pushes.
        ..Default::default()
    };
    let report = run_sleep(&model, &replay, &params, 3)?;
    assert_eq!(report.steps, 3);
    assert!(report.negative_loss_first > 0.0);
    let after = snapshot(&model);
    let mut moved = 0;
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name.starts_with("bu.") {
            moved += usize::from(a != b);
        } else {
            assert!(a == b, "{name} changed in the negative phase");
        }
    }
    assert!(moved > 0, "no bottom-up parameter moved");
    Ok(())
}

/// The job on a quarter tile with a halo reads nothing outside the tile
/// (it takes no halo exchange at all) and gives every location the same
/// update as the job on the whole grid.
#[test]
fn sleep_needs_no_halo() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let whole = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let reach = whole
        .neighbour_specs()
        .iter()
        .map(|s| s.reach())
        .max()
        .unwrap();
    let half = grid.rows / 2;
    let tile = Tile::rect(grid, 0..half, half..grid.cols, reach);
    assert!(!tile.halo.is_empty());
    let part = Glom::new(&cfg, tile.clone(), &Device::Cpu, DType::F32)?;
    let levels = settled_levels(&whole, 6)?;
    let idx = Tensor::new(
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let own = levels
        .iter()
        .map(|t| t.index_select(&idx, 0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let params = SleepParams {
        steps: 4,
        negative_steps: 2,
        positive_steps: 1,
        batch: 4,
        margin: -1.0,
        ..Default::default()
    };
    run_sleep(&whole, &replay_of(&levels)?, &params, 5)?;
    run_sleep(&part, &replay_of(&own)?, &params, 5)?;
    for (name, var) in &part.params.entries {
        let w = whole.params.get(name).unwrap().as_tensor();
        let w = if cfg.model.weights == WeightMode::PerLocation {
            w.index_select(&idx, 0)?
        } else {
            w.clone()
        };
        let diff = max_abs_diff(var.as_tensor(), &w);
        assert!(diff < 1e-5, "{name}: tile and grid differ by {diff}");
    }
    Ok(())
}

/// Shared weights with a location code: a tile's dream is the whole grid's
/// dream at the tile's locations.
#[test]
fn dream_with_a_location_code_is_per_location() -> Result<()> {
    let mut cfg = small_cfg();
    cfg.model.weights = WeightMode::Shared;
    cfg.model.location_code = true;
    let grid = Grid::square(cfg.grid_side());
    let whole = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let tile = Tile::rect(grid, 1..3, 0..2, 2);
    let part = Glom::new(&cfg, tile.clone(), &Device::Cpu, DType::F32)?;
    let levels = settled_levels(&whole, 2)?;
    let idx = Tensor::new(
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let top = &levels[cfg.model.levels - 1];
    let a = dream(&whole, top)?;
    let b = dream(&part, &top.index_select(&idx, 0)?)?;
    assert_eq!(a.len(), cfg.model.levels);
    for l in 0..cfg.model.levels {
        let want = a[l].index_select(&idx, 0)?;
        assert!(max_abs_diff(&b[l], &want) < 1e-5, "level {l}");
    }
    // The code matters: two locations dreaming from the same top differ.
    let same = top
        .narrow(0, 0, 1)?
        .broadcast_as(top.shape())?
        .contiguous()?;
    let d = dream(&whole, &same)?;
    assert!(max_abs_diff(&d[0].narrow(0, 0, 1)?, &d[0].narrow(0, 1, 1)?) > 1e-4);
    Ok(())
}

/// After a few steps of positive-only local training, a sleep job lowers
/// the negative loss measured on a fixed draw.
#[test]
fn sleep_reduces_the_negative_loss_of_a_collapsed_model() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let data: Arc<dyn Dataset> = Arc::new(scenes(&cfg));
    let mut trainer = Trainer::new(model, data)?;
    let mut replay = ReplayBuffer::new(64);
    for _ in 0..20 {
        let out = trainer.train_step()?;
        replay.push(&out.levels)?;
    }
    let model = &trainer.model;
    let params = SleepParams {
        steps: 40,
        negative_steps: 10,
        positive_steps: 5,
        batch: 8,
        learning_rate: 1e-2,
        ..Default::default()
    };
    let before = evaluate_negative(model, &replay, &params, 11)?;
    let report = run_sleep(model, &replay, &params, 1)?;
    let after = evaluate_negative(model, &replay, &params, 11)?;
    assert_eq!(report.steps, 40);
    assert!(before > 0.0, "nothing to separate: {before}");
    assert!(
        after < 0.7 * before,
        "negative loss {before} -> {after} ({report:?})"
    );
    Ok(())
}

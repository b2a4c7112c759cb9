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

/// A tile's model beside the whole grid's: the grid's settled levels for
/// `count` images, the tile's locations as an index, and those levels at
/// the tile's locations (what the tile's replay buffer would hold).
struct TileCase {
    whole: Glom,
    part: Glom,
    levels: Vec<Tensor>,
    idx: Tensor,
    own: Vec<Tensor>,
}

fn tile_case(cfg: &Config, tile: &Tile, count: usize) -> Result<TileCase> {
    let whole = Glom::new(cfg, Tile::whole(tile.grid), &Device::Cpu, DType::F32)?;
    let part = Glom::new(cfg, tile.clone(), &Device::Cpu, DType::F32)?;
    let levels = settled_levels(&whole, count)?;
    let idx = Tensor::new(
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let own = levels
        .iter()
        .map(|t| t.index_select(&idx, 0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(TileCase {
        whole,
        part,
        levels,
        idx,
        own,
    })
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

/// Two sequences of 4 frames, one location, one level, d = 1: frame f of
/// sequence q holds 10 q + f.
fn push_sequences(buf: &mut ReplayBuffer) -> Result<()> {
    let frames: Vec<Vec<Tensor>> = (0..4)
        .map(|f| {
            let v = vec![f as f32, 10.0 + f as f32];
            Ok(vec![Tensor::from_vec(v, (1, 2, 1), &Device::Cpu)?])
        })
        .collect::<Result<_>>()?;
    buf.push_frames(&frames)
}

#[test]
fn a_sequence_is_stored_frame_by_frame_and_knows_its_nearby_frames() -> Result<()> {
    let mut buf = ReplayBuffer::new(16);
    push_sequences(&mut buf)?;
    assert_eq!(buf.len(), 8);
    let all: Vec<usize> = (0..8).collect();
    assert_eq!(
        values(&buf.gather(0, &all)?),
        vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
    );
    // Item 1 is frame 1 of sequence 0: frame 3 is 2 away; nothing is 3 away.
    assert_eq!(buf.nearby(1, [2, 2]), vec![3]);
    assert_eq!(buf.nearby(1, [1, 3]), vec![0, 2, 3]);
    assert!(buf.nearby(1, [3, 3]).is_empty());
    assert_eq!(buf.other_sequences(1), vec![4, 5, 6, 7]);
    // The sleep job's candidates: from frames 2 away in the own sequence,
    // or, where there is none, from the other sequence only.
    let mut rng = Rng::new(3);
    let near = job::candidates(&buf, &[1, 6], [2, 2], &mut rng);
    assert_eq!(&near[..NEGATIVE_CANDIDATES], &[3; NEGATIVE_CANDIDATES]);
    assert!(near[NEGATIVE_CANDIDATES..].iter().all(|&c| c == 4));
    let off = job::candidates(&buf, &[1], [0, 0], &mut rng);
    assert!(off.iter().all(|&c| c >= 4), "{off:?}");
    // Eviction keeps every item's origin: after two more still images,
    // the buffer's oldest two frames are gone and the rest still match.
    let mut small = ReplayBuffer::new(6);
    push_sequences(&mut small)?;
    assert_eq!(values(&small.gather(0, &[0])?), vec![2.0]);
    assert_eq!(small.nearby(0, [1, 1]), vec![1]);
    assert_eq!(small.other_sequences(0), vec![2, 3, 4, 5]);
    push_values(&mut small, &[20.0, 21.0])?;
    assert_eq!(small.other_sequences(4), vec![0, 1, 2, 3, 5]);
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
    let reach = crate::model::neighbour_specs(&cfg)
        .iter()
        .map(|s| s.reach())
        .max()
        .unwrap();
    let half = grid.rows / 2;
    let tile = Tile::rect(grid, 0..half, half..grid.cols, reach);
    assert!(!tile.halo.is_empty());
    let TileCase {
        whole,
        part,
        levels,
        idx,
        own,
    } = tile_case(&cfg, &tile, 6)?;
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
    let tile = Tile::rect(grid, 1..3, 0..2, 2);
    let TileCase {
        whole,
        part,
        levels,
        idx,
        ..
    } = tile_case(&cfg, &tile, 2)?;
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

/// The small model after 20 steps of positive-only local training on the
/// whole grid (collapsing), and a replay buffer of the settled states of
/// those steps.
fn trained_with_replay() -> Result<(Trainer, ReplayBuffer)> {
    let mut cfg = small_cfg();
    (cfg.train.variance_weight, cfg.train.covariance_weight) = (0.0, 0.0);
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let data: Arc<dyn Dataset> = Arc::new(scenes(&cfg));
    let mut trainer = Trainer::new(model, data)?;
    let mut replay = ReplayBuffer::new(64);
    for _ in 0..20 {
        let out = trainer.train_step()?;
        replay.push(&out.levels)?;
    }
    Ok((trainer, replay))
}

/// After a few steps of positive-only local training, a sleep job lowers
/// the negative loss measured on a fixed draw.
#[test]
fn sleep_reduces_the_negative_loss_of_a_collapsed_model() -> Result<()> {
    let (trainer, replay) = trained_with_replay()?;
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

/// The awake anti-collapse term taken offline: with the hinge switched off
/// (margin 1), a negative-only job with `variance_weight` and
/// `covariance_weight` set spreads the bottom-up predictions over the
/// dreams of a collapsed model: its negative loss is then those terms
/// alone, and falls.
#[test]
fn sleep_variance_term_spreads_a_collapsed_model() -> Result<()> {
    let (trainer, replay) = trained_with_replay()?;
    let params = SleepParams {
        steps: 30,
        positive_steps: 0,
        margin: 1.0,
        batch: 8,
        learning_rate: 1e-2,
        variance_weight: 1.0,
        covariance_weight: 1.0,
        ..Default::default()
    };
    let off = SleepParams {
        variance_weight: 0.0,
        covariance_weight: 0.0,
        ..params
    };
    let model = &trainer.model;
    assert_eq!(evaluate_negative(model, &replay, &off, 11)?, 0.0);
    let before = evaluate_negative(model, &replay, &params, 11)?;
    run_sleep(model, &replay, &params, 1)?;
    let after = evaluate_negative(model, &replay, &params, 11)?;
    assert!(after < before, "variance terms {before} -> {after}");
    Ok(())
}

/// Once every pair is separated beyond the margin the hinge is zero and
/// pushes nothing: with margin 1 (no cosine exceeds it) a negative-only
/// job reports zero loss and leaves every parameter as it was.
#[test]
fn no_push_once_separated_beyond_the_margin() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let replay = replay_of(&settled_levels(&model, 6)?)?;
    let before = snapshot(&model);
    let params = SleepParams {
        steps: 3,
        positive_steps: 0,
        batch: 4,
        margin: 1.0,
        ..Default::default()
    };
    let report = run_sleep(&model, &replay, &params, 3)?;
    assert_eq!(report.steps, 3);
    assert_eq!(report.negative_loss_first, 0.0);
    assert_eq!(report.negative_loss_last, 0.0);
    assert!(snapshot(&model) == before, "a separated pair was pushed");
    Ok(())
}

/// The totals of a report are the sums of its per-location shares, and a
/// tile's shares are the whole grid's at the tile's locations.
#[test]
fn loss_shares_add_up_and_do_not_depend_on_the_tiling() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let tile = Tile::rect(grid, 0..2, 1..4, 2);
    let TileCase {
        whole,
        part,
        levels,
        own,
        ..
    } = tile_case(&cfg, &tile, 6)?;
    let params = SleepParams {
        steps: 3,
        negative_steps: 1,
        positive_steps: 1,
        batch: 4,
        margin: -1.0,
        ..Default::default()
    };
    let w = run_sleep(&whole, &replay_of(&levels)?, &params, 9)?;
    let p = run_sleep(&part, &replay_of(&own)?, &params, 9)?;
    assert_eq!(w.shares.len(), grid.len());
    let sum = |r: &SleepReport, i: usize| r.shares.iter().map(|s| s[i]).sum::<f64>();
    assert_eq!(w.negative_loss_first, sum(&w, 0));
    assert_eq!(w.negative_loss_last, sum(&w, 1));
    assert_eq!(w.positive_loss_last, sum(&w, 2));
    assert!(w.negative_loss_first > 0.0 && w.positive_loss_last > 0.0);
    for (i, &g) in tile.locs.iter().enumerate() {
        for t in 0..3 {
            let (a, b) = (p.shares[i][t], w.shares[g][t]);
            assert!((a - b).abs() < 1e-9, "location {g} term {t}: {a} vs {b}");
        }
    }
    Ok(())
}

fn start(steps: u64) -> glom_protocol::message::SleepStart {
    glom_protocol::message::SleepStart {
        job: 2,
        after_step: 40,
        steps,
        seed: 40,
    }
}

/// A scheduled job on a tile without peers: it takes no halo exchange at
/// all, gives every location of the tile the update, loss shares and
/// before/after measurements of the same job on the whole grid, and its
/// answer names the tile's locations.
#[test]
fn a_job_on_a_tile_without_peers_matches_the_whole_grid() -> Result<()> {
    let mut cfg = small_cfg();
    cfg.sleep.observe_images = 3;
    cfg.sleep.batch = 4;
    cfg.sleep.negative_steps = 2;
    cfg.sleep.positive_steps = 1;
    let grid = Grid::square(cfg.grid_side());
    let tile = Tile::rect(grid, 1..4, 0..2, 2);
    assert!(!tile.halo.is_empty());
    let TileCase {
        whole,
        part,
        levels,
        idx,
        own,
    } = tile_case(&cfg, &tile, 6)?;
    let data = scenes(&cfg);
    let images = observation_images(&cfg, &data);
    assert_eq!(images.len(), 3);
    let w = run_job(
        &whole,
        &replay_of(&levels)?,
        &start(4),
        &images,
        &mut |_, _| {},
    )?;
    let mut seen = Vec::new();
    let p = run_job(
        &part,
        &replay_of(&own)?,
        &start(4),
        &images,
        &mut |done, total| seen.push((done, total)),
    )?;
    assert_eq!(seen, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(p.report.steps, 4);
    for (name, var) in &part.params.entries {
        let want = whole
            .params
            .get(name)
            .unwrap()
            .as_tensor()
            .index_select(&idx, 0)?;
        let diff = max_abs_diff(var.as_tensor(), &want);
        assert!(diff < 1e-5, "{name}: tile and grid differ by {diff}");
    }
    let (d, n) = (cfg.model.dim, images.len());
    for (obs_p, obs_w) in [(&p.before, &w.before), (&p.after, &w.after)] {
        let (obs_p, obs_w) = (obs_p.as_ref().unwrap(), obs_w.as_ref().unwrap());
        assert_eq!((obs_p.images, obs_p.dim), (n as u32, d as u32));
        assert_eq!(obs_p.levels.len(), cfg.model.levels);
        for (lp, lw) in obs_p.levels.iter().zip(&obs_w.levels) {
            assert_eq!(lp.embeddings.len(), tile.locs.len() * n * d);
            assert_eq!(lp.probe.len(), tile.locs.len() * d);
            assert!(lp.agreement_bu.is_empty() && lp.agreement_td.is_empty());
            for (i, &g) in tile.locs.iter().enumerate() {
                let a = &lp.embeddings[i * n * d..(i + 1) * n * d];
                let b = &lw.embeddings[g * n * d..(g + 1) * n * d];
                assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
                let a = &lp.probe[i * d..(i + 1) * d];
                let b = &lw.probe[g * d..(g + 1) * d];
                assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
            }
        }
    }
    // The job changed the bottom-up nets, so the measurement changed.
    assert_ne!(w.before, w.after);
    let done = p.clone().into_done(2, &part);
    assert_eq!(done.job, 2);
    assert_eq!(
        done.locations,
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>()
    );
    assert_eq!(done.losses, p.report.shares);
    assert_eq!(done.steps, 4);
    Ok(())
}

/// The measurement is the settle's starting state, computed from the nets
/// alone and reproducibly; a job refuses an empty replay buffer.
#[test]
fn bottom_up_pass_and_empty_replay() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let images: Vec<_> = (0..2).map(|i| scenes(&cfg).get(i)).collect();
    let batch = make_batch(
        &cfg,
        &images,
        &model.tile.locs,
        1,
        0.0,
        &Device::Cpu,
        DType::F32,
    )?;
    let e = bottom_up_pass(&model, &batch.input)?;
    assert_eq!(e.len(), cfg.model.levels);
    let want1 = crate::model::layer_norm(&model.nets.bottom_up[0].forward(&e[0])?)?;
    assert!(max_abs_diff(&e[1], &want1) < 1e-6);
    let e_again = bottom_up_pass(&model, &batch.input)?;
    assert!(max_abs_diff(&e[2], &e_again[2]) == 0.0);
    let err = run_job(
        &model,
        &ReplayBuffer::new(4),
        &start(1),
        &[],
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("replay buffer is empty"), "{err}");
    Ok(())
}

/// The standalone job's buffer: `count` settled images, deterministic.
#[test]
fn fill_replay_settles_count_images_deterministically() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let data = scenes(&cfg);
    let mut seen = Vec::new();
    let a = fill_replay(&model, &data, 5, 7, &mut |done, total| {
        seen.push((done, total))
    })?;
    assert_eq!(seen, vec![(3, 5), (5, 5)]);
    assert_eq!((a.len(), a.levels()), (5, Some(cfg.model.levels)));
    let b = fill_replay(&model, &data, 5, 7, &mut |_, _| {})?;
    let all: Vec<usize> = (0..5).collect();
    assert!(max_abs_diff(&a.gather(2, &all)?, &b.gather(2, &all)?) == 0.0);
    // A tile cannot settle alone.
    let part = Glom::new(
        &cfg,
        Tile::rect(grid, 0..2, 0..2, 2),
        &Device::Cpu,
        DType::F32,
    )?;
    assert!(fill_replay(&part, &data, 2, 7, &mut |_, _| {}).is_err());
    Ok(())
}

#[test]
fn params_follow_the_config_and_replay_only_when_scheduled() {
    let mut cfg = Config::default();
    assert_eq!(SleepParams::from(&cfg), SleepParams::default());
    assert!(replay_for(&cfg).is_none());
    cfg.sleep.every_steps = 10;
    cfg.sleep.replay_capacity = 7;
    assert_eq!(replay_for(&cfg).unwrap().capacity(), 7);
    assert_ne!(job_seed(&cfg, 1), job_seed(&cfg, 2));
}

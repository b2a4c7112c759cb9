//! Settling over the frames of a video (paper section 11): the front end
//! reads the frame of each iteration, the state carries over, a still
//! image is a sequence of identical frames, the tiling changes no bit, and
//! one frame of moving scenes trains exactly like the still scenes.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use glom_protocol::config::{Config, DataSource, DistillTarget, InitMode};
use glom_worker::data::{Dataset, MovingScenes, SceneParams, SyntheticScenes};
use glom_worker::learn::{make_sequence_batch, Batch, Trainer};
use glom_worker::model::grid::{Grid, Tile};
use glom_worker::model::{layer_norm, Glom, Mode, NoHalo};
use glom_worker::Result;
use support::{max_abs_diff, Record, Replay};

mod support;

/// A tiny model on moving scenes: 3 frames, 3 iterations on the first and
/// 2 on each further one (7 in all).
fn video_cfg() -> Config {
    let mut cfg = Config::default();
    cfg.data.source = DataSource::MovingScenes;
    cfg.data.frames = 3;
    cfg.data.image_size = 16;
    cfg.model.levels = 3;
    cfg.model.dim = 6;
    cfg.model.hidden = 8;
    cfg.model.iterations = 3;
    cfg.model.iterations_per_frame = 2;
    cfg.model.neighbours = 4;
    cfg.train.batch_size = 3;
    cfg
}

fn data(cfg: &Config) -> MovingScenes {
    let params = SceneParams {
        size: cfg.data.image_size,
        ..SceneParams::default()
    };
    MovingScenes::new(params, cfg.data.frames, 5)
}

fn batch(model: &Glom, sequences: &[Vec<glom_worker::data::Image>], mask: f64) -> Batch {
    make_sequence_batch(
        &model.cfg,
        sequences,
        &model.tile.locs,
        1,
        mask,
        &Device::Cpu,
        model.dtype(),
    )
    .unwrap()
}

#[test]
fn each_frame_is_read_in_turn_and_the_state_carries_over() -> Result<()> {
    let cfg = video_cfg();
    assert_eq!(cfg.settle_iterations(), 7);
    let model = Glom::new(&cfg, Tile::whole(Grid::square(4)), &Device::Cpu, DType::F64)?;
    let d = data(&cfg);
    let seqs: Vec<_> = (0..3).map(|i| d.sequence(i)).collect();
    let b = batch(&model, &seqs, 0.3);
    assert_eq!(b.earlier.len(), 2);
    // The same patches are hidden in every frame.
    let zero = |t: &Tensor| -> Vec<f64> {
        t.abs()
            .unwrap()
            .sum(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|&v| f64::from(u8::from(v == 0.0)))
            .collect()
    };
    let hidden: Vec<f64> = b.hidden.flatten_all()?.to_vec1()?;
    for frame in b.frames() {
        assert_eq!(zero(&frame), hidden);
    }
    let s = model.settle_frames(&b.frames(), 3, Mode::Local, &mut NoHalo, true)?;
    assert_eq!(s.trace.len(), 7);
    assert_eq!(s.frames.len(), 3);
    for l in 0..3 {
        assert_eq!(max_abs_diff(&s.frames[2][l], &s.levels[l]), 0.0);
        // The state after frame f is the trace's after that frame's last
        // iteration (2, 4 and 6).
        for (f, t) in [(0, 2), (1, 4)] {
            assert_eq!(max_abs_diff(&s.frames[f][l], &s.trace[t][l].1), 0.0);
        }
    }

    // A change to the last frame changes nothing before it, and in its two
    // iterations it climbs two levels: the front end reads it at the first
    // (level 0 changes), level 1's bottom-up net reads that at the second;
    // the top level has not heard of it yet.
    let mut other = seqs.clone();
    for seq in &mut other {
        seq[2] = d.get(7);
    }
    let o = model.settle_frames(
        &batch(&model, &other, 0.3).frames(),
        3,
        Mode::Local,
        &mut NoHalo,
        true,
    )?;
    for l in 0..3 {
        assert_eq!(max_abs_diff(&o.frames[0][l], &s.frames[0][l]), 0.0);
        assert_eq!(max_abs_diff(&o.frames[1][l], &s.frames[1][l]), 0.0);
        let changed = max_abs_diff(&o.frames[2][l], &s.frames[2][l]);
        assert_eq!(changed > 1e-6, l < 2, "level {l}: {changed}");
    }
    // Frames read in turn: settling the last frame alone (a still image
    // under this configuration) gives another state.
    let still = model.settle(&b.input, 3, Mode::Local, &mut NoHalo, false)?;
    assert_eq!(still.frames.len(), 1);
    assert!(max_abs_diff(&still.levels[0], &s.levels[0]) > 1e-6);
    // A still image is a sequence of identical frames, bit for bit.
    let same = vec![b.input.clone(); 3];
    let repeated = model.settle_frames(&same, 3, Mode::Local, &mut NoHalo, false)?;
    for l in 0..3 {
        assert_eq!(max_abs_diff(&repeated.levels[l], &still.levels[l]), 0.0);
    }
    assert_eq!(max_abs_diff(&repeated.distill_bu, &still.distill_bu), 0.0);
    // Two frames are neither one nor three.
    let e = model
        .settle_frames(&same[..2], 3, Mode::Local, &mut NoHalo, false)
        .unwrap_err();
    assert!(e.to_string().contains("data.frames"), "{e}");
    Ok(())
}

/// A tile given its halo at every iteration of every frame computes
/// exactly what the whole grid computes for those locations; also with
/// next-frame distillation and nearby-frame InfoNCE negatives.
#[test]
fn a_video_tile_with_its_halo_settles_like_the_whole_grid() -> Result<()> {
    let mut cfg = video_cfg();
    cfg.model.init = InitMode::Independent;
    cfg.train.neighbour_distill_weight = 1.0;
    cfg.train.autoencoder_weight = 1.0;
    tile_like_whole(&cfg)?;
    cfg.train.distill_target = DistillTarget::NextFrame;
    cfg.train.contrastive_weight = 1.0;
    cfg.train.contrastive_frame_gap = [2, 2];
    tile_like_whole(&cfg)
}

fn tile_like_whole(cfg: &Config) -> Result<()> {
    let grid = Grid::square(cfg.grid_side());
    let whole = Glom::new(cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let d = data(cfg);
    let seqs: Vec<_> = (0..3).map(|i| d.sequence(i)).collect();
    let b = batch(&whole, &seqs, 0.3);
    let mut rec = Record(Vec::new());
    let full = whole.settle_frames(&b.frames(), 9, Mode::Local, &mut rec, false)?;
    assert_eq!(rec.0.len(), 7, "a halo per iteration");
    let reach = whole
        .neighbour_specs()
        .iter()
        .map(|s| s.reach())
        .max()
        .unwrap();
    let tile = Tile::rect(grid, 0..2, 2..4, reach);
    let part = Glom::new(cfg, tile.clone(), &Device::Cpu, DType::F32)?;
    let idx = Tensor::new(
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let frames: Vec<Tensor> = b
        .frames()
        .iter()
        .map(|f| f.index_select(&idx, 0))
        .collect::<candle_core::Result<_>>()?;
    let mut replay = Replay {
        states: rec.0,
        halo: tile.halo.clone(),
    };
    let got = part.settle_frames(&frames, 9, Mode::Local, &mut replay, false)?;
    for f in 0..3 {
        for l in 0..cfg.model.levels {
            let want = full.frames[f][l].index_select(&idx, 0)?;
            assert_eq!(
                max_abs_diff(&got.frames[f][l], &want),
                0.0,
                "frame {f} level {l}"
            );
        }
    }
    assert_eq!(
        max_abs_diff(&got.recon, &full.recon.index_select(&idx, 0)?),
        0.0
    );
    for (name, got, want) in [
        ("distill_bu", &got.distill_bu, &full.distill_bu),
        ("distill_td", &got.distill_td, &full.distill_td),
        ("variance", &got.variance, &full.variance),
        ("contrastive", &got.contrastive, &full.contrastive),
        ("autoencoder", &got.autoencoder, &full.autoencoder),
        (
            "neighbour_distill",
            &got.neighbour_distill,
            &full.neighbour_distill,
        ),
    ] {
        assert_eq!(
            max_abs_diff(got, &want.index_select(&idx, 0)?),
            0.0,
            "{name}"
        );
    }
    Ok(())
}

/// Next-frame distillation, computed by hand from the trace: every
/// student of frames 0 and 1 is distilled toward the state at the end of
/// the following frame, those of the last frame toward their own
/// iteration's consensus; the same hand computation with the iteration's
/// own consensus everywhere gives the same-frame figure.
#[test]
fn next_frame_students_learn_the_end_of_the_following_frame() -> Result<()> {
    let mut cfg = video_cfg();
    cfg.train.autoencoder_weight = 0.0;
    let d = data(&cfg);
    let seqs: Vec<_> = (0..3).map(|i| d.sequence(i)).collect();
    for target in [DistillTarget::SameFrame, DistillTarget::NextFrame] {
        cfg.train.distill_target = target;
        let model = Glom::new(&cfg, Tile::whole(Grid::square(4)), &Device::Cpu, DType::F64)?;
        let frames = batch(&model, &seqs, 0.3).frames();
        let s = model.settle_frames(&frames, 3, Mode::Local, &mut NoHalo, true)?;
        let k = cfg.model.levels;
        // The state before iteration 0: one bottom-up pass over frame 0.
        let mut prev = vec![layer_norm(&model.nets.front.forward(&frames[0])?)?];
        for l in 1..k {
            prev.push(layer_norm(
                &model.nets.bottom_up[l - 1].forward(&prev[l - 1])?,
            )?);
        }
        let sq = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok((a - b)?.sqr()?.sum(2)?.sum(1)?) };
        let (mut bu_sum, mut td_sum) = (Tensor::zeros(16, DType::F64, &Device::Cpu)?, None);
        for t in 0..cfg.settle_iterations() {
            let f = cfg.frame_of_iteration(t);
            for l in 0..k {
                let target = match target {
                    DistillTarget::NextFrame if f < 2 => s.frames[f + 1][l].clone(),
                    _ => s.trace[t][l].1.clone(),
                };
                let bu = if l == 0 {
                    model.nets.front.forward(&frames[f])?
                } else {
                    model.nets.bottom_up[l - 1].forward(&prev[l - 1])?
                };
                bu_sum = (bu_sum + sq(&bu, &target)?)?;
                if l + 1 < k {
                    let td = sq(&model.top_down(l, &prev[l + 1])?, &target)?;
                    td_sum = Some(match td_sum {
                        None => td,
                        Some(sum) => (sum + td)?,
                    });
                }
            }
            prev = s.trace[t]
                .iter()
                .map(|(_, settled)| settled.clone())
                .collect();
        }
        assert!(max_abs_diff(&bu_sum, &s.distill_bu) < 1e-9, "{target:?}");
        assert!(
            max_abs_diff(&td_sum.unwrap(), &s.distill_td) < 1e-9,
            "{target:?}"
        );
    }
    Ok(())
}

/// InfoNCE negatives from frames 2 apart: the term grows (more negatives
/// in each softmax), and a gap the sequence cannot reach or a still
/// source is refused naming the key.
#[test]
fn nearby_frames_join_the_contrastive_negatives() -> Result<()> {
    let mut cfg = video_cfg();
    cfg.train.contrastive_weight = 1.0;
    let d = data(&cfg);
    let seqs: Vec<_> = (0..3).map(|i| d.sequence(i)).collect();
    let mut sums = Vec::new();
    for gap in [[0, 0], [2, 2]] {
        cfg.train.contrastive_frame_gap = gap;
        cfg.validate().unwrap();
        let model = Glom::new(&cfg, Tile::whole(Grid::square(4)), &Device::Cpu, DType::F64)?;
        let frames = batch(&model, &seqs, 0.3).frames();
        let s = model.settle_frames(&frames, 3, Mode::Local, &mut NoHalo, false)?;
        sums.push(s.contrastive.sum_all()?.to_scalar::<f64>()?);
        // Nothing else moves.
        assert!(s.distill_bu.sum_all()?.to_scalar::<f64>()?.is_finite());
    }
    assert!(sums[1] > sums[0], "{sums:?}");
    for (gap, weight, source) in [
        ([3, 4], 1.0, DataSource::MovingScenes),
        ([2, 1], 1.0, DataSource::MovingScenes),
        ([2, 2], 0.0, DataSource::MovingScenes),
        ([2, 2], 1.0, DataSource::Scenes),
    ] {
        let mut bad = cfg.clone();
        (
            bad.train.contrastive_frame_gap,
            bad.train.contrastive_weight,
            bad.data.source,
        ) = (gap, weight, source);
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("train.contrastive_frame_gap"), "{gap:?}: {e}");
    }
    let mut still = cfg.clone();
    still.data.source = DataSource::Scenes;
    still.train.contrastive_frame_gap = [0, 0];
    still.train.distill_target = DistillTarget::NextFrame;
    let e = still.validate().unwrap_err().to_string();
    assert!(e.contains("train.distill_target"), "{e}");
    Ok(())
}

/// Moving scenes of one frame are the still scenes, and a video of one
/// frame settles as a still image: the losses of a few training steps are
/// the same bits.
#[test]
fn one_frame_of_moving_scenes_trains_like_the_still_scenes() -> Result<()> {
    let mut video = video_cfg();
    video.data.frames = 1;
    let mut still = video.clone();
    still.data.source = DataSource::Scenes;
    let params = SceneParams {
        size: 16,
        ..SceneParams::default()
    };
    let run = |cfg: &Config, data: Arc<dyn Dataset>| -> Result<Vec<f64>> {
        let model = Glom::new(cfg, Tile::whole(Grid::square(4)), &Device::Cpu, DType::F32)?;
        let mut trainer = Trainer::new(model, data)?;
        (0..3)
            .map(|_| Ok(trainer.train_step()?.losses.loss_total))
            .collect()
    };
    let a = run(&video, Arc::new(MovingScenes::new(params, 1, 5)))?;
    let b = run(&still, Arc::new(SyntheticScenes::new(params, 5)))?;
    assert_eq!(a, b);
    // Three frames: another run, finite.
    let c = run(&video_cfg(), Arc::new(MovingScenes::new(params, 3, 5)))?;
    assert!(c.iter().all(|x| x.is_finite()));
    assert_ne!(a, c);
    Ok(())
}

//! Numerics of the GLOM engine: the update rule on a hand-computed case,
//! per-location vs shared nets, locality of local learning, BPTT gradients
//! against finite differences, and tile + halo equivalence.

use candle_core::{DType, Device, Tensor, Var};
use glom_protocol::config::{Config, ContrastivePositive, InitMode, Learning, Ramp, WeightMode};
use glom_worker::learn::{make_batch, objective};
use glom_worker::model::grid::{Grid, Tile};
use glom_worker::model::{Glom, MixWeights, Mode, NoHalo};
use glom_worker::Result;
use support::{max_abs_diff, Record, Replay};

mod support;

fn set(model: &Glom, name: &str, values: &[f64]) {
    let var = model
        .params
        .get(name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    let t = Tensor::new(values, &Device::Cpu)
        .unwrap()
        .to_dtype(var.dtype())
        .unwrap()
        .reshape(var.shape())
        .unwrap();
    var.set(&t).unwrap();
}

fn zero_inputs_of_every_net(model: &Glom) {
    for (name, var) in &model.params.entries {
        if name.ends_with(".w1") || name.ends_with(".b1") {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    }
}

fn vec2(t: &Tensor, loc: usize) -> [f64; 2] {
    let v: Vec<f64> = t
        .narrow(0, loc, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    [v[0], v[1]]
}

fn close(got: [f64; 2], want: [f64; 2], what: &str) {
    for i in 0..2 {
        assert!(
            (got[i] - want[i]).abs() < 1e-9,
            "{what}: got {got:?}, want {want:?}"
        );
    }
}

/// The update rule on a 2x2 grid, 2 levels, d = 2, two iterations.
///
/// Every net has zero first-layer weights and biases, so its hidden units
/// are gelu(0) = 0 and its output is its last bias b2. Per location:
/// front F = (1,0) at locations 0,1,2 and (0,1) at location 3; bottom-up
/// level 1 B = (0,2); top-down level 0 D = (2,-1). Every location attends
/// to the other three (huge sigma). beta = 1 at t=0, 3 at t=1 (rise 3).
/// Schedule: bottom_up 1 -> 0, top_down 0 -> 1, previous 1, lateral 1.
/// LN(a,b) = +-(a-b)/2 / sqrt(((a-b)/2)^2 + 1e-5), so u = LN(1,0)_0 = 0.99998000060.
///
/// Worked out (and checked with a 40-line script of these formulas):
/// - initial state: e0[x<3] = (u,-u), e0[3] = (-u,u); e1 = LN(0,2) = (-0.999995, 0.999995).
/// - t=0, level 0, x=0: scores beta<e0,ey>/2 = u^2, u^2, -u^2, so
///   lat = (2e^{u^2} - e^{-u^2}) / (2e^{u^2} + e^{-u^2}) (u,-u) = (0.87321516, -0.87321516);
///   td weight is 0 but counts in the denominator: mix = (F + e + lat) / 3
///   = (0.95773172, -0.62439839).
/// - t=0, level 0, x=3: its neighbours all hold (u,-u): lat = (u,-u),
///   mix = ((0,1) + (-u,u) + (u,-u)) / 3 = (0, 1/3).
/// - t=0, level 1 (top: no top-down, weights renormalised over 3):
///   lat = e1, mix = ((0,2) + 2 e1) / 3 = (-0.66666333, 1.33333000).
/// - t=1, level 0, x=0: bottom-up weight 0, top-down 1, beta 3:
///   lat = (0.99751505, -0.99751505), mix = (D + e + lat) / 3 = (1.33250235, -0.99916902).
/// - t=1, level 0, x=3: top-down flips it: mix = (0.66672399, -0.33339065).
#[test]
fn update_rule_matches_hand_computation() -> Result<()> {
    let mut cfg = Config::default();
    cfg.model.levels = 2;
    cfg.model.dim = 2;
    cfg.model.hidden = 1;
    cfg.model.patch = 1;
    cfg.model.iterations = 2;
    cfg.model.neighbours = 3;
    cfg.model.neighbour_sigma = [100.0, 100.0];
    cfg.model.neighbour_cutoff = 1.0;
    cfg.model.beta = [1.0, 1.0];
    cfg.model.beta_rise = 3.0;
    cfg.model.bottom_up_skip = false;
    cfg.model.schedule.bottom_up = Ramp(1.0, 0.0);
    cfg.model.schedule.top_down = Ramp(0.0, 1.0);
    cfg.model.schedule.previous = Ramp(1.0, 1.0);
    cfg.model.schedule.lateral = Ramp(1.0, 1.0);
    cfg.data.image_size = 2;
    let grid = Grid::square(2);
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    zero_inputs_of_every_net(&model);
    set(&model, "front.b2", &[1., 0., 1., 0., 1., 0., 0., 1.]);
    set(&model, "bu.1.b2", &[0., 2., 0., 2., 0., 2., 0., 2.]);
    set(&model, "td.0.b2", &[2., -1., 2., -1., 2., -1., 2., -1.]);

    // The schedule and the inverse temperature.
    assert_eq!(
        MixWeights::at(&cfg, 0),
        MixWeights {
            bottom_up: 1.0,
            top_down: 0.0,
            previous: 1.0,
            lateral: 1.0
        }
    );
    assert_eq!(
        MixWeights::at(&cfg, 1),
        MixWeights {
            bottom_up: 0.0,
            top_down: 1.0,
            previous: 1.0,
            lateral: 1.0
        }
    );
    assert_eq!(
        (model.beta(0, 0), model.beta(0, 1), model.beta(1, 1)),
        (1.0, 3.0, 3.0)
    );

    let pixels = Tensor::zeros((4, 1, 3), DType::F64, &Device::Cpu)?;
    let s = model.settle(&pixels, 0, Mode::Inference, &mut NoHalo, true)?;
    let (mix00, _) = &s.trace[0][0];
    close(
        vec2(mix00, 0),
        [0.9577317206419061, -0.6243983873085729],
        "t=0 level 0 x=0",
    );
    close(vec2(mix00, 3), [0.0, 1.0 / 3.0], "t=0 level 0 x=3");
    let (mix01, new01) = &s.trace[0][1];
    close(
        vec2(mix01, 0),
        [-0.6666633333583332, 1.333330000025],
        "t=0 level 1 x=0",
    );
    close(
        vec2(new01, 0),
        [-0.9999950000041669, 0.9999950000041669],
        "t=0 level 1 new",
    );
    let (mix10, new10) = &s.trace[1][0];
    close(
        vec2(mix10, 0),
        [1.3325023520124175, -0.9991690186790841],
        "t=1 level 0 x=0",
    );
    close(
        vec2(mix10, 3),
        [0.6667239871773116, -0.3333906538439783],
        "t=1 level 0 x=3",
    );
    close(
        vec2(new10, 3),
        [0.9999800051845573, -0.9999800051845573],
        "t=1 level 0 x=3 new",
    );
    // The final state is the last iteration's.
    close(vec2(&s.levels[0], 3), vec2(new10, 3), "final state");
    Ok(())
}

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

fn batch_for(model: &Glom, mask_fraction: f64) -> glom_worker::learn::Batch {
    use glom_worker::data::{Dataset, SceneParams, SyntheticScenes};
    let cfg = &model.cfg;
    let data = SyntheticScenes::new(
        SceneParams {
            size: cfg.data.image_size,
            ..Default::default()
        },
        5,
    );
    let images: Vec<_> = (0..cfg.train.batch_size).map(|i| data.get(i)).collect();
    make_batch(
        cfg,
        &images,
        &model.tile.locs,
        1,
        mask_fraction,
        &Device::Cpu,
        model.dtype(),
    )
    .unwrap()
}

#[test]
fn per_location_and_shared_agree_when_every_location_has_the_same_weights() -> Result<()> {
    let mut per = small_cfg();
    per.model.weights = WeightMode::PerLocation;
    per.model.init = InitMode::Common;
    let mut shared = per.clone();
    shared.model.weights = WeightMode::Shared;
    shared.model.location_code = false;
    let grid = Grid::square(per.grid_side());
    let a = Glom::new(&per, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    let b = Glom::new(&shared, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    // Common init gives every slot the shared draw.
    for ((name, va), (_, vb)) in a.params.entries.iter().zip(&b.params.entries) {
        let slots = va.as_tensor().dim(0)?;
        assert_eq!(slots, grid.len(), "{name}");
        let bb = vb.as_tensor().broadcast_as(va.shape())?;
        assert_eq!(max_abs_diff(va.as_tensor(), &bb), 0.0, "{name}");
    }
    let batch = batch_for(&a, 0.3);
    for mode in [Mode::Inference, Mode::Local, Mode::Bptt] {
        let sa = a.settle(&batch.input, 3, mode, &mut NoHalo, false)?;
        let sb = b.settle(&batch.input, 3, mode, &mut NoHalo, false)?;
        for l in 0..3 {
            assert!(
                max_abs_diff(&sa.levels[l], &sb.levels[l]) < 1e-12,
                "{mode:?} level {l}"
            );
        }
        assert!(max_abs_diff(&sa.recon, &sb.recon) < 1e-12, "{mode:?} recon");
        assert!(
            max_abs_diff(&sa.distill_bu, &sb.distill_bu) < 1e-9,
            "{mode:?} distill"
        );
    }
    Ok(())
}

fn grad_norm_by_slot(grads: &candle_core::backprop::GradStore, var: &Var) -> Vec<f64> {
    match grads.get(var.as_tensor()) {
        None => vec![0.0; var.as_tensor().dim(0).unwrap()],
        Some(g) => {
            let per: Vec<f64> = g.abs().unwrap().sum((1, 2)).unwrap().to_vec1().unwrap();
            per
        }
    }
}

/// Local learning: the loss of one location (its distillation terms and its
/// reconstruction) sends gradient to that location's nets and to no other.
#[test]
fn local_learning_keeps_gradients_at_their_location() -> Result<()> {
    let mut cfg = small_cfg();
    cfg.model.init = InitMode::Independent;
    cfg.train.neighbour_distill_weight = 1.0;
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    let batch = batch_for(&model, 0.3);
    let s = model.settle(&batch.input, 2, Mode::Local, &mut NoHalo, false)?;
    let x = 5;
    // Neighbour co-distillation reads other locations' states but trains
    // only the location's own nets.
    let loss = (s.distill_bu.narrow(0, x, 1)?.sum_all()?
        + s.distill_td.narrow(0, x, 1)?.sum_all()?
        + s.neighbour_distill.narrow(0, x, 1)?.sum_all()?)?;
    let loss = (loss + s.recon.narrow(0, x, 1)?.sqr()?.sum_all()?)?;
    let grads = loss.backward()?;
    let mut reached_own = 0;
    for (name, var) in &model.params.entries {
        let g = grad_norm_by_slot(&grads, var);
        for (slot, v) in g.iter().enumerate() {
            if slot == x {
                if *v > 0.0 {
                    reached_own += 1;
                }
            } else {
                assert_eq!(
                    *v, 0.0,
                    "gradient of location {x}'s loss reached {name} at location {slot}"
                );
            }
        }
    }
    assert!(
        reached_own >= model.params.entries.len() - 2,
        "only {reached_own} of {x}'s nets learn"
    );
    Ok(())
}

/// Local learning: the top-down students' loss never reaches the front end
/// (their inputs and targets are detached), while under BPTT it does.
#[test]
fn local_learning_does_not_backpropagate_through_time() -> Result<()> {
    let cfg = small_cfg();
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    let batch = batch_for(&model, 0.3);
    let front = model.params.get("front.w1").unwrap();
    for (mode, expect_zero) in [(Mode::Local, true), (Mode::Bptt, false)] {
        let s = model.settle(&batch.input, 2, mode, &mut NoHalo, false)?;
        let grads = s.distill_td.sum_all()?.backward()?;
        let total: f64 = grad_norm_by_slot(&grads, front).iter().sum();
        assert_eq!(
            total == 0.0,
            expect_zero,
            "{mode:?}: front-end gradient {total}"
        );
    }
    Ok(())
}

/// BPTT gradients of the reconstruction loss equal central finite
/// differences on a tiny model in f64.
#[test]
fn bptt_gradients_match_finite_differences() -> Result<()> {
    let mut cfg = small_cfg();
    cfg.model.dim = 4;
    cfg.model.hidden = 5;
    cfg.data.image_size = 8;
    cfg.train.batch_size = 2;
    cfg.train.learning = Learning::Bptt;
    // Reconstruction alone: the log barrier of the variance term is too
    // curved at a batch of 2 for central differences at this step.
    cfg.train.distill_weight = 0.0;
    (cfg.train.variance_weight, cfg.train.covariance_weight) = (0.0, 0.0);
    cfg.model.init = InitMode::Independent;
    let grid = Grid::square(cfg.grid_side());
    let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F64)?;
    let batch = batch_for(&model, 0.3);
    let loss = |m: &Glom| -> Result<Tensor> {
        let s = m.settle(&batch.input, 4, Mode::Bptt, &mut NoHalo, false)?;
        Ok(objective(m, &batch, &s)?.0)
    };
    let grads = loss(&model)?.backward()?;
    let h = 1e-6;
    let (mut checked, mut sizeable) = (0, 0);
    for name in [
        "front.w1",
        "bu.1.w2",
        "bu.2.b1",
        "td.0.w1",
        "td.1.w2",
        "decoder.w2",
    ] {
        let var = model.params.get(name).unwrap();
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .expect(name)
            .flatten_all()?
            .to_vec1()?;
        let orig: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        for &i in &[0usize, orig.len() / 2, orig.len() - 1] {
            let eval_at = |x: f64| -> Result<f64> {
                let mut v = orig.clone();
                v[i] = x;
                var.set(&Tensor::new(v, &Device::Cpu)?.reshape(var.shape())?)?;
                Ok(loss(&model)?.to_scalar::<f64>()?)
            };
            let fd = (eval_at(orig[i] + h)? - eval_at(orig[i] - h)?) / (2.0 * h);
            var.set(&Tensor::new(orig.clone(), &Device::Cpu)?.reshape(var.shape())?)?;
            let tol = 1e-4 * fd.abs().max(g[i].abs()) + 1e-10;
            assert!(
                (fd - g[i]).abs() < tol,
                "{name}[{i}]: autograd {} vs finite difference {fd}",
                g[i]
            );
            checked += 1;
            if fd.abs() > 1e-7 {
                sizeable += 1;
            }
        }
    }
    assert_eq!(checked, 18);
    assert!(
        sizeable >= 9,
        "only {sizeable} gradients are large enough to test anything"
    );
    Ok(())
}

/// A tile given its halo computes exactly what the whole grid computes for
/// those locations: the engine's math does not depend on the tiling, the
/// anti-collapse terms included (their statistics stay inside a location).
#[test]
fn a_tile_with_its_halo_settles_like_the_whole_grid() -> Result<()> {
    let mut cfg = small_cfg();
    cfg.model.init = InitMode::Independent;
    cfg.train.variance_weight = 1.0;
    cfg.train.covariance_weight = 1.0;
    cfg.train.contrastive_weight = 1.0;
    cfg.train.contrastive_positive = ContrastivePositive::Lateral;
    cfg.train.autoencoder_weight = 1.0;
    cfg.train.neighbour_distill_weight = 1.0;
    cfg.train.negative_weight = 1.0;
    let grid = Grid::square(cfg.grid_side());
    let whole = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
    let batch = batch_for(&whole, 0.3);
    let mut rec = Record(Vec::new());
    let full = whole.settle(&batch.input, 9, Mode::Local, &mut rec, false)?;
    let reach = whole
        .neighbour_specs()
        .iter()
        .map(|s| s.reach())
        .max()
        .unwrap();
    let tile = Tile::rect(grid, 0..2, 2..4, reach);
    let part = Glom::new(&cfg, tile.clone(), &Device::Cpu, DType::F32)?;
    let idx = Tensor::new(
        tile.locs.iter().map(|&g| g as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )?;
    let input = batch.input.index_select(&idx, 0)?;
    let mut replay = Replay {
        states: rec.0,
        halo: tile.halo.clone(),
    };
    let got = part.settle(&input, 9, Mode::Local, &mut replay, false)?;
    for l in 0..cfg.model.levels {
        let want = full.levels[l].index_select(&idx, 0)?;
        assert_eq!(max_abs_diff(&got.levels[l], &want), 0.0, "level {l}");
    }
    assert_eq!(
        max_abs_diff(&got.recon, &full.recon.index_select(&idx, 0)?),
        0.0
    );
    for (name, got, want) in [
        ("distill_bu", &got.distill_bu, &full.distill_bu),
        ("distill_td", &got.distill_td, &full.distill_td),
        ("negative", &got.negative, &full.negative),
        ("variance", &got.variance, &full.variance),
        ("covariance", &got.covariance, &full.covariance),
        ("contrastive", &got.contrastive, &full.contrastive),
        ("autoencoder", &got.autoencoder, &full.autoencoder),
        (
            "neighbour_distill",
            &got.neighbour_distill,
            &full.neighbour_distill,
        ),
    ] {
        let want = want.index_select(&idx, 0)?;
        assert!(
            want.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            "{name} is off"
        );
        assert_eq!(max_abs_diff(got, &want), 0.0, "{name}");
    }
    Ok(())
}

/// Neighbour co-distillation (paper section 12.1) makes the bottom-up nets
/// of different locations compute more alike: from independent initial
/// weights, after the same steps of distillation, their disagreement on a
/// common probe input is lower with the term than without it, at every
/// level it trains (1 and above).
#[test]
fn neighbour_codistillation_makes_the_nets_of_different_locations_alike() -> Result<()> {
    use glom_worker::data::{SceneParams, SyntheticScenes};
    use glom_worker::learn::Trainer;
    use glom_worker::monitor::{disagreement_of, probe_outputs_by_level};
    use std::sync::Arc;
    let train = |neighbour: f64| -> Result<Vec<f64>> {
        let mut cfg = small_cfg();
        cfg.model.init = InitMode::Independent;
        cfg.train.variance_weight = 0.0;
        cfg.train.covariance_weight = 0.0;
        cfg.train.neighbour_distill_weight = neighbour;
        cfg.train.learning_rate = 0.01;
        let grid = Grid::square(cfg.grid_side());
        let model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
        let data = SyntheticScenes::new(
            SceneParams {
                size: cfg.data.image_size,
                ..Default::default()
            },
            5,
        );
        let mut trainer = Trainer::new(model, Arc::new(data))?;
        for _ in 0..40 {
            let out = trainer.train_step()?;
            assert_eq!(out.losses.loss_neighbour_distill > 0.0, neighbour > 0.0);
        }
        Ok(probe_outputs_by_level(&trainer.model)?
            .iter()
            .map(|o| disagreement_of(o, cfg.model.dim))
            .collect())
    };
    let (without, with) = (train(0.0)?, train(1.0)?);
    for l in 1..with.len() {
        assert!(
            with[l] < 0.7 * without[l],
            "level {l}: disagreement {} with the term, {} without",
            with[l],
            without[l]
        );
    }
    Ok(())
}

/// The step profile (`glom bench`'s breakdown) only reads the clock: two
/// steps with it on train the same weights and losses, to the bit, as with
/// it off, in local and BPTT learning with every optional term on, and it
/// times every part a step on one machine has.
#[test]
fn profiling_a_step_changes_no_bit() -> Result<()> {
    use glom_worker::data::{SceneParams, SyntheticScenes};
    use glom_worker::learn::Trainer;
    use glom_worker::model::Part;
    use std::sync::Arc;
    for learning in [Learning::Local, Learning::Bptt] {
        let mut cfg = small_cfg();
        cfg.train.learning = learning;
        cfg.train.contrastive_weight = 1.0;
        cfg.train.autoencoder_weight = 1.0;
        cfg.train.neighbour_distill_weight = 1.0;
        let run = |on: bool| -> Result<(Vec<Vec<u32>>, Vec<f64>, Trainer)> {
            let grid = Grid::square(cfg.grid_side());
            let mut model = Glom::new(&cfg, Tile::whole(grid), &Device::Cpu, DType::F32)?;
            model.profile.set_on(on);
            let data = SyntheticScenes::new(
                SceneParams {
                    size: cfg.data.image_size,
                    ..Default::default()
                },
                5,
            );
            let mut trainer = Trainer::new(model, Arc::new(data))?;
            let mut losses = Vec::new();
            for _ in 0..2 {
                losses.push(trainer.train_step()?.losses.loss_total);
            }
            let weights = trainer
                .model
                .params
                .vars()
                .iter()
                .map(|v| {
                    let x: Vec<f32> = v.as_tensor().flatten_all()?.to_vec1()?;
                    Ok(x.iter().map(|f| f.to_bits()).collect())
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((weights, losses, trainer))
        };
        let (w_off, l_off, off) = run(false)?;
        let (w_on, l_on, on) = run(true)?;
        assert_eq!(w_off, w_on, "{learning:?}: weights");
        assert_eq!(l_off, l_on, "{learning:?}: losses");
        for part in Part::ALL {
            assert_eq!(off.model.profile.seconds(part), 0.0, "{}", part.name());
            // Without a halo exchange its two parts may take no time.
            if !matches!(part, Part::HaloSend | Part::HaloWait) {
                let timed = on.model.profile.seconds(part) > 0.0;
                assert!(timed, "{learning:?}: {} was not timed", part.name());
            }
        }
    }
    Ok(())
}

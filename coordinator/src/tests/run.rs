//! Whole runs on the fake cluster: steps, pipelining, checkpoints, the end.

use glom_protocol::message::ControlMessage;

use super::{config, Sim};
use crate::{Action, Phase, Settings};

/// 5 steps with a checkpoint every 2 on `n` workers, worker 0 slower.
fn full_run(n: usize) {
    let mut sim = Sim::new(config(5, 2), n, Settings::default());
    sim.workers[0].lag = 1;
    sim.join_all();
    sim.run(1000);

    assert_eq!(sim.violations, Vec::<String>::new());
    assert_eq!(sim.coord.phase(), Phase::Finished);
    for w in &sim.workers {
        assert_eq!(w.steps(), vec![0, 1, 2, 3, 4], "{}", w.hello.worker_name);
        assert_eq!(w.saves(), vec![2, 4, 5], "{}", w.hello.worker_name);
        let msgs = w.significant();
        assert!(
            matches!(msgs[0], ControlMessage::Welcome { .. }),
            "{msgs:?}"
        );
        assert!(matches!(msgs[1], ControlMessage::Assign(_)), "{msgs:?}");
        assert!(
            matches!(msgs.last(), Some(ControlMessage::Shutdown { .. })),
            "{msgs:?}"
        );
        let dirs: Vec<&str> = msgs
            .iter()
            .filter_map(|m| match m {
                ControlMessage::CheckpointSave { dir, .. } => Some(dir.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            dirs,
            [
                "checkpoints/step-2",
                "checkpoints/step-4",
                "checkpoints/step-5"
            ]
        );
    }

    let completed: Vec<u64> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::StepCompleted { step, summary } => {
                assert_eq!(summary.locations, 64, "step {step}");
                // Every location reported 1/64 of loss_recon = step + 1.
                assert_eq!(summary.losses[0], (step + 1) as f64);
                assert_eq!(summary.halo_bytes_sent, 1000 * n as u64);
                assert_eq!(summary.max_halo_wait_seconds, 0.01 * (n - 1) as f64);
                Some(*step)
            }
            _ => None,
        })
        .collect();
    assert_eq!(completed, vec![0, 1, 2, 3, 4]);

    let manifests: Vec<_> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteManifest { dir, manifest } => Some((dir.clone(), (**manifest).clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        manifests.iter().map(|(_, m)| m.step).collect::<Vec<_>>(),
        [2, 4, 5]
    );
    for (dir, m) in &manifests {
        assert_eq!(dir, &format!("checkpoints/step-{}", m.step));
        m.validate().unwrap();
        assert_eq!(m.shards.len(), n);
        let mut all: Vec<usize> = m.shards.iter().flat_map(|s| s.locations.clone()).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..64).collect::<Vec<_>>(),
            "every location exactly once"
        );
    }

    let finished = sim.actions_where(|a| matches!(a, Action::Finished { .. }));
    assert_eq!(finished, [&Action::Finished { steps: 5 }]);
    assert!(matches!(sim.actions.last(), Some(Action::Finished { .. })));
    let bad = sim.actions_where(|a| matches!(a, Action::WorkerLost { .. } | Action::Abort { .. }));
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn one_worker_runs_to_the_end() {
    full_run(1);
}

#[test]
fn two_workers_run_to_the_end() {
    full_run(2);
}

#[test]
fn four_workers_run_to_the_end() {
    full_run(4);
}

#[test]
fn the_final_checkpoint_is_not_repeated() {
    let mut sim = Sim::new(config(4, 2), 2, Settings::default());
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    for w in &sim.workers {
        assert_eq!(w.saves(), vec![2, 4]);
    }
    assert_eq!(
        sim.actions_where(|a| matches!(a, Action::Finished { steps: 4 }))
            .len(),
        1
    );
}

#[test]
fn outstanding_steps_never_exceed_max_ahead() {
    for max_ahead in [1, 2, 3] {
        let settings = Settings {
            max_ahead,
            ..Settings::default()
        };
        let mut sim = Sim::new(config(12, 5), 3, settings);
        sim.workers[2].lag = 3;
        sim.join_all();
        sim.run(10_000);
        assert_eq!(
            sim.violations,
            Vec::<String>::new(),
            "max_ahead {max_ahead}"
        );
        // The bound is reached: the fast workers did run ahead.
        assert_eq!(sim.max_outstanding, max_ahead);
        assert_eq!(sim.coord.phase(), Phase::Finished);
        for w in &sim.workers {
            assert_eq!(w.steps(), (0..12).collect::<Vec<_>>());
            assert_eq!(w.saves(), vec![5, 10, 12]);
        }
    }
}

#[test]
fn no_step_is_issued_while_a_checkpoint_is_saved() {
    let mut sim = Sim::new(config(6, 3), 2, Settings::default());
    sim.join_all();
    // Let both workers finish steps 0..3; the checkpoint then starts.
    while sim.coord.phase() != (Phase::Checkpointing { step: 3 }) {
        sim.tick();
    }
    // Worker 1 acknowledges, worker 0 holds its ack back: nothing moves.
    sim.workers[0].silent = true;
    for _ in 0..20 {
        sim.tick();
    }
    assert_eq!(sim.workers[1].steps(), vec![0, 1, 2]);
    assert_eq!(sim.coord.phase(), Phase::Checkpointing { step: 3 });
    assert!(sim
        .actions_where(|a| matches!(a, Action::WriteManifest { .. }))
        .is_empty());
    // Once it acknowledges, the manifest comes first, then step 3.
    sim.workers[0].silent = false;
    sim.tick();
    assert_eq!(sim.coord.phase(), Phase::Running);
    assert!(matches!(
        sim.actions.last(),
        Some(Action::WriteManifest { .. })
    ));
    assert_eq!(sim.workers[1].steps(), vec![0, 1, 2, 3, 4]);
    assert_eq!(sim.violations, Vec::<String>::new());
}

/// A run resumed from checkpoint 4 issues steps 4.. only, hands the
/// checkpoint to every worker with its tile, and checkpoints on from there.
#[test]
fn a_resumed_run_starts_at_its_checkpoint() {
    let resume = glom_protocol::message::ResumePoint {
        dir: "/shared/old/checkpoints/step-4".into(),
        step: 4,
    };
    let settings = Settings {
        resume: Some(resume.clone()),
        ..Settings::default()
    };
    let mut sim = Sim::new(config(9, 2), 2, settings);
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    assert_eq!(sim.coord.phase(), Phase::Finished);
    for w in &sim.workers {
        assert_eq!(w.steps(), vec![4, 5, 6, 7, 8]);
        assert_eq!(w.saves(), vec![6, 8, 9]);
        assert_eq!(w.assign.as_ref().unwrap().resume, Some(resume.clone()));
    }
    // Nothing to resume past the end.
    let done = Settings {
        resume: Some(glom_protocol::message::ResumePoint { step: 9, ..resume }),
        ..Settings::default()
    };
    let e = crate::Coordinator::with_settings(config(9, 2), 2, done, std::time::Instant::now())
        .unwrap_err();
    assert!(e.to_string().contains("already holds 9 steps"), "{e}");
}

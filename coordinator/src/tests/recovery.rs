//! Automatic recovery: a lost worker rolls the cluster back to its last
//! complete checkpoint, and the run goes on with a replacement or with the
//! survivors, as if it had never failed.

use std::time::Duration;

use glom_protocol::message::{ControlMessage, Hello};

use super::{config, Sim};
use crate::{Action, LostReason, Phase, Restart, Settings};

fn settings(rejoin_secs: u64) -> Settings {
    Settings {
        rejoin_timeout: Duration::from_secs(rejoin_secs),
        ..Settings::default()
    }
}

/// Tick until the coordinator is in `phase`.
fn until(sim: &mut Sim, phase: Phase) {
    for _ in 0..10_000 {
        if sim.coord.phase() == phase {
            return;
        }
        sim.tick();
    }
    panic!("never reached {phase:?}: {:?}", sim.actions);
}

/// `(step, resume step)` of every step and assignment worker `i` received.
fn steps_after_assign(sim: &Sim, i: usize) -> (Option<u64>, Vec<u64>) {
    let w = &sim.workers[i];
    let resume = w
        .assign
        .as_ref()
        .and_then(|a| a.resume.as_ref())
        .map(|r| r.step);
    (resume, w.steps())
}

#[test]
fn a_lost_worker_rolls_back_to_the_last_checkpoint_and_a_replacement_finishes_the_run() {
    let mut sim = Sim::new(config(6, 2), 2, settings(60));
    sim.join_all();
    // Checkpoint 2 is complete; worker 1 dies while steps 2 and 3 run.
    until(&mut sim, Phase::Checkpointing { step: 4 });
    sim.coord.handle_disconnect(sim.workers[1].conn, sim.now);
    sim.pump();
    let rolling: Vec<_> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::RollingBack {
                attempt,
                to_step,
                workers,
                ..
            } => Some((*attempt, *to_step, *workers)),
            _ => None,
        })
        .collect();
    assert_eq!(rolling, [(1, 2, 2)], "{:?}", sim.actions);
    assert_eq!(sim.coord.phase(), Phase::Joining);
    assert!(!sim
        .actions
        .iter()
        .any(|a| matches!(a, Action::Abort { .. })));
    // The survivor was told to rejoin, and its connection closed.
    assert!(matches!(
        sim.workers[0].received.last(),
        Some(ControlMessage::Rejoin { reason }) if reason.contains("worker 1")
    ));
    assert!(sim.workers[0].closed);

    // The survivor and a replacement of another name join.
    let survivor = sim.rejoin(0);
    let spare = sim.add_worker(Hello::new(&sim.cfg.hash(), "spare", "10.0.0.9:7000"));
    sim.join(spare);
    assert!(sim.actions.iter().any(|a| matches!(
        a,
        Action::Restarted(Restart {
            attempt: 1,
            to_step: 2,
            cause: "disconnected",
            workers_before: 2,
            workers_after: 2,
            ..
        })
    )));
    for i in [survivor, spare] {
        let a = sim.workers[i].assign.as_ref().expect("assigned");
        assert_eq!(a.attempt, 1);
        let resume = a.resume.as_ref().expect("resumes");
        assert_eq!(
            (resume.step, resume.dir.as_str()),
            (2, "checkpoints/step-2")
        );
    }
    sim.run(10_000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    // Steps 2.. again, once each, on the new cluster.
    for i in [survivor, spare] {
        assert_eq!(steps_after_assign(&sim, i), (Some(2), vec![2, 3, 4, 5]));
    }
    let manifests: Vec<u64> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::WriteManifest { manifest, .. } => Some(manifest.step),
            _ => None,
        })
        .collect();
    assert_eq!(manifests, [2, 4, 6]);
}

#[test]
fn without_a_replacement_the_survivors_take_over_the_grid_after_the_rejoin_timeout() {
    let mut sim = Sim::new(config(4, 2), 2, settings(10));
    sim.join_all();
    until(&mut sim, Phase::Checkpointing { step: 2 });
    sim.tick();
    // Worker 0 falls silent; worker 1 keeps beating.
    sim.workers[0].silent = true;
    for _ in 0..31 {
        sim.deliver(1, ControlMessage::Heartbeat { now_ms: 0 });
        sim.advance(Duration::from_secs(1));
    }
    assert!(sim.actions.iter().any(|a| matches!(
        a,
        Action::WorkerLost {
            worker_id: 0,
            reason: LostReason::Silent { .. }
        }
    )));
    assert_eq!(sim.coord.phase(), Phase::Joining);
    let survivor = sim.rejoin(1);
    // Waiting for a second worker...
    sim.advance(Duration::from_secs(8));
    assert_eq!(sim.coord.phase(), Phase::Joining);
    // ...until the rejoin timeout: the survivor gets the whole grid.
    sim.advance(Duration::from_secs(2));
    let a = sim.workers[survivor].assign.clone().expect("assigned");
    assert_eq!((a.tile.rows, a.tile.cols), ((0, 8), (0, 8)));
    assert!(a.peers.is_empty());
    assert!(sim.actions.iter().any(|a| matches!(
        a,
        Action::Restarted(Restart {
            to_step: 2,
            cause: "silent",
            workers_before: 2,
            workers_after: 1,
            ..
        })
    )));
    sim.run(10_000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    assert_eq!(steps_after_assign(&sim, survivor), (Some(2), vec![2, 3]));
}

#[test]
fn a_loss_before_the_first_checkpoint_starts_over_from_step_zero() {
    let mut sim = Sim::new(config(4, 0), 2, settings(60));
    sim.join_all();
    sim.tick();
    sim.tick();
    sim.deliver(
        1,
        ControlMessage::Error {
            message: "out of memory".into(),
        },
    );
    assert!(sim
        .actions
        .iter()
        .any(|a| matches!(a, Action::RollingBack { to_step: 0, .. })));
    let (a, b) = (sim.rejoin(0), sim.rejoin(1));
    for i in [a, b] {
        assert_eq!(sim.workers[i].assign.as_ref().unwrap().resume, None);
    }
    sim.run(10_000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert_eq!(steps_after_assign(&sim, a), (None, vec![0, 1, 2, 3]));
}

#[test]
fn restarts_are_bounded_and_too_few_survivors_end_the_run() {
    // max_restarts = 1: the second loss aborts, naming the bound.
    let mut sim = Sim::new(
        config(6, 2),
        2,
        Settings {
            max_restarts: 1,
            ..settings(60)
        },
    );
    sim.join_all();
    until(&mut sim, Phase::Checkpointing { step: 2 });
    sim.coord.handle_disconnect(sim.workers[1].conn, sim.now);
    sim.pump();
    let (a, b) = (sim.rejoin(0), sim.rejoin(1));
    sim.tick();
    sim.coord.handle_disconnect(sim.workers[b].conn, sim.now);
    sim.pump();
    assert_eq!(sim.coord.phase(), Phase::Aborted);
    let reason = sim.actions.iter().find_map(|a| match a {
        Action::Abort { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.expect("aborted");
    assert!(
        reason.contains("after 1 restarts (cluster.max_restarts = 1)"),
        "{reason}"
    );
    assert!(matches!(
        sim.workers[a].received.last(),
        Some(ControlMessage::Shutdown { .. })
    ));

    // min_workers = 2 and nobody rejoins: the run ends at the deadline.
    let mut sim = Sim::new(
        config(6, 2),
        2,
        Settings {
            min_workers: 2,
            ..settings(10)
        },
    );
    sim.join_all();
    until(&mut sim, Phase::Checkpointing { step: 2 });
    sim.tick(); // checkpoint 2 completes
    sim.coord.handle_disconnect(sim.workers[0].conn, sim.now);
    sim.pump();
    let survivor = sim.rejoin(1);
    sim.advance(Duration::from_secs(11));
    assert_eq!(sim.coord.phase(), Phase::Aborted);
    let reason = sim.actions.iter().find_map(|a| match a {
        Action::Abort {
            reason,
            last_checkpoint,
        } => Some((reason.clone(), *last_checkpoint)),
        _ => None,
    });
    let (reason, last) = reason.expect("aborted");
    assert_eq!(last, Some(2));
    assert!(
        reason.contains("only 1 of 2 workers joined again") && reason.contains("min_workers = 2"),
        "{reason}"
    );
    assert!(matches!(
        sim.workers[survivor].received.last(),
        Some(ControlMessage::Shutdown { .. })
    ));
}

#[test]
fn sleep_jobs_after_the_checkpoint_run_again_with_the_same_ids() {
    let mut cfg = config(8, 4);
    cfg.sleep.every_steps = 2;
    let mut sim = Sim::new(cfg, 2, settings(60));
    sim.join_all();
    // Jobs 0 (after 2) and 1 (after 4, before checkpoint 4) ran; job 2
    // (after 6) is running when a worker is lost.
    until(
        &mut sim,
        Phase::Sleeping {
            job: 2,
            after_step: 6,
        },
    );
    sim.coord.handle_disconnect(sim.workers[0].conn, sim.now);
    sim.pump();
    let (a, _b) = (sim.rejoin(0), sim.rejoin(1));
    sim.run(10_000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim.violations.is_empty(), "{:?}", sim.violations);
    // Back at 4, no job at 4 again; job 2 at 6 again.
    let jobs: Vec<(u64, u64)> = sim.workers[a]
        .received
        .iter()
        .filter_map(|m| match m {
            ControlMessage::SleepStart(s) => Some((s.job, s.after_step)),
            _ => None,
        })
        .collect();
    assert_eq!(jobs, [(2, 6)]);
    assert_eq!(steps_after_assign(&sim, a), (Some(4), vec![4, 5, 6, 7]));
}

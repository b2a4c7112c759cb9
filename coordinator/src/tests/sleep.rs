//! Sleep jobs on the fake cluster: when they fall, what stops while they
//! run, where training resumes, and what an interrupted job leaves.

use std::time::Duration;

use glom_protocol::message::{ControlMessage, SleepDone};
use glom_protocol::Config;

use super::{config, no_recovery, Sim};
use crate::{Action, Coordinator, Error, LostReason, Phase, Settings, SleepTrigger};

/// `steps` steps, a checkpoint every `every_ckpt`, a sleep job every `every_sleep`.
fn sleep_config(steps: u64, every_ckpt: u64, every_sleep: u64) -> Config {
    let mut cfg = config(steps, every_ckpt);
    cfg.sleep.every_steps = every_sleep;
    cfg
}

/// The first step each worker was sent after each of its SleepStarts.
fn resumes(sim: &Sim, i: usize) -> Vec<(u64, Option<u64>)> {
    let msgs = sim.workers[i].significant();
    let mut out = Vec::new();
    for (k, m) in msgs.iter().enumerate() {
        if let ControlMessage::SleepStart(s) = m {
            let next = msgs[k + 1..].iter().find_map(|m| match m {
                ControlMessage::Step(s) => Some(s.step),
                _ => None,
            });
            out.push((s.after_step, next));
        }
    }
    out
}

#[test]
fn sleep_runs_at_exactly_the_configured_steps_and_training_resumes_there() {
    for max_ahead in [1, 2, 3] {
        let settings = Settings {
            max_ahead,
            ..Settings::default()
        };
        let mut sim = Sim::new(sleep_config(10, 4, 3), 2, settings);
        sim.workers[1].lag = 2;
        sim.join_all();
        sim.run(10_000);
        assert_eq!(
            sim.violations,
            Vec::<String>::new(),
            "max_ahead {max_ahead}"
        );
        assert_eq!(sim.coord.phase(), Phase::Finished);
        for (i, w) in sim.workers.iter().enumerate() {
            // 9 < 10 steps: a job after step 9 too; none after the last.
            assert_eq!(w.sleeps(), vec![3, 6, 9]);
            assert_eq!(w.steps(), (0..10).collect::<Vec<_>>());
            assert_eq!(w.saves(), vec![4, 8, 10]);
            assert_eq!(
                resumes(&sim, i),
                vec![(3, Some(3)), (6, Some(6)), (9, Some(9))]
            );
        }
        let started: Vec<(u64, u64, SleepTrigger)> = sim
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::SleepStarted {
                    job,
                    after_step,
                    trigger,
                } => Some((*job, *after_step, *trigger)),
                _ => None,
            })
            .collect();
        let steps = SleepTrigger::Steps;
        assert_eq!(started, [(0, 3, steps), (1, 6, steps), (2, 9, steps)]);
        assert_eq!(sim.coord.sleep_jobs(), 3);
        // Each job completes before the step it resumes at.
        let order: Vec<String> = sim
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::SleepCompleted { after_step, .. } => Some(format!("sleep {after_step}")),
                Action::StepCompleted { step, .. } if step % 3 == 0 => Some(format!("step {step}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            ["step 0", "sleep 3", "step 3", "sleep 6", "step 6", "sleep 9", "step 9"]
        );
    }
}

#[test]
fn a_job_sums_the_loss_shares_of_every_location() {
    let mut sim = Sim::new(sleep_config(4, 0, 2), 4, Settings::default());
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    let summaries: Vec<_> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SleepCompleted {
                job,
                after_step,
                summary,
            } => Some((*job, *after_step, summary.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), 1);
    let (job, after_step, s) = &summaries[0];
    assert_eq!((*job, *after_step), (0, 2));
    assert_eq!(s.locations, 64);
    // 64 shares of 1/64, 0.5/64 and 0.25/64.
    assert_eq!(
        (
            s.loss_negative_first,
            s.loss_negative_last,
            s.loss_positive_last
        ),
        (1.0, 0.5, 0.25)
    );
    assert_eq!(s.steps, sim.cfg.sleep.steps);
    assert_eq!(s.worker_seconds, [0.5, 1.5, 2.5, 3.5]);
    assert_eq!(s.max_seconds, 3.5);
    assert_eq!((s.before.clone(), s.after.clone()), (None, None));
}

#[test]
fn measurements_before_and_after_are_put_in_global_order() {
    let mut sim = Sim::new(sleep_config(3, 0, 1), 3, Settings::default());
    sim.observe_sleep = true;
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    let Some(Action::SleepCompleted { summary, .. }) = sim
        .actions
        .iter()
        .find(|a| matches!(a, Action::SleepCompleted { .. }))
    else {
        panic!("no job completed: {:?}", sim.actions);
    };
    for (obs, scale) in [(&summary.before, 1.0), (&summary.after, 2.0)] {
        let o = obs.as_ref().expect("measured");
        assert_eq!((o.images, o.dim, o.locations), (1, 2, 64));
        let level = &o.levels[0];
        let want: Vec<f32> = (0..64).flat_map(|g| [scale * g as f32, 1.0]).collect();
        assert_eq!(level.embeddings, want);
        let probe: Vec<f32> = (0..64).flat_map(|g| [0.0, g as f32]).collect();
        assert_eq!(level.probe, probe);
        assert_eq!((level.agreement_bu, level.agreement_td), (None, None));
    }
    for w in &sim.workers {
        assert_eq!(w.sleeps(), vec![1, 2]);
    }
}

#[test]
fn at_one_step_the_job_runs_before_the_checkpoint() {
    let mut sim = Sim::new(sleep_config(5, 2, 2), 2, Settings::default());
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    for w in &sim.workers {
        let order: Vec<String> = w
            .significant()
            .iter()
            .filter_map(|m| match m {
                ControlMessage::SleepStart(s) => Some(format!("sleep {}", s.after_step)),
                ControlMessage::CheckpointSave { step, .. } => Some(format!("save {step}")),
                ControlMessage::Step(s) => Some(format!("step {}", s.step)),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            [
                "step 0", "step 1", "sleep 2", "save 2", "step 2", "step 3", "sleep 4", "save 4",
                "step 4", "save 5"
            ]
        );
    }
    // The manifest of step 2 comes after the job: it holds the slept model.
    let order: Vec<String> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SleepCompleted { after_step, .. } => Some(format!("slept {after_step}")),
            Action::WriteManifest { manifest, .. } => Some(format!("manifest {}", manifest.step)),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            "slept 2",
            "manifest 2",
            "slept 4",
            "manifest 4",
            "manifest 5"
        ]
    );
}

#[test]
fn without_a_schedule_no_job_runs() {
    let mut sim = Sim::new(config(6, 3), 2, Settings::default());
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim.workers.iter().all(|w| w.sleeps().is_empty()));
    assert_eq!(sim.coord.sleep_jobs(), 0);
}

/// Run `sim` until it sleeps after `step` steps; no step is issued while
/// the job holds.
fn until_sleeping(sim: &mut Sim, step: u64) {
    for _ in 0..1000 {
        if matches!(sim.coord.phase(), Phase::Sleeping { after_step, .. } if after_step == step) {
            return;
        }
        sim.tick();
    }
    panic!("never slept after step {step}: {:?}", sim.coord.phase());
}

#[test]
fn a_worker_lost_during_sleep_leaves_the_last_checkpoint_as_the_resume_point() {
    for how in ["shutdown", "silent", "error"] {
        let mut sim = Sim::new(sleep_config(10, 2, 3), 2, no_recovery());
        sim.join_all();
        until_sleeping(&mut sim, 3);
        assert!(sim.coord.sleeping());
        // Worker 0 holds its report back; nothing moves meanwhile.
        sim.workers[0].silent = true;
        for _ in 0..20 {
            sim.tick();
        }
        assert_eq!(
            sim.coord.phase(),
            Phase::Sleeping {
                job: 0,
                after_step: 3
            }
        );
        assert_eq!(sim.workers[1].steps(), vec![0, 1, 2]);
        match how {
            "shutdown" => sim.deliver(
                0,
                ControlMessage::Shutdown {
                    reason: "SIGTERM".into(),
                },
            ),
            "error" => sim.deliver(
                0,
                ControlMessage::Error {
                    message: "out of memory".into(),
                },
            ),
            _ => sim.advance(Duration::from_secs(31)),
        }
        assert_eq!(sim.coord.phase(), Phase::Aborted, "{how}");
        let aborts: Vec<_> = sim
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Abort {
                    last_checkpoint, ..
                } => Some(*last_checkpoint),
                _ => None,
            })
            .collect();
        assert_eq!(aborts, [Some(2)], "{how}");
        // The job wrote nothing: the manifest of step 2 is the last one,
        // and no later checkpoint was even begun.
        let manifests: Vec<u64> = sim
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteManifest { manifest, .. } => Some(manifest.step),
                _ => None,
            })
            .collect();
        assert_eq!(manifests, [2], "{how}");
        assert!(sim
            .actions_where(|a| matches!(a, Action::SleepCompleted { .. }))
            .is_empty());
        for w in &sim.workers {
            assert_eq!(w.saves(), vec![2], "{how}");
        }
        // The survivor was told to shut down.
        assert!(sim.workers[1]
            .received
            .iter()
            .any(|m| matches!(m, ControlMessage::Shutdown { .. })));
        assert_eq!(sim.violations, Vec::<String>::new(), "{how}");
    }
}

#[test]
fn an_unexpected_or_malformed_report_is_a_protocol_violation() {
    let report = |job, locations: Vec<u32>, losses| SleepDone {
        job,
        locations,
        losses,
        steps: 1,
        seconds: 0.0,
        before: None,
        after: None,
    };
    // Outside a job.
    let mut sim = Sim::new(sleep_config(10, 0, 5), 2, Settings::default());
    sim.join_all();
    sim.deliver(
        0,
        ControlMessage::SleepDone(report(0, vec![0], vec![[0.0; 3]])),
    );
    assert!(sim.actions.iter().any(|a| matches!(
        a,
        Action::WorkerLost { worker_id: 0, reason: LostReason::ProtocolViolation { message } }
            if message.contains("no job is running")
    )));
    // During a job: the wrong job, or a location outside the grid.
    for (bad, what) in [
        (report(7, vec![0], vec![[0.0; 3]]), "job 7"),
        (report(0, vec![64], vec![[0.0; 3]]), "outside the grid"),
        (report(0, vec![1, 2], vec![[0.0; 3]]), "loss entries"),
    ] {
        let mut sim = Sim::new(sleep_config(10, 0, 1), 2, no_recovery());
        sim.join_all();
        until_sleeping(&mut sim, 1);
        sim.workers[0].silent = true;
        sim.deliver(0, ControlMessage::SleepDone(bad));
        let lost = sim.actions.iter().any(|a| matches!(
            a,
            Action::WorkerLost { worker_id: 0, reason: LostReason::ProtocolViolation { message } }
                if message.contains(what)
        ));
        assert!(lost, "{what}: {:?}", sim.actions);
        assert_eq!(sim.coord.phase(), Phase::Aborted);
    }
}

/// Settings whose wall clock reads `h:m:s` UTC (some day) at the start.
fn clock_at(h: u64, m: u64, s: u64) -> Settings {
    Settings {
        utc_at_start: Some(Duration::from_secs(20_000 * 86_400 + h * 3600 + m * 60 + s)),
        ..Settings::default()
    }
}

#[test]
fn a_timetable_job_starts_at_the_next_step_boundary() {
    let mut cfg = config(1000, 0);
    cfg.sleep.timetable = vec!["00:00".into(), "12:00".into()];
    let mut sim = Sim::new(cfg, 2, clock_at(23, 59, 59));
    sim.join_all();
    // Midnight is a second away: the coordinator wakes up for it.
    let deadline = sim.coord.next_timeout().unwrap();
    assert!(deadline <= sim.now + Duration::from_secs(1));
    for _ in 0..5 {
        sim.tick();
    }
    assert!(sim.workers.iter().all(|w| w.sleeps().is_empty()));
    // Midnight passes with steps in flight: they drain, then the job runs
    // after exactly the steps issued so far.
    let issued = sim.workers[0].steps().len() as u64;
    assert!(
        issued as usize > sim.workers[0].done as usize,
        "steps in flight"
    );
    sim.advance(Duration::from_secs(1));
    until_sleeping(&mut sim, issued);
    for _ in 0..50 {
        sim.tick();
    }
    assert_eq!(sim.violations, Vec::<String>::new());
    for (i, w) in sim.workers.iter().enumerate() {
        assert_eq!(w.sleeps(), vec![issued]);
        assert_eq!(resumes(&sim, i), vec![(issued, Some(issued))]);
        assert!(w.steps().len() as u64 > issued + 10, "training resumed");
    }
    assert!(sim.actions.iter().any(|a| matches!(
        a,
        Action::SleepStarted {
            job: 0,
            trigger: SleepTrigger::Timetable,
            ..
        }
    )));
    // The next entry is noon, twelve hours on.
    let next = sim.coord.sleep_deadline().unwrap();
    let hours = next.duration_since(sim.now).as_secs_f64() / 3600.0;
    assert!((11.9..12.0).contains(&hours), "{hours}");
}

#[test]
fn a_timetable_needs_the_wall_clock() {
    let mut cfg = config(10, 0);
    cfg.sleep.timetable = vec!["03:00".into()];
    let e = Coordinator::with_settings(cfg, 2, Settings::default(), std::time::Instant::now())
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Settings {
                key: "utc_at_start",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn steps_and_timetable_together_never_sleep_twice_at_one_step() {
    let mut cfg = config(1000, 0);
    cfg.sleep.every_steps = 4;
    cfg.sleep.timetable = vec!["00:00".into()];
    let mut sim = Sim::new(cfg, 1, clock_at(23, 59, 59));
    sim.join_all();
    // Let step 4's job begin, then let midnight pass while it runs.
    until_sleeping(&mut sim, 4);
    sim.advance(Duration::from_secs(2));
    for _ in 0..30 {
        sim.tick();
    }
    assert_eq!(sim.violations, Vec::<String>::new());
    // The timetable's job waits for a step after the last job: 5.
    let sleeps = sim.workers[0].sleeps();
    assert_eq!(&sleeps[..3], [4, 5, 8], "{sleeps:?}");
}

#[test]
fn a_stop_during_sleep_lets_the_job_finish_then_takes_the_final_checkpoint_there() {
    let mut sim = Sim::new(sleep_config(10, 2, 3), 2, Settings::default());
    sim.join_all();
    until_sleeping(&mut sim, 3);
    sim.coord.stop_early(sim.now);
    sim.pump();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    assert_eq!(sim.coord.phase(), Phase::Finished);
    for w in &sim.workers {
        assert_eq!(w.steps(), vec![0, 1, 2]);
        assert_eq!(w.sleeps(), vec![3]);
        assert_eq!(w.saves(), vec![2, 3]);
    }
    let order: Vec<String> = sim
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SleepCompleted { after_step, .. } => Some(format!("slept {after_step}")),
            Action::WriteManifest { manifest, .. } => Some(format!("manifest {}", manifest.step)),
            Action::Finished { steps } => Some(format!("finished {steps}")),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["manifest 2", "slept 3", "manifest 3", "finished 3"]);
}

#[test]
fn a_resumed_run_sleeps_only_after_its_checkpoint() {
    let settings = Settings {
        resume: Some(glom_protocol::message::ResumePoint {
            dir: "checkpoints/step-4".into(),
            step: 4,
        }),
        ..Settings::default()
    };
    let mut sim = Sim::new(sleep_config(8, 4, 2), 2, settings);
    sim.join_all();
    sim.run(1000);
    assert_eq!(sim.violations, Vec::<String>::new());
    assert_eq!(sim.coord.phase(), Phase::Finished);
    // The jobs at 2 and 4 are in the checkpoint; the one at 6 runs.
    assert_eq!(sim.workers[0].sleeps(), vec![6]);
    assert_eq!(sim.workers[0].steps(), vec![4, 5, 6, 7]);
}

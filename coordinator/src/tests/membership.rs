//! Joining, refusals, liveness and peers on the fake cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use glom_protocol::message::{ControlMessage, Hello, RefuseReason, PROTOCOL_VERSION};
use glom_protocol::Config;

use super::{config, metrics, no_recovery, Sim};
use crate::{Action, ConnId, Coordinator, Error, LostReason, Phase, Settings};

fn refusal(sim: &Sim, i: usize) -> Option<RefuseReason> {
    sim.workers[i].received.iter().find_map(|m| match m {
        ControlMessage::Refused { reason } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn mismatched_hellos_are_refused_and_the_run_still_starts() {
    let cfg = config(3, 0);
    let mut sim = Sim::new(cfg.clone(), 2, Settings::default());
    sim.join(0);
    let mut old = Hello::new(&cfg.hash(), "old", "10.0.0.9:7000");
    old.version = PROTOCOL_VERSION + 1;
    let old = sim.add_worker(old);
    let mut different = cfg.clone();
    different.model.dim += 1;
    let other = sim.add_worker(Hello::new(&different.hash(), "other", "10.0.0.8:7000"));
    sim.join(old);
    sim.join(other);
    assert_eq!(
        refusal(&sim, old),
        Some(RefuseReason::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 1
        })
    );
    assert!(
        matches!(refusal(&sim, other), Some(RefuseReason::ConfigMismatch { ours, .. }) if ours == cfg.hash())
    );
    assert!(sim.workers[old].closed && sim.workers[other].closed);
    let refused = sim.actions_where(|a| matches!(a, Action::Refused { .. }));
    assert_eq!(refused.len(), 2);
    // Worker 0 saw nothing of it, and the run starts when worker 1 joins.
    assert!(sim.workers[0].received.is_empty());
    assert_eq!(sim.coord.phase(), Phase::Joining);
    sim.join(1);
    sim.run(1000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert_eq!(sim.workers[1].steps(), vec![0, 1, 2]);
    assert_eq!(sim.violations, Vec::<String>::new());
}

#[test]
fn an_extra_worker_is_refused_full() {
    let mut sim = Sim::new(config(3, 0), 2, Settings::default());
    let extra = sim.add_worker(Hello::new(&sim.cfg.hash(), "extra", "10.0.0.7:7000"));
    sim.join(0);
    sim.join(1);
    sim.join(extra);
    assert_eq!(refusal(&sim, extra), Some(RefuseReason::Full));
    assert!(sim.workers[extra].closed);
    sim.run(1000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim.workers[extra].steps().is_empty());
}

#[test]
fn a_waiting_worker_that_leaves_frees_its_place() {
    let mut sim = Sim::new(config(2, 0), 2, Settings::default());
    sim.add_worker(Hello::new(&sim.cfg.hash(), "", ""));
    sim.join(0);
    sim.coord.handle_disconnect(sim.workers[0].conn, sim.now);
    sim.join(1);
    assert_eq!(sim.coord.phase(), Phase::Joining);
    sim.join(2);
    sim.run(1000);
    assert_eq!(sim.coord.phase(), Phase::Finished);
    assert!(sim
        .actions_where(|a| matches!(a, Action::WorkerLost { .. }))
        .is_empty());
}

#[test]
fn a_message_before_hello_is_an_error() {
    let mut sim = Sim::new(config(2, 0), 1, Settings::default());
    let conn = sim.workers[0].conn;
    sim.coord.handle_connect(conn, sim.now);
    sim.deliver(0, ControlMessage::Shutdown { reason: "x".into() });
    assert!(sim.workers[0].closed);
    assert!(
        matches!(&sim.workers[0].received[..], [ControlMessage::Error { message }] if message.contains("Shutdown"))
    );
}

#[test]
fn a_silent_worker_is_lost_after_the_timeout() {
    let mut sim = Sim::new(config(100, 0), 2, no_recovery());
    sim.join_all();
    for _ in 0..4 {
        sim.tick();
    }
    sim.workers[1].silent = true;
    let timeout = Settings::default().heartbeat_timeout;
    // Just short of the timeout, worker 0 beating: nobody is lost.
    for _ in 0..timeout.as_secs() - 1 {
        sim.deliver(0, ControlMessage::Heartbeat { now_ms: 0 });
        sim.advance(Duration::from_secs(1));
    }
    assert!(sim
        .actions_where(|a| matches!(a, Action::WorkerLost { .. }))
        .is_empty());
    assert_eq!(sim.coord.phase(), Phase::Running);
    // The coordinator's own heartbeats reached the workers meanwhile.
    assert!(sim.workers[0]
        .received
        .iter()
        .any(|m| matches!(m, ControlMessage::Heartbeat { .. })));
    sim.deliver(0, ControlMessage::Heartbeat { now_ms: 0 });
    sim.advance(Duration::from_secs(2));
    let lost = sim.actions_where(|a| {
        matches!(
            a,
            Action::WorkerLost {
                worker_id: 1,
                reason: LostReason::Silent { .. }
            }
        )
    });
    assert_eq!(lost.len(), 1, "{:?}", sim.actions);
    assert!(matches!(
        sim.actions.last(),
        Some(Action::Abort {
            last_checkpoint: None,
            ..
        })
    ));
    assert_eq!(sim.coord.phase(), Phase::Aborted);
    assert!(sim.workers[1].closed);
    assert!(matches!(
        sim.workers[0].received.last(),
        Some(ControlMessage::Shutdown { .. })
    ));
    assert_eq!(sim.coord.next_timeout(), None);
    // A late report from the survivor changes nothing.
    let before = sim.actions.len();
    let done = sim.workers[0].done;
    sim.deliver(
        0,
        ControlMessage::StepDone {
            step: done,
            metrics: metrics((0..32).collect(), [0.0; 4]),
        },
    );
    assert_eq!(sim.actions.len(), before, "{:?}", &sim.actions[before..]);
}

#[test]
fn a_disconnected_worker_is_lost_but_not_after_the_end() {
    let mut sim = Sim::new(config(4, 2), 2, no_recovery());
    sim.join_all();
    while sim.coord.phase() != (Phase::Checkpointing { step: 4 }) {
        sim.tick();
    }
    sim.coord.handle_disconnect(sim.workers[0].conn, sim.now);
    sim.pump();
    let lost = sim.actions_where(|a| {
        matches!(
            a,
            Action::WorkerLost {
                worker_id: 0,
                reason: LostReason::Disconnected
            }
        )
    });
    assert_eq!(lost.len(), 1);
    assert!(matches!(
        sim.actions.last(),
        Some(Action::Abort {
            last_checkpoint: Some(2),
            ..
        })
    ));

    let mut sim = Sim::new(config(4, 2), 2, Settings::default());
    sim.join_all();
    sim.run(1000); // ends with every worker disconnecting
    assert!(sim
        .actions_where(|a| matches!(a, Action::WorkerLost { .. } | Action::Abort { .. }))
        .is_empty());
}

#[test]
fn a_done_for_a_step_never_issued_is_a_protocol_violation() {
    let mut sim = Sim::new(config(4, 0), 1, no_recovery());
    sim.join_all();
    let bogus = ControlMessage::StepDone {
        step: 7,
        metrics: metrics((0..64).collect(), [0.0; 4]),
    };
    sim.deliver(0, bogus);
    let lost = sim.actions_where(|a| matches!(a, Action::WorkerLost { reason: LostReason::ProtocolViolation { message }, .. } if message.contains("never issued")));
    assert_eq!(lost.len(), 1, "{:?}", sim.actions);
    assert_eq!(sim.coord.phase(), Phase::Aborted);
}

/// Brute force: the tiles owning a cell within `reach` (rows and columns)
/// of a cell of tile `i`, other than `i`.
fn halo_owners(sim: &Sim, i: usize, reach: i64) -> BTreeSet<u32> {
    let side = sim.cfg.grid_side() as i64;
    let tile = |j: usize| sim.workers[j].assign.as_ref().unwrap().tile;
    let me = tile(i);
    let mut owners = BTreeSet::new();
    for r in 0..side {
        for c in 0..side {
            let dr = (me.rows.0 as i64 - r)
                .max(r - (me.rows.1 as i64 - 1))
                .max(0);
            let dc = (me.cols.0 as i64 - c)
                .max(c - (me.cols.1 as i64 - 1))
                .max(0);
            if dr.max(dc) == 0 || dr.max(dc) > reach {
                continue;
            }
            let j = (0..sim.workers.len())
                .find(|&j| tile(j).contains(r as u32, c as u32))
                .unwrap();
            owners.insert(j as u32);
        }
    }
    owners
}

fn check_peers(cfg: Config, n: usize, reach: u32) {
    let mut sim = Sim::new(cfg, n, Settings::default());
    sim.join_all();
    for i in 0..n {
        let a = sim.workers[i].assign.clone().expect("assigned");
        assert_eq!(a.reach, reach);
        let peers: BTreeSet<u32> = a.peers.iter().map(|p| p.worker_id).collect();
        assert_eq!(
            peers,
            halo_owners(&sim, i, reach as i64),
            "tile {i}: {:?}",
            a.tile
        );
        for p in &a.peers {
            let w = &sim.workers[p.worker_id as usize];
            assert_eq!(p.addr, w.hello.peer_addr);
            assert_eq!(Some(p.tile), w.assign.as_ref().map(|a| a.tile));
        }
    }
}

#[test]
fn peers_of_four_workers_on_the_default_grid_intersect_the_halo() {
    // Reach 10 on an 8x8 grid: every tile is in every other's halo.
    let mut cfg = config(3, 0);
    cfg.model.neighbour_sigma = [1.0, 4.0];
    check_peers(cfg, 4, 10);
}

#[test]
fn peers_of_six_workers_with_a_narrow_halo_intersect_the_halo() {
    let mut cfg = config(3, 0);
    cfg.model.neighbour_sigma = [0.4, 0.4];
    check_peers(cfg, 6, 1);
}

#[test]
fn bad_setups_are_errors() {
    let now = std::time::Instant::now();
    let e = Coordinator::new(Config::default(), 65, now).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Plan {
                workers: 65,
                side: 8,
                ..
            }
        ),
        "{e}"
    );
    let zero = Settings {
        max_ahead: 0,
        ..Settings::default()
    };
    let e = Coordinator::with_settings(Config::default(), 2, zero, now).unwrap_err();
    assert!(e.to_string().contains("max_ahead"), "{e}");
    let mut cfg = Config::default();
    cfg.model.levels = 0;
    let e = Coordinator::new(cfg, 2, now).unwrap_err();
    assert!(e.to_string().contains("model.levels"), "{e}");
    let _ = ConnId(0);
}

//! Automatic recovery from a lost worker (DESIGN.md section 7).
//!
//! When a member of the running cluster is lost (its connection closed,
//! it fell silent, it reported an error), the coordinator does not end the
//! run. It rolls the whole cluster back to the last complete checkpoint
//! (or to the start, before the first one):
//! 1. every survivor is sent [`ControlMessage::Rejoin`] and its connection
//!    is closed; it drops its work and joins again with a new hello;
//! 2. the coordinator is `Joining` again, with that checkpoint as the
//!    resume point of every [`glom_protocol::message::Assign`] and the
//!    attempt number raised by one;
//! 3. as soon as the full plan's number of workers joined (the survivors
//!    and a replacement, with any name), the run starts again on the same
//!    tiles; if they are not all there after
//!    [`crate::Settings::rejoin_timeout`], the tiles are re-planned over
//!    the workers that did join, down to [`crate::Settings::min_workers`];
//!    fewer ends the run with the error a loss gave before recovery existed.
//!
//! A rolled-back run computes the same bits as one that never failed:
//! every worker resumes from per-location keyed checkpoint tensors, and
//! the result of a step does not depend on the tiling (the sharding
//! invariance of DESIGN.md section 4). Halo connections carry the attempt,
//! so a frame of the abandoned attempt never reaches the new one.

use std::time::{Duration, Instant};

use glom_protocol::message::{ControlMessage, ResumePoint};

use crate::plan::plan;
use crate::schedule::checkpoint_dir;
use crate::state::{Action, Coordinator, LostReason, Stage};

/// A restart of the cluster, as [`crate::Action::Restarted`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// Restarts so far, this one included.
    pub attempt: u32,
    /// The step training went back to (its last complete checkpoint, or 0).
    pub to_step: u64,
    /// Which worker was lost and why.
    pub reason: String,
    /// The kind of loss ([`LostReason::label`]).
    pub cause: &'static str,
    pub workers_before: usize,
    pub workers_after: usize,
}

/// A restart waiting for its workers.
#[derive(Debug)]
pub(crate) struct Rejoin {
    /// When to stop waiting for the full plan.
    pub(crate) deadline: Instant,
    /// Why the cluster restarts (for the log and the metrics record).
    pub(crate) reason: String,
    /// [`LostReason::label`] of the loss.
    pub(crate) cause: &'static str,
    /// Members of the cluster when the worker was lost.
    pub(crate) workers_before: usize,
}

impl Coordinator {
    /// Restarts so far (the attempt of the current assignments).
    pub fn restarts(&self) -> u32 {
        self.attempt
    }

    /// When a restart stops waiting for the full plan, if one waits.
    pub(crate) fn rejoin_deadline(&self) -> Option<Instant> {
        self.rejoin.as_ref().map(|r| r.deadline)
    }

    /// The checkpoint a restart resumes from: the last complete one, which
    /// is the run's own `step-N` unless it is the one the run resumed from.
    fn rollback_point(&self) -> Option<ResumePoint> {
        let step = self.last_checkpoint?;
        match &self.settings.resume {
            Some(r) if r.step == step => Some(r.clone()),
            _ => Some(ResumePoint {
                dir: checkpoint_dir(&self.settings.checkpoint_root, step),
                step,
            }),
        }
    }

    /// Roll the cluster back after a loss (`why`, of kind `reason`): tell
    /// the survivors to rejoin and wait for the workers of the full plan.
    pub(crate) fn restart(&mut self, why: String, reason: &LostReason, now: Instant) {
        self.attempt += 1;
        let point = self.rollback_point();
        let to_step = point.as_ref().map_or(0, |p| p.step);
        let survivors: Vec<_> = self
            .workers
            .iter()
            .filter(|w| w.connected)
            .map(|w| w.conn)
            .collect();
        for conn in survivors {
            self.send(
                conn,
                ControlMessage::Rejoin {
                    reason: why.clone(),
                },
            );
            self.close(conn);
        }
        let workers_before = self.workers.len();
        self.workers.clear();
        self.pending.clear();
        self.sleep.roll_back(to_step);
        self.next_step = to_step;
        self.completed = to_step;
        self.settings.resume = point;
        self.stage = Stage::Joining;
        let side = self.cfg.grid_side();
        self.tiles = plan(side, side, self.expected).expect("the full plan was made at the start");
        let timeout = self.settings.rejoin_timeout;
        self.rejoin = Some(Rejoin {
            deadline: now + timeout,
            reason: why.clone(),
            cause: reason.label(),
            workers_before,
        });
        self.emit(Action::RollingBack {
            attempt: self.attempt,
            to_step,
            reason: why,
            workers: self.expected,
            rejoin_timeout: timeout,
        });
    }

    /// The rejoin deadline passed: go on with the workers that joined
    /// (re-planning the tiles over them), or abort if they are too few.
    pub(crate) fn poll_rejoin(&mut self, now: Instant) {
        let Some(rejoin) = &self.rejoin else { return };
        if now < rejoin.deadline || !matches!(self.stage, Stage::Joining) {
            return;
        }
        let joined = self.waiting.len();
        let min = self.settings.min_workers;
        let side = self.cfg.grid_side();
        // The most workers that both joined and can split the grid.
        let fit = (min.max(1)..=joined)
            .rev()
            .find_map(|n| plan(side, side, n).ok().map(|tiles| (n, tiles)));
        let Some((n, tiles)) = fit else {
            let waited = self.settings.rejoin_timeout;
            return self.abort(format!(
                "{}; only {joined} of {} workers joined again within {} \
                 (cluster.rejoin_seconds), fewer than cluster.min_workers = {min}",
                rejoin.reason,
                self.expected,
                seconds(waited)
            ));
        };
        // Workers beyond those the grid can be split for are not needed.
        for conn in self.waiting.split_off(n) {
            self.send(
                conn,
                ControlMessage::Shutdown {
                    reason: format!("the restarted cluster goes on with {n} workers"),
                },
            );
            self.close(conn);
        }
        self.tiles = tiles;
        self.start(now);
    }

    /// Called by the start of the run: after a restart, say so first.
    pub(crate) fn restarted(&mut self) {
        if let Some(r) = self.rejoin.take() {
            self.emit(Action::Restarted(Restart {
                attempt: self.attempt,
                to_step: self.completed,
                reason: r.reason,
                cause: r.cause,
                workers_before: r.workers_before,
                workers_after: self.tiles.len(),
            }));
        }
    }
}

/// `d` in seconds for a message, e.g. "60 s".
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

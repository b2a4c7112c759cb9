//! The step driver and checkpoint orchestration (DESIGN.md sections 4, 7).
//!
//! Steps are numbered from 0, like the worker's `Trainer::step`; a
//! checkpoint is named by the number of steps completed before it (as in
//! `glom train`'s `checkpoints/step-<N>`). Checkpoints are taken every
//! `checkpoint.every_steps` steps and after the last step (once, if the two
//! coincide). No step past a checkpoint is issued before the checkpoint is
//! acknowledged by every worker, so the outstanding steps drain on their own.
//!
//! # What a step carries
//! [`Step`] is sent with `batch` empty and `mask_key = step`: every worker
//! derives the images from the run seed and the step number with
//! `glom_worker::learn::batch_indices(cfg, step, dataset_len)`, and the
//! patch mask from `mask_key`, exactly as single-process training does.
//! The coordinator cannot compute the indices itself: it never loads the
//! dataset, so it does not know its length; and the config hash checked at
//! the handshake guarantees every worker draws from the same seed.

use std::time::Instant;

use glom_protocol::manifest::{Manifest, ShardEntry};
use glom_protocol::message::{ControlMessage, ShardAck, Step, StepMetrics};

use glom_protocol::Config;

use crate::metrics::StepAccumulator;
use crate::state::{Action, Coordinator, LostReason, Stage};

/// Step count at which the next checkpoint falls, after one at `last`
/// (`None`: none yet): the next multiple of `every` (0 = never), capped at
/// `steps`, the final checkpoint.
pub fn next_checkpoint(last: Option<u64>, every: u64, steps: u64) -> u64 {
    if every == 0 {
        return steps;
    }
    let next = match last {
        Some(l) => (l / every + 1) * every,
        None => every,
    };
    next.min(steps)
}

/// Whether the run logs a metrics record after step `step` (0-based): the
/// first, the last, and every `train.log_every`-th.
pub fn logged(cfg: &Config, step: u64) -> bool {
    let n = step + 1;
    n == 1 || n == cfg.train.steps || n.is_multiple_of(cfg.train.log_every.max(1))
}

/// Whether step `step` (0-based) is observed: the [`logged`] ones and
/// those after which `metrics.every_steps` steps are complete (where the
/// collapse measures are computed).
pub fn observes(cfg: &Config, step: u64) -> bool {
    logged(cfg, step)
        || (cfg.metrics.enabled && (step + 1).is_multiple_of(cfg.metrics.every_steps.max(1)))
}

/// Directory of checkpoint `step` under `root`.
pub fn checkpoint_dir(root: &str, step: u64) -> String {
    format!("{}/step-{step}", root.trim_end_matches('/'))
}

impl Coordinator {
    /// Issue what may be issued: a sleep job, then a checkpoint, when
    /// their step count is reached; else steps up to `max_ahead`
    /// outstanding and never past the next job or checkpoint.
    pub(crate) fn drive(&mut self, now: Instant) {
        if !matches!(self.stage, Stage::Running) || self.sleeping() {
            return;
        }
        self.poll_timetable(now);
        let checkpoint = next_checkpoint(
            self.last_checkpoint,
            self.cfg.checkpoint.every_steps,
            self.cfg.train.steps,
        );
        let sleep = self.next_sleep();
        let target = sleep.map_or(checkpoint, |(n, _)| n.min(checkpoint));
        if self.completed == target {
            if let Some((n, trigger)) = sleep.filter(|&(n, _)| n == target) {
                return self.begin_sleep(n, trigger);
            }
            if self.last_checkpoint != Some(target) {
                return self.begin_checkpoint(target);
            }
        }
        while self.next_step < target && self.outstanding() < self.settings.max_ahead {
            let step = self.next_step;
            self.next_step += 1;
            self.broadcast(ControlMessage::Step(Step {
                step,
                batch: Vec::new(),
                mask_key: step,
                observe: observes(&self.cfg, step),
            }));
        }
    }

    pub(crate) fn on_step_done(&mut self, id: u32, step: u64, metrics: StepMetrics, now: Instant) {
        let expected = self.workers[id as usize].done;
        if step != expected || step >= self.next_step {
            let message = if step >= self.next_step {
                format!("StepDone for step {step}, which was never issued")
            } else {
                format!("StepDone for step {step}, expected step {expected}")
            };
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        }
        self.workers[id as usize].done += 1;
        let grid = self.cfg.grid_side() * self.cfg.grid_side();
        let acc = self
            .pending
            .entry(step)
            .or_insert_with(|| StepAccumulator::new(grid));
        if let Err(e) = acc.add(id, metrics) {
            let message = format!("malformed metrics of step {step}: {e}");
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        }
        if acc.reports < self.workers.len() {
            return;
        }
        // Each worker reports in order, so steps complete in order.
        debug_assert_eq!(step, self.completed);
        let summary = match self.pending.remove(&step) {
            Some(acc) => acc.finish(),
            None => return,
        };
        self.completed = step + 1;
        self.emit(Action::StepCompleted { step, summary });
        self.drive(now);
    }

    fn begin_checkpoint(&mut self, step: u64) {
        self.stage = Stage::Checkpointing {
            step,
            acks: vec![None; self.workers.len()],
            missing: self.workers.len(),
        };
        let dir = checkpoint_dir(&self.settings.checkpoint_root, step);
        self.broadcast(ControlMessage::CheckpointSave { step, dir });
    }

    pub(crate) fn on_checkpoint_ack(&mut self, id: u32, step: u64, shard: ShardAck, now: Instant) {
        let Stage::Checkpointing {
            step: saving,
            acks,
            missing,
        } = &mut self.stage
        else {
            let message =
                format!("CheckpointAck for step {step} while no checkpoint is in progress");
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        };
        let slot = &mut acks[id as usize];
        if *saving != step || slot.is_some() {
            let message = format!(
                "CheckpointAck for step {step} (saving step {saving}, already acknowledged: {})",
                slot.is_some()
            );
            return self.lose(id, LostReason::ProtocolViolation { message }, now);
        }
        *slot = Some(shard);
        *missing -= 1;
        if *missing > 0 {
            return;
        }
        let shards: Vec<ShardEntry> = std::mem::take(acks)
            .into_iter()
            .flatten()
            .map(ShardEntry::from)
            .collect();
        // One optimiser update per step: Adam's counter equals the step count.
        let manifest = Manifest::new(step, step, &self.cfg, shards);
        if let Err(e) = manifest.validate() {
            return self.abort(format!(
                "the shards of checkpoint {step} do not form a checkpoint: {e}"
            ));
        }
        let dir = checkpoint_dir(&self.settings.checkpoint_root, step);
        self.emit(Action::WriteManifest {
            dir,
            manifest: Box::new(manifest),
        });
        self.last_checkpoint = Some(step);
        if step >= self.cfg.train.steps {
            self.stage = Stage::Finished;
            self.broadcast(ControlMessage::Shutdown {
                reason: format!("training finished after {step} steps"),
            });
            self.emit(Action::Finished { steps: step });
        } else {
            self.stage = Stage::Running;
            self.drive(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_on_multiples_and_at_the_end() {
        let walk = |every, steps| {
            let (mut last, mut seen) = (None, Vec::new());
            loop {
                let next = next_checkpoint(last, every, steps);
                seen.push(next);
                if next >= steps {
                    return seen;
                }
                last = Some(next);
            }
        };
        assert_eq!(walk(2, 5), vec![2, 4, 5]);
        assert_eq!(walk(2, 4), vec![2, 4]);
        assert_eq!(walk(0, 5), vec![5]);
        assert_eq!(walk(10, 3), vec![3]);
        assert_eq!(walk(3, 0), vec![0]);
    }

    #[test]
    fn checkpoint_dirs_follow_glom_train() {
        assert_eq!(
            checkpoint_dir("run/checkpoints/", 4),
            "run/checkpoints/step-4"
        );
    }
}

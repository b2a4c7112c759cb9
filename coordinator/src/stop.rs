//! Stopping a run early (Ctrl-C, a signal from the cluster scheduler):
//! finish the steps already issued, take the final checkpoint there, shut
//! the workers down. Nothing trained is lost.

use std::time::Instant;

use crate::state::{Coordinator, Stage};

impl Coordinator {
    /// End the run after the steps already issued: the final checkpoint is
    /// taken once they are done, then every worker is told to shut down.
    /// Before the start it aborts instead (nothing to save).
    pub fn stop_early(&mut self, now: Instant) {
        match self.stage {
            Stage::Joining => self.abort("stopped before every worker joined".into()),
            Stage::Running | Stage::Checkpointing { .. } => {
                // The schedule's own rule ("the final checkpoint falls at
                // train.steps") then ends the run where it stands.
                self.cfg.train.steps = self.cfg.train.steps.min(self.next_step);
                self.drive(now);
            }
            Stage::Finished | Stage::Aborted => {}
        }
    }
}

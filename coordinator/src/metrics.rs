//! The metrics of one step over the whole grid, aggregated from every
//! worker's [`StepMetrics`].
//!
//! Losses arrive as means over each worker's own locations (see
//! [`StepMetrics`]); weighting them by `locations` gives the mean over the
//! grid, whatever the tiling. Traffic adds up; waits and step times are
//! reported as the maximum, since the slowest worker sets the pace.

use glom_protocol::message::{EmbeddingSample, StepMetrics};
use serde::{Deserialize, Serialize};

/// One step's metrics over the grid, for the driver to log and export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    /// Location-weighted means over the grid of the workers' losses.
    pub loss_recon: f64,
    pub loss_distill_bu: f64,
    pub loss_distill_td: f64,
    pub loss_negative: f64,
    /// Locations that reported (the grid size when every worker did).
    pub locations: u64,
    /// Halo bytes sent by all workers: compare with the plan's minimum.
    pub halo_bytes_sent: u64,
    /// Halo bytes received by all workers (equal to sent unless a frame
    /// was lost, which the transport does not allow).
    pub halo_bytes_received: u64,
    /// Longest time any worker waited for a halo during the step.
    pub max_halo_wait_seconds: f64,
    /// Longest step time of any worker: the step time of the cluster.
    pub max_step_seconds: f64,
    /// The workers' embedding samples, merged per level.
    pub collapse_samples: Vec<EmbeddingSample>,
}

/// Sums of one step's reports while they come in.
#[derive(Debug, Default)]
pub(crate) struct StepAccumulator {
    /// Workers that reported.
    pub(crate) reports: usize,
    /// Sums of `loss * locations`, divided by `locations` at the end.
    weighted: [f64; 4],
    summary: StepSummary,
}

impl StepAccumulator {
    /// Add one worker's report.
    pub(crate) fn add(&mut self, m: StepMetrics) {
        let w = f64::from(m.locations);
        let losses = [
            m.loss_recon,
            m.loss_distill_bu,
            m.loss_distill_td,
            m.loss_negative,
        ];
        for (sum, loss) in self.weighted.iter_mut().zip(losses) {
            *sum += loss * w;
        }
        let s = &mut self.summary;
        s.locations += u64::from(m.locations);
        s.halo_bytes_sent += m.halo_bytes_sent;
        s.halo_bytes_received += m.halo_bytes_received;
        s.max_halo_wait_seconds = s.max_halo_wait_seconds.max(m.halo_wait_seconds);
        s.max_step_seconds = s.max_step_seconds.max(m.step_seconds);
        for sample in m.collapse_samples {
            match s
                .collapse_samples
                .iter_mut()
                .find(|o| o.level == sample.level && o.dim == sample.dim)
            {
                Some(o) => o.values.extend(sample.values),
                None => s.collapse_samples.push(sample),
            }
        }
        self.reports += 1;
    }

    /// The summary of the reports so far.
    pub(crate) fn finish(self) -> StepSummary {
        let mut s = self.summary;
        let n = s.locations.max(1) as f64;
        let [recon, bu, td, neg] = self.weighted.map(|x| x / n);
        (
            s.loss_recon,
            s.loss_distill_bu,
            s.loss_distill_td,
            s.loss_negative,
        ) = (recon, bu, td, neg);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(loss: f64, locations: u32, wait: f64, level: u32) -> StepMetrics {
        StepMetrics {
            loss_recon: loss,
            loss_distill_bu: 2.0 * loss,
            loss_distill_td: 0.0,
            loss_negative: 0.0,
            locations,
            halo_bytes_sent: 100,
            halo_bytes_received: 90,
            halo_wait_seconds: wait,
            step_seconds: 1.0 + wait,
            collapse_samples: vec![EmbeddingSample {
                level,
                dim: 2,
                values: vec![1.0, 2.0],
            }],
        }
    }

    #[test]
    fn losses_are_weighted_by_locations_and_traffic_adds_up() {
        let mut acc = StepAccumulator::default();
        acc.add(metrics(1.0, 48, 0.5, 0));
        acc.add(metrics(3.0, 16, 0.25, 0));
        assert_eq!(acc.reports, 2);
        let s = acc.finish();
        assert_eq!(s.loss_recon, (48.0 + 3.0 * 16.0) / 64.0);
        assert_eq!(s.loss_distill_bu, 2.0 * s.loss_recon);
        assert_eq!(s.locations, 64);
        assert_eq!((s.halo_bytes_sent, s.halo_bytes_received), (200, 180));
        assert_eq!((s.max_halo_wait_seconds, s.max_step_seconds), (0.5, 1.5));
        assert_eq!(s.collapse_samples.len(), 1);
        assert_eq!(s.collapse_samples[0].values.len(), 4);
    }
}

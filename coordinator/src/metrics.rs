//! The metrics of one step over the whole grid, assembled from every
//! worker's [`StepMetrics`].
//!
//! Losses arrive per location and are added up in global location order,
//! and observed embeddings are put back in global order, so the summary of
//! a step is the same, to the last bit, whatever the tiling (sharding
//! invariance covers the metrics too). Traffic adds up; waits and step
//! times are also kept per worker, and the maximum is the cluster's, since
//! the slowest worker sets the pace.

use glom_protocol::message::{LossShares, Observation, StepMetrics, LOSS_TERMS};
use serde::{Deserialize, Serialize};

/// One step's metrics over the grid, for the driver to log and export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    /// Grid means of the loss terms, in the order of
    /// [`glom_protocol::message::LOSS_TERM_NAMES`].
    pub losses: LossShares,
    /// Locations that reported (the grid size when every worker did).
    pub locations: u64,
    /// Halo bytes sent by all workers: compare with the plan's minimum.
    pub halo_bytes_sent: u64,
    /// Halo bytes received by all workers (equal to sent: the transport
    /// loses nothing).
    pub halo_bytes_received: u64,
    /// Longest time any worker waited for a halo during the step.
    pub max_halo_wait_seconds: f64,
    /// Longest step time of any worker: the step time of the cluster.
    pub max_step_seconds: f64,
    /// Each worker's share, by worker id.
    pub workers: Vec<WorkerStep>,
    /// On observed steps: the workers' observations in global order.
    pub observation: Option<GridObservation>,
}

/// One worker's traffic and timing in a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStep {
    pub worker_id: u32,
    pub halo_bytes_sent: u64,
    pub halo_bytes_received: u64,
    pub halo_wait_seconds: f64,
    pub step_seconds: f64,
    pub observe_seconds: f64,
}

/// The observations of every worker, as if one process had made them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GridObservation {
    /// Images per location in `embeddings`.
    pub images: usize,
    pub dim: usize,
    /// Locations of the grid.
    pub locations: usize,
    pub levels: Vec<GridLevel>,
}

/// One level of a [`GridObservation`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GridLevel {
    /// `[locations, images, dim]`, locations in global id order.
    pub embeddings: Vec<f32>,
    /// `[locations, dim]`: every location's bottom-up net on the probe input.
    pub probe: Vec<f32>,
    /// Grid means of the per-location agreements (`None` where the level
    /// has no such prediction).
    pub agreement_bu: Option<f64>,
    pub agreement_td: Option<f64>,
}

/// One worker's observation, kept until every worker reported.
#[derive(Debug)]
struct Observed {
    locations: Vec<u32>,
    observation: Observation,
}

/// One step's reports while they come in.
#[derive(Debug)]
pub(crate) struct StepAccumulator {
    /// Workers that reported.
    pub(crate) reports: usize,
    /// Per global location: its loss terms, once reported.
    losses: Vec<Option<LossShares>>,
    workers: Vec<WorkerStep>,
    observed: Vec<Observed>,
}

impl StepAccumulator {
    /// An empty step on a grid of `locations` locations.
    pub(crate) fn new(locations: usize) -> Self {
        Self {
            reports: 0,
            losses: vec![None; locations],
            workers: Vec::new(),
            observed: Vec::new(),
        }
    }

    /// Add worker `worker_id`'s report; an error says what is malformed
    /// (the worker is then in breach of the protocol).
    pub(crate) fn add(&mut self, worker_id: u32, m: StepMetrics) -> Result<(), String> {
        if m.losses.len() != m.locations.len() {
            return Err(format!(
                "{} loss entries for {} locations",
                m.losses.len(),
                m.locations.len()
            ));
        }
        let grid = self.losses.len();
        for (&g, l) in m.locations.iter().zip(&m.losses) {
            let slot = self
                .losses
                .get_mut(g as usize)
                .ok_or_else(|| format!("location {g} is outside the grid of {grid} locations"))?;
            if slot.is_some() {
                return Err(format!("location {g} was reported twice"));
            }
            *slot = Some(*l);
        }
        if let Some(o) = m.observation {
            let (p, n, d) = (m.locations.len(), o.images as usize, o.dim as usize);
            for (l, lv) in o.levels.iter().enumerate() {
                let bad = |what: &str, got: usize, want: usize| {
                    Err(format!(
                        "level {l} observation: {got} {what} values, expected {want}"
                    ))
                };
                if lv.embeddings.len() != p * n * d {
                    return bad("embedding", lv.embeddings.len(), p * n * d);
                }
                if lv.probe.len() != p * d {
                    return bad("probe", lv.probe.len(), p * d);
                }
                for (what, v) in [
                    ("bottom-up", &lv.agreement_bu),
                    ("top-down", &lv.agreement_td),
                ] {
                    if !v.is_empty() && v.len() != p {
                        return bad(what, v.len(), p);
                    }
                }
            }
            self.observed.push(Observed {
                locations: m.locations,
                observation: o,
            });
        }
        self.workers.push(WorkerStep {
            worker_id,
            halo_bytes_sent: m.halo_bytes_sent,
            halo_bytes_received: m.halo_bytes_received,
            halo_wait_seconds: m.halo_wait_seconds,
            step_seconds: m.step_seconds,
            observe_seconds: m.observe_seconds,
        });
        self.reports += 1;
        Ok(())
    }

    /// The summary of the reports.
    pub(crate) fn finish(mut self) -> StepSummary {
        let mut sums = [0f64; LOSS_TERMS];
        let mut locations = 0;
        for l in self.losses.iter().flatten() {
            locations += 1;
            for (s, v) in sums.iter_mut().zip(l) {
                *s += v;
            }
        }
        self.workers.sort_by_key(|w| w.worker_id);
        let parts: Vec<(&[u32], &Observation)> = self
            .observed
            .iter()
            .map(|o| (o.locations.as_slice(), &o.observation))
            .collect();
        let observation = grid_observation(self.losses.len(), &parts);
        StepSummary {
            losses: sums,
            locations,
            halo_bytes_sent: self.workers.iter().map(|w| w.halo_bytes_sent).sum(),
            halo_bytes_received: self.workers.iter().map(|w| w.halo_bytes_received).sum(),
            max_halo_wait_seconds: self
                .workers
                .iter()
                .map(|w| w.halo_wait_seconds)
                .fold(0.0, f64::max),
            max_step_seconds: self
                .workers
                .iter()
                .map(|w| w.step_seconds)
                .fold(0.0, f64::max),
            workers: self.workers,
            observation,
        }
    }
}

/// Put the workers' observations (each with the global ids of its
/// locations) back in global location order; `None` unless they agree in
/// shape and cover the grid exactly.
pub(crate) fn grid_observation(
    grid: usize,
    observed: &[(&[u32], &Observation)],
) -> Option<GridObservation> {
    let first = observed.first()?.1;
    let (n, d, k) = (
        first.images as usize,
        first.dim as usize,
        first.levels.len(),
    );
    let same =
        |o: &Observation| o.images as usize == n && o.dim as usize == d && o.levels.len() == k;
    if !observed.iter().all(|(_, o)| same(o))
        || observed.iter().map(|(l, _)| l.len()).sum::<usize>() != grid
    {
        return None;
    }
    let mut levels = Vec::with_capacity(k);
    for l in 0..k {
        let mut level = GridLevel {
            embeddings: vec![0.0; grid * n * d],
            probe: vec![0.0; grid * d],
            ..GridLevel::default()
        };
        let mut bu = vec![None; grid];
        let mut td = vec![None; grid];
        for (locations, o) in observed {
            let lv = &o.levels[l];
            for (i, &g) in locations.iter().enumerate() {
                let g = g as usize;
                level.embeddings[g * n * d..(g + 1) * n * d]
                    .copy_from_slice(&lv.embeddings[i * n * d..(i + 1) * n * d]);
                level.probe[g * d..(g + 1) * d].copy_from_slice(&lv.probe[i * d..(i + 1) * d]);
                bu[g] = lv.agreement_bu.get(i).copied();
                td[g] = lv.agreement_td.get(i).copied();
            }
        }
        let mean = |v: &[Option<f64>]| -> Option<f64> {
            let vals: Option<Vec<f64>> = v.iter().copied().collect();
            vals.map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
        };
        level.agreement_bu = mean(&bu);
        level.agreement_td = mean(&td);
        levels.push(level);
    }
    Some(GridObservation {
        images: n,
        dim: d,
        locations: grid,
        levels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use glom_protocol::message::LevelObservation;

    fn metrics(locations: Vec<u32>, loss: f64, wait: f64) -> StepMetrics {
        let observation = Observation {
            images: 1,
            dim: 2,
            levels: vec![LevelObservation {
                embeddings: locations.iter().flat_map(|&g| [g as f32, 0.5]).collect(),
                probe: locations.iter().flat_map(|&g| [0.0, g as f32]).collect(),
                agreement_bu: Vec::new(),
                agreement_td: locations.iter().map(|&g| f64::from(g)).collect(),
            }],
        };
        StepMetrics {
            losses: locations
                .iter()
                .map(|_| {
                    let mut l = [0.0; LOSS_TERMS];
                    (l[0], l[1]) = (loss, 2.0 * loss);
                    l
                })
                .collect(),
            locations,
            halo_bytes_sent: 100,
            halo_bytes_received: 90,
            halo_wait_seconds: wait,
            step_seconds: 1.0 + wait,
            observe_seconds: 0.0,
            observation: Some(observation),
        }
    }

    #[test]
    fn losses_add_up_and_observations_are_put_in_global_order() {
        let mut acc = StepAccumulator::new(4);
        acc.add(1, metrics(vec![3, 1], 0.25, 0.5)).unwrap();
        acc.add(0, metrics(vec![0, 2], 0.125, 0.25)).unwrap();
        assert_eq!(acc.reports, 2);
        let s = acc.finish();
        assert_eq!((s.losses[0], s.losses[1]), (0.75, 1.5));
        assert_eq!(s.locations, 4);
        assert_eq!((s.halo_bytes_sent, s.halo_bytes_received), (200, 180));
        assert_eq!((s.max_halo_wait_seconds, s.max_step_seconds), (0.5, 1.5));
        assert_eq!(
            s.workers.iter().map(|w| w.worker_id).collect::<Vec<_>>(),
            [0, 1]
        );
        let o = s.observation.unwrap();
        let level = &o.levels[0];
        assert_eq!(level.embeddings, [0.0, 0.5, 1.0, 0.5, 2.0, 0.5, 3.0, 0.5]);
        assert_eq!(level.probe, [0.0, 0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 3.0]);
        assert_eq!(level.agreement_bu, None);
        assert_eq!(level.agreement_td, Some(1.5));
    }

    #[test]
    fn malformed_reports_are_refused_with_the_reason() {
        let mut acc = StepAccumulator::new(4);
        let e = acc.add(0, metrics(vec![7], 0.0, 0.0)).unwrap_err();
        assert!(e.contains("location 7 is outside"), "{e}");
        acc.add(0, metrics(vec![1], 0.0, 0.0)).unwrap();
        let e = acc.add(1, metrics(vec![1], 0.0, 0.0)).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let mut m = metrics(vec![2], 0.0, 0.0);
        m.observation.as_mut().unwrap().levels[0].probe.push(1.0);
        let e = acc.add(1, m).unwrap_err();
        assert!(e.contains("probe"), "{e}");
        let mut m = metrics(vec![3], 0.0, 0.0);
        m.losses.clear();
        assert!(acc.add(1, m).unwrap_err().contains("loss entries"));
    }
}

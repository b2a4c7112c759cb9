//! The divergence guard: a run whose loss blows up stops, instead of
//! training on and checkpointing garbage.
//!
//! A non-finite total loss always stops the run. A finite blow-up is a
//! step whose weighted total loss, in absolute value, is above
//! `train.divergence_factor` times the median of the absolute totals of the
//! last [`WINDOW`] steps (the median, not the mean, so that one bad step
//! does not raise its own bar). The guard needs [`MIN_HISTORY`] steps before
//! it judges, and reads the total rather than each term, because single
//! terms legitimately grow by orders of magnitude from near zero (the
//! decorrelation term starts at about 1e-6).

use std::collections::VecDeque;

use glom_protocol::config::Config;
use glom_protocol::message::LOSS_TERMS;
use glom_worker::learn::{term_weights, LossValues};

/// Steps whose totals the median is taken over.
pub(crate) const WINDOW: usize = 50;

/// Running state of the guard for one run.
#[derive(Debug)]
pub(crate) struct DivergenceGuard {
    factor: f64,
    weights: [f64; LOSS_TERMS],
    recent: VecDeque<f64>,
}

/// Why a step was judged diverged.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Diverged {
    /// The weighted total of the step.
    pub(crate) total: f64,
    /// `train.divergence_factor`.
    pub(crate) factor: f64,
    /// The median it was compared with (None for a non-finite total).
    pub(crate) median: Option<f64>,
    /// The first term whose weighted value is not finite, else the one
    /// largest in absolute value; and that weighted value.
    pub(crate) term: &'static str,
    pub(crate) term_value: f64,
}

impl DivergenceGuard {
    pub(crate) fn new(cfg: &Config) -> Self {
        Self {
            factor: cfg.train.divergence_factor,
            weights: term_weights(cfg),
            recent: VecDeque::with_capacity(WINDOW),
        }
    }

    /// Judge one step's losses; `Some` when the run must stop. A step that
    /// passes joins the window.
    pub(crate) fn check(&mut self, losses: &LossValues) -> Option<Diverged> {
        let total = losses.loss_total;
        let mut median = None;
        let bad = if !total.is_finite() {
            true
        } else if self.factor > 0.0 && !self.recent.is_empty() {
            let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let m = sorted[sorted.len() / 2];
            median = Some(m);
            total.abs() > self.factor * m
        } else {
            false
        };
        if bad {
            let (term, term_value) = self.largest_term(losses);
            return Some(Diverged {
                total,
                factor: self.factor,
                median,
                term,
                term_value,
            });
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(total.abs());
        None
    }

    /// The first term whose weighted value is not finite, else the one
    /// largest in absolute value.
    fn largest_term(&self, losses: &LossValues) -> (&'static str, f64) {
        let named = losses.named();
        // `named` ends with the total, which has no weight: zip leaves it out.
        let weighted: Vec<(&'static str, f64)> = named
            .iter()
            .zip(&self.weights)
            .filter(|(_, &w)| w != 0.0)
            .map(|(&(name, v), &w)| (name, v * w))
            .collect();
        weighted
            .iter()
            .find(|(_, v)| !v.is_finite())
            .or_else(|| {
                weighted
                    .iter()
                    .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            })
            .copied()
            .unwrap_or(("total", losses.loss_total))
    }
}

impl Diverged {
    /// The error message of a run stopped at `step` (1-based), with the
    /// last checkpoint written before it, if any.
    pub(crate) fn message(&self, step: u64, good: Option<(&std::path::Path, u64)>) -> String {
        let what = match self.median {
            None => format!("the loss became {} at step {step}", self.total),
            Some(m) => format!(
                "the loss diverged at step {step}: {:.4e}, more than train.divergence_factor \
                 ({}) times the median of the last steps ({m:.4e})",
                self.total, self.factor
            ),
        };
        let term = if self.term_value.is_finite() {
            format!(
                "largest term: {} (weighted {:.4e})",
                self.term, self.term_value
            )
        } else {
            format!("first non-finite term: {}", self.term)
        };
        // A checkpoint resumes only with its own configuration, and the
        // learning rate is part of it: the way on is a new run.
        let checkpoint = match good {
            Some((dir, at)) => format!(
                "the last good checkpoint is {} (step {at}); lower train.learning_rate and start \
                 again (a checkpoint resumes only with its own configuration)",
                dir.display()
            ),
            None => "no checkpoint was written before it: lower train.learning_rate and start \
                     again"
                .to_string(),
        };
        format!("{what}; {term}; {checkpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn losses(cfg: &Config, recon: f64, variance: f64) -> LossValues {
        let mut shares = [0.0; LOSS_TERMS];
        shares[0] = recon;
        shares[4] = variance;
        LossValues::from_shares(cfg, &[shares])
    }

    #[test]
    fn a_blow_up_of_the_total_stops_naming_the_term() {
        let mut cfg = Config::default();
        cfg.train.variance_weight = 10.0;
        let mut g = DivergenceGuard::new(&cfg);
        for _ in 0..10 {
            assert_eq!(g.check(&losses(&cfg, 0.01, 0.5)), None);
        }
        // variance weight 10: total 5.01 so far; 1e5 is far above 1000x.
        let d = g.check(&losses(&cfg, 0.01, 1e4)).expect("diverged");
        assert_eq!(d.term, "variance");
        assert_eq!(d.term_value, 1e5);
        assert!((d.median.expect("judged against a median") - 5.01).abs() < 1e-12);
        let msg = d.message(
            11,
            Some((std::path::Path::new("run/checkpoints/step-10"), 10)),
        );
        for part in [
            "step 11",
            "variance",
            "run/checkpoints/step-10",
            "(1000)",
            "start again",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg:?}");
        }
    }

    #[test]
    fn ordinary_training_does_not_trip_it() {
        let cfg = Config::default();
        let mut g = DivergenceGuard::new(&cfg);
        // A total that falls fast, then a term that grows from nearly
        // nothing (as decorrelation does) but keeps the total in range.
        for i in 0..200 {
            let var = 7.0 / (1.0 + i as f64) + 1e-6 * (i as f64).powi(3);
            assert_eq!(g.check(&losses(&cfg, 0.01, var)), None, "step {i}");
        }
    }

    #[test]
    fn non_finite_stops_at_once_and_off_means_off() {
        let mut cfg = Config::default();
        let mut g = DivergenceGuard::new(&cfg);
        let d = g.check(&losses(&cfg, f64::NAN, 0.5)).expect("NaN stops");
        assert_eq!((d.term, d.median), ("recon", None));
        let msg = d.message(1, None);
        assert!(msg.contains("no checkpoint was written"), "{msg}");
        assert!(msg.contains("first non-finite term: recon"), "{msg}");
        cfg.train.divergence_factor = 0.0;
        let mut g = DivergenceGuard::new(&cfg);
        for _ in 0..5 {
            g.check(&losses(&cfg, 0.01, 0.5));
        }
        assert_eq!(g.check(&losses(&cfg, 0.01, 1e12)), None);
        assert!(g.check(&losses(&cfg, 0.01, f64::INFINITY)).is_some());
    }

    #[test]
    fn the_first_step_is_not_judged_and_old_steps_are_forgotten() {
        let cfg = Config::default();
        let mut g = DivergenceGuard::new(&cfg);
        // Nothing to compare the first step with.
        assert_eq!(g.check(&losses(&cfg, 0.0, 1e5)), None);
        // Old totals leave the window: after WINDOW steps at 1e3 the bar
        // is 1e3 x 1000, whatever came first.
        for _ in 0..WINDOW {
            assert_eq!(g.check(&losses(&cfg, 0.0, 100.0)), None);
        }
        assert_eq!(g.check(&losses(&cfg, 0.0, 9e4)), None);
        assert!(g.check(&losses(&cfg, 0.0, 2e5)).is_some());
    }
}

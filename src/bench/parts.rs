//! Where a training step's time goes, part by part: the step profile of
//! the model ([`glom_worker::model::Profile`]) switched on during the timed
//! steps, as seconds per step and fractions of the step.
//!
//! The forward parts are timed where they run; the backward pass is one
//! call to candle's autograd over the whole graph, so it is one part of its
//! own (under local learning its graph is the one-step students': the
//! nets, front end, decoder and loss terms). What no part covers (dropping
//! the step's graph and buffers, detaching, bookkeeping) is "other".

use glom_worker::model::{Part, Profile};
use serde::Serialize;

/// One part's share of a step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Share {
    pub(crate) part: &'static str,
    /// Mean seconds per step.
    pub(crate) seconds: f64,
    /// `seconds` over the mean step time.
    pub(crate) fraction: f64,
}

/// The parts of one training step row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Breakdown {
    /// The row it belongs to.
    pub(crate) step: String,
    /// Mean seconds of the timed steps (the parts' reference).
    pub(crate) seconds_per_step: f64,
    /// Every part, then "other" (the step time no part covers).
    pub(crate) parts: Vec<Share>,
}

/// Name of the remainder.
pub(crate) const OTHER: &str = "other";

/// What the parts of a step are called in the table.
fn label(part: &str) -> &'static str {
    match part {
        "batch" => "batch (images to masked patches)",
        "front_end" => "front end and decoder",
        "bu_td_nets" => "bottom-up and top-down MLPs",
        "neighbour_draw" => "neighbour draw",
        "lateral_attention" => "lateral attention",
        "weighted_mean" => "weighted mean of contributions",
        "layer_norm" => "layer norm",
        "loss_terms" => "loss terms",
        "halo_send" => "halo send",
        "halo_wait" => "halo wait",
        "backward" => "backward (autograd, all parts)",
        "optimiser" => "optimiser (AdamW)",
        _ => "other (graph teardown, glue)",
    }
}

/// The breakdown of `steps` timed steps of `step` that took `seconds` in
/// all, from the totals of `profile`.
pub(crate) fn breakdown(step: &str, profile: &Profile, steps: usize, seconds: f64) -> Breakdown {
    let n = steps.max(1) as f64;
    let per_step = seconds / n;
    let share = |part: &'static str, s: f64| Share {
        part,
        seconds: s,
        fraction: s / per_step.max(1e-12),
    };
    let mut parts: Vec<Share> = Part::ALL
        .iter()
        .map(|&p| share(p.name(), profile.seconds(p) / n))
        .collect();
    let covered: f64 = parts.iter().map(|s| s.seconds).sum();
    parts.push(share(OTHER, (per_step - covered).max(0.0)));
    Breakdown {
        step: step.to_string(),
        seconds_per_step: per_step,
        parts,
    }
}

/// The breakdowns side by side: one row per part, one column per step,
/// percentages of the step.
pub(crate) fn table(all: &[Breakdown]) -> String {
    let Some(first) = all.first() else {
        return String::new();
    };
    let mut out =
        String::from("\nwhere a step's time goes, % of the step (mean of the timed steps):\n");
    out.push_str(&format!("{:<36}", "part"));
    for i in 1..=all.len() {
        out.push_str(&format!(" {:>9}", format!("step {i}")));
    }
    out.push('\n');
    for (i, share) in first.parts.iter().enumerate() {
        out.push_str(&format!("{:<36}", label(share.part)));
        for b in all {
            out.push_str(&format!(" {:>8.1}%", 100.0 * b.parts[i].fraction));
        }
        out.push('\n');
    }
    out.push_str(&format!("{:<36}", "step, ms"));
    for b in all {
        out.push_str(&format!(" {:>9.2}", 1e3 * b.seconds_per_step));
    }
    out.push('\n');
    for (i, b) in all.iter().enumerate() {
        out.push_str(&format!("  step {}: {}\n", i + 1, b.step));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_parts_and_other_add_up_to_the_step() {
        let mut p = Profile::new(&Device::Cpu);
        p.set_on(true);
        p.time(Part::Lateral, || {
            std::thread::sleep(std::time::Duration::from_millis(4))
        });
        let b = breakdown("s", &p, 2, 0.01);
        assert_eq!(b.parts.len(), Part::ALL.len() + 1);
        assert_eq!(b.parts.last().unwrap().part, OTHER);
        let sum: f64 = b.parts.iter().map(|s| s.fraction).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
        let lateral = b.parts.iter().find(|s| s.part == "lateral_attention");
        assert!(lateral.unwrap().fraction >= 0.4);
        for s in b.parts.iter().filter(|s| s.part != OTHER) {
            assert_ne!(label(s.part), label(OTHER), "{} has no label", s.part);
        }
    }
}

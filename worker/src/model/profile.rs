//! Where a step's time goes: wall-clock totals per part of the
//! computation, kept only while switched on (`glom bench`).
//!
//! Off (the default) a timed section costs one test of a flag; on, two
//! clock reads and an atomic add. The timing wraps calls without changing
//! them, so a model computes the same bits with it on or off (tested in
//! `worker/tests/model.rs`). On a device that runs asynchronously (CUDA)
//! the device is synchronised around every timed section while it is on,
//! so the time lands in the part that queued the work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::Device;

/// A part of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Reading the images and cutting them into masked patches.
    Batch,
    /// The front end (patch embedding) and the pixel decoder, forward.
    FrontEnd,
    /// The bottom-up and top-down MLPs, forward.
    Nets,
    /// Drawing every location's neighbours and building their indices.
    NeighbourDraw,
    /// Lateral attention, forward: gathering the neighbours, scores,
    /// softmax and the weighted sum.
    Lateral,
    /// The weighted mean of the four contributions.
    Mix,
    /// Layer normalisation of every new state.
    LayerNorm,
    /// The loss terms: distillation, the anti-collapse terms, the
    /// reconstruction error and the weighted total.
    Loss,
    /// Handing the state to the halo exchange (encoding, queueing).
    HaloSend,
    /// Waiting for the halo.
    HaloWait,
    /// The backward pass (candle's autograd over every part above).
    Backward,
    /// The AdamW update.
    Optimiser,
}

/// Number of [`Part`]s.
pub const PARTS: usize = 12;

impl Part {
    /// Every part, in the order of a step.
    pub const ALL: [Part; PARTS] = [
        Part::Batch,
        Part::FrontEnd,
        Part::Nets,
        Part::NeighbourDraw,
        Part::Lateral,
        Part::Mix,
        Part::LayerNorm,
        Part::Loss,
        Part::HaloSend,
        Part::HaloWait,
        Part::Backward,
        Part::Optimiser,
    ];

    /// A short name (`glom bench`'s rows and JSON keys).
    pub fn name(self) -> &'static str {
        match self {
            Part::Batch => "batch",
            Part::FrontEnd => "front_end",
            Part::Nets => "bu_td_nets",
            Part::NeighbourDraw => "neighbour_draw",
            Part::Lateral => "lateral_attention",
            Part::Mix => "weighted_mean",
            Part::LayerNorm => "layer_norm",
            Part::Loss => "loss_terms",
            Part::HaloSend => "halo_send",
            Part::HaloWait => "halo_wait",
            Part::Backward => "backward",
            Part::Optimiser => "optimiser",
        }
    }
}

/// Accumulated seconds per [`Part`] of one model's computation.
#[derive(Debug)]
pub struct Profile {
    on: bool,
    /// The device to synchronise before reading the clock (not the CPU,
    /// whose ops are done when they return).
    sync: Option<Device>,
    nanos: [AtomicU64; PARTS],
}

impl Profile {
    /// A profile for a model on `device`, switched off.
    pub fn new(device: &Device) -> Self {
        Self {
            on: false,
            sync: (!device.is_cpu()).then(|| device.clone()),
            nanos: Default::default(),
        }
    }

    /// Switch timing on or off (the totals are kept).
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
    }

    /// Whether timing is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Run `f`, adding its wall time to `part` when timing is on.
    #[inline]
    pub fn time<T>(&self, part: Part, f: impl FnOnce() -> T) -> T {
        if !self.on {
            return f();
        }
        self.synchronise();
        let start = Instant::now();
        let out = f();
        self.synchronise();
        let ns = start.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        self.nanos[part as usize].fetch_add(ns, Ordering::Relaxed);
        out
    }

    fn synchronise(&self) {
        if let Some(device) = &self.sync {
            // Only the timing would suffer: the work itself reports its
            // own errors when its result is read.
            let _ = device.synchronize();
        }
    }

    /// Seconds accumulated in `part`.
    pub fn seconds(&self, part: Part) -> f64 {
        self.nanos[part as usize].load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Set every total to zero.
    pub fn reset(&self) {
        for n in &self.nanos {
            n.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_it_times_nothing_and_on_it_adds_to_the_part() {
        let mut p = Profile::new(&Device::Cpu);
        assert_eq!(p.time(Part::Nets, || 7), 7);
        assert!(Part::ALL.iter().all(|&part| p.seconds(part) == 0.0));
        p.set_on(true);
        p.time(Part::Lateral, || {
            std::thread::sleep(std::time::Duration::from_millis(2))
        });
        assert!(p.seconds(Part::Lateral) >= 0.002);
        assert_eq!(p.seconds(Part::Nets), 0.0);
        p.reset();
        assert_eq!(p.seconds(Part::Lateral), 0.0);
    }

    #[test]
    fn every_part_is_listed_once_in_its_own_slot() {
        for (i, part) in Part::ALL.iter().enumerate() {
            assert_eq!(*part as usize, i, "{}", part.name());
        }
    }
}

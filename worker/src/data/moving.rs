//! Moving part-whole scenes: short videos of the synthetic scenes (paper
//! section 11, "a single fixation of a time-varying image").
//!
//! GLOM's settling is meant to run on a sequence of frames: a still image
//! is the special case of identical frames. To measure whether islands
//! track objects as they move, the data must say, at every frame, which
//! object and part covers every pixel. These sequences provide that.
//!
//! # Design
//! - **A sequence is a scene set in motion.** Sequence `i` draws the still
//!   scene `i` of the same seed exactly as [`SyntheticScenes`] does (frame
//!   0 *is* that image, bit for bit), then, from the rest of the same
//!   stream, a motion for every object: a constant velocity (a speed of
//!   0.5 to 2 pixels per frame at a 32-pixel side, scaled with the size,
//!   in a uniform direction) and a constant spin of at most
//!   [`MAX_SPIN`] radians per frame about the centre of the object's box.
//!   Frame `f` draws every object shifted by `f` velocities and turned by
//!   `f` spins, with the scenes' own drawing code ([`scenes::Layout`]).
//! - **Rigid objects, fixed depth.** The parts of an object move together;
//!   objects keep their depth order, so occlusion changes as they pass one
//!   another. Objects may leave the image in part or wholly (nothing
//!   bounces); the maps say what is visible.
//! - **Static background.** The background, its noise included, does not
//!   change: a fixed camera over a textured backdrop.
//! - **Ground truth per frame**: exact part and object maps, with the ids
//!   of the still scenes; an object keeps its id in every frame.
//! - **Label**: the sequence label, the class of frame 0 (the type of the
//!   object with the most visible pixels there, as for the still scenes),
//!   carried by every frame.
//!
//! [`Dataset::get`] returns the *last* frame (what the settled state
//! describes once the sequence is seen); [`Dataset::sequence`] all of them.
//! Sequence `i` depends on `(seed, i)` alone, like the still scenes.

use super::scenes::{self, Pose};
use super::{Dataset, Image, ImageShape, SceneParams, SyntheticScenes};
use crate::rng::Rng;

/// Most spin of an object, in radians per frame (about 3.4 degrees).
pub const MAX_SPIN: f32 = 0.06;
/// Slowest and fastest speed, in pixels per frame of a 32-pixel image.
pub const SPEED: (f64, f64) = (0.5, 2.0);

/// A split of moving scenes: `num_images` sequences of `frames` frames.
#[derive(Debug, Clone)]
pub struct MovingScenes {
    scenes: SyntheticScenes,
    frames: usize,
}

/// The motion of one object per frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Motion {
    vx: f32,
    vy: f32,
    spin: f32,
}

impl Motion {
    fn pose(&self, frame: usize) -> Pose {
        let f = frame as f32;
        Pose {
            dx: self.vx * f,
            dy: self.vy * f,
            angle: self.spin * f,
        }
    }
}

impl MovingScenes {
    /// Sequences of `frames` frames (at least 1) of the scenes that
    /// [`SyntheticScenes::new`] draws with `params` and `seed`.
    ///
    /// Panics when `frames == 0` or `size < 8`.
    pub fn new(params: SceneParams, frames: usize, seed: u64) -> Self {
        assert!(frames >= 1, "a sequence needs at least one frame");
        Self {
            scenes: SyntheticScenes::new(params, seed),
            frames,
        }
    }

    /// Frames `which` of sequence `index` (every one must be below
    /// [`Dataset::frames`]), each with the sequence label.
    pub fn render(&self, index: usize, which: impl IntoIterator<Item = usize>) -> Vec<Image> {
        let len = self.scenes.params().num_images;
        let i = if len == 0 { index } else { index % len };
        let (layout, mut rng) = self.scenes.layout(i as u64);
        let unit = self.scenes.params().size as f64 / 32.0;
        let motions: Vec<Motion> = layout
            .objects
            .iter()
            .map(|_| draw_motion(&mut rng, unit))
            .collect();
        let at = |frame: usize| -> Image {
            let poses: Vec<Pose> = motions.iter().map(|m| m.pose(frame)).collect();
            layout.render(&poses)
        };
        let label = layout.label_of(&at(0));
        which
            .into_iter()
            .map(|frame| {
                assert!(frame < self.frames, "frame {frame} of {}", self.frames);
                let mut image = at(frame);
                image.label = Some(label);
                image
            })
            .collect()
    }
}

/// One object's velocity and spin.
fn draw_motion(rng: &mut Rng, unit: f64) -> Motion {
    let speed = rng.uniform_range(SPEED.0, SPEED.1) * unit;
    let direction = rng.uniform_range(0.0, std::f64::consts::TAU);
    let spin = rng.uniform_range(-f64::from(MAX_SPIN), f64::from(MAX_SPIN));
    Motion {
        vx: (speed * direction.cos()) as f32,
        vy: (speed * direction.sin()) as f32,
        spin: spin as f32,
    }
}

impl Dataset for MovingScenes {
    fn shape(&self) -> ImageShape {
        self.scenes.shape()
    }

    fn len(&self) -> usize {
        self.scenes.len()
    }

    /// The last frame of sequence `index`.
    fn get(&self, index: usize) -> Image {
        self.render(index, [self.frames - 1]).remove(0)
    }

    fn num_classes(&self) -> Option<usize> {
        Some(scenes::NUM_TYPES)
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn sequence(&self, index: usize) -> Vec<Image> {
        self.render(index, 0..self.frames)
    }
}

#[cfg(test)]
mod tests;

//! Moving sprites: short videos of the Multi-dSprites-style sprites
//! ([`Sprites`]), the object-discovery counterpart of the moving scenes
//! (paper section 11).
//!
//! # Design
//! - **Frame 0 is the still image.** Sequence `i` draws still image `i` of
//!   the same seed exactly as [`Sprites`] does (bit for bit); the motion
//!   of every sprite comes from a stream of its own, keyed by (seed, i,
//!   [`MOTION_STREAM`]), so the still images are untouched.
//! - **Motion**: every sprite moves with a constant velocity (a speed of
//!   [`SPEED`] pixels per frame at a 32-pixel side, scaled with the size,
//!   in a uniform direction) and spins by at most
//!   [`moving::MAX_SPIN`](super::moving::MAX_SPIN) radians per frame about
//!   its centre; frame `f` draws it shifted by `f` velocities and turned by
//!   `f` spins. Sprites keep their drawing order (depth), so occlusion
//!   changes as they pass; they may leave the image (nothing bounces).
//! - **Static background**: the grey of the still image.
//! - **Ground truth per frame**: the object map of every frame, a sprite
//!   keeping its id (its position in the drawing order + 1); no parts, no
//!   label, as for the still sprites.
//!
//! [`Dataset::get`] returns the last frame; [`Dataset::sequence`] all.

use super::moving::{MAX_SPIN, SPEED};
use super::sprites::{render_sprites, Sprite};
use super::{Dataset, Image, ImageShape, Sprites};
use crate::rng::Rng;

/// Stream tag of the sprites' motion.
pub const MOTION_STREAM: u64 = 0x4d4f_5645;

/// A split of moving sprites: sequences of `frames` frames.
#[derive(Debug, Clone)]
pub struct MovingSprites {
    sprites: Sprites,
    frames: usize,
    seed: u64,
}

impl MovingSprites {
    /// Sequences of `frames` frames (at least 1) of the images that
    /// [`Sprites::new`] draws with `size`, `num_images` and `seed`.
    ///
    /// Panics when `frames == 0` or `size < 8`.
    pub fn new(size: usize, num_images: usize, frames: usize, seed: u64) -> Self {
        assert!(frames >= 1, "a sequence needs at least one frame");
        Self {
            sprites: Sprites::new(size, num_images, seed),
            frames,
            seed,
        }
    }

    /// Frames `which` of sequence `index` (every one below `frames`).
    pub fn render(&self, index: usize, which: impl IntoIterator<Item = usize>) -> Vec<Image> {
        let i = self.sprites.wrap(index) as u64;
        let n = self.sprites.size();
        let (grey, sprites) = self.sprites.draw(i);
        let mut rng = Rng::from_key(&[self.seed, i, MOTION_STREAM]);
        let unit = n as f64 / 32.0;
        let motions: Vec<(f32, f32, f32)> = sprites
            .iter()
            .map(|_| {
                let speed = rng.uniform_range(SPEED.0, SPEED.1) * unit;
                let direction = rng.uniform_range(0.0, std::f64::consts::TAU);
                let spin = rng.uniform_range(-f64::from(MAX_SPIN), f64::from(MAX_SPIN));
                (
                    (speed * direction.cos()) as f32,
                    (speed * direction.sin()) as f32,
                    spin as f32,
                )
            })
            .collect();
        which
            .into_iter()
            .map(|frame| {
                assert!(frame < self.frames, "frame {frame} of {}", self.frames);
                let f = frame as f32;
                let moved: Vec<Sprite> = sprites
                    .iter()
                    .zip(&motions)
                    .map(|(s, &(vx, vy, spin))| Sprite {
                        centre: (s.centre.0 + vx * f, s.centre.1 + vy * f),
                        angle: s.angle + spin * f,
                        ..*s
                    })
                    .collect();
                render_sprites(n, grey, &moved)
            })
            .collect()
    }
}

impl Dataset for MovingSprites {
    fn shape(&self) -> ImageShape {
        self.sprites.shape()
    }

    fn len(&self) -> usize {
        self.sprites.len()
    }

    /// The last frame of sequence `index`.
    fn get(&self, index: usize) -> Image {
        self.render(index, [self.frames - 1]).remove(0)
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn frames(&self) -> usize {
        self.frames
    }

    fn sequence(&self, index: usize) -> Vec<Image> {
        self.render(index, 0..self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_zero_is_the_still_image_and_sprites_move_rigidly() {
        let still = Sprites::new(32, 10, 7);
        let moving = MovingSprites::new(32, 10, 4, 7);
        let seq = moving.sequence(3);
        assert_eq!(seq.len(), 4);
        assert_eq!(seq[0], still.get(3));
        assert_eq!(moving.get(3), seq[3]);
        assert_eq!(moving.sequence(13), seq, "index 13 wraps to 3");
        assert_eq!(MovingSprites::new(32, 10, 4, 7).sequence(3), seq);
        // Something moves, and every frame's map agrees with its pixels:
        // a background pixel has the grey of frame 0's background.
        assert_ne!(seq[0].pixels, seq[3].pixels);
        let n = 32 * 32;
        let grey = {
            let map = seq[0].object_map.as_ref().unwrap();
            let p = map.iter().position(|&id| id == 0).unwrap();
            seq[0].pixels[p]
        };
        for frame in &seq {
            let map = frame.object_map.as_ref().unwrap();
            for (p, &id) in map.iter().enumerate() {
                if id == 0 {
                    assert_eq!([0, 1, 2].map(|c| frame.pixels[c * n + p]), [grey; 3]);
                }
            }
            // No sprite grows or appears: ids stay within frame 0's.
            let most = seq[0].object_map.as_ref().unwrap().iter().max().copied();
            assert!(map.iter().max().copied() <= most.max(Some(5)));
        }
        // A sprite keeps roughly its area while it stays inside (rigid).
        let area = |frame: &Image, id: u16| {
            frame
                .object_map
                .as_ref()
                .unwrap()
                .iter()
                .filter(|&&v| v == id)
                .count()
        };
        let last = seq[0]
            .object_map
            .as_ref()
            .unwrap()
            .iter()
            .max()
            .copied()
            .unwrap();
        let (a0, a1) = (area(&seq[0], last), area(&seq[1], last));
        assert!(
            a0 > 0 && (a0 as f64 - a1 as f64).abs() <= 0.25 * a0 as f64 + 4.0,
            "{a0} {a1}"
        );
    }
}

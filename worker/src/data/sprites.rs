//! Sprites in the style of Multi-dSprites ("coloured sprites on grayscale",
//! Kabra et al. 2019, the variant IODINE, MONet and Slot Attention report
//! on), generated on demand.
//!
//! # Definition
//! - **Background**: one uniform grey, its level drawn uniformly in [0, 1].
//! - **Sprites**: 2-5 per image ([`MIN_SPRITES`], [`MAX_SPRITES`]), each
//!   with its own shape (square, ellipse or heart, the dSprites shapes), its
//!   own colour (HSV: hue uniform, saturation and value uniform in
//!   [0.5, 1], so a sprite is never grey), scale (uniform in [0.5, 1], the
//!   range of dSprites), rotation (uniform in [0, 2 pi)) and position (its
//!   centre uniform over the image, kept a margin of half a unit sprite
//!   from the edges).
//! - **Occlusion**: sprites are drawn in order and later ones cover earlier
//!   ones; a sprite hidden entirely simply does not appear in the map.
//! - **Ground truth**: a pixel belongs to a sprite when its centre lies
//!   inside the shape (no anti-aliasing), so the pixels and the maps agree
//!   exactly: `object_map` holds `1 + sprite index` of the visible sprite,
//!   0 on the background. No parts (`part_map` is `None`), no label.
//!
//! The published images are 64x64 (`data.image_size`, 64 for this source
//! unless set; 32 works too): at scale 1 a sprite spans about a third of the
//! image side ([`UNIT`]). Image `i` is drawn from `Rng::from_key(&[seed, i])`
//! alone, like the scenes.

use super::{Dataset, Image, ImageShape};
use crate::rng::Rng;

/// Fewest sprites per image.
pub const MIN_SPRITES: usize = 2;
/// Most sprites per image.
pub const MAX_SPRITES: usize = 5;
/// Half extent of a sprite of scale 1, as a fraction of the image side.
pub const UNIT: f32 = 0.16;

/// The dSprites shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpriteShape {
    Square,
    Ellipse,
    Heart,
}

impl SpriteShape {
    const ALL: [SpriteShape; 3] = [Self::Square, Self::Ellipse, Self::Heart];

    /// Whether the point (u, v) of the sprite's own frame (half extent 1,
    /// v downwards) lies in the shape.
    pub fn contains(self, u: f32, v: f32) -> bool {
        match self {
            Self::Square => u.abs() <= 0.8 && v.abs() <= 0.8,
            // Twice as long as it is wide.
            Self::Ellipse => u * u + 4.0 * v * v <= 1.0,
            // (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up, scaled so its width
            // (about 2.28 units) spans the unit box.
            Self::Heart => {
                let (x, y) = (u * 1.14, -v * 1.14 + 0.1);
                let r = x * x + y * y - 1.0;
                r * r * r <= x * x * y * y * y
            }
        }
    }
}

/// One drawn sprite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sprite {
    pub shape: SpriteShape,
    pub colour: [f32; 3],
    /// Scale in [0.5, 1].
    pub scale: f32,
    /// Rotation in radians.
    pub angle: f32,
    /// Centre in pixels (x, y).
    pub centre: (f32, f32),
}

impl Sprite {
    /// Whether the centre of pixel (x, y) of an image of side `n` lies in
    /// the sprite.
    pub fn covers(&self, x: usize, y: usize, n: usize) -> bool {
        let half = UNIT * n as f32 * self.scale;
        let (dx, dy) = (
            x as f32 + 0.5 - self.centre.0,
            y as f32 + 0.5 - self.centre.1,
        );
        let (s, c) = self.angle.sin_cos();
        let (u, v) = ((c * dx + s * dy) / half, (-s * dx + c * dy) / half);
        u.abs() <= 1.2 && v.abs() <= 1.2 && self.shape.contains(u, v)
    }
}

/// RGB of an HSV colour (all in [0, 1]).
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h * 6.0).rem_euclid(6.0);
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match h6 as usize {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// A split of sprites images: `num_images` images generated on demand.
#[derive(Debug, Clone)]
pub struct Sprites {
    size: usize,
    num_images: usize,
    seed: u64,
}

impl Sprites {
    /// Images of `size` pixels a side; `num_images` in the split (0: any
    /// index is generated as is), drawn from the stream `seed`.
    ///
    /// Panics when `size < 8`.
    pub fn new(size: usize, num_images: usize, seed: u64) -> Self {
        assert!(size >= 8, "sprites need size >= 8, got {size}");
        Self {
            size,
            num_images,
            seed,
        }
    }

    /// The background grey and the sprites of image `index`, back to front
    /// (object id = position + 1).
    pub fn draw(&self, index: u64) -> (f32, Vec<Sprite>) {
        let mut rng = Rng::from_key(&[self.seed, index]);
        let n = self.size as f32;
        let grey = rng.uniform() as f32;
        let count = MIN_SPRITES + rng.below((MAX_SPRITES - MIN_SPRITES + 1) as u64) as usize;
        let margin = f64::from(0.5 * UNIT * n);
        let sprites = (0..count)
            .map(|_| {
                let shape = SpriteShape::ALL[rng.below(3) as usize];
                let (h, s, v) = (
                    rng.uniform() as f32,
                    rng.uniform_range(0.5, 1.0) as f32,
                    rng.uniform_range(0.5, 1.0) as f32,
                );
                Sprite {
                    shape,
                    colour: hsv_to_rgb(h, s, v),
                    scale: rng.uniform_range(0.5, 1.0) as f32,
                    angle: rng.uniform_range(0.0, std::f64::consts::TAU) as f32,
                    centre: (
                        rng.uniform_range(margin, f64::from(n) - margin) as f32,
                        rng.uniform_range(margin, f64::from(n) - margin) as f32,
                    ),
                }
            })
            .collect();
        (grey, sprites)
    }

    fn render(&self, index: u64) -> Image {
        let (grey, sprites) = self.draw(index);
        render_sprites(self.size, grey, &sprites)
    }

    /// Side of the images in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The index drawn for `index` (`index % len()`, or `index` itself
    /// when the split is unbounded).
    pub fn wrap(&self, index: usize) -> usize {
        if self.num_images == 0 {
            index
        } else {
            index % self.num_images
        }
    }
}

/// An image of side `n`: the grey background, then `sprites` back to
/// front (object id = position + 1), pixels and object map alike.
pub fn render_sprites(n: usize, grey: f32, sprites: &[Sprite]) -> Image {
    let mut pixels = vec![grey; 3 * n * n];
    let mut object_map = vec![0u16; n * n];
    for (i, sprite) in sprites.iter().enumerate() {
        for y in 0..n {
            for x in 0..n {
                if sprite.covers(x, y, n) {
                    object_map[y * n + x] = 1 + i as u16;
                    for (c, &v) in sprite.colour.iter().enumerate() {
                        pixels[c * n * n + y * n + x] = v;
                    }
                }
            }
        }
    }
    Image {
        pixels,
        part_map: None,
        object_map: Some(object_map),
        label: None,
    }
}

impl Dataset for Sprites {
    fn shape(&self) -> ImageShape {
        ImageShape {
            channels: 3,
            height: self.size,
            width: self.size,
        }
    }

    fn len(&self) -> usize {
        self.num_images
    }

    /// The image at `index % len()`; with `num_images == 0` the index is
    /// used as is.
    fn get(&self, index: usize) -> Image {
        self.render(self.wrap(index) as u64)
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_seed_and_index() {
        let a = Sprites::new(64, 50, 3);
        assert_eq!(a.get(7), Sprites::new(64, 50, 3).get(7));
        assert_eq!(a.get(7), a.get(57), "index wraps at len");
        assert_ne!(a.get(7), a.get(8));
        assert_ne!(a.get(7), Sprites::new(64, 50, 4).get(7));
    }

    #[test]
    fn maps_agree_with_pixels_and_later_sprites_occlude() {
        for size in [64, 32] {
            let data = Sprites::new(size, 0, 9);
            let n = size;
            let mut occluded = 0;
            for i in 0..60 {
                let (grey, sprites) = data.draw(i);
                assert!((MIN_SPRITES..=MAX_SPRITES).contains(&sprites.len()));
                let image = data.get(i as usize);
                assert_eq!(image.part_map, None);
                let map = image.object_map.unwrap();
                for y in 0..n {
                    for x in 0..n {
                        let at = y * n + x;
                        // The last sprite covering the pixel owns it.
                        let owner = sprites.iter().rposition(|s| s.covers(x, y, n));
                        assert_eq!(map[at], owner.map_or(0, |k| k as u16 + 1));
                        if sprites.iter().filter(|s| s.covers(x, y, n)).count() > 1 {
                            occluded += 1;
                        }
                        let rgb = [0, 1, 2].map(|c| image.pixels[c * n * n + at]);
                        let want = owner.map_or([grey; 3], |k| sprites[k].colour);
                        assert_eq!(rgb, want, "image {i} pixel ({x}, {y})");
                    }
                }
                let visible = (1..=sprites.len() as u16)
                    .filter(|id| map.contains(id))
                    .count();
                assert!(visible >= 1, "image {i}: no sprite visible");
            }
            assert!(occluded > 0, "some sprites overlap");
        }
    }

    #[test]
    fn shapes_and_colours_are_what_they_say() {
        for shape in SpriteShape::ALL {
            assert!(shape.contains(0.0, 0.0), "{shape:?} holds its centre");
            assert!(!shape.contains(1.1, 1.1), "{shape:?} is bounded");
        }
        // The heart's lobes are at the top (v < 0), its point at the bottom.
        assert!(SpriteShape::Heart.contains(0.4, -0.5));
        assert!(!SpriteShape::Heart.contains(0.0, -0.85));
        assert!(SpriteShape::Heart.contains(0.0, 0.7));
        assert!(!SpriteShape::Heart.contains(0.6, 0.7));
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(hsv_to_rgb(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv_to_rgb(1.0 / 3.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv_to_rgb(0.5, 0.0, 0.5), [0.5, 0.5, 0.5]));
    }
}

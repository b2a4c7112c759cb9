//! Built-in synthetic part-whole scenes, the default training data.
//!
//! GLOM claims that islands of identical embeddings form at each level of
//! the column and that they stand for parts at low levels and for whole
//! objects at higher ones. Measuring that needs images whose part and object
//! segmentation is known exactly, small enough to train on a laptop, and
//! free of any download. These scenes provide exactly that.
//!
//! # Design
//! - **Background**: a smooth linear gradient between two random, weakly
//!   tinted mid greys in a random direction, plus small gaussian pixel noise
//!   (`SceneParams::noise`). Its low saturation and mid brightness keep it
//!   distinct from every object colour.
//! - **Object types** (the class label is the type of the object with the
//!   most visible pixels, so there are 4 classes). Each is a fixed
//!   arrangement of 2-4 parts (rectangles, ellipses, a triangle) laid out in
//!   the object's own unit box:
//!   0. *house*: yellow body + red triangular roof;
//!   1. *tree*: brown trunk + green elliptical crown;
//!   2. *car*: blue cabin + red body + two dark wheels;
//!   3. *snowman*: three stacked discs, blue base, green middle, yellow head.
//! - **Shared palette**: the colours are shared across types on purpose. The
//!   same red is a house's roof and a car's body, the same yellow a house's
//!   body and a snowman's head, and so on. A part's colour therefore does not
//!   tell which whole it belongs to: that needs context from the other parts
//!   (the colour example of section 4 of the GLOM paper). Each part instance
//!   gets a small colour jitter so that no two instances are identical.
//! - **Placement**: each object gets a random type, a random scale (its
//!   longer side spans 8-20 pixels of a 32-pixel image, scaled with
//!   `SceneParams::size`) and a random position inside the image. Objects
//!   may overlap; later ones occlude earlier ones and within an object later
//!   parts cover earlier ones (a roof over the body's top, wheels over the
//!   car's body).
//! - **Ground truth**: `object_map` holds `1 + object_index` and `part_map`
//!   holds `1 + object_index * 4 + part_index` for the *visible* pixels,
//!   background 0. Things hidden entirely by occlusion simply do not appear.
//!   Pixel values are clamped to [0, 1].
//!
//! Image `i` is drawn from `Rng::from_key(&[seed, i])` alone, so it is
//! deterministic and independent of every other image; the training and
//! held-out splits use different seeds.

use super::{Dataset, Image, ImageShape};
use crate::rng::Rng;

/// Number of object types, hence of classes.
pub const NUM_TYPES: usize = 4;
/// Most parts an object type has; part ids are spaced by this.
pub const MAX_PARTS: usize = 4;

/// Part colours (RGB). Red, yellow, green and blue are each used by two
/// object types; brown and dark belong to one type each.
pub const RED: [f32; 3] = [0.86, 0.16, 0.14];
pub const YELLOW: [f32; 3] = [0.95, 0.84, 0.18];
pub const GREEN: [f32; 3] = [0.18, 0.68, 0.24];
pub const BLUE: [f32; 3] = [0.18, 0.32, 0.86];
pub const BROWN: [f32; 3] = [0.48, 0.28, 0.08];
pub const DARK: [f32; 3] = [0.08, 0.08, 0.10];

/// The geometric primitive of a part, in the part's box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Rect,
    Ellipse,
    /// Apex at the top centre, base along the bottom edge.
    Triangle,
}

/// One part of an object type, in object coordinates: the object's unit box,
/// x to the right and y downwards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartSpec {
    pub shape: Shape,
    /// Centre (x, y) of the part's box.
    pub centre: (f32, f32),
    /// Half extents (x, y) of the part's box.
    pub half: (f32, f32),
    pub colour: [f32; 3],
}

/// An object type: its name, its box's aspect and its parts in drawing order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectType {
    pub name: &'static str,
    /// Width and height of the object's box relative to its scale (the
    /// longer one is 1).
    pub aspect: (f32, f32),
    pub parts: &'static [PartSpec],
}

const fn part(shape: Shape, cx: f32, cy: f32, rx: f32, ry: f32, colour: [f32; 3]) -> PartSpec {
    PartSpec {
        shape,
        centre: (cx, cy),
        half: (rx, ry),
        colour,
    }
}

/// The object types; the index is the class label.
pub const OBJECT_TYPES: [ObjectType; NUM_TYPES] = [
    ObjectType {
        name: "house",
        aspect: (1.0, 1.0),
        parts: &[
            part(Shape::Rect, 0.5, 0.69, 0.38, 0.30, YELLOW),
            part(Shape::Triangle, 0.5, 0.21, 0.49, 0.21, RED),
        ],
    },
    ObjectType {
        name: "tree",
        aspect: (0.75, 1.0),
        parts: &[
            part(Shape::Rect, 0.5, 0.80, 0.13, 0.20, BROWN),
            part(Shape::Ellipse, 0.5, 0.36, 0.49, 0.36, GREEN),
        ],
    },
    ObjectType {
        name: "car",
        aspect: (1.0, 0.6),
        parts: &[
            part(Shape::Rect, 0.5, 0.25, 0.26, 0.21, BLUE),
            part(Shape::Rect, 0.5, 0.58, 0.49, 0.20, RED),
            part(Shape::Ellipse, 0.24, 0.80, 0.12, 0.20, DARK),
            part(Shape::Ellipse, 0.76, 0.80, 0.12, 0.20, DARK),
        ],
    },
    ObjectType {
        name: "snowman",
        aspect: (0.6, 1.0),
        parts: &[
            part(Shape::Ellipse, 0.5, 0.78, 0.37, 0.22, BLUE),
            part(Shape::Ellipse, 0.5, 0.43, 0.29, 0.17, GREEN),
            part(Shape::Ellipse, 0.5, 0.14, 0.22, 0.13, YELLOW),
        ],
    },
];

impl PartSpec {
    /// Whether the point (u, v) of the object's unit box lies in this part.
    fn contains(&self, u: f32, v: f32) -> bool {
        let (dx, dy) = (
            (u - self.centre.0) / self.half.0,
            (v - self.centre.1) / self.half.1,
        );
        match self.shape {
            Shape::Rect => dx.abs() <= 1.0 && dy.abs() <= 1.0,
            Shape::Ellipse => dx * dx + dy * dy <= 1.0,
            // dy runs from -1 (apex) to 1 (base); the half width grows with it.
            Shape::Triangle => dy.abs() <= 1.0 && dx.abs() <= (dy + 1.0) / 2.0,
        }
    }
}

/// How the scenes of a split are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SceneParams {
    /// Image side in pixels.
    pub size: usize,
    /// Fewest objects drawn per image (at least 1).
    pub min_objects: usize,
    /// Most objects drawn per image.
    pub max_objects: usize,
    /// Images in the split.
    pub num_images: usize,
    /// Standard deviation of the background pixel noise.
    pub noise: f32,
}

impl Default for SceneParams {
    fn default() -> Self {
        Self {
            size: 32,
            min_objects: 1,
            max_objects: 3,
            num_images: 10_000,
            noise: 0.03,
        }
    }
}

/// A split of synthetic scenes: `num_images` images generated on demand.
#[derive(Debug, Clone)]
pub struct SyntheticScenes {
    params: SceneParams,
    seed: u64,
}

impl SyntheticScenes {
    /// Scenes drawn with `params` from the stream named by `seed`. Object
    /// counts are made consistent (`1 <= min_objects <= max_objects`); the
    /// id scheme limits `max_objects` to what fits in a `u16` part id.
    ///
    /// Panics when `size < 8`: smaller images cannot hold a recognisable part.
    pub fn new(params: SceneParams, seed: u64) -> Self {
        assert!(
            params.size >= 8,
            "synthetic scenes need size >= 8, got {}",
            params.size
        );
        let mut params = params;
        params.min_objects = params.min_objects.max(1);
        params.max_objects = params
            .max_objects
            .clamp(params.min_objects, u16::MAX as usize / MAX_PARTS - 1);
        params.min_objects = params.min_objects.min(params.max_objects);
        Self { params, seed }
    }

    /// The parameters in force (after the adjustments made by [`Self::new`]).
    pub fn params(&self) -> &SceneParams {
        &self.params
    }

    /// The scene with key `[seed, index]`, drawn but not rendered; the rest
    /// of the stream is the caller's (the moving scenes draw the motion
    /// from it).
    pub(crate) fn layout(&self, index: u64) -> (Layout, Rng) {
        let mut rng = Rng::from_key(&[self.seed, index]);
        let layout = Layout::draw(&self.params, &mut rng);
        (layout, rng)
    }

    /// Draws the scene with key `[seed, index]`.
    fn render(&self, index: u64) -> Image {
        let (layout, _) = self.layout(index);
        let mut image = layout.render(&vec![Pose::REST; layout.objects.len()]);
        image.label = Some(layout.label_of(&image));
        image
    }
}

/// Where an object is drawn in one frame, relative to where the scene
/// placed it: shifted by `(dx, dy)` pixels and turned by `angle` radians
/// (clockwise on screen) about the centre of its box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pose {
    pub(crate) dx: f32,
    pub(crate) dy: f32,
    pub(crate) angle: f32,
}

impl Pose {
    /// Where the scene placed it.
    pub(crate) const REST: Pose = Pose {
        dx: 0.0,
        dy: 0.0,
        angle: 0.0,
    };
}

/// One object of a scene: its type, box and part colours.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placed {
    ty: usize,
    /// Width and height of its box in pixels.
    w: f32,
    h: f32,
    /// Top-left corner of its box.
    x0: f32,
    y0: f32,
    /// Colour of each part (jittered).
    colours: Vec<[f32; 3]>,
}

/// Everything random about a scene, drawn in the order the scenes have
/// always been drawn in (so the stream, hence every image, is unchanged):
/// background ends and direction, the noise of every pixel, then the
/// objects back to front.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    size: usize,
    ends: [[f32; 3]; 2],
    dir: (f32, f32),
    /// Background noise, channel-major like the pixels.
    noise: Vec<f32>,
    pub(crate) objects: Vec<Placed>,
}

impl Layout {
    fn draw(p: &SceneParams, rng: &mut Rng) -> Self {
        let n = p.size;
        let nf = n as f32;
        // Background: gradient between two tinted greys, plus noise.
        let mut ends = [[0.0f32; 3]; 2];
        for end in &mut ends {
            let grey = rng.uniform_range(0.35, 0.62) as f32;
            for ch in end.iter_mut() {
                *ch = grey + rng.uniform_range(-0.05, 0.05) as f32;
            }
        }
        let angle = rng.uniform_range(0.0, std::f64::consts::TAU) as f32;
        let mut noise = vec![0.0f32; 3 * n * n];
        for y in 0..n {
            for x in 0..n {
                for c in 0..3 {
                    noise[c * n * n + y * n + x] = p.noise * rng.normal() as f32;
                }
            }
        }
        let count = p.min_objects + rng.below((p.max_objects - p.min_objects + 1) as u64) as usize;
        let unit = nf / 32.0;
        let objects = (0..count)
            .map(|_| {
                let ty = rng.below(NUM_TYPES as u64) as usize;
                let spec = &OBJECT_TYPES[ty];
                let scale = rng.uniform_range(8.0, 20.0) as f32 * unit;
                let (w, h) = (scale * spec.aspect.0, scale * spec.aspect.1);
                let x0 = rng.uniform_range(0.0, f64::from((nf - w).max(0.0))) as f32;
                let y0 = rng.uniform_range(0.0, f64::from((nf - h).max(0.0))) as f32;
                let colours = spec
                    .parts
                    .iter()
                    .map(|part| {
                        part.colour
                            .map(|v| v + rng.uniform_range(-0.05, 0.05) as f32)
                    })
                    .collect();
                Placed {
                    ty,
                    w,
                    h,
                    x0,
                    y0,
                    colours,
                }
            })
            .collect();
        Self {
            size: n,
            ends,
            dir: (angle.cos(), angle.sin()),
            noise,
            objects,
        }
    }

    /// The image with every object at its pose (one per object), back to
    /// front, with its part and object maps; no label.
    pub(crate) fn render(&self, poses: &[Pose]) -> Image {
        assert_eq!(poses.len(), self.objects.len(), "one pose per object");
        let n = self.size;
        let nf = n as f32;
        let (dir_x, dir_y) = self.dir;
        let mut pixels = vec![0.0f32; 3 * n * n];
        for y in 0..n {
            for x in 0..n {
                let (fx, fy) = ((x as f32 + 0.5) / nf - 0.5, (y as f32 + 0.5) / nf - 0.5);
                let t = (fx * dir_x + fy * dir_y + 0.5).clamp(0.0, 1.0);
                for c in 0..3 {
                    let at = c * n * n + y * n + x;
                    let (a, b) = (self.ends[0][c], self.ends[1][c]);
                    pixels[at] = a * (1.0 - t) + b * t + self.noise[at];
                }
            }
        }
        let mut part_map = vec![0u16; n * n];
        let mut object_map = vec![0u16; n * n];
        for (obj, (placed, pose)) in self.objects.iter().zip(poses).enumerate() {
            let ty = &OBJECT_TYPES[placed.ty];
            placed.cover(pose, n, |x, y, u, v| {
                // The last part containing the point is the visible one.
                let Some(k) = ty.parts.iter().rposition(|part| part.contains(u, v)) else {
                    return;
                };
                let at = y * n + x;
                object_map[at] = 1 + obj as u16;
                part_map[at] = 1 + (obj * MAX_PARTS + k) as u16;
                for c in 0..3 {
                    pixels[c * n * n + at] = placed.colours[k][c];
                }
            });
        }
        for v in &mut pixels {
            *v = v.clamp(0.0, 1.0);
        }
        Image {
            pixels,
            part_map: Some(part_map),
            object_map: Some(object_map),
            label: None,
        }
    }

    /// The class of a rendered frame: the type of the object with the most
    /// visible pixels (ties: the earliest object).
    pub(crate) fn label_of(&self, image: &Image) -> u32 {
        let count = self.objects.len();
        let mut visible = vec![0usize; count + 1];
        for &id in image.object_map.iter().flatten() {
            visible[id as usize] += 1;
        }
        let largest = (1..=count).fold(1, |best, id| {
            if visible[id] > visible[best] {
                id
            } else {
                best
            }
        });
        self.objects[largest - 1].ty as u32
    }
}

impl Placed {
    /// Call `at(x, y, u, v)` for every pixel `(x, y)` of an `n x n` image
    /// whose centre may fall in the object's box at `pose`, with `(u, v)`
    /// that centre in the box's unit coordinates.
    fn cover(&self, pose: &Pose, n: usize, mut at: impl FnMut(usize, usize, f32, f32)) {
        let (w, h) = (self.w, self.h);
        let (x0, y0) = (self.x0 + pose.dx, self.y0 + pose.dy);
        if pose.angle == 0.0 {
            // Unrotated: exactly the arithmetic the still scenes always used.
            let (xs, xe) = (
                (x0.floor() as usize).min(n),
                ((x0 + w).ceil() as usize).min(n),
            );
            let (ys, ye) = (
                (y0.floor() as usize).min(n),
                ((y0 + h).ceil() as usize).min(n),
            );
            for y in ys..ye {
                for x in xs..xe {
                    at(x, y, (x as f32 + 0.5 - x0) / w, (y as f32 + 0.5 - y0) / h);
                }
            }
            return;
        }
        // Rotated about the box centre: every pixel within the box's
        // circumscribed circle, mapped back by the inverse rotation.
        let (cx, cy) = (x0 + w / 2.0, y0 + h / 2.0);
        let r = (w * w + h * h).sqrt() / 2.0;
        let span = |c: f32| ((c - r).floor() as usize).min(n)..((c + r).ceil() as usize).min(n);
        let (sin, cos) = pose.angle.sin_cos();
        for y in span(cy) {
            for x in span(cx) {
                let (rx, ry) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let (qx, qy) = (cos * rx + sin * ry, cos * ry - sin * rx);
                at(x, y, qx / w + 0.5, qy / h + 0.5);
            }
        }
    }
}

impl Dataset for SyntheticScenes {
    fn shape(&self) -> ImageShape {
        ImageShape {
            channels: 3,
            height: self.params.size,
            width: self.params.size,
        }
    }

    fn len(&self) -> usize {
        self.params.num_images
    }

    /// The image at `index % len()`; with `num_images == 0` the index is
    /// used as is (scenes can be generated for any index).
    fn get(&self, index: usize) -> Image {
        let len = self.params.num_images;
        let i = if len == 0 { index } else { index % len };
        self.render(i as u64)
    }

    fn num_classes(&self) -> Option<usize> {
        Some(NUM_TYPES)
    }
}

#[cfg(test)]
mod tests;

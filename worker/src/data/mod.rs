//! Images and their ground truth.
//!
//! The trainer reads images through the [`Dataset`] trait: a fixed, indexable
//! collection where `get(i)` always returns the same image, so any worker can
//! fetch any image of a batch by index without shipping pixels around.
//!
//! Two sources exist:
//! - [`SyntheticScenes`] ([`scenes`]): generated part-whole scenes with
//!   per-pixel part and object instance maps, the default training data,
//!   because they let us measure whether GLOM's islands of agreement match
//!   parts at low levels and objects at high levels;
//! - [`FashionMnist`] ([`idx`]): Fashion-MNIST read from the IDX files that the
//!   Debian package `dataset-fashion-mnist` installs; labels only, no maps;
//! - [`Tetrominoes`] ([`tetrominoes`]) and [`Sprites`] ([`sprites`]):
//!   generated data of the definitions of two standard object-discovery
//!   benchmarks (Tetrominoes, Multi-dSprites) with exact object maps and no
//!   parts, so that islands can be set beside published figures;
//! - [`MovingScenes`] ([`moving`]): short videos of the synthetic scenes,
//!   every object moving rigidly, with exact maps in every frame (paper
//!   section 11), and [`MovingSprites`] ([`moving_sprites`]), the sprites
//!   set in motion. A dataset of sequences says so with
//!   [`Dataset::frames`] and hands them out with [`Dataset::sequence`];
//!   every other source is a sequence of one frame.
//!
//! The helpers [`patchify`], [`unpatchify`] and [`patch_majority`] map between
//! pixel space and GLOM's grid of locations (one location per square patch).

use std::path::PathBuf;

pub mod idx;
pub mod moving;
pub mod moving_sprites;
pub mod scenes;
pub mod sprites;
pub mod tetrominoes;

pub use idx::FashionMnist;
pub use moving::MovingScenes;
pub use moving_sprites::MovingSprites;
pub use scenes::{SceneParams, SyntheticScenes};
pub use sprites::Sprites;
pub use tetrominoes::Tetrominoes;

/// One image with its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Pixels, channel-major (C, H, W), values in [0, 1].
    pub pixels: Vec<f32>,
    /// Per-pixel part-instance id (row-major H*W); 0 = background; unique per
    /// part instance within the image. None when the data has no such map.
    pub part_map: Option<Vec<u16>>,
    /// Per-pixel object-instance id (H*W); 0 = background, 1..=n objects.
    /// None when unknown.
    pub object_map: Option<Vec<u16>>,
    /// Class label when the data has one.
    pub label: Option<u32>,
}

/// The size of every image of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// Number of values of one image (C * H * W).
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// A source of images addressed by index; deterministic: get(i) always
/// returns the same image.
pub trait Dataset: Send + Sync {
    fn shape(&self) -> ImageShape;
    /// Number of images (synthetic scenes: the configured split size).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The image at `index % len()`.
    fn get(&self, index: usize) -> Image;
    /// Number of classes when images carry labels.
    fn num_classes(&self) -> Option<usize>;
    /// Frames of every item: 1 for still images, more for video, whose
    /// `get(i)` is the last frame of sequence `i`.
    fn frames(&self) -> usize {
        1
    }
    /// The frames of item `index % len()`, oldest first: `frames()`
    /// images, the last of which is `get(index)`.
    fn sequence(&self, index: usize) -> Vec<Image> {
        vec![self.get(index)]
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file exists (or should) but the operating system refused to read it.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is not what it should be.
    #[error("{}: {reason}", .path.display())]
    Format { path: PathBuf, reason: String },
    /// The data is not installed where it was looked for.
    #[error(
        "{} not found: install the Debian package `dataset-fashion-mnist` \
         (apt-get install dataset-fashion-mnist) or set data.path",
        .path.display()
    )]
    Missing { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, DataError>;

fn check_grid(height: usize, width: usize, patch: usize) {
    assert!(
        patch > 0 && height.is_multiple_of(patch) && width.is_multiple_of(patch),
        "image {height}x{width} cannot be cut into {patch}x{patch} patches"
    );
}

/// Cut an image's per-pixel map into a grid of square patches of side `patch`
/// and give each patch the most common id (ties: the smallest id). Used for
/// the location-level ground truth: GLOM sees one embedding per patch, so the
/// truth it is scored against must live on the same grid.
///
/// The output is row-major over the grid, `(height / patch) * (width / patch)`
/// values. Panics when the sides are not multiples of `patch`.
pub fn patch_majority(map: &[u16], height: usize, width: usize, patch: usize) -> Vec<u16> {
    patch_majority_of(map, height, width, patch, |_| true)
}

/// [`patch_majority`] over the ids for which `counts` holds only; a patch
/// with none of them gets 0 (e.g. the majority object of a patch, its
/// background pixels left out).
pub fn patch_majority_of(
    map: &[u16],
    height: usize,
    width: usize,
    patch: usize,
    counts: impl Fn(u16) -> bool,
) -> Vec<u16> {
    check_grid(height, width, patch);
    assert_eq!(
        map.len(),
        height * width,
        "map size does not match {height}x{width}"
    );
    let (rows, cols) = (height / patch, width / patch);
    let mut ids = Vec::with_capacity(patch * patch);
    let mut out = Vec::with_capacity(rows * cols);
    for row in 0..rows {
        for col in 0..cols {
            ids.clear();
            for py in 0..patch {
                let start = (row * patch + py) * width + col * patch;
                ids.extend(map[start..start + patch].iter().filter(|&&id| counts(id)));
            }
            ids.sort_unstable();
            // Runs of equal ids in ascending order: a strictly longer run
            // replaces the best, so ties keep the smallest id.
            let mut best = (0usize, 0u16);
            for run in ids.chunk_by(|a, b| a == b) {
                if run.len() > best.0 {
                    best = (run.len(), run[0]);
                }
            }
            out.push(best.1);
        }
    }
    out
}

/// Pixels of each patch, flattened patch-major:
/// `output[(loc * C + c) * patch*patch + py*patch + px]`,
/// `loc = row * (W/patch) + col`. This is the input layout of GLOM's bottom
/// level: one vector of `C * patch * patch` values per location.
///
/// Panics when the sides are not multiples of `patch`.
pub fn patchify(pixels: &[f32], shape: ImageShape, patch: usize) -> Vec<f32> {
    let mut out = vec![0.0; pixels.len()];
    copy_patches(pixels, &mut out, shape, patch, true);
    out
}

/// Inverse of [`patchify`]: back to channel-major (C, H, W) pixels.
pub fn unpatchify(patches: &[f32], shape: ImageShape, patch: usize) -> Vec<f32> {
    let mut out = vec![0.0; patches.len()];
    copy_patches(patches, &mut out, shape, patch, false);
    out
}

/// The one index map shared by [`patchify`] and [`unpatchify`], so the two
/// are inverse by construction.
fn copy_patches(src: &[f32], dst: &mut [f32], shape: ImageShape, patch: usize, forward: bool) {
    let ImageShape {
        channels,
        height,
        width,
    } = shape;
    check_grid(height, width, patch);
    assert_eq!(
        src.len(),
        shape.numel(),
        "buffer size does not match {shape:?}"
    );
    let cols = width / patch;
    let locs = (height / patch) * cols;
    for loc in 0..locs {
        let (row, col) = (loc / cols, loc % cols);
        for c in 0..channels {
            for py in 0..patch {
                for px in 0..patch {
                    let p = (loc * channels + c) * patch * patch + py * patch + px;
                    let q = c * height * width + (row * patch + py) * width + col * patch + px;
                    if forward {
                        dst[p] = src[q];
                    } else {
                        dst[q] = src[p];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_layout_and_round_trip() {
        let shape = ImageShape {
            channels: 3,
            height: 8,
            width: 12,
        };
        let pixels: Vec<f32> = (0..shape.numel()).map(|i| i as f32).collect();
        let patches = patchify(&pixels, shape, 4);
        assert_eq!(patches.len(), pixels.len());
        // Location (row 1, col 2) = loc 5, channel 2, inside offset (3, 1).
        let (loc, c, py, px) = (5, 2, 3, 1);
        let q = c * 8 * 12 + (4 + py) * 12 + 8 + px;
        assert_eq!(patches[(loc * 3 + c) * 16 + py * 4 + px], pixels[q]);
        assert_ne!(patches, pixels, "patchify must reorder");
        assert_eq!(unpatchify(&patches, shape, 4), pixels);
        assert_eq!(unpatchify(&patchify(&pixels, shape, 2), shape, 2), pixels);
    }

    #[test]
    fn patch_majority_on_a_hand_built_map() {
        #[rustfmt::skip]
        let map: [u16; 16] = [
            1, 1, 2, 3,
            1, 0, 3, 2,
            0, 0, 5, 5,
            4, 0, 5, 7,
        ];
        // Top-right patch: 2 twice, 3 twice, tie goes to the smaller id.
        assert_eq!(patch_majority(&map, 4, 4, 2), vec![1, 2, 0, 5]);
        assert_eq!(patch_majority(&map, 4, 4, 1), map.to_vec());
        assert_eq!(patch_majority(&map, 4, 4, 4), vec![0]);
    }

    #[test]
    #[should_panic(expected = "cannot be cut")]
    fn patch_size_must_divide_the_image() {
        patch_majority(&[0; 15], 3, 5, 2);
    }
}

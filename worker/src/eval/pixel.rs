//! Pixel-level scores, the way the object-discovery literature scores
//! segmentations, and the references they are read against.
//!
//! - *Pixel FG-ARI*: each location's label is given to every pixel of its
//!   patch, and the adjusted Rand index is taken over the pixels whose true
//!   object id is not background (IODINE, MONet and Slot Attention report
//!   this "foreground ARI", the background excluded because it would
//!   dominate). It is the mean over images with at least two foreground
//!   pixels.
//! - *Ceiling*: the same score of every location labelled by the majority
//!   object of its patch (the most common non-background id among its
//!   pixels; background pixels do not count, as the score ignores them):
//!   what the patch grid alone costs (1 when objects follow patch borders,
//!   as Tetrominoes' blocks do).
//! - *k-means on patch colours*: a segmenter that knows nothing but colour
//!   (each patch's mean RGB, k-means told the true number of segments of
//!   the location map, background included), scored like GLOM's true-k
//!   clusters: at the location level over all and over foreground
//!   locations, and at the pixel level.

use serde::{Deserialize, Serialize};

use crate::analysis::{adjusted_rand_index, kmeans};
use crate::data::{patch_majority, patch_majority_of, Image};
use crate::rng::Rng;

/// k-means restarts per image.
const KMEANS_RESTARTS: usize = 4;
/// First word of the key of each image's k-means stream.
const KMEANS_KEY: u64 = 0x6b6d_6561_6e73;

/// Pixel FG-ARI of a per-location labelling (`labels`, one per location of
/// the `side/patch` grid, row-major) against the pixel object map of an
/// image of `side x side` pixels; `None` when fewer than two pixels are
/// foreground.
///
/// # Panics
/// When the sizes disagree.
pub fn pixel_fg_ari(labels: &[usize], object_px: &[u16], side: usize, patch: usize) -> Option<f64> {
    let cols = side / patch;
    assert!(
        labels.len() == cols * cols && object_px.len() == side * side,
        "pixel_fg_ari: {} labels and {} pixels for a {side}-pixel image of {patch}-pixel patches",
        labels.len(),
        object_px.len()
    );
    let (mut found, mut truth) = (Vec::new(), Vec::new());
    for (at, &id) in object_px.iter().enumerate().filter(|(_, &id)| id != 0) {
        let (y, x) = (at / side, at % side);
        found.push(labels[(y / patch) * cols + x / patch]);
        truth.push(usize::from(id));
    }
    (truth.len() >= 2).then(|| adjusted_rand_index(&found, &truth))
}

/// The pixel FG-ARI of labelling every location by the majority object of
/// its patch: the cost of the patch grid.
pub fn patch_ceiling(object_px: &[u16], side: usize, patch: usize) -> Option<f64> {
    pixel_fg_ari(
        &majority_object(object_px, side, patch),
        object_px,
        side,
        patch,
    )
}

/// Per location, the most common non-background id among its patch's
/// pixels (ties: the smallest id; 0 for a patch of background alone).
fn majority_object(object_px: &[u16], side: usize, patch: usize) -> Vec<usize> {
    patch_majority_of(object_px, side, side, patch, |id| id != 0)
        .into_iter()
        .map(usize::from)
        .collect()
}

/// Each patch's mean colour, one row of `channels` values per location.
pub fn patch_colours(image: &Image, channels: usize, side: usize, patch: usize) -> Vec<f32> {
    let cols = side / patch;
    let mut out = Vec::with_capacity(cols * cols * channels);
    for loc in 0..cols * cols {
        let (row, col) = (loc / cols, loc % cols);
        for c in 0..channels {
            let mut sum = 0f32;
            for y in row * patch..(row + 1) * patch {
                let start = c * side * side + y * side + col * patch;
                sum += image.pixels[start..start + patch].iter().sum::<f32>();
            }
            out.push(sum / (patch * patch) as f32);
        }
    }
    out
}

/// The scores of the k-means reference, averaged over images; the JSON
/// keys are those of the same figures of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceReport {
    /// Location-level ARI against the object map, all locations.
    pub island_ari_object_k: f64,
    /// The same over foreground locations (images with at least two).
    pub fg_ari_object_k: Option<f64>,
    /// Pixel FG-ARI.
    pub pixel_fg_ari_object_k: Option<f64>,
}

/// Running sums of the model-free figures: the ceiling and the k-means
/// reference.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReferenceTotals {
    images: usize,
    all: f64,
    fg: Mean,
    pixel: Mean,
    ceiling: Mean,
}

/// A mean of the values that exist.
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    sum: f64,
    count: usize,
}

impl Mean {
    fn add(&mut self, x: Option<f64>) {
        if let Some(x) = x {
            self.sum += x;
            self.count += 1;
        }
    }

    fn get(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

impl ReferenceTotals {
    /// Add held-out image `index` (skipped without an object map).
    pub(crate) fn add(
        &mut self,
        image: &Image,
        index: usize,
        channels: usize,
        side: usize,
        patch: usize,
    ) {
        let Some(object_px) = &image.object_map else {
            return;
        };
        let object_loc = patch_majority(object_px, side, side, patch);
        let truth: Vec<usize> = object_loc.iter().map(|&id| usize::from(id)).collect();
        let mut segments = truth.clone();
        segments.sort_unstable();
        segments.dedup();
        let colours = patch_colours(image, channels, side, patch);
        let mut rng = Rng::from_key(&[KMEANS_KEY, index as u64]);
        let labels = kmeans(
            &colours,
            channels,
            segments.len(),
            KMEANS_RESTARTS,
            &mut rng,
        );
        let fg: Vec<usize> = (0..truth.len()).filter(|&i| truth[i] != 0).collect();
        let pick = |l: &[usize]| fg.iter().map(|&i| l[i]).collect::<Vec<_>>();
        self.images += 1;
        self.all += adjusted_rand_index(&labels, &truth);
        self.fg
            .add((fg.len() >= 2).then(|| adjusted_rand_index(&pick(&labels), &pick(&truth))));
        self.pixel
            .add(pixel_fg_ari(&labels, object_px, side, patch));
        self.ceiling.add(patch_ceiling(object_px, side, patch));
    }

    /// The k-means figures; `None` when no image had an object map.
    pub(crate) fn kmeans(&self) -> Option<ReferenceReport> {
        (self.images > 0).then(|| ReferenceReport {
            island_ari_object_k: self.all / self.images as f64,
            fg_ari_object_k: self.fg.get(),
            pixel_fg_ari_object_k: self.pixel.get(),
        })
    }

    /// The mean pixel FG-ARI ceiling.
    pub(crate) fn ceiling(&self) -> Option<f64> {
        self.ceiling.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4x4 pixels in 2x2 patches: objects 1, 2 on top, background and
    /// object 3 below, each exactly one patch.
    #[rustfmt::skip]
    const ALIGNED: [u16; 16] = [
        1, 1, 2, 2,
        1, 1, 2, 2,
        0, 0, 3, 3,
        0, 0, 3, 3,
    ];

    #[test]
    fn perfect_labelling_scores_one_whatever_the_label_names() {
        assert_eq!(pixel_fg_ari(&[0, 1, 2, 3], &ALIGNED, 4, 2), Some(1.0));
        // Swapped (renamed) labels are the same partition.
        assert_eq!(pixel_fg_ari(&[3, 9, 0, 1], &ALIGNED, 4, 2), Some(1.0));
        // The background is left out: merging it with object 1 costs nothing.
        assert_eq!(pixel_fg_ari(&[0, 1, 0, 2], &ALIGNED, 4, 2), Some(1.0));
        assert_eq!(patch_ceiling(&ALIGNED, 4, 2), Some(1.0));
    }

    #[test]
    fn one_cluster_for_everything_scores_zero() {
        // 12 foreground pixels, 3 objects of 4: index = 3 C(4) = 18,
        // sum over the one cluster C(12) = 66, over objects 18, expected
        // 66 * 18 / 66 = 18, max (66 + 18) / 2 = 42: (18 - 18) / 24 = 0.
        assert_eq!(pixel_fg_ari(&[0; 4], &ALIGNED, 4, 2), Some(0.0));
    }

    #[test]
    fn a_patch_grid_costs_what_objects_do_not_align_with_it() {
        #[rustfmt::skip]
        let map: [u16; 16] = [
            1, 1, 1, 2,
            1, 1, 2, 2,
            0, 0, 0, 0,
            0, 0, 0, 0,
        ];
        // Majority labels [1, 2, 0, 0]: pixel (0, 2) of object 1 falls in
        // object 2's patch. Foreground 8 pixels; contingency: object 1 ->
        // 4 + 1, object 2 -> 3. index = C(4) + C(3) = 9, sums over found
        // 6 + 6 = 12 and over truth C(5) + C(3) = 13, C(8) = 28,
        // expected 12 * 13 / 28 = 39/7, max 25/2:
        // ARI = (9 - 39/7) / (25/2 - 39/7) = 48/97.
        let ceiling = patch_ceiling(&map, 4, 2).unwrap();
        assert!((ceiling - 48.0 / 97.0).abs() < 1e-12, "{ceiling}");
        assert_eq!(pixel_fg_ari(&[1, 2, 0, 0], &map, 4, 2), Some(ceiling));
    }

    #[test]
    fn the_ceiling_ignores_background_pixels() {
        // Top-right patch: three background pixels and one of object 2;
        // it is labelled 2, so both objects are whole: ceiling 1.
        #[rustfmt::skip]
        let map: [u16; 16] = [
            1, 1, 0, 2,
            1, 1, 0, 0,
            0, 0, 0, 0,
            0, 0, 0, 0,
        ];
        assert_eq!(majority_object(&map, 4, 2), vec![1, 2, 0, 0]);
        assert_eq!(patch_ceiling(&map, 4, 2), Some(1.0));
        // Labelled by the plain majority (background) instead, object 2's
        // pixel would share label 0 with nothing else: still 1 here, but
        // with two such objects they would merge.
        #[rustfmt::skip]
        let two: [u16; 16] = [
            1, 1, 0, 2,
            1, 1, 0, 0,
            0, 0, 0, 0,
            3, 0, 0, 0,
        ];
        assert_eq!(patch_ceiling(&two, 4, 2), Some(1.0));
        let plain: Vec<usize> = patch_majority(&two, 4, 4, 2)
            .into_iter()
            .map(usize::from)
            .collect();
        assert!(pixel_fg_ari(&plain, &two, 4, 2).unwrap() < 1.0);
    }

    #[test]
    fn fewer_than_two_foreground_pixels_give_none() {
        let mut map = [0u16; 16];
        assert_eq!(pixel_fg_ari(&[0; 4], &map, 4, 2), None);
        map[5] = 1;
        assert_eq!(pixel_fg_ari(&[0; 4], &map, 4, 2), None);
        map[6] = 2;
        assert!(pixel_fg_ari(&[0; 4], &map, 4, 2).is_some());
    }

    #[test]
    fn patch_colours_are_means() {
        let image = Image {
            // 2x2 pixels, 2 channels (C, H, W).
            pixels: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            part_map: None,
            object_map: None,
            label: None,
        };
        assert_eq!(
            patch_colours(&image, 2, 2, 1),
            vec![0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0]
        );
        assert_eq!(patch_colours(&image, 2, 2, 2), vec![1.5, 5.5]);
    }
}

//! Scoring the islands of one image at one level, on plain numbers, and
//! averaging those scores over images.
//!
//! Two clusterings are scored:
//! - *threshold islands*: average-linkage merging of the vectors as they
//!   are while the cosine distance stays under `eval.island_threshold`;
//!   this is the paper's notion of an island of agreement (section 7), the
//!   headline, scored against both the part and the object map. Nothing is
//!   subtracted first, so a collapsed level (every location the same
//!   vector) is one island, and a blank image parses into one island per
//!   level when the model treats its locations alike;
//! - *k clusters* (a diagnostic): the vectors of the image centred (its
//!   mean vector removed), then merged down to the true number of segments
//!   of the map it is scored against. It shows whether grouping information
//!   survives as small deviations even when the vectors have drifted
//!   together and the threshold sees a single island.
//!
//! Foreground-only scores restrict the same clusterings to the locations
//! whose object id is not background, because on scenes with a large
//! background the ARI mostly measures foreground vs background.
//!
//! Data with an object map but no part map (Tetrominoes, sprites) is scored
//! against objects only; the part figures are `None`. With the pixel object
//! map at hand, both clusterings are also scored at the pixel level
//! ([`super::pixel`]: pixel FG-ARI, as the literature reports).

use std::collections::BTreeSet;

use glom_protocol::config::Config;

use super::pixel::pixel_fg_ari;
use super::{EvalReport, LevelAri};
use crate::analysis::{adjusted_rand_index, agglomerate, center_rows, Stop};
use crate::data::{patch_majority, Image};

/// The four agreement scores of one image (or their mean over images).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AriSet {
    /// Threshold islands vs the part map.
    pub part: f64,
    /// Threshold islands vs the object map.
    pub object: f64,
    /// Clustering into as many clusters as the part map has segments, vs it.
    pub part_k: f64,
    /// Clustering into as many clusters as the object map has segments, vs it.
    pub object_k: f64,
}

impl AriSet {
    fn add(&mut self, other: &AriSet) {
        self.part += other.part;
        self.object += other.object;
        self.part_k += other.part_k;
        self.object_k += other.object_k;
    }

    fn scaled(&self, by: f64) -> AriSet {
        AriSet {
            part: self.part * by,
            object: self.object * by,
            part_k: self.part_k * by,
            object_k: self.object_k * by,
        }
    }
}

/// Scores of one image at one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageScores {
    /// Number of threshold islands.
    pub islands: usize,
    /// ARI over all locations.
    pub all: AriSet,
    /// ARI over the foreground locations only; `None` when the image has
    /// fewer than two of them.
    pub fg: Option<AriSet>,
    /// Whether the part fields mean anything (the image has a part map).
    pub has_parts: bool,
    /// Pixel FG-ARI of the threshold islands and of the true-k clusters
    /// against objects; `None` without a pixel map or foreground.
    pub pixel_fg: Option<PixelFg>,
}

/// Pixel FG-ARI of one image's clusterings ([`super::pixel`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PixelFg {
    /// Threshold islands.
    pub object: f64,
    /// Clustering into the true number of object segments.
    pub object_k: f64,
}

/// The clusterings of one image at one level.
struct Labels {
    islands: Vec<usize>,
    /// Into the true number of parts (`None` without a part map).
    by_parts: Option<Vec<usize>>,
    by_objects: Vec<usize>,
}

/// Cluster one image's field both ways (see the module documentation).
fn cluster(
    vectors: &[f32],
    dim: usize,
    part_loc: Option<&[u16]>,
    object_loc: &[u16],
    threshold: f64,
) -> Labels {
    let centred = center_rows(vectors, dim);
    let n = centred.len() / dim.max(1);
    assert!(
        part_loc.is_none_or(|p| p.len() == n) && object_loc.len() == n,
        "score_image: {n} locations but maps of {:?} and {} ids",
        part_loc.map(<[u16]>::len),
        object_loc.len()
    );
    Labels {
        islands: threshold_islands(vectors, dim, threshold),
        by_parts: part_loc.map(|p| agglomerate(&centred, dim, Stop::Clusters(segments(p)))),
        by_objects: agglomerate(&centred, dim, Stop::Clusters(segments(object_loc))),
    }
}

/// Threshold islands of one image: labels `0..m`, one per location, for
/// `vectors` holding one row of `dim` values per location (not centred).
pub fn threshold_islands(vectors: &[f32], dim: usize, threshold: f64) -> Vec<usize> {
    agglomerate(vectors, dim, Stop::Threshold(threshold as f32))
}

/// Score the embedding field of one image at one level against its
/// location-level part and object maps (one id per location, 0 = background).
///
/// # Panics
/// When the maps do not have one id per row of `vectors`.
pub fn score_image(
    vectors: &[f32],
    dim: usize,
    part_loc: &[u16],
    object_loc: &[u16],
    threshold: f64,
) -> ImageScores {
    let labels = cluster(vectors, dim, Some(part_loc), object_loc, threshold);
    score_labels(&labels, Some(part_loc), object_loc)
}

/// The location-level scores of `labels`; without a part map the part
/// fields are 0 and `has_parts` is false.
fn score_labels(labels: &Labels, part_loc: Option<&[u16]>, object_loc: &[u16]) -> ImageScores {
    let n = object_loc.len();
    let ids = |map: &[u16]| map.iter().map(|&id| usize::from(id)).collect::<Vec<_>>();
    let object = ids(object_loc);
    let part = part_loc.map(ids);
    let scores_on = |keep: &[usize]| {
        let ari = |found: &[usize], truth: &[usize]| {
            let pick = |labels: &[usize]| keep.iter().map(|&i| labels[i]).collect::<Vec<_>>();
            adjusted_rand_index(&pick(found), &pick(truth))
        };
        let (part_ari, part_k) = match (&part, &labels.by_parts) {
            (Some(part), Some(by_parts)) => (ari(&labels.islands, part), ari(by_parts, part)),
            _ => (0.0, 0.0),
        };
        AriSet {
            part: part_ari,
            object: ari(&labels.islands, &object),
            part_k,
            object_k: ari(&labels.by_objects, &object),
        }
    };
    let all: Vec<usize> = (0..n).collect();
    let foreground: Vec<usize> = (0..n).filter(|&i| object_loc[i] != 0).collect();
    ImageScores {
        islands: count_labels(&labels.islands),
        all: scores_on(&all),
        fg: (foreground.len() >= 2).then(|| scores_on(&foreground)),
        has_parts: part.is_some(),
        pixel_fg: None,
    }
}

/// Number of distinct ids in a map.
fn segments(ids: &[u16]) -> usize {
    ids.iter().collect::<BTreeSet<_>>().len()
}

/// Number of clusters of a labelling numbered `0..m`.
fn count_labels(labels: &[usize]) -> usize {
    labels.iter().max().map_or(0, |&m| m + 1)
}

/// Running sums of one level's scores over images.
#[derive(Debug, Clone, Default)]
pub(crate) struct LevelTotals {
    /// Images whose islands were counted.
    images: usize,
    islands: usize,
    /// Images scored against maps.
    scored: usize,
    /// Of those, images with a part map (the part sums are over them).
    part_scored: usize,
    all: AriSet,
    /// Images with a foreground score.
    fg_images: usize,
    fg_part_images: usize,
    fg: AriSet,
    /// Images with a pixel FG-ARI.
    pixel_images: usize,
    pixel: PixelFg,
}

impl LevelTotals {
    /// Count the islands of an image without maps.
    pub(crate) fn add_islands(&mut self, islands: usize) {
        self.images += 1;
        self.islands += islands;
    }

    /// Add the scores of an image with maps.
    pub(crate) fn add(&mut self, s: &ImageScores) {
        self.add_islands(s.islands);
        self.scored += 1;
        self.part_scored += usize::from(s.has_parts);
        self.all.add(&s.all);
        if let Some(fg) = &s.fg {
            self.fg_images += 1;
            self.fg_part_images += usize::from(s.has_parts);
            self.fg.add(fg);
        }
        if let Some(p) = &s.pixel_fg {
            self.pixel_images += 1;
            self.pixel.object += p.object;
            self.pixel.object_k += p.object_k;
        }
    }

    pub(crate) fn islands_per_image(&self) -> f64 {
        mean(self.islands as f64, self.images)
    }

    /// Mean scores; foreground means are 0 when no image had a foreground;
    /// part means `None` when no image had a part map, pixel means when no
    /// image had a pixel score.
    fn level_ari(&self, level: usize) -> LevelAri {
        let all = self.all.scaled(mean(1.0, self.scored));
        let fg = self.fg.scaled(mean(1.0, self.fg_images));
        let parts = |sum: f64, count: usize| (self.part_scored > 0).then(|| mean(sum, count));
        let pixel = |sum: f64| (self.pixel_images > 0).then(|| mean(sum, self.pixel_images));
        LevelAri {
            level,
            part: parts(self.all.part, self.part_scored),
            object: all.object,
            part_k: parts(self.all.part_k, self.part_scored),
            object_k: all.object_k,
            fg_part: parts(self.fg.part, self.fg_part_images),
            fg_object: fg.object,
            fg_part_k: parts(self.fg.part_k, self.fg_part_images),
            fg_object_k: fg.object_k,
            islands_per_image: self.islands_per_image(),
            pixel_fg_object: pixel(self.pixel.object),
            pixel_fg_object_k: pixel(self.pixel.object_k),
        }
    }
}

fn mean(sum: f64, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// Fill the island fields of `report` from per-level totals: per-level
/// means, the best level of each score (ties: the lowest level) and the
/// island counts. ARI fields stay `None` when no image had maps, and the
/// foreground ones when no image had a foreground.
pub(crate) fn fill_islands(report: &mut EvalReport, totals: &[LevelTotals]) {
    report.islands_per_image_by_level = totals.iter().map(|t| t.islands_per_image()).collect();
    if totals.is_empty() || totals.iter().any(|t| t.scored == 0) {
        return;
    }
    let levels: Vec<LevelAri> = totals
        .iter()
        .enumerate()
        .map(|(l, t)| t.level_ari(l))
        .collect();
    // The best level of a figure (ties: the lowest) and its value; `None`
    // when the figure is missing.
    let best = |f: fn(&LevelAri) -> Option<f64>| {
        let mut arg: Option<(usize, f64)> = None;
        for (l, v) in levels.iter().enumerate() {
            if let Some(x) = f(v) {
                if arg.is_none_or(|(_, b)| x > b) {
                    arg = Some((l, x));
                }
            }
        }
        arg
    };
    let part_k = best(|v| v.part_k);
    let (lo, object_k) = best(|v| Some(v.object_k)).expect("levels are not empty");
    report.island_ari_part = best(|v| v.part).map(|b| b.1);
    report.island_ari_object = best(|v| Some(v.object)).map(|b| b.1);
    report.island_ari_part_k = part_k.map(|b| b.1);
    report.island_ari_object_k = Some(object_k);
    report.best_level_part = part_k.map(|b| b.0);
    report.best_level_object = Some(lo);
    if totals.iter().all(|t| t.fg_images > 0) {
        report.fg_ari_part_k = best(|v| v.fg_part_k).map(|b| b.1);
        report.fg_ari_object_k = best(|v| Some(v.fg_object_k)).map(|b| b.1);
    }
    report.pixel_fg_ari_object = best(|v| v.pixel_fg_object).map(|b| b.1);
    report.pixel_fg_ari_object_k = best(|v| v.pixel_fg_object_k).map(|b| b.1);
    report.island_ari_by_level = levels;
}

/// Add one image to the per-level totals: `fields` holds, per level, its
/// vectors at every location ([`image_rows`]). An image with an object map
/// is scored against it (and its part map when it has one), at the
/// location and the pixel level; one without only has its islands counted.
pub(crate) fn score_levels(
    cfg: &Config,
    fields: &[Vec<f32>],
    image: &Image,
    totals: &mut [LevelTotals],
) {
    let (side, patch, dim) = (cfg.image_side(), cfg.model.patch, cfg.model.dim);
    let threshold = cfg.eval.island_threshold;
    let Some(object_px) = &image.object_map else {
        for (level, vectors) in fields.iter().enumerate() {
            totals[level].add_islands(count_labels(&threshold_islands(vectors, dim, threshold)));
        }
        return;
    };
    let object = patch_majority(object_px, side, side, patch);
    let part = image
        .part_map
        .as_ref()
        .map(|p| patch_majority(p, side, side, patch));
    for (level, vectors) in fields.iter().enumerate() {
        let labels = cluster(vectors, dim, part.as_deref(), &object, threshold);
        let mut scores = score_labels(&labels, part.as_deref(), &object);
        scores.pixel_fg = pixel_fg_ari(&labels.islands, object_px, side, patch)
            .zip(pixel_fg_ari(&labels.by_objects, object_px, side, patch))
            .map(|(object, object_k)| PixelFg { object, object_k });
        totals[level].add(&scores);
    }
}

/// The `dim`-vectors of image `b` (of `batch_len`) at every location, from
/// one level's `[P, B, d]` values.
pub(crate) fn image_rows(level: &[f32], b: usize, batch_len: usize, dim: usize) -> Vec<f32> {
    let locations = level.len() / (batch_len * dim).max(1);
    (0..locations)
        .flat_map(|p| {
            let at = (p * batch_len + b) * dim;
            level[at..at + dim].iter().copied()
        })
        .collect()
}

//! Evaluation of a trained GLOM model: does it reconstruct, does it form
//! islands that match parts and objects, and do its embeddings still carry
//! class information?
//!
//! GLOM represents a parse tree by islands of agreement: locations whose
//! embeddings at one level have become nearly the same vector (GLOM paper
//! section 7). So the core measurement clusters each level of each held-out
//! image and compares the clusters with the true part and object maps by the
//! adjusted Rand index. Three choices follow from what such models do:
//! - agreement can be reached by collapse (every location the same vector),
//!   which a fixed cosine threshold reads as one island per image; so islands
//!   are scored both with the threshold and with clustering told the true
//!   number of segments, which still finds grouping carried by small
//!   deviations around a common vector;
//! - background dominates scenes, so foreground-only ARI is reported too,
//!   and, where the data has a pixel object map, the pixel-level
//!   foreground ARI the object-discovery literature reports ([`pixel`]),
//!   with its ceiling on a patch grid;
//! - lateral smoothing plus colour already groups patches in a network that
//!   never learned anything, so every number is reported next to the same
//!   model at its random initialisation, computed by the same code in the
//!   same run (and the probe next to a probe on raw pixels), and the
//!   object scores next to k-means on raw patch colours told the true
//!   number of segments.
//!
//! Reconstruction is scored on masked patches (the model must fill them in
//! from context); islands and the probe use unmasked images. A video is
//! settled over all its frames and scored on its last (reconstruction,
//! islands, probe, references: `Dataset::get` is the last frame); its
//! islands are also scored in every frame and followed from frame to
//! frame ([`temporal`]). Everything is
//! deterministic: fixed masks and neighbour draws ([`EVAL_KEY`]), fixed
//! images (the first ones of each split) and a seeded probe.

pub mod pixel;
mod probe;
mod score;
pub mod temporal;
#[cfg(test)]
mod tests;

use candle_core::{DType, Tensor};
use glom_protocol::config::Config;
use serde::{Deserialize, Serialize};

use crate::analysis::{collapse_stats, psnr_db};
use crate::data::patch_majority;
use crate::data::{Dataset, Image};
use crate::error::{Error, Result};
use crate::learn::{make_sequence_batch, Batch, EVAL_KEY};
use crate::model::{Glom, Mode, NoHalo, Settled};
use pixel::ReferenceTotals;
pub use pixel::{patch_ceiling, pixel_fg_ari, ReferenceReport};
pub use probe::raw_pixel_probe;
use probe::{probe_count, run_probe, ProbeSet};
use score::{image_rows, score_levels, LevelTotals};
pub use score::{score_image, threshold_islands, AriSet, ImageScores, PixelFg};

/// Images settled together.
const BATCH: usize = 32;
/// Fraction of patches hidden for the reconstruction score when training
/// hides none, so that there is something to reconstruct.
const FALLBACK_MASK_FRACTION: f64 = 0.3;

/// Everything `glom eval` reports for one model. The JSON key names are a
/// public interface read by scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Reconstruction PSNR (dB) of the masked patches of the held-out images.
    pub recon_psnr_db: f64,
    /// PSNR (dB) of a trivial inpainting of the same hidden patches, on the
    /// same images and masks: each hidden pixel is the mean of the same
    /// pixel in the visible patches among the 8 around it (of every visible
    /// patch of the image if none is, 0 if the image has none). A model
    /// whose `recon_psnr_db` is below it has learnt less than averaging.
    /// The same for the trained model and its random initialisation
    /// (`None` in reports written before it existed).
    #[serde(default)]
    pub inpaint_baseline_psnr_db: Option<f64>,
    /// Whether the threshold islands were scored on centred vectors (the
    /// image's mean removed), as reports written before the islands became
    /// honest were: such ARIs are not comparable with uncentred ones.
    /// Always false now; reports without the key read as true.
    #[serde(default = "centred_before")]
    pub islands_centred: bool,
    /// Threshold-island ARI against parts, at the best level (None when
    /// the data has no part map).
    pub island_ari_part: Option<f64>,
    /// Threshold-island ARI against objects, at the best level.
    pub island_ari_object: Option<f64>,
    /// ARI against parts of clustering told the true number of parts, best level.
    pub island_ari_part_k: Option<f64>,
    /// ARI against objects of clustering told the true number of objects
    /// (background included), best level.
    pub island_ari_object_k: Option<f64>,
    /// Foreground-only object ARI with the true number of segments, best level.
    pub fg_ari_object_k: Option<f64>,
    /// Foreground-only part ARI with the true number of segments, best level.
    pub fg_ari_part_k: Option<f64>,
    /// The level of `island_ari_part_k`.
    pub best_level_part: Option<usize>,
    /// The level of `island_ari_object_k`.
    pub best_level_object: Option<usize>,
    /// Pixel FG-ARI of the threshold islands against objects, best level:
    /// each location's island given to its patch's pixels, scored on the
    /// foreground pixels ([`pixel`]). None without a pixel object map
    /// (and in reports written before it existed).
    #[serde(default)]
    pub pixel_fg_ari_object: Option<f64>,
    /// Pixel FG-ARI of the clustering told the true number of object
    /// segments, best level.
    #[serde(default)]
    pub pixel_fg_ari_object_k: Option<f64>,
    /// Every score at every level (empty without maps).
    pub island_ari_by_level: Vec<LevelAri>,
    /// Linear-probe accuracy on the mean top-level embedding (None without labels).
    pub probe_accuracy: Option<f64>,
    /// The same probe on the mean embedding of every level (the last is
    /// `probe_accuracy`): which level carries the class.
    #[serde(default)]
    pub probe_accuracy_by_level: Option<Vec<f64>>,
    /// Mean number of threshold islands per image, per level.
    pub islands_per_image_by_level: Vec<f64>,
    /// Collapse measures of the settled embeddings of every location of
    /// the `eval.images` held-out images, per level: RankMe effective rank
    /// (1 = one direction, d = fully spread), mean per-dimension std of the
    /// normalised vectors (0 = collapsed) and mean pairwise cosine (1 =
    /// collapsed); see [`crate::analysis::collapse_stats`].
    #[serde(default)]
    pub effective_rank_by_level: Vec<f64>,
    #[serde(default)]
    pub dim_std_by_level: Vec<f64>,
    #[serde(default)]
    pub mean_cosine_by_level: Vec<f64>,
    /// Of a video with object maps, per level: the threshold islands'
    /// object ARI in every frame, averaged over the frames and the
    /// sequences (the headline figures are of the last frame). Absent for
    /// still images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub island_ari_object_over_frames_by_level: Option<Vec<f64>>,
    /// Of a video with object maps, per level: the temporal stability of
    /// the threshold islands ([`temporal::stability`]), `None` at a level
    /// where no location was covered by one object in two frames. Absent
    /// for still images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_stability_by_level: Option<Vec<Option<f64>>>,
}

/// Reports without `islands_centred` were scored on centred vectors.
fn centred_before() -> bool {
    true
}

/// The island scores of one level, averaged over the held-out images.
/// Foreground means are over images with at least two foreground locations;
/// part scores are `None` for data without part maps, pixel scores for
/// data without pixel object maps (and in reports from before them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelAri {
    pub level: usize,
    pub part: Option<f64>,
    pub object: f64,
    pub part_k: Option<f64>,
    pub object_k: f64,
    pub fg_part: Option<f64>,
    pub fg_object: f64,
    pub fg_part_k: Option<f64>,
    pub fg_object_k: f64,
    pub islands_per_image: f64,
    #[serde(default)]
    pub pixel_fg_object: Option<f64>,
    #[serde(default)]
    pub pixel_fg_object_k: Option<f64>,
}

/// The full evaluation: the trained model and its baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub trained: EvalReport,
    /// Pixel FG-ARI of every location labelled by the majority object of
    /// its patch (background pixels not counted): what a labelling right
    /// at every location scores, the cost of the patch grid alone, beside
    /// the `pixel_fg_ari_*` figures it bounds. None without object maps
    /// (and in reports from before it).
    #[serde(default)]
    pub pixel_fg_ari_ceiling: Option<f64>,
    pub baseline: Baseline,
}

/// What the same evaluation gives without learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The same model at its random initialisation.
    #[serde(flatten)]
    pub random_init: EvalReport,
    /// The same linear probe on the raw pixels.
    pub probe_accuracy_raw_pixels: Option<f64>,
    /// k-means on each patch's mean colour told the true number of object
    /// segments, scored like the model's true-k clusters ([`pixel`]);
    /// None without object maps (and in reports from before it).
    #[serde(default)]
    pub kmeans_colour: Option<ReferenceReport>,
}

/// Evaluate one model. `held_out` supplies the evaluation images (its
/// first `eval.images`) and the probe's test images (its first
/// `eval.probe_images`); `probe_train` the probe's training images (its
/// first `eval.probe_images`). `progress(phase, images done, total)` is
/// called after every batch.
pub fn evaluate(
    model: &Glom,
    held_out: &dyn Dataset,
    probe_train: &dyn Dataset,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<EvalReport> {
    check_whole_grid(model)?;
    let cfg = &model.cfg;
    check_shape(cfg, held_out, "held-out")?;
    check_shape(cfg, probe_train, "probe training")?;
    let n_eval = available(held_out, cfg.eval.images);
    let n_probe = probe_count(cfg, held_out, probe_train);
    let (n_test, n_train) = (
        available(held_out, n_probe),
        available(probe_train, n_probe),
    );

    let (recon_psnr_db, inpaint_baseline_psnr_db) =
        reconstruction_psnr(model, held_out, n_eval, progress)?;

    let levels = cfg.model.levels;
    let mut totals = vec![LevelTotals::default(); levels];
    let mut collapse_rows = vec![Vec::new(); levels];
    let mut test: Vec<ProbeSet> = (0..levels).map(|_| ProbeSet::default()).collect();
    let mut video = (held_out.frames() > 1).then(|| VideoTotals::new(levels));
    batches(
        model,
        held_out,
        n_eval.max(n_test),
        "held-out embeddings",
        progress,
        |start, sequences, settled| {
            let images: Vec<Image> = sequences.iter().map(|s| s[s.len() - 1].clone()).collect();
            let images = &images[..];
            let rows = level_rows(&settled.levels)?;
            if let Some(v) = video.as_mut() {
                let scored = n_eval.saturating_sub(start).min(sequences.len());
                v.add(cfg, &sequences[..scored], settled)?;
            }
            for (b, image) in images.iter().enumerate() {
                if start + b < n_eval {
                    let fields: Vec<Vec<f32>> = rows
                        .iter()
                        .map(|level| image_rows(level, b, images.len(), cfg.model.dim))
                        .collect();
                    score_levels(cfg, &fields, image, &mut totals);
                    for (all, field) in collapse_rows.iter_mut().zip(&fields) {
                        all.extend_from_slice(field);
                    }
                }
            }
            for (level, set) in test.iter_mut().enumerate() {
                set.extend(settled, level, images, n_test.saturating_sub(start))?;
            }
            Ok(())
        },
    )?;

    let mut train: Vec<ProbeSet> = (0..levels).map(|_| ProbeSet::default()).collect();
    batches(
        model,
        probe_train,
        n_train,
        "probe training embeddings",
        progress,
        |_, sequences, settled| {
            let images: Vec<Image> = sequences.iter().map(|s| s[s.len() - 1].clone()).collect();
            for (level, set) in train.iter_mut().enumerate() {
                set.extend(settled, level, &images, images.len())?;
            }
            Ok(())
        },
    )?;

    let collapse: Vec<_> = collapse_rows
        .iter()
        .map(|rows| collapse_stats(rows, cfg.model.dim))
        .collect();
    let mut report = EvalReport {
        recon_psnr_db,
        inpaint_baseline_psnr_db: Some(inpaint_baseline_psnr_db),
        islands_centred: false,
        island_ari_part: None,
        island_ari_object: None,
        island_ari_part_k: None,
        island_ari_object_k: None,
        fg_ari_object_k: None,
        fg_ari_part_k: None,
        best_level_part: None,
        best_level_object: None,
        pixel_fg_ari_object: None,
        pixel_fg_ari_object_k: None,
        island_ari_by_level: Vec::new(),
        probe_accuracy: None,
        probe_accuracy_by_level: None,
        islands_per_image_by_level: Vec::new(),
        effective_rank_by_level: collapse.iter().map(|c| c.effective_rank).collect(),
        dim_std_by_level: collapse.iter().map(|c| c.mean_dim_std).collect(),
        mean_cosine_by_level: collapse.iter().map(|c| c.mean_cosine).collect(),
        island_ari_object_over_frames_by_level: None,
        temporal_stability_by_level: None,
    };
    if let Some(v) = video.filter(|v| v.sequences > 0) {
        report.island_ari_object_over_frames_by_level = Some(
            v.frame_ari
                .iter()
                .map(|sum| sum / v.frames_scored as f64)
                .collect(),
        );
        report.temporal_stability_by_level =
            Some(v.stability.iter().map(temporal::Stability::rate).collect());
    }
    score::fill_islands(&mut report, &totals);
    let by_level: Vec<Option<f64>> = train
        .iter()
        .zip(&test)
        .map(|(tr, te)| run_probe(cfg, held_out, tr, te, cfg.model.dim))
        .collect();
    report.probe_accuracy = by_level.last().copied().flatten();
    report.probe_accuracy_by_level = by_level.into_iter().collect::<Option<Vec<_>>>();
    Ok(report)
}

/// The trained model, the same model at random initialisation (built here
/// from the configuration and seed, so exactly the weights training started
/// from), the raw-pixel probe, the k-means reference and the patch-grid
/// ceiling.
pub fn evaluate_with_baseline(
    model: &Glom,
    held_out: &dyn Dataset,
    probe_train: &dyn Dataset,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Evaluation> {
    let trained = evaluate(model, held_out, probe_train, &mut |phase, done, total| {
        progress(&format!("trained: {phase}"), done, total)
    })?;
    let init = Glom::new(
        &model.cfg,
        model.tile.clone(),
        model.device(),
        model.dtype(),
    )?;
    let random_init = evaluate(&init, held_out, probe_train, &mut |phase, done, total| {
        progress(&format!("random init: {phase}"), done, total)
    })?;
    let cfg = &model.cfg;
    let mut references = ReferenceTotals::default();
    for i in 0..available(held_out, cfg.eval.images) {
        references.add(
            &held_out.get(i),
            i,
            cfg.channels(),
            cfg.image_side(),
            cfg.model.patch,
        );
    }
    Ok(Evaluation {
        trained,
        pixel_fg_ari_ceiling: references.ceiling(),
        baseline: Baseline {
            random_init,
            probe_accuracy_raw_pixels: raw_pixel_probe(cfg, held_out, probe_train),
            kmeans_colour: references.kmeans(),
        },
    })
}

fn check_whole_grid(model: &Glom) -> Result<()> {
    let tile = &model.tile;
    if tile.halo.is_empty() && tile.locs.iter().copied().eq(0..tile.grid.len()) {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "evaluation needs a model of the whole {}x{} grid, got a tile of {} locations",
        tile.grid.rows,
        tile.grid.cols,
        tile.locs.len()
    )))
}

fn check_shape(cfg: &Config, data: &dyn Dataset, what: &str) -> Result<()> {
    let s = data.shape();
    let side = cfg.image_side();
    if s.channels == cfg.channels() && s.height == side && s.width == side {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{what} images are {}x{}x{}, the configuration expects {}x{side}x{side}",
        s.channels,
        s.height,
        s.width,
        cfg.channels()
    )))
}

/// The first `want` images, or all of them when the dataset has fewer (a
/// dataset of length 0 generates images for any index).
fn available(data: &dyn Dataset, want: usize) -> usize {
    if data.is_empty() {
        want
    } else {
        want.min(data.len())
    }
}

/// Settle the first `count` items of `data` (unmasked; every frame of a
/// video) in batches and hand each batch to `each(first index,
/// sequences, settled)`.
fn batches(
    model: &Glom,
    data: &dyn Dataset,
    count: usize,
    phase: &str,
    progress: &mut dyn FnMut(&str, usize, usize),
    mut each: impl FnMut(usize, &[Vec<Image>], &Settled) -> Result<()>,
) -> Result<()> {
    for start in (0..count).step_by(BATCH) {
        let sequences: Vec<Vec<Image>> = (start..count.min(start + BATCH))
            .map(|i| data.sequence(i))
            .collect();
        let settled = settle_sequences(model, &sequences, false)?;
        each(start, &sequences, &settled)?;
        progress(phase, start + sequences.len(), count);
    }
    Ok(())
}

/// Settle `images` whole (nothing hidden) with the evaluation's fixed
/// neighbour draws, as islands, probes and parse trees read them; `trace`
/// keeps every iteration's states.
pub fn settle_unmasked(model: &Glom, images: &[Image], trace: bool) -> Result<Settled> {
    let batch = unmasked_batch(model, images)?;
    model.settle(&batch.input, EVAL_KEY, Mode::Inference, &mut NoHalo, trace)
}

/// [`settle_unmasked`] of sequences (every one of the same number of
/// frames, oldest first).
pub fn settle_sequences(model: &Glom, sequences: &[Vec<Image>], trace: bool) -> Result<Settled> {
    let batch = make_sequence_batch(
        &model.cfg,
        sequences,
        &model.tile.locs,
        EVAL_KEY,
        0.0,
        model.device(),
        model.dtype(),
    )?;
    model.settle_frames(
        &batch.frames(),
        EVAL_KEY,
        Mode::Inference,
        &mut NoHalo,
        trace,
    )
}

/// `images` cut into the patches of the model's tile, nothing hidden.
pub fn unmasked_batch(model: &Glom, images: &[Image]) -> Result<Batch> {
    let sequences: Vec<&[Image]> = images.iter().map(std::slice::from_ref).collect();
    make_sequence_batch(
        &model.cfg,
        &sequences,
        &model.tile.locs,
        EVAL_KEY,
        0.0,
        model.device(),
        model.dtype(),
    )
}

/// The islands of every frame of the scored sequences of a video, per
/// level: their object ARI and their temporal stability.
struct VideoTotals {
    /// Sequences with object maps scored.
    sequences: usize,
    /// Frames scored (over all sequences).
    frames_scored: usize,
    /// Per level: the sum over frames of the threshold islands' object ARI.
    frame_ari: Vec<f64>,
    stability: Vec<temporal::Stability>,
}

impl VideoTotals {
    fn new(levels: usize) -> Self {
        Self {
            sequences: 0,
            frames_scored: 0,
            frame_ari: vec![0.0; levels],
            stability: vec![temporal::Stability::default(); levels],
        }
    }

    /// Add `sequences` (the first ones of the batch `settled`), those with
    /// object maps in every frame.
    fn add(&mut self, cfg: &Config, sequences: &[Vec<Image>], settled: &Settled) -> Result<()> {
        let (side, patch, dim) = (cfg.image_side(), cfg.model.patch, cfg.model.dim);
        let threshold = cfg.eval.island_threshold;
        // Per frame, per level: the values of the whole batch.
        let frames = settled
            .frames
            .iter()
            .map(|levels| level_rows(levels))
            .collect::<Result<Vec<_>>>()?;
        let batch = settled.levels.first().map_or(Ok(0), |t| t.dim(1))?;
        for (b, seq) in sequences.iter().enumerate() {
            if seq.len() != frames.len() {
                return Err(Error::Shape(format!(
                    "{} frames settled for a sequence of {}",
                    frames.len(),
                    seq.len()
                )));
            }
            let Some(objects) = seq
                .iter()
                .map(|im| {
                    im.object_map
                        .as_ref()
                        .map(|m| patch_majority(m, side, side, patch))
                })
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            self.sequences += 1;
            self.frames_scored += seq.len();
            for level in 0..self.frame_ari.len() {
                let islands: Vec<Vec<usize>> = frames
                    .iter()
                    .map(|rows| {
                        let field = image_rows(&rows[level], b, batch, dim);
                        score::threshold_islands(&field, dim, threshold)
                    })
                    .collect();
                for (labels, truth) in islands.iter().zip(&objects) {
                    self.frame_ari[level] += temporal::frame_island_ari(labels, truth);
                }
                self.stability[level].add(temporal::stability(&islands, &objects));
            }
        }
        Ok(())
    }
}

/// PSNR of the reconstruction of the hidden patches of the first `count`
/// images (of every patch if none happens to be hidden), and of the trivial
/// inpainting ([`inpaint_neighbour_mean`]) of the same patches.
fn reconstruction_psnr(
    model: &Glom,
    data: &dyn Dataset,
    count: usize,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(f64, f64)> {
    let cfg = &model.cfg;
    let fraction = if cfg.train.mask_fraction > 0.0 {
        cfg.train.mask_fraction
    } else {
        FALLBACK_MASK_FRACTION
    };
    let (mut hidden_sq, mut hidden_n, mut all_sq, mut all_n) = (0f64, 0f64, 0f64, 0f64);
    let (mut trivial_hidden_sq, mut trivial_all_sq) = (0f64, 0f64);
    let side = cfg.grid_side();
    let scalar = |t: Tensor| -> Result<f64> { Ok(t.to_scalar::<f64>()?) };
    for start in (0..count).step_by(BATCH) {
        let sequences: Vec<Vec<Image>> = (start..count.min(start + BATCH))
            .map(|i| data.sequence(i))
            .collect();
        let batch = make_sequence_batch(
            cfg,
            &sequences,
            &model.tile.locs,
            EVAL_KEY,
            fraction,
            model.device(),
            model.dtype(),
        )?;
        let settled = model.settle_frames(
            &batch.frames(),
            EVAL_KEY,
            Mode::Inference,
            &mut NoHalo,
            false,
        )?;
        let sq = (&settled.recon - &batch.target)?
            .sqr()?
            .to_dtype(DType::F64)?;
        let hidden = batch.hidden.to_dtype(DType::F64)?;
        hidden_sq += scalar(sq.broadcast_mul(&hidden)?.sum_all()?)?;
        hidden_n += scalar(hidden.sum_all()?)? * sq.dim(2)? as f64;
        all_sq += scalar(sq.sum_all()?)?;
        all_n += sq.elem_count() as f64;
        let trivial = inpaint_neighbour_mean(&batch, side)?;
        let tsq = (trivial - &batch.target)?.sqr()?.to_dtype(DType::F64)?;
        trivial_hidden_sq += scalar(tsq.broadcast_mul(&hidden)?.sum_all()?)?;
        trivial_all_sq += scalar(tsq.sum_all()?)?;
        progress("reconstruction", start + sequences.len(), count);
    }
    let psnr = |hidden_sq: f64, all_sq: f64| {
        psnr_db(if hidden_n > 0.0 {
            hidden_sq / hidden_n
        } else {
            all_sq / all_n.max(1.0)
        })
    };
    Ok((
        psnr(hidden_sq, all_sq),
        psnr(trivial_hidden_sq, trivial_all_sq),
    ))
}

/// The trivial inpainting baseline of a whole-grid batch (`[P, B, pixels]`
/// on a `side x side` grid, row-major): every hidden patch becomes the
/// pixelwise mean of the visible patches among its 8 neighbours, or of
/// every visible patch of its image when none of those is visible, or 0
/// when the image has no visible patch; visible patches stay as they are.
pub fn inpaint_neighbour_mean(batch: &Batch, side: usize) -> Result<Tensor> {
    let (p, b, pix) = batch.input.dims3()?;
    if p != side * side {
        return Err(Error::Shape(format!(
            "inpainting needs the whole {side}x{side} grid, got {p} locations"
        )));
    }
    let input: Vec<f32> = batch.input.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let hidden: Vec<f32> = batch
        .hidden
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let at = |loc: usize, img: usize| (loc * b + img) * pix;
    let visible = |loc: usize, img: usize| hidden[loc * b + img] == 0.0;
    let mut out = input.clone();
    for img in 0..b {
        let all_visible: Vec<usize> = (0..p).filter(|&l| visible(l, img)).collect();
        for loc in (0..p).filter(|&l| !visible(l, img)) {
            let (r, c) = ((loc / side) as isize, (loc % side) as isize);
            let around: Vec<usize> = (-1..=1)
                .flat_map(|dr| (-1..=1).map(move |dc| (r + dr, c + dc)))
                .filter(|&(y, x)| {
                    (y, x) != (r, c)
                        && (0..side as isize).contains(&y)
                        && (0..side as isize).contains(&x)
                })
                .map(|(y, x)| y as usize * side + x as usize)
                .filter(|&l| visible(l, img))
                .collect();
            let from = if around.is_empty() {
                &all_visible
            } else {
                &around
            };
            if from.is_empty() {
                continue; // hidden input patches are already 0
            }
            for i in 0..pix {
                let sum: f32 = from.iter().map(|&l| input[at(l, img) + i]).sum();
                out[at(loc, img) + i] = sum / from.len() as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (p, b, pix), batch.input.device())?.to_dtype(batch.input.dtype())?)
}

/// Every level of a settled batch as `f32` values in `[P, B, d]` order.
fn level_rows(levels: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    levels
        .iter()
        .map(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
        .collect()
}

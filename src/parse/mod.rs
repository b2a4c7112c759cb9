//! `glom parse`: the parse tree of one image, as a picture and as JSON.
//!
//! GLOM (Hinton 2021, sections 1 and 7) represents a parse tree by islands
//! of identical vectors: at each level, the locations that agree form one
//! node, and a node's parent is the island one level up over the same
//! locations. This command settles one image with a checkpoint, colours
//! every location of every level by its island, and shows how the islands
//! form over the iterations.
//!
//! The picture is described in [`render`]; the command prints where it
//! wrote it and the number of islands per level.
//!
//! A held-out item of a video checkpoint (`data.frames > 1`) is a
//! sequence: it is settled frame after frame as in training (paper
//! section 11) and drawn by [`sequence`], one column per frame; the JSON
//! then holds each frame's islands and the parse tree of the last frame.
//!
//! # Layout
//! - [`png_input`]: the `--png` input, decoded and checked.
//! - [`render`]: the picture's layout and drawing.
//! - [`sequence`]: the picture of a sequence.

pub(crate) mod png_input;
pub(crate) mod render;
pub(crate) mod sequence;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use glom_protocol::config::Config;
use glom_worker::checkpoint;
use glom_worker::data::Image;
use glom_worker::eval::{settle_sequences, settle_unmasked};
use glom_worker::model::Glom;
use glom_worker::parse::{build_tree, islands_per_level, ParseTree};

use crate::picture::write_png;
use crate::run::{datasets, whole_model};
use png_input::decode_png;

/// Which image to parse.
#[derive(Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct Input {
    /// Index of a held-out image of the checkpoint's data.
    #[arg(long, value_name = "N")]
    image: Option<usize>,
    /// A PNG of the configured image size and channels.
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
}

/// `glom parse --checkpoint DIR (--image N | --png FILE) --out OUT.png [--json OUT.json]`.
pub(crate) fn run(dir: &Path, input: &Input, out: &Path, json: Option<&Path>) -> Result<()> {
    let manifest = checkpoint::read_manifest(dir)?;
    let cfg = manifest.config.clone();
    if let (Some(n), true) = (input.image, cfg.frames() > 1) {
        return run_sequence(dir, &manifest, n, out, json);
    }
    let (image, source, what) = match (input.image, &input.png) {
        (Some(n), _) => (
            held_out_image(&cfg, n)?,
            serde_json::json!({ "image": n }),
            format!("held-out image {n}"),
        ),
        (None, Some(path)) => (
            read_png(path, &cfg)?,
            serde_json::json!({ "png": path.display().to_string() }),
            path.display().to_string(),
        ),
        (None, None) => bail!("give --image N or --png FILE"),
    };
    let model = whole_model(&cfg)?;
    checkpoint::load_into(dir, &model, None)?;
    let (levels, strip) = settle(&model, &image)?;

    let threshold = cfg.eval.island_threshold;
    let dim = cfg.model.dim;
    let tree = build_tree(&levels, dim, threshold);
    let islands = islands_per_level(&levels, dim, threshold);
    let strip: Vec<Vec<Vec<usize>>> = strip
        .iter()
        .map(|fields| islands_per_level(fields, dim, threshold))
        .collect();
    let title = format!(
        "Parse of {what}: checkpoint {} (step {}), islands: cosine distance < {threshold}",
        dir.display(),
        manifest.step
    );
    let scene = render::Scene {
        title: &title,
        side: cfg.image_side(),
        grid: cfg.grid_side(),
        pixels: &image.pixels,
        channels: cfg.channels(),
        islands: &islands,
        strip: &strip,
        truth: match (&image.part_map, &image.object_map) {
            (Some(p), Some(o)) => Some((p.as_slice(), o.as_slice())),
            _ => None,
        },
        tree: &tree,
    };
    let (rgb, layout) = render::render(&scene)?;
    write_png(out, layout.width, layout.height, &rgb)?;

    if let Some(path) = json {
        let doc = serde_json::json!({
            "checkpoint": dir.display().to_string(),
            "step": manifest.step,
            "source": source,
            "grid_side": cfg.grid_side(),
            "levels": cfg.model.levels,
            "island_threshold": threshold,
            "nodes": tree.nodes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    summary(&tree, &cfg, out, json);
    Ok(())
}

/// Held-out image `n`, or an error naming `n` and the held-out size.
fn held_out_image(cfg: &Config, n: usize) -> Result<Image> {
    Ok(held_out_sequence(cfg, n)?
        .pop()
        .expect("an item has a frame"))
}

/// Held-out item `n` as its frames (one for a still image), or an error
/// naming `n` and the held-out size.
fn held_out_sequence(cfg: &Config, n: usize) -> Result<Vec<Image>> {
    let data = datasets(cfg)?;
    let len = data.held_out.len();
    if n >= len {
        bail!(
            "--image {n} is out of range: the held-out set has {len} images (0..={})",
            len.saturating_sub(1)
        );
    }
    Ok(data.held_out.sequence(n))
}

/// `glom parse --image N` of a video checkpoint: held-out sequence `n`
/// settled over its frames, one column per frame ([`sequence`]).
fn run_sequence(
    dir: &Path,
    manifest: &checkpoint::Manifest,
    n: usize,
    out: &Path,
    json: Option<&Path>,
) -> Result<()> {
    let cfg = &manifest.config;
    let frames = held_out_sequence(cfg, n)?;
    let model = whole_model(cfg)?;
    checkpoint::load_into(dir, &model, None)?;
    let settled = settle_sequences(&model, std::slice::from_ref(&frames), false)?;
    let rows = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (dim, threshold) = (cfg.model.dim, cfg.eval.island_threshold);
    let fields: Vec<Fields> = settled
        .frames
        .iter()
        .map(|levels| levels.iter().map(rows).collect())
        .collect::<Result<_>>()?;
    let islands: Vec<Vec<Vec<usize>>> = fields
        .iter()
        .map(|f| islands_per_level(f, dim, threshold))
        .collect();
    let title = format!(
        "Parse of held-out sequence {n} ({} frames): checkpoint {} (step {}), \
         islands: cosine distance < {threshold}",
        frames.len(),
        dir.display(),
        manifest.step
    );
    let drawn: Vec<sequence::Frame> = frames
        .iter()
        .zip(&islands)
        .map(|(image, islands)| sequence::Frame {
            pixels: &image.pixels,
            objects: image.object_map.as_deref(),
            islands,
        })
        .collect();
    let (rgb, layout) = sequence::render_sequence(&sequence::Sequence {
        title: &title,
        side: cfg.image_side(),
        grid: cfg.grid_side(),
        channels: cfg.channels(),
        frames: &drawn,
    })?;
    write_png(out, layout.width, layout.height, &rgb)?;
    let last = fields.last().expect("a sequence has a frame");
    let tree = build_tree(last, dim, threshold);
    if let Some(path) = json {
        let doc = serde_json::json!({
            "checkpoint": dir.display().to_string(),
            "step": manifest.step,
            "source": { "image": n },
            "frames": frames.len(),
            "grid_side": cfg.grid_side(),
            "levels": cfg.model.levels,
            "island_threshold": threshold,
            "islands_by_frame": islands,
            "nodes": tree.nodes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for (f, levels) in islands.iter().enumerate() {
        let counts: Vec<String> = levels
            .iter()
            .map(|l| (l.iter().max().map_or(0, |&m| m + 1)).to_string())
            .collect();
        println!(
            "frame {}: islands per level (threshold {threshold}): {}",
            f + 1,
            counts.join(" ")
        );
    }
    println!(
        "wrote {}: the input frames, true objects when known, and the islands \
         of every level after each frame (an island keeps its colour while it carries over)",
        out.display()
    );
    if let Some(path) = json {
        println!(
            "wrote {}: islands of every frame, parse tree of the last",
            path.display()
        );
    }
    Ok(())
}

/// Read a PNG as an image of the configured size and channels (see
/// [`png_input::decode_png`]; no ground-truth maps).
fn read_png(path: &Path, cfg: &Config) -> Result<Image> {
    let name = path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot open --png {name}"))?;
    let pixels = decode_png(
        BufReader::new(file),
        &name,
        cfg.image_side(),
        cfg.channels(),
    )?;
    Ok(Image {
        pixels,
        part_map: None,
        object_map: None,
        label: None,
    })
}

/// Settle one image unmasked: the final field of every level, and the
/// settled field of every level after every iteration (each `[P * d]`).
type Fields = Vec<Vec<f32>>;
fn settle(model: &Glom, image: &Image) -> Result<(Fields, Vec<Fields>)> {
    let settled = settle_unmasked(model, std::slice::from_ref(image), true)?;
    let rows = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let levels = settled.levels.iter().map(rows).collect::<Result<_>>()?;
    let strip = settled
        .trace
        .iter()
        .map(|step| step.iter().map(|(_, state)| rows(state)).collect())
        .collect::<Result<_>>()?;
    Ok((levels, strip))
}

/// What was written, and the islands per level.
fn summary(tree: &ParseTree, cfg: &Config, out: &Path, json: Option<&Path>) {
    let counts: Vec<String> = (0..cfg.model.levels)
        .map(|l| tree.level(l).count().to_string())
        .collect();
    println!(
        "islands per level (threshold {}): {}",
        cfg.eval.island_threshold,
        counts.join(" ")
    );
    println!(
        "wrote {}: input, islands per level, ground truth when known; \
         the islands after each iteration; the parse tree",
        out.display()
    );
    if let Some(path) = json {
        println!("wrote {}: parse tree (nodes, parents)", path.display());
    }
}

//! `glom parse` run the way a user runs it: the picture is a valid PNG of the
//! size its layout implies, with a label over every panel and on every
//! settling row, the parse tree links every island to one at the level
//! above, and bad arguments fail with a message naming what was wrong.

mod support;

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{failure, ok};

/// The model of `support::TWO_STEPS`: 2 levels, 2 iterations, a 4x4 grid.
const TINY: &[&str] = support::TWO_STEPS;
const SIDE: usize = 16;
const LEVELS: usize = 2;
const ITERATIONS: usize = 2;
const LOCATIONS: usize = 16;

/// The picture's layout: a 40-pixel title line; panels of `SIDE * 8`
/// pixels, 12 pixels apart and around, each under a 24-pixel label band: a
/// top row of input, one panel per level and (when the data has them) the
/// part and object maps; a 24-pixel heading, then one row of half-size
/// panels per iteration; a 24-pixel heading and four 20-pixel legend rows;
/// the parse tree in 420 pixels on the right.
const GAP: usize = 12;
const PANEL: usize = SIDE * 8;
const PANELS_TOP: usize = 40 + 24;

fn columns(truth: bool) -> usize {
    1 + LEVELS + if truth { 2 } else { 0 }
}

fn expected_size(truth: bool) -> (u32, u32) {
    let width = GAP + columns(truth) * (PANEL + GAP) + 420 + GAP;
    let strip_top = PANELS_TOP + PANEL + GAP + 24;
    let legend_top = strip_top + ITERATIONS * (PANEL / 2 + GAP) + 24;
    let height = legend_top + 4 * 20 + GAP;
    (width as u32, height as u32)
}

/// Dark pixels (text) of an RGB picture `width` wide in rows `ys`, columns `xs`.
fn ink(rgb: &[u8], width: u32, ys: std::ops::Range<usize>, xs: std::ops::Range<usize>) -> usize {
    ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let i = 3 * (y * width as usize + x);
            rgb[i..i + 3].iter().all(|&c| c < 100)
        })
        .count()
}

fn glom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glom"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the glom binary runs")
}

/// Train the tiny model under `tmp`; its final checkpoint.
fn trained(tmp: &Path) -> PathBuf {
    let run = tmp.join("run");
    let mut args = vec!["train", "--out", run.to_str().unwrap(), "--no-eval"];
    for set in TINY {
        args.extend(["--set", set]);
    }
    ok(&glom(&args));
    run.join("checkpoints").join("final")
}

fn parse(checkpoint: &Path, input: &[&str], out: &Path, json: Option<&Path>) -> Output {
    let mut args = vec!["parse", "--checkpoint", checkpoint.to_str().unwrap()];
    args.extend_from_slice(input);
    args.extend(["--out", out.to_str().unwrap()]);
    if let Some(j) = json {
        args.extend(["--json", j.to_str().unwrap()]);
    }
    glom(&args)
}

/// Decode a PNG: (width, height, colour type, pixels).
fn decode(path: &Path) -> (u32, u32, png::ColorType, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a valid PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type, buf)
}

/// Write a `side x side` PNG of `colour` type (8 bits, a gradient).
fn write_png(path: &Path, side: u32, colour: png::ColorType) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(BufWriter::new(file), side, side);
    enc.set_color(colour);
    enc.set_depth(png::BitDepth::Eight);
    let n = (side * side) as usize * colour.samples();
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&data).unwrap();
    w.finish().unwrap();
}

#[test]
fn parse_writes_a_picture_of_the_layout_size_and_a_tree_whose_parents_point_up() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let (png_out, json_out) = (tmp.path().join("x.png"), tmp.path().join("x.json"));
    let stdout = ok(&parse(&ckpt, &["--image", "0"], &png_out, Some(&json_out)));

    let (w, h, colour, rgb) = decode(&png_out);
    assert_eq!(
        (w, h),
        expected_size(true),
        "scenes have part and object maps"
    );
    assert_eq!(colour, png::ColorType::Rgb);
    // Every panel of the top row is labelled, in the band over it.
    for c in 0..columns(true) {
        let x = GAP + c * (PANEL + GAP);
        let text = ink(&rgb, w, PANELS_TOP - 24..PANELS_TOP, x..x + PANEL);
        assert!(text > 30, "panel {c} has no label ({text} dark pixels)");
    }
    // Every settling row is numbered, left of its panels.
    let strip_top = PANELS_TOP + PANEL + GAP + 24;
    for t in 0..ITERATIONS {
        let y = strip_top + t * (PANEL / 2 + GAP);
        let text = ink(&rgb, w, y..y + PANEL / 2, GAP..GAP + PANEL);
        assert!(
            text > 30,
            "settling row {t} has no number ({text} dark pixels)"
        );
    }
    // The tree: coloured discs right of the maps.
    let tree_left = GAP + columns(true) * (PANEL + GAP);
    let discs = (PANELS_TOP..h as usize)
        .flat_map(|y| (tree_left..w as usize).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let i = 3 * (y * w as usize + x);
            let p = &rgb[i..i + 3];
            p.iter().max().unwrap() - p.iter().min().unwrap() > 60
        })
        .count();
    assert!(discs > 50, "no parse tree drawn ({discs} coloured pixels)");
    assert!(stdout.contains("islands per level"), "{stdout}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    let nodes = doc["nodes"].as_array().expect("a nodes array");
    for level in 0..LEVELS {
        let at: Vec<&Value> = nodes.iter().filter(|n| n["level"] == level).collect();
        assert!(!at.is_empty(), "no node at level {level}: {doc}");
        // The islands of a level partition the grid.
        let mut locations: Vec<u64> = at
            .iter()
            .flat_map(|n| {
                let locs = n["locations"].as_array().unwrap();
                assert_eq!(n["size"].as_u64().unwrap() as usize, locs.len());
                assert!(n["mean_norm"].as_f64().unwrap() > 0.0);
                locs.iter().map(|l| l.as_u64().unwrap())
            })
            .collect();
        locations.sort_unstable();
        assert_eq!(
            locations,
            (0..LOCATIONS as u64).collect::<Vec<_>>(),
            "level {level}"
        );
    }
    for (id, node) in nodes.iter().enumerate() {
        assert_eq!(node["id"], id);
        let level = node["level"].as_u64().unwrap();
        match node["parent"].as_u64() {
            Some(p) => {
                let parent = &nodes[p as usize];
                assert_eq!(parent["level"].as_u64().unwrap(), level + 1, "node {id}");
                let above: Vec<&Value> = parent["locations"].as_array().unwrap().iter().collect();
                assert!(
                    node["locations"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|l| above.contains(&l)),
                    "node {id}'s parent covers none of its locations"
                );
            }
            None => assert_eq!(level as usize, LEVELS - 1, "node {id} has no parent"),
        }
    }
}

#[test]
fn parse_of_a_png_has_no_ground_truth_panels() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let input = tmp.path().join("in.png");
    write_png(&input, SIDE as u32, png::ColorType::Rgb);
    let out = tmp.path().join("x.png");
    ok(&parse(
        &ckpt,
        &["--png", input.to_str().unwrap()],
        &out,
        None,
    ));
    let (w, h, _, _) = decode(&out);
    assert_eq!((w, h), expected_size(false));
}

#[test]
fn parse_rejects_an_image_index_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let out = tmp.path().join("x.png");
    let err = failure(&parse(&ckpt, &["--image", "99999"], &out, None));
    assert!(err.contains("99999"), "{err}");
    assert!(err.contains("held-out set has 8 images"), "{err}");
    assert!(!out.exists());
}

#[test]
fn parse_rejects_a_file_that_is_not_a_png() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let bogus = tmp.path().join("not-a-picture.png");
    std::fs::write(&bogus, "plain text").unwrap();
    let out = tmp.path().join("x.png");
    let err = failure(&parse(
        &ckpt,
        &["--png", bogus.to_str().unwrap()],
        &out,
        None,
    ));
    assert!(err.contains("not-a-picture.png"), "{err}");
    assert!(err.contains("not a readable PNG"), "{err}");
    let missing = tmp.path().join("missing.png");
    let err = failure(&parse(
        &ckpt,
        &["--png", missing.to_str().unwrap()],
        &out,
        None,
    ));
    assert!(err.contains("missing.png"), "{err}");
}

#[test]
fn parse_rejects_a_png_of_the_wrong_size_or_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = trained(tmp.path());
    let out = tmp.path().join("x.png");
    let small = tmp.path().join("small.png");
    write_png(&small, 10, png::ColorType::Rgb);
    let err = failure(&parse(
        &ckpt,
        &["--png", small.to_str().unwrap()],
        &out,
        None,
    ));
    assert!(err.contains("10x10"), "{err}");
    assert!(err.contains("16x16"), "{err}");
    let gray = tmp.path().join("gray.png");
    write_png(&gray, SIDE as u32, png::ColorType::Grayscale);
    let err = failure(&parse(
        &ckpt,
        &["--png", gray.to_str().unwrap()],
        &out,
        None,
    ));
    assert!(err.contains("grayscale") && err.contains("RGB"), "{err}");
}

#[test]
fn parse_needs_exactly_one_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let ckpt = tmp.path().join("none");
    let err = failure(&parse(&ckpt, &[], &out, None));
    assert!(err.contains("--image") && err.contains("--png"), "{err}");
    let err = failure(&parse(
        &ckpt,
        &["--image", "0", "--png", "a.png"],
        &out,
        None,
    ));
    assert!(err.contains("cannot be used with"), "{err}");
}

/// A video checkpoint (moving scenes, 3 frames): `--image N` parses the
/// held-out sequence, one column per frame under a 24-pixel heading, rows
/// of 48-pixel panels (16-pixel frames upscaled 6 times) 12 pixels apart
/// after a 150-pixel band of row names: input, true objects, then one row
/// per level; the JSON holds every frame's islands at every level and the
/// parse tree of the last frame; a frame's island maps differ from the
/// last's where the objects moved.
#[test]
fn parse_of_a_video_checkpoint_draws_a_column_per_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("video");
    let mut args = vec!["train", "--out", run.to_str().unwrap(), "--no-eval"];
    let video = [
        "data.source=\"moving_scenes\"",
        "data.frames=3",
        "model.iterations_per_frame=1",
    ];
    for set in TINY.iter().chain(&video) {
        args.extend(["--set", set]);
    }
    ok(&glom(&args));
    let ckpt = run.join("checkpoints").join("final");
    let (png_out, json_out) = (tmp.path().join("seq.png"), tmp.path().join("seq.json"));
    let stdout = ok(&parse(&ckpt, &["--image", "1"], &png_out, Some(&json_out)));
    for f in 1..=3 {
        assert!(
            stdout.contains(&format!("frame {f}: islands per level")),
            "{stdout}"
        );
    }
    let (width, height, colour, rgb) = decode(&png_out);
    assert_eq!(colour, png::ColorType::Rgb);
    let panel = SIDE * 6;
    let rows = 1 + 1 + LEVELS;
    // At least the columns' width (more where the title is wider).
    assert!(width as usize >= 150 + 3 * (panel + GAP) + GAP, "{width}");
    assert_eq!(height as usize, 40 + 24 + rows * (panel + GAP) + GAP);
    // The whole title is on the picture: ink in its band up to near the
    // right edge, and none in the last GAP / 2 columns.
    let w = width as usize;
    assert!(
        ink(&rgb, width, 0..40, w - 3 * GAP..w - GAP / 2) > 0,
        "title cut short"
    );
    assert_eq!(ink(&rgb, width, 0..40, w - GAP / 2..w), 0, "title cut off");
    // A label over every column, a name on every row.
    for f in 0..3 {
        let x = 150 + f * (panel + GAP);
        assert!(
            ink(&rgb, width, 40..64, x..x + panel) > 10,
            "no label over frame {f}"
        );
    }
    for r in 0..rows {
        let y = 64 + r * (panel + GAP);
        assert!(
            ink(&rgb, width, y..y + panel, 0..150) > 10,
            "no name on row {r}"
        );
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(doc["frames"], 3);
    let frames = doc["islands_by_frame"].as_array().unwrap();
    assert_eq!(frames.len(), 3);
    for f in frames {
        let levels = f.as_array().unwrap();
        assert_eq!(levels.len(), LEVELS);
        assert!(levels
            .iter()
            .all(|l| l.as_array().unwrap().len() == LOCATIONS));
    }
    assert!(!doc["nodes"].as_array().unwrap().is_empty());
    // The input row shows three different frames.
    let frame_pixels = |f: usize| -> Vec<u8> {
        let x = 150 + f * (panel + GAP);
        (64..64 + panel)
            .flat_map(|y| (x..x + panel).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let i = 3 * (y * width as usize + x);
                rgb[i..i + 3].to_vec()
            })
            .collect()
    };
    assert_ne!(frame_pixels(0), frame_pixels(2), "the frames are all alike");
}

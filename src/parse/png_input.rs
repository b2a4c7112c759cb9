//! The `--png` input of `glom parse`: a PNG file decoded into the pixels of
//! one image of the configured size and channels.
//!
//! Self-contained (`std`, `anyhow` and `png` only, no `crate::` paths): the
//! `png_input` fuzz target (fuzz/) compiles this file on its own.

use std::io::{BufRead, Seek};

use anyhow::{anyhow, bail, Context, Result};

/// Decode the PNG in `source` (called `name` in errors) as an image of
/// `side` x `side` pixels and `channels` colours (1 grayscale, 3 RGB):
/// pixels in [0, 1], channel-major; alpha is dropped. Palette and low bit
/// depths are expanded, 16-bit samples reduced to 8.
pub(crate) fn decode_png(
    source: impl BufRead + Seek,
    name: &str,
    side: usize,
    channels: usize,
) -> Result<Vec<f32>> {
    let mut decoder = png::Decoder::new(source);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .with_context(|| format!("--png {name} is not a readable PNG"))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("--png {name}: image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("--png {name} is not a readable PNG"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if (w, h) != (side, side) {
        bail!(
            "--png {name} is {w}x{h} pixels but the model reads {side}x{side} images (data.image_size)"
        );
    }
    let samples = info.color_type.samples();
    let colours = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        _ => 3,
    };
    if colours != channels {
        let kind = |c: usize| if c == 1 { "grayscale" } else { "RGB" };
        bail!(
            "--png {name} is {} but the model reads {} images ({channels} channel{})",
            kind(colours),
            kind(channels),
            if channels == 1 { "" } else { "s" }
        );
    }
    let mut pixels = Vec::with_capacity(channels * side * side);
    for c in 0..channels {
        for y in 0..side {
            for x in 0..side {
                let v = buf[y * info.line_size + x * samples + c];
                pixels.push(f32::from(v) / 255.0);
            }
        }
    }
    Ok(pixels)
}

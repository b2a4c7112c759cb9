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
    // The size from the header, checked before the frame buffer is sized
    // from it: a header may claim any size, however short the file.
    let info = reader.info();
    check_size(name, (info.width as usize, info.height as usize), side)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow!("--png {name}: image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .with_context(|| format!("--png {name} is not a readable PNG"))?;
    check_size(name, (info.width as usize, info.height as usize), side)?;
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

/// Refuse an image that is not `side` x `side` pixels.
fn check_size(name: &str, (w, h): (usize, usize), side: usize) -> Result<()> {
    if (w, h) != (side, side) {
        bail!(
            "--png {name} is {w}x{h} pixels but the model reads {side}x{side} images (data.image_size)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// Found by the `png_input` fuzz target: a 75-byte PNG whose header
    /// claims 3 x 135266307 pixels of gray and alpha. The frame buffer was
    /// sized from the header before the size was checked (an 811 MB
    /// allocation); now the size is refused first, as this message shows
    /// (decoding first would fail on the short image data instead).
    #[test]
    fn a_header_claiming_a_huge_image_is_refused_before_decoding() {
        let file: &[u8] = &[
            0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
            0x44, 0x52, 0x00, 0x00, 0x00, 0x03, 0x08, 0x10, 0x00, 0x03, 0x08, 0x04, 0x00, 0x00,
            0x00, 0xfc, 0x21, 0x7d, 0x34, 0x00, 0x00, 0x00, 0x11, 0x49, 0x44, 0x41, 0x54, 0x78,
            0x9c, 0x63, 0x60, 0x60, 0x64, 0x62, 0x66, 0x61, 0x65, 0x40, 0xa1, 0x00, 0x01, 0xb9,
            0x00, 0x2e, 0x2b, 0x2d, 0x0a, 0xf7, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44,
            0xae, 0x42, 0x60, 0x82,
        ];
        let e = decode_png(Cursor::new(file), "huge.png", 3, 1).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "--png huge.png is 3x135266307 pixels but the model reads 3x3 images (data.image_size)"
        );
    }

    #[test]
    fn a_small_image_reads_channel_major() {
        let mut file = Vec::new();
        let mut enc = png::Encoder::new(&mut file, 2, 2);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
            .unwrap();
        w.finish().unwrap();
        let px = decode_png(Cursor::new(&file), "rgb.png", 2, 3).unwrap();
        assert_eq!(px, [1., 0., 0., 1., 0., 1., 0., 1., 0., 0., 1., 1.]);
        let e = decode_png(Cursor::new(&file), "rgb.png", 2, 1).unwrap_err();
        assert!(
            format!("{e:#}").contains("is RGB but the model reads grayscale"),
            "{e:#}"
        );
    }
}

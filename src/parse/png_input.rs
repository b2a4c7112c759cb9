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

    /// A PNG chunk: length, type, data, CRC-32 of type and data.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut crc = 0xffff_ffffu32;
        for &byte in kind.iter().chain(data) {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&(!crc).to_be_bytes());
        out
    }

    /// Found by the `png_input` fuzz target: a tiny PNG whose header claims
    /// 3 x 135266307 pixels of gray and alpha. The frame buffer was sized
    /// from the header before the size was checked (an 811 MB allocation);
    /// now the size is refused first, as this message shows (decoding first
    /// would fail on the short image data instead). The file is the
    /// fuzzer's, with valid checksums (fuzzing builds skip them).
    #[test]
    fn a_header_claiming_a_huge_image_is_refused_before_decoding() {
        let mut file = vec![0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
        let mut header = 3u32.to_be_bytes().to_vec();
        header.extend_from_slice(&135_266_307u32.to_be_bytes());
        header.extend_from_slice(&[8, 4, 0, 0, 0]); // 8 bits, gray + alpha
        file.extend(chunk(b"IHDR", &header));
        file.extend(chunk(
            b"IDAT",
            &[
                0x78, 0x9c, 0x63, 0x60, 0x60, 0x64, 0x62, 0x66, 0x61, 0x65, 0x40, 0xa1, 0x00,
            ],
        ));
        file.extend(chunk(b"IEND", &[]));
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

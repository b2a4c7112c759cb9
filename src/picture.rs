//! What the pictures of `glom plot` and `glom parse` share: the bundled
//! font, an RGB pixel buffer for plotters' bitmap backend, and writing that
//! buffer as a PNG.
//!
//! Text is drawn by plotters through `ab_glyph` from DejaVu Sans, built
//! into the binary (`assets/fonts/`, with its licence), so no system font
//! library is needed. Colours are 8-bit RGB.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::style::FontStyle;

/// The family name every text style uses (`("sans-serif", size)`).
pub(crate) const FONT: &str = "sans-serif";

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu.txt`).
const DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Register the bundled font under [`FONT`] for every style plotters asks
/// for; call before drawing any text (more calls do nothing).
///
/// # Panics
/// When the bundled font does not parse (a broken build).
pub(crate) fn init_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            plotters::style::register_font(FONT, style, DEJAVU_SANS)
                .unwrap_or_else(|_| panic!("the bundled font does not parse"));
        }
    });
}

/// A `width x height` RGB buffer (3 bytes per pixel, row-major, top row
/// first) for `BitMapBackend::with_buffer`, all white.
pub(crate) fn white(width: u32, height: u32) -> Vec<u8> {
    vec![255; 3 * width as usize * height as usize]
}

/// Write `rgb` (as [`white`] lays it out) to `path` as an 8-bit RGB PNG.
/// The error names `path`.
pub(crate) fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let name = path.display();
    let file = File::create(path).with_context(|| format!("cannot create {name}"))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {name}"))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("writing {name}"))?;
    writer.finish().with_context(|| format!("writing {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::*;

    /// `text` drawn black at 20 pixels on a small white buffer.
    fn drawn(text: &str) -> Vec<u8> {
        init_fonts();
        let (w, h) = (60, 30);
        let mut rgb = white(w, h);
        {
            let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            let style = (FONT, 20).into_font().color(&BLACK);
            area.draw_text(text, &style, (4, 4)).unwrap();
            area.present().unwrap();
        }
        rgb
    }

    fn dark(rgb: &[u8]) -> usize {
        rgb.chunks(3).filter(|p| p[0] < 128).count()
    }

    #[test]
    fn capitals_digits_and_symbols_have_glyphs_of_their_own() {
        let upper = drawn("G");
        assert!(dark(&upper) > 20, "a capital is drawn");
        assert_ne!(upper, drawn("g"), "capitals are not lower case");
        for symbol in ["≥", "λ", "%", "#"] {
            assert!(dark(&drawn(symbol)) > 10, "{symbol} is drawn");
        }
        assert_ne!(drawn("≥"), drawn("λ"), "no shared placeholder glyph");
        assert_eq!(dark(&drawn(" ")), 0);
    }

    #[test]
    fn a_buffer_round_trips_through_png() {
        let mut rgb = white(7, 5);
        rgb[3 * (2 * 7 + 3)..3 * (2 * 7 + 3) + 3].copy_from_slice(&[10, 20, 30]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        write_png(&path, 7, 5, &rgb).unwrap();
        let file = File::open(&path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(&buf[..info.buffer_size()], &rgb[..]);
        let err = write_png(&dir.path().join("no/such/dir/c.png"), 7, 5, &rgb).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir/c.png"), "{err:#}");
    }
}

//! Drawing on an RGB canvas and writing it as a PNG: the pictures of
//! `glom parse` and the charts of `glom plot`, with nothing but the `png`
//! crate.
//!
//! Coordinates are canvas pixels, `(0, 0)` the top left corner; whatever
//! falls outside the canvas is clipped. Text uses a built-in 5x7 bitmap font
//! (lower-case letters with descenders, digits, common punctuation; capitals
//! are drawn as lower case and any other character as `?`), each font pixel
//! drawn as a `scale x scale` square.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result};

/// White, the colour of a new canvas.
pub(crate) const WHITE: [u8; 3] = [255, 255, 255];

/// Height of a line of text at scale 1 (7 rows above the baseline, 2 below).
pub(crate) const TEXT_HEIGHT: usize = 9;
/// Horizontal advance of one character at scale 1 (5 columns and a space).
pub(crate) const CHAR_WIDTH: usize = 6;

/// An RGB picture, 8 bits per channel, row-major.
pub(crate) struct Canvas {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) rgb: Vec<u8>,
}

impl Canvas {
    /// A `width x height` canvas, all white.
    pub(crate) fn new(width: usize, height: usize) -> Self {
        let rgb = WHITE.repeat(width * height);
        Self { width, height, rgb }
    }

    /// The colour at `(x, y)`.
    ///
    /// # Panics
    /// When `(x, y)` is outside the canvas.
    #[cfg(test)]
    pub(crate) fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        assert!(
            x < self.width && y < self.height,
            "({x}, {y}) is off the canvas"
        );
        let i = 3 * (y * self.width + x);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// Paint one pixel; nothing when it is off the canvas.
    pub(crate) fn set(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let i = 3 * (y as usize * self.width + x as usize);
        self.rgb[i..i + 3].copy_from_slice(&colour);
    }

    /// Fill the `w x h` rectangle whose top left corner is `(x0, y0)`.
    pub(crate) fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, colour: [u8; 3]) {
        for y in y0..(y0 + h).min(self.height) {
            for x in x0..(x0 + w).min(self.width) {
                let i = 3 * (y * self.width + x);
                self.rgb[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    /// A `side x side` map of colours, each cell `cell` canvas pixels wide.
    pub(crate) fn map(
        &mut self,
        x0: usize,
        y0: usize,
        side: usize,
        cell: usize,
        at: impl Fn(usize) -> [u8; 3],
    ) {
        for r in 0..side {
            for c in 0..side {
                self.fill(x0 + c * cell, y0 + r * cell, cell, cell, at(r * side + c));
            }
        }
    }

    /// A straight line from `a` to `b` (Bresenham), `thickness` pixels wide
    /// (each point of the line is a `thickness x thickness` square).
    pub(crate) fn line(&mut self, a: (i64, i64), b: (i64, i64), colour: [u8; 3], thickness: i64) {
        let (mut x, mut y) = a;
        let (dx, dy) = ((b.0 - x).abs(), -(b.1 - y).abs());
        let (sx, sy) = (if x < b.0 { 1 } else { -1 }, if y < b.1 { 1 } else { -1 });
        let mut err = dx + dy;
        let lo = -(thickness - 1) / 2;
        loop {
            for oy in lo..lo + thickness {
                for ox in lo..lo + thickness {
                    self.set(x + ox, y + oy, colour);
                }
            }
            if (x, y) == b {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A vertical dashed line at `x` from `y0` to `y1` (inclusive): `dash`
    /// pixels drawn, `dash` skipped.
    pub(crate) fn dashed_vline(&mut self, x: i64, y0: i64, y1: i64, colour: [u8; 3], dash: i64) {
        let dash = dash.max(1);
        for y in y0.min(y1)..=y0.max(y1) {
            if (y - y0.min(y1)) / dash % 2 == 0 {
                self.set(x, y, colour);
            }
        }
    }

    /// Write `text` with its top left corner at `(x, y)`, each font pixel a
    /// `scale x scale` square; one line, [`CHAR_WIDTH`]` * scale` pixels per
    /// character.
    pub(crate) fn text(&mut self, x: i64, y: i64, text: &str, scale: usize, colour: [u8; 3]) {
        let s = scale.max(1) as i64;
        for (i, c) in text.chars().enumerate() {
            let left = x + i as i64 * CHAR_WIDTH as i64 * s;
            for (row, bits) in glyph(c).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) == 0 {
                        continue;
                    }
                    for oy in 0..s {
                        for ox in 0..s {
                            self.set(left + col * s + ox, y + row as i64 * s + oy, colour);
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` drawn at `scale` (without the space after the
/// last character).
pub(crate) fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    (n * CHAR_WIDTH).saturating_sub(1) * scale.max(1)
}

/// The 5x9 bitmap of `c`: one row per element, top first, bit 4 the
/// leftmost column. Rows 0-6 reach the baseline; rows 7-8 are descenders.
fn glyph(c: char) -> [u8; 9] {
    match c.to_ascii_lowercase() {
        ' ' => [0; 9],
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0, 0,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0, 0,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0, 0,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0, 0,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0, 0,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0, 0,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0, 0,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0, 0,
        ],
        'a' => [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0, 0],
        'b' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0, 0,
        ],
        'c' => [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0, 0],
        'd' => [
            0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0, 0,
        ],
        'e' => [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0, 0],
        'f' => [
            0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0, 0,
        ],
        'g' => [
            0, 0, 0b01111, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110,
        ],
        'h' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0,
        ],
        'i' => [
            0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0,
        ],
        'j' => [
            0b00010, 0, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100,
        ],
        'k' => [
            0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0, 0,
        ],
        'l' => [
            0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0,
        ],
        'm' => [0, 0, 0b11010, 0b10101, 0b10101, 0b10101, 0b10101, 0, 0],
        'n' => [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0],
        'o' => [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0],
        'p' => [
            0, 0, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000,
        ],
        'q' => [
            0, 0, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001,
        ],
        'r' => [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0, 0],
        's' => [0, 0, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0, 0],
        't' => [
            0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0, 0,
        ],
        'u' => [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0, 0],
        'v' => [0, 0, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0, 0],
        'w' => [0, 0, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0, 0],
        'x' => [0, 0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0, 0],
        'y' => [
            0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110,
        ],
        'z' => [0, 0, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100, 0, 0],
        ',' => [0, 0, 0, 0, 0, 0b01100, 0b01100, 0b00100, 0b01000],
        ':' => [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0, 0, 0],
        '-' => [0, 0, 0, 0b01110, 0, 0, 0, 0, 0],
        '+' => [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0, 0, 0],
        '=' => [0, 0, 0b11111, 0, 0b11111, 0, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0, 0b11111, 0],
        '/' => [
            0b00001, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b10000, 0, 0,
        ],
        '(' => [
            0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0, 0,
        ],
        ')' => [
            0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0, 0,
        ],
        '[' => [
            0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0, 0,
        ],
        ']' => [
            0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0, 0,
        ],
        '%' => [
            0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0, 0,
        ],
        '#' => [
            0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0, 0,
        ],
        '*' => [0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0, 0, 0],
        '\'' => [0b00100, 0b00100, 0b01000, 0, 0, 0, 0, 0, 0],
        '<' => [
            0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0, 0,
        ],
        '>' => [
            0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0, 0,
        ],
        _ => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100, 0, 0,
        ],
    }
}

/// Write `canvas` to `path` as an 8-bit RGB PNG.
pub(crate) fn write_png(path: &Path, canvas: &Canvas) -> Result<()> {
    let name = path.display();
    let file = File::create(path).with_context(|| format!("cannot create {name}"))?;
    let mut encoder = png::Encoder::new(
        BufWriter::new(file),
        canvas.width as u32,
        canvas.height as u32,
    );
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("writing {name}"))?;
    writer
        .write_image_data(&canvas.rgb)
        .with_context(|| format!("writing {name}"))?;
    writer.finish().with_context(|| format!("writing {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACK: [u8; 3] = [0, 0, 0];

    fn inked(canvas: &Canvas) -> usize {
        canvas.rgb.chunks(3).filter(|p| *p != WHITE).count()
    }

    #[test]
    fn lines_reach_both_ends_and_are_clipped() {
        let mut c = Canvas::new(10, 10);
        c.line((0, 0), (9, 4), BLACK, 1);
        assert_eq!(c.pixel(0, 0), BLACK);
        assert_eq!(c.pixel(9, 4), BLACK);
        assert_eq!(inked(&c), 10, "one pixel per column of a shallow line");
        // Far off the canvas on both sides: only the visible part is drawn.
        let mut c = Canvas::new(10, 10);
        c.line((-50, 5), (50, 5), BLACK, 3);
        assert_eq!(inked(&c), 30);
    }

    #[test]
    fn dashes_alternate() {
        let mut c = Canvas::new(3, 12);
        c.dashed_vline(1, 0, 11, BLACK, 3);
        let column: Vec<bool> = (0..12).map(|y| c.pixel(1, y) == BLACK).collect();
        let on = [true, true, true, false, false, false];
        assert_eq!(column, [on, on].concat());
    }

    #[test]
    fn every_printable_ascii_character_has_a_glyph_within_its_cell() {
        let unknown = glyph('\u{1}');
        for c in (' '..='~').filter(|c| !c.is_ascii_uppercase()) {
            let g = glyph(c);
            assert!(g.iter().all(|&row| row < 32), "{c:?} is wider than 5");
            if "0123456789abcdefghijklmnopqrstuvwxyz.,:-+=_/()[]%#*'<> ".contains(c) {
                assert!(c == '?' || g != unknown, "{c:?} has no glyph of its own");
            }
        }
        assert_eq!(glyph('A'), glyph('a'), "capitals are drawn as lower case");
        assert_eq!(glyph(' '), [0; 9]);
    }

    #[test]
    fn text_is_drawn_where_its_width_says() {
        let mut c = Canvas::new(40, 20);
        c.text(1, 1, "1.5", 2, BLACK);
        let w = text_width("1.5", 2);
        assert_eq!(w, (3 * CHAR_WIDTH - 1) * 2);
        let xs: Vec<usize> = (0..40)
            .filter(|&x| (0..20).any(|y| c.pixel(x, y) == BLACK))
            .collect();
        assert!(
            *xs.first().unwrap() >= 1 && *xs.last().unwrap() < 1 + w,
            "{xs:?}"
        );
        let ys: Vec<usize> = (0..20)
            .filter(|&y| (0..40).any(|x| c.pixel(x, y) == BLACK))
            .collect();
        assert!(
            *ys.last().unwrap() < 1 + 7 * 2,
            "digits stay above the baseline"
        );
    }

    #[test]
    fn a_canvas_round_trips_through_png() {
        let mut c = Canvas::new(7, 5);
        c.fill(2, 1, 3, 2, [10, 20, 30]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        write_png(&path, &c).unwrap();
        let file = File::open(&path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (7, 5));
        assert_eq!(&buf[..info.buffer_size()], &c.rgb[..]);
        let err = write_png(&dir.path().join("no/such/dir/c.png"), &c).unwrap_err();
        assert!(format!("{err:#}").contains("no/such/dir/c.png"), "{err:#}");
    }
}

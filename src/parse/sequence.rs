//! The picture of `glom parse` for a sequence (a video checkpoint, paper
//! section 11): one column per frame, the state carried from frame to
//! frame.
//!
//! Layout (sizes from [`SequenceLayout`]; everything on white):
//! - a title line, then a heading band with "frame 1" ... "frame F" over
//!   the columns;
//! - the rows, each with its name on the left: "input" (the frames, a
//!   strip of the sequence), "true objects" when the data has maps, then
//!   one row per level, level 0 first: each location coloured by its
//!   island in the state after that frame's last iteration.
//!
//! An island keeps its colour from frame to frame where it carries over:
//! each frame's islands are matched one to one to the previous frame's
//! ([`match_islands`], the matching of the temporal stability measure); a
//! matched island takes its predecessor's colour, one left over a colour
//! not used yet at that level. So a stable island is one colour along its
//! row, and a colour change is an island that broke, merged or was born.

use anyhow::Result;
use glom_worker::eval::temporal::match_islands;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::render::{island_colour, label, level_name, map, truth_colours, GAP, LABEL, TITLE};
use crate::picture::{init_fonts, white, FONT};

/// The size in pixels a frame's panel comes near.
pub(crate) const FRAME_PANEL: u32 = 96;
/// Width of the row names' band on the left.
pub(crate) const NAMES: u32 = 150;

/// Where everything goes, in pixels (`width` grows to fit the title when
/// the columns are narrower).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SequenceLayout {
    /// Pixels per image pixel of a frame panel.
    pub(crate) scale: u32,
    /// Side of a panel.
    pub(crate) panel: u32,
    /// Top of the first row's panels.
    pub(crate) rows_top: u32,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

impl SequenceLayout {
    /// For `frames` frames of `side` pixels, `rows` rows.
    pub(crate) fn new(side: usize, frames: usize, rows: usize) -> Self {
        let scale = (FRAME_PANEL / side.max(1) as u32).clamp(2, 8);
        let panel = side as u32 * scale;
        let rows_top = TITLE + LABEL;
        Self {
            scale,
            panel,
            rows_top,
            width: NAMES + frames as u32 * (panel + GAP) + GAP,
            height: rows_top + rows as u32 * (panel + GAP) + GAP,
        }
    }

    /// Left edge of frame `f`'s column.
    pub(crate) fn column(&self, f: usize) -> u32 {
        NAMES + f as u32 * (self.panel + GAP)
    }

    /// Top of row `r`.
    pub(crate) fn row(&self, r: usize) -> u32 {
        self.rows_top + r as u32 * (self.panel + GAP)
    }
}

/// One frame of the sequence.
pub(crate) struct Frame<'a> {
    /// The input, `[channels][side][side]` in [0, 1].
    pub(crate) pixels: &'a [f32],
    /// Ground-truth object ids per pixel, when known.
    pub(crate) objects: Option<&'a [u16]>,
    /// Island label per location (row-major), per level, after the frame.
    pub(crate) islands: &'a [Vec<usize>],
}

/// What the picture shows.
pub(crate) struct Sequence<'a> {
    pub(crate) title: &'a str,
    pub(crate) side: usize,
    pub(crate) grid: usize,
    pub(crate) channels: usize,
    pub(crate) frames: &'a [Frame<'a>],
}

/// The colour number of every island of every frame at one level:
/// `colours[f][label]`. Frame 0's island k takes colour k; a later island
/// takes the colour of the island it is matched to in the frame before,
/// or the next colour not used yet at this level.
pub(crate) fn carried_colours(islands: &[&[usize]]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::with_capacity(islands.len());
    let mut fresh = 0usize;
    for (f, labels) in islands.iter().enumerate() {
        let count = labels.iter().max().map_or(0, |&m| m + 1);
        let colours = if f == 0 {
            (0..count).collect()
        } else {
            match_islands(islands[f - 1], labels)
                .into_iter()
                .take(count)
                .map(|before| match before {
                    Some(j) => out[f - 1][j],
                    None => {
                        fresh += 1;
                        fresh - 1
                    }
                })
                .collect()
        };
        if f == 0 {
            fresh = count;
        }
        out.push(colours);
    }
    out
}

/// Draw `seq`: the RGB buffer (3 bytes per pixel, row-major) and its
/// layout.
pub(crate) fn render_sequence(seq: &Sequence) -> Result<(Vec<u8>, SequenceLayout)> {
    init_fonts();
    let levels = seq.frames.first().map_or(0, |f| f.islands.len());
    let truth = seq.frames.iter().all(|f| f.objects.is_some()) && !seq.frames.is_empty();
    let rows = 1 + usize::from(truth) + levels;
    let mut layout = SequenceLayout::new(seq.side, seq.frames.len(), rows);
    // A few frames are narrower than the title: widen to fit it.
    let title_font = (FONT, 22).into_font();
    let (title_width, _) = title_font.box_size(seq.title)?;
    layout.width = layout.width.max(title_width + 2 * GAP);
    let mut rgb = white(layout.width, layout.height);
    {
        let area =
            BitMapBackend::with_buffer(&mut rgb, (layout.width, layout.height)).into_drawing_area();
        let title = title_font.color(&BLACK);
        area.draw_text(seq.title, &title, (GAP as i32, 10))?;
        let right = (FONT, 17)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        let name = |r: usize, text: &str| -> Result<()> {
            let at = (
                (NAMES - GAP) as i32,
                (layout.row(r) + layout.panel / 2) as i32,
            );
            area.draw_text(text, &right, at)?;
            Ok(())
        };
        let plane = seq.side * seq.side;
        let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        let cell = layout.panel / seq.grid as u32;
        let colours: Vec<Vec<Vec<usize>>> = (0..levels)
            .map(|l| {
                let per_frame: Vec<&[usize]> =
                    seq.frames.iter().map(|f| f.islands[l].as_slice()).collect();
                carried_colours(&per_frame)
            })
            .collect();
        name(0, "input")?;
        if truth {
            name(1, "true objects")?;
        }
        let first_level = 1 + usize::from(truth);
        for l in 0..levels {
            name(first_level + l, &level_name(l, levels))?;
        }
        for (f, frame) in seq.frames.iter().enumerate() {
            let x = layout.column(f);
            label(
                &area,
                &format!("frame {}", f + 1),
                (x, layout.rows_top - LABEL + 4),
            )?;
            map(&area, (x, layout.row(0)), seq.side, layout.scale, |i| {
                if seq.channels >= 3 {
                    let [r, g, b] = [0, 1, 2].map(|c| byte(frame.pixels[c * plane + i]));
                    RGBColor(r, g, b)
                } else {
                    let v = byte(frame.pixels[i]);
                    RGBColor(v, v, v)
                }
            })?;
            if let (true, Some(objects)) = (truth, frame.objects) {
                let c = truth_colours(objects);
                map(&area, (x, layout.row(1)), seq.side, layout.scale, |i| c[i])?;
            }
            for (l, labels) in frame.islands.iter().enumerate() {
                let c = &colours[l][f];
                map(
                    &area,
                    (x, layout.row(first_level + l)),
                    seq.grid,
                    cell,
                    |i| island_colour(c[labels[i]]),
                )?;
            }
        }
        area.present()?;
    }
    Ok((rgb, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_island_that_carries_over_keeps_its_colour_and_a_new_one_gets_a_fresh_colour() {
        // Frame 0: two islands; frame 1: the same two, numbered the other
        // way round, and a third split off island 0's locations.
        let f0 = [0, 0, 0, 1, 1, 1];
        let f1 = [1, 1, 2, 0, 0, 0];
        let c = carried_colours(&[&f0, &f1]);
        assert_eq!(c[0], vec![0, 1]);
        assert_eq!(c[1], vec![1, 0, 2]);
    }

    #[test]
    fn the_layout_has_a_column_per_frame_and_a_row_per_level_below_the_input() {
        let l = SequenceLayout::new(32, 8, 1 + 1 + 5);
        assert_eq!(l.panel, 96);
        assert_eq!(l.width, NAMES + 8 * (96 + GAP) + GAP);
        assert_eq!(l.height, TITLE + LABEL + 7 * (96 + GAP) + GAP);
        assert_eq!(l.column(1) - l.column(0), 96 + GAP);
    }
}

//! The picture of `glom parse`, drawn with plotters: labelled panels, the
//! settling rows, a legend of the final islands and the parse tree.
//!
//! Layout (sizes from [`Layout`]; everything on white):
//! - a title line;
//! - the top row, each panel under its label: the input upscaled
//!   [`scale`] times (to about [`PANEL`] pixels), one panel per level ("level 0 (parts)" ... "level L-1 (wholes)";
//!   each location coloured by its island, island `k` of a level in palette
//!   colour `k`, islands numbered in order of first appearance), then the
//!   ground-truth "true parts" and "true objects" maps when the data has them;
//! - below, the settling rows: one per iteration ("iteration t" on its
//!   left), one half-size panel per level, the islands of the state that
//!   iteration settled to;
//! - under the final row, per level, a legend: each island's colour and
//!   size in locations, largest first (the largest [`Layout::legend_slots`]
//!   less one, then "+n" for the rest when they do not all fit);
//! - to the right, the parse tree: one row of nodes per level (top level
//!   at the top), each node a disc of the island's colour whose area is in
//!   proportion to its size, joined to its parent.

use anyhow::Result;
use glom_worker::parse::ParseTree;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::picture::{init_fonts, white, FONT};

/// The size in pixels the panels of the top row come near.
pub(crate) const PANEL: u32 = 160;

/// Upscaling of the input and of the level panels (pixels per image
/// pixel) for images of `side` pixels: as near [`PANEL`] as whole pixels
/// allow, from 2 to 8 times.
pub(crate) fn scale(side: usize) -> u32 {
    (PANEL / side.max(1) as u32).clamp(2, 8)
}
/// Space between panels and around the picture, in pixels.
pub(crate) const GAP: u32 = 12;
/// Height of the title line.
pub(crate) const TITLE: u32 = 40;
/// Height of the label band above each top-row panel, and of the heading
/// band above the settling rows and above the legend.
pub(crate) const LABEL: u32 = 24;
/// Rows of legend entries under the final settling row.
pub(crate) const LEGEND_ROWS: u32 = 4;
/// Height of one legend row.
pub(crate) const LEGEND_ROW: u32 = 20;
/// Width of one legend entry (a swatch and up to four digits).
pub(crate) const LEGEND_ENTRY: u32 = 52;
/// Width of the parse tree's area.
pub(crate) const TREE: u32 = 420;

/// Background (id 0) of the ground-truth maps.
const BACKGROUND: RGBColor = RGBColor(0, 0, 0);
/// Island colours, in order of island number (wrapping after the last).
const PALETTE: [RGBColor; 20] = [
    RGBColor(230, 25, 75),
    RGBColor(60, 180, 75),
    RGBColor(0, 130, 200),
    RGBColor(245, 130, 48),
    RGBColor(145, 30, 180),
    RGBColor(70, 240, 240),
    RGBColor(240, 50, 230),
    RGBColor(210, 245, 60),
    RGBColor(250, 190, 212),
    RGBColor(0, 128, 128),
    RGBColor(220, 190, 255),
    RGBColor(170, 110, 40),
    RGBColor(255, 225, 25),
    RGBColor(128, 0, 0),
    RGBColor(170, 255, 195),
    RGBColor(128, 128, 0),
    RGBColor(255, 215, 180),
    RGBColor(0, 0, 128),
    RGBColor(128, 128, 128),
    RGBColor(100, 60, 160),
];

/// The colour of island `k`.
pub(crate) fn island_colour(k: usize) -> RGBColor {
    PALETTE[k % PALETTE.len()]
}

/// Where everything goes, in pixels, for images of `side` pixels, `levels`
/// levels, `iterations` settling rows, with or without the ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Layout {
    /// Pixels per image pixel in the top row ([`scale`]).
    pub(crate) scale: u32,
    /// Side of a top-row panel.
    pub(crate) panel: u32,
    pub(crate) columns: u32,
    /// Top of the top row's panels (below their labels).
    pub(crate) panels_top: u32,
    /// Top of the first settling row.
    pub(crate) strip_top: u32,
    /// Top of the legend's first row.
    pub(crate) legend_top: u32,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

impl Layout {
    pub(crate) fn new(side: usize, levels: usize, iterations: usize, truth: bool) -> Self {
        let scale = scale(side);
        let panel = side as u32 * scale;
        let columns = 1 + levels as u32 + if truth { 2 } else { 0 };
        let panels_top = TITLE + LABEL;
        let strip_top = panels_top + panel + GAP + LABEL;
        let legend_top = strip_top + iterations as u32 * (panel / 2 + GAP) + LABEL;
        Self {
            scale,
            panel,
            columns,
            panels_top,
            strip_top,
            legend_top,
            width: GAP + columns * (panel + GAP) + TREE + GAP,
            height: legend_top + LEGEND_ROWS * LEGEND_ROW + GAP,
        }
    }

    /// Left edge of column `i` (0 the input).
    pub(crate) fn column(&self, i: u32) -> u32 {
        GAP + i * (self.panel + GAP)
    }

    /// Top of settling row `t`.
    pub(crate) fn row(&self, t: usize) -> u32 {
        self.strip_top + t as u32 * (self.panel / 2 + GAP)
    }

    /// Legend entries that fit under one level's column.
    pub(crate) fn legend_slots(&self) -> usize {
        ((self.panel / LEGEND_ENTRY).max(1) * LEGEND_ROWS) as usize
    }
}

/// The name of a level's panel: its number, and what it holds at the ends.
pub(crate) fn level_name(level: usize, levels: usize) -> String {
    match level {
        0 => "level 0 (parts)".to_string(),
        l if l + 1 == levels => format!("level {l} (wholes)"),
        l => format!("level {l}"),
    }
}

/// What the picture shows.
pub(crate) struct Scene<'a> {
    pub(crate) title: &'a str,
    pub(crate) side: usize,
    pub(crate) grid: usize,
    /// The input, `[channels][side][side]` in [0, 1].
    pub(crate) pixels: &'a [f32],
    pub(crate) channels: usize,
    /// Island label per location (row-major), per level.
    pub(crate) islands: &'a [Vec<usize>],
    /// The same, after each iteration.
    pub(crate) strip: &'a [Vec<Vec<usize>>],
    /// Ground-truth part and object ids per pixel, when known.
    pub(crate) truth: Option<(&'a [u16], &'a [u16])>,
    pub(crate) tree: &'a ParseTree,
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draw `scene`: the RGB buffer (3 bytes per pixel, row-major) and its
/// layout.
pub(crate) fn render(scene: &Scene) -> Result<(Vec<u8>, Layout)> {
    init_fonts();
    let levels = scene.islands.len();
    let layout = Layout::new(scene.side, levels, scene.strip.len(), scene.truth.is_some());
    let mut rgb = white(layout.width, layout.height);
    {
        let area =
            BitMapBackend::with_buffer(&mut rgb, (layout.width, layout.height)).into_drawing_area();
        let title = (FONT, 22).into_font().color(&BLACK);
        area.draw_text(scene.title, &title, (GAP as i32, 10))?;
        draw_top_row(&area, &layout, scene)?;
        draw_strip(&area, &layout, scene)?;
        let tree_area = area.margin(
            layout.panels_top - LABEL,
            GAP,
            layout.width - TREE - GAP,
            GAP,
        );
        draw_tree(&tree_area, scene.tree, levels, scene.grid * scene.grid)?;
        area.present()?;
    }
    Ok((rgb, layout))
}

/// A `side x side` map at `(x0, y0)`, `cell` pixels per entry.
pub(crate) fn map(
    area: &Area,
    (x0, y0): (u32, u32),
    side: usize,
    cell: u32,
    at: impl Fn(usize) -> RGBColor,
) -> Result<()> {
    for r in 0..side {
        for c in 0..side {
            let x = (x0 + c as u32 * cell) as i32;
            let y = (y0 + r as u32 * cell) as i32;
            let corners = [(x, y), (x + cell as i32, y + cell as i32)];
            area.draw(&Rectangle::new(corners, at(r * side + c).filled()))?;
        }
    }
    Ok(())
}

pub(crate) fn label(area: &Area, text: &str, (x, y): (u32, u32)) -> Result<()> {
    let style = (FONT, 17).into_font().color(&BLACK);
    area.draw_text(text, &style, (x as i32, y as i32))?;
    Ok(())
}

fn draw_top_row(area: &Area, layout: &Layout, scene: &Scene) -> Result<()> {
    let (side, grid, levels) = (scene.side, scene.grid, scene.islands.len());
    let top = layout.panels_top;
    let label_y = top - LABEL + 4;
    let plane = side * side;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    label(area, "input", (layout.column(0), label_y))?;
    map(area, (layout.column(0), top), side, layout.scale, |i| {
        if scene.channels >= 3 {
            let [r, g, b] = [0, 1, 2].map(|c| byte(scene.pixels[c * plane + i]));
            RGBColor(r, g, b)
        } else {
            let v = byte(scene.pixels[i]);
            RGBColor(v, v, v)
        }
    })?;
    let cell = layout.panel / grid as u32;
    for (l, labels) in scene.islands.iter().enumerate() {
        let x = layout.column(1 + l as u32);
        label(area, &level_name(l, levels), (x, label_y))?;
        map(area, (x, top), grid, cell, |i| island_colour(labels[i]))?;
    }
    if let Some((part, object)) = scene.truth {
        for (k, (name, ids)) in [("true parts", part), ("true objects", object)]
            .into_iter()
            .enumerate()
        {
            let x = layout.column(1 + levels as u32 + k as u32);
            let colours = truth_colours(ids);
            label(area, name, (x, label_y))?;
            map(area, (x, top), side, layout.scale, |i| colours[i])?;
        }
    }
    Ok(())
}

fn draw_strip(area: &Area, layout: &Layout, scene: &Scene) -> Result<()> {
    let small = layout.panel / 2;
    let cell = small / scene.grid as u32;
    label(
        area,
        "settling: the islands after each iteration",
        (layout.column(1), layout.strip_top - LABEL + 4),
    )?;
    let right = (FONT, 17)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (t, step) in scene.strip.iter().enumerate() {
        let y = layout.row(t);
        let text_at = ((layout.column(1) - GAP) as i32, (y + small / 2) as i32);
        area.draw_text(&format!("iteration {}", t + 1), &right, text_at)?;
        for (l, labels) in step.iter().enumerate() {
            let x = layout.column(1 + l as u32);
            map(area, (x, y), scene.grid, cell, |i| island_colour(labels[i]))?;
        }
    }
    let last = scene.strip.last().map_or(scene.islands, Vec::as_slice);
    label(
        area,
        "final islands: colour and size (locations)",
        (layout.column(1), layout.legend_top - LABEL + 4),
    )?;
    for (l, labels) in last.iter().enumerate() {
        draw_legend(area, layout, layout.column(1 + l as u32), labels)?;
    }
    Ok(())
}

/// The sizes of a level's islands, largest first: `(island, size)`.
pub(crate) fn island_sizes(labels: &[usize]) -> Vec<(usize, usize)> {
    let count = labels.iter().max().map_or(0, |&m| m + 1);
    let mut sizes = vec![0usize; count];
    for &k in labels {
        sizes[k] += 1;
    }
    let mut out: Vec<(usize, usize)> = sizes.into_iter().enumerate().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn draw_legend(area: &Area, layout: &Layout, x0: u32, labels: &[usize]) -> Result<()> {
    let sizes = island_sizes(labels);
    let slots = layout.legend_slots();
    let per_row = (layout.panel / LEGEND_ENTRY).max(1) as usize;
    let shown = if sizes.len() > slots {
        slots - 1
    } else {
        sizes.len()
    };
    let text = (FONT, 14).into_font().color(&BLACK);
    for (i, &(island, size)) in sizes.iter().take(shown).enumerate() {
        let x = (x0 + (i % per_row) as u32 * LEGEND_ENTRY) as i32;
        let y = (layout.legend_top + (i / per_row) as u32 * LEGEND_ROW) as i32;
        area.draw(&Rectangle::new(
            [(x, y + 2), (x + 12, y + 14)],
            island_colour(island).filled(),
        ))?;
        area.draw_text(&size.to_string(), &text, (x + 16, y + 3))?;
    }
    if shown < sizes.len() {
        let rest: usize = sizes[shown..].iter().map(|s| s.1).sum();
        let i = shown;
        let x = (x0 + (i % per_row) as u32 * LEGEND_ENTRY) as i32;
        let y = (layout.legend_top + (i / per_row) as u32 * LEGEND_ROW) as i32;
        let more = format!("+{} ({rest})", sizes.len() - shown);
        area.draw_text(&more, &text, (x, y + 1))?;
    }
    Ok(())
}

/// Colours of a ground-truth id map: background black, other ids from the
/// palette in order of first appearance.
pub(crate) fn truth_colours(map: &[u16]) -> Vec<RGBColor> {
    let mut seen: Vec<u16> = Vec::new();
    map.iter()
        .map(|&id| {
            if id == 0 {
                return BACKGROUND;
            }
            let k = seen.iter().position(|&s| s == id).unwrap_or_else(|| {
                seen.push(id);
                seen.len() - 1
            });
            island_colour(k)
        })
        .collect()
}

/// Horizontal position of every node of `tree`, in slots `0..n` (`n` the
/// second value): each childless node takes the next slot, a parent sits
/// midway over its first and last child; roots and children in order of
/// size, largest first.
pub(crate) fn tree_positions(tree: &ParseTree) -> (Vec<f64>, usize) {
    let n = tree.nodes.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    for node in &tree.nodes {
        match node.parent {
            Some(p) => children[p].push(node.id),
            None => roots.push(node.id),
        }
    }
    let by_size = |ids: &mut Vec<usize>| {
        ids.sort_by(|&a, &b| tree.nodes[b].size.cmp(&tree.nodes[a].size).then(a.cmp(&b)))
    };
    by_size(&mut roots);
    for c in &mut children {
        by_size(c);
    }
    let mut x = vec![0.0; n];
    let mut slot = 0usize;
    // Iterative post-order: (node, children placed?).
    let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
    while let Some((id, placed)) = stack.pop() {
        let kids = &children[id];
        if kids.is_empty() {
            x[id] = slot as f64;
            slot += 1;
        } else if placed {
            x[id] = (x[kids[0]] + x[kids[kids.len() - 1]]) / 2.0;
        } else {
            stack.push((id, true));
            stack.extend(kids.iter().rev().map(|&k| (k, false)));
        }
    }
    (x, slot.max(1))
}

fn draw_tree(area: &Area, tree: &ParseTree, levels: usize, locations: usize) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    label(area, "parse tree (disc area: island size)", (0, 4))?;
    let (slots, n) = tree_positions(tree);
    let left = 64.0;
    let span = f64::from(w) - left - 16.0;
    let (top, bottom) = (LABEL as f64 + 24.0, f64::from(h) - 24.0);
    let level_y = |l: usize| {
        if levels <= 1 {
            (top + bottom) / 2.0
        } else {
            bottom - (bottom - top) * l as f64 / (levels - 1) as f64
        }
    };
    let at = |id: usize| {
        let node = &tree.nodes[id];
        let x = left + span * (slots[id] + 0.5) / n as f64;
        (x.round() as i32, level_y(node.level).round() as i32)
    };
    let text = (FONT, 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for l in 0..levels {
        area.draw_text(&format!("level {l}"), &text, (0, level_y(l).round() as i32))?;
    }
    let edge = RGBColor(150, 150, 150).stroke_width(1);
    for node in &tree.nodes {
        if let Some(p) = node.parent {
            area.draw(&PathElement::new(vec![at(node.id), at(p)], edge))?;
        }
    }
    let max_r = (span / n as f64 / 2.0).clamp(3.0, 18.0);
    for node in &tree.nodes {
        let share = node.size as f64 / locations.max(1) as f64;
        let r = (2.0 + (max_r - 2.0) * share.sqrt()).round() as i32;
        area.draw(&Circle::new(
            at(node.id),
            r,
            island_colour(node.island).filled(),
        ))?;
        area.draw(&Circle::new(at(node.id), r, BLACK.stroke_width(1)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use glom_worker::parse::Node;

    fn node(id: usize, level: usize, size: usize, parent: Option<usize>) -> Node {
        Node {
            id,
            level,
            island: id,
            locations: Vec::new(),
            size,
            mean_norm: 1.0,
            parent,
        }
    }

    #[test]
    fn parents_sit_over_their_children_and_leaves_do_not_overlap() {
        // Level 0: nodes 0..4; level 1: 4 (over 0, 2) and 5 (over 1, 3); 6 childless.
        let tree = ParseTree {
            nodes: vec![
                node(0, 0, 3, Some(4)),
                node(1, 0, 5, Some(5)),
                node(2, 0, 4, Some(4)),
                node(3, 0, 1, Some(5)),
                node(4, 1, 7, None),
                node(5, 1, 6, None),
                node(6, 1, 0, None),
            ],
        };
        let (x, n) = tree_positions(&tree);
        assert_eq!(n, 5, "four leaves and one childless root");
        // Largest root first, its larger child first.
        assert_eq!([x[2], x[0], x[4]], [0.0, 1.0, 0.5]);
        assert_eq!([x[1], x[3], x[5]], [2.0, 3.0, 2.5]);
        assert_eq!(x[6], 4.0);
    }

    #[test]
    fn island_sizes_are_counted_largest_first() {
        assert_eq!(island_sizes(&[0, 1, 1, 2, 1, 0]), [(1, 3), (0, 2), (2, 1)]);
        assert!(island_sizes(&[]).is_empty());
    }

    #[test]
    fn the_layout_fits_every_panel() {
        assert_eq!([scale(16), scale(28), scale(32), scale(100)], [8, 5, 5, 2]);
        let l = Layout::new(16, 2, 3, true);
        assert_eq!(l.panel, 128);
        assert_eq!(l.column(0), GAP);
        assert_eq!(l.width, GAP + 5 * (128 + GAP) + TREE + GAP);
        assert!(l.row(2) + 64 + LABEL <= l.legend_top);
        assert_eq!(l.height, l.legend_top + LEGEND_ROWS * LEGEND_ROW + GAP);
        assert_eq!(l.legend_slots(), 2 * LEGEND_ROWS as usize);
        assert_eq!(level_name(0, 3), "level 0 (parts)");
        assert_eq!(level_name(1, 3), "level 1");
        assert_eq!(level_name(2, 3), "level 2 (wholes)");
    }
}

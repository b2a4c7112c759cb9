//! Tetrominoes in the style of DeepMind's multi-object datasets
//! (Kabra et al. 2019, used by IODINE, MONet and Slot Attention), generated
//! on demand so that GLOM's islands can be scored on a standard object
//! discovery task without a download.
//!
//! # Definition
//! - **Canvas**: 7x7 blocks on a black background (the published images are
//!   35x35 pixels, 5-pixel blocks). Here a block is exactly one patch
//!   (`block` pixels, `model.patch`, 4 by default: 28x28 images), so every
//!   block is one GLOM location and the location grid loses nothing.
//! - **Pieces**: three tetrominoes per image, each drawn uniformly from the
//!   19 fixed tetrominoes (the 7 one-sided pieces I, O, T, S, Z, J, L in
//!   every distinct rotation: 2 + 1 + 4 + 2 + 2 + 4 + 4 = 19, no
//!   reflections, [`SHAPES`]). The published dataset's README says its
//!   pieces are "sampled from 17 unique shapes/orientations" without saying
//!   which two of the 19 are left out, so the whole fixed set is used here.
//! - **Colours**: each piece one of six (red, green, blue, yellow, magenta,
//!   cyan, [`COLOURS`]), drawn independently, so two pieces may share one.
//! - **Placement**: uniformly among the positions where the piece lies
//!   inside the canvas and covers no block of an earlier piece (pieces may
//!   touch, never overlap): no occlusion, every piece has exactly 4 visible
//!   blocks.
//! - **Ground truth**: `object_map` holds `1 + piece index` on the piece's
//!   pixels, 0 on the background. There are no parts (`part_map` is
//!   `None`) and no class label.
//!
//! Image `i` is drawn from `Rng::from_key(&[seed, i])` alone, like the
//! scenes.

use super::{Dataset, Image, ImageShape};
use crate::rng::Rng;

/// Blocks per side of the canvas.
pub const BLOCKS: usize = 7;
/// Pieces per image.
pub const PIECES: usize = 3;

/// The 19 fixed tetrominoes as (row, col) block offsets, top-left anchored.
pub const SHAPES: [[(usize, usize); 4]; 19] = [
    // I: horizontal, vertical.
    [(0, 0), (0, 1), (0, 2), (0, 3)],
    [(0, 0), (1, 0), (2, 0), (3, 0)],
    // O.
    [(0, 0), (0, 1), (1, 0), (1, 1)],
    // T: pointing down, left, up, right.
    [(0, 0), (0, 1), (0, 2), (1, 1)],
    [(0, 1), (1, 0), (1, 1), (2, 1)],
    [(0, 1), (1, 0), (1, 1), (1, 2)],
    [(0, 0), (1, 0), (1, 1), (2, 0)],
    // S: horizontal, vertical.
    [(0, 1), (0, 2), (1, 0), (1, 1)],
    [(0, 0), (1, 0), (1, 1), (2, 1)],
    // Z: horizontal, vertical.
    [(0, 0), (0, 1), (1, 1), (1, 2)],
    [(0, 1), (1, 0), (1, 1), (2, 0)],
    // J: four rotations.
    [(0, 0), (1, 0), (1, 1), (1, 2)],
    [(0, 0), (0, 1), (1, 0), (2, 0)],
    [(0, 0), (0, 1), (0, 2), (1, 2)],
    [(0, 1), (1, 1), (2, 0), (2, 1)],
    // L: four rotations.
    [(0, 2), (1, 0), (1, 1), (1, 2)],
    [(0, 0), (1, 0), (2, 0), (2, 1)],
    [(0, 0), (0, 1), (0, 2), (1, 0)],
    [(0, 0), (0, 1), (1, 1), (2, 1)],
];

/// The six piece colours (RGB).
pub const COLOURS: [[f32; 3]; 6] = [
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
    [1.0, 1.0, 0.0],
    [1.0, 0.0, 1.0],
    [0.0, 1.0, 1.0],
];

/// One placed piece: which shape, its colour and its top-left block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub shape: usize,
    pub colour: usize,
    pub row: usize,
    pub col: usize,
}

impl Piece {
    /// The (row, col) blocks the piece covers.
    pub fn blocks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        SHAPES[self.shape]
            .iter()
            .map(move |&(r, c)| (self.row + r, self.col + c))
    }
}

/// A split of Tetrominoes images: `num_images` images generated on demand.
#[derive(Debug, Clone)]
pub struct Tetrominoes {
    block: usize,
    num_images: usize,
    seed: u64,
}

impl Tetrominoes {
    /// Images of `BLOCKS * block` pixels a side; `num_images` in the split
    /// (0: any index is generated as is), drawn from the stream `seed`.
    ///
    /// Panics when `block` is 0.
    pub fn new(block: usize, num_images: usize, seed: u64) -> Self {
        assert!(block > 0, "tetromino blocks need at least one pixel");
        Self {
            block,
            num_images,
            seed,
        }
    }

    /// The pieces of image `index`, in drawing order (object id = position + 1).
    pub fn pieces(&self, index: u64) -> Vec<Piece> {
        let mut rng = Rng::from_key(&[self.seed, index]);
        let mut taken = [[false; BLOCKS]; BLOCKS];
        let mut pieces = Vec::with_capacity(PIECES);
        while pieces.len() < PIECES {
            let shape = rng.below(SHAPES.len() as u64) as usize;
            let colour = rng.below(COLOURS.len() as u64) as usize;
            let free: Vec<Piece> = (0..BLOCKS)
                .flat_map(|row| (0..BLOCKS).map(move |col| (row, col)))
                .map(|(row, col)| Piece {
                    shape,
                    colour,
                    row,
                    col,
                })
                .filter(|p| {
                    p.blocks()
                        .all(|(r, c)| r < BLOCKS && c < BLOCKS && !taken[r][c])
                })
                .collect();
            // Three pieces always fit on 7x7, but a shape may not fit the
            // space the first ones left: draw another shape then.
            if free.is_empty() {
                continue;
            }
            let piece = free[rng.below(free.len() as u64) as usize];
            for (r, c) in piece.blocks() {
                taken[r][c] = true;
            }
            pieces.push(piece);
        }
        pieces
    }

    fn render(&self, index: u64) -> Image {
        let n = BLOCKS * self.block;
        let mut pixels = vec![0.0f32; 3 * n * n];
        let mut object_map = vec![0u16; n * n];
        for (i, piece) in self.pieces(index).iter().enumerate() {
            for (r, c) in piece.blocks() {
                for y in r * self.block..(r + 1) * self.block {
                    for x in c * self.block..(c + 1) * self.block {
                        object_map[y * n + x] = 1 + i as u16;
                        for (ch, &v) in COLOURS[piece.colour].iter().enumerate() {
                            pixels[ch * n * n + y * n + x] = v;
                        }
                    }
                }
            }
        }
        Image {
            pixels,
            part_map: None,
            object_map: Some(object_map),
            label: None,
        }
    }
}

impl Dataset for Tetrominoes {
    fn shape(&self) -> ImageShape {
        let side = BLOCKS * self.block;
        ImageShape {
            channels: 3,
            height: side,
            width: side,
        }
    }

    fn len(&self) -> usize {
        self.num_images
    }

    /// The image at `index % len()`; with `num_images == 0` the index is
    /// used as is.
    fn get(&self, index: usize) -> Image {
        let i = if self.num_images == 0 {
            index
        } else {
            index % self.num_images
        };
        self.render(i as u64)
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every shape is 4 distinct blocks, 4-connected, anchored at row 0 and
    /// col 0, and the 19 are distinct.
    #[test]
    fn the_fixed_set_has_19_distinct_connected_shapes() {
        let mut seen = BTreeSet::new();
        for shape in &SHAPES {
            let cells: BTreeSet<(usize, usize)> = shape.iter().copied().collect();
            assert_eq!(cells.len(), 4, "{shape:?}");
            assert_eq!(cells.iter().map(|c| c.0).min(), Some(0), "{shape:?}");
            assert_eq!(cells.iter().map(|c| c.1).min(), Some(0), "{shape:?}");
            let mut reached = BTreeSet::from([shape[0]]);
            for _ in 0..4 {
                for &(r, c) in &cells {
                    let near = |&(a, b): &(usize, usize)| a.abs_diff(r) + b.abs_diff(c) == 1;
                    if reached.iter().any(near) {
                        reached.insert((r, c));
                    }
                }
            }
            assert_eq!(reached, cells, "{shape:?} is not connected");
            assert!(seen.insert(cells), "{shape:?} appears twice");
        }
    }

    #[test]
    fn deterministic_per_seed_and_index() {
        let a = Tetrominoes::new(4, 100, 5);
        assert_eq!(a.get(3), Tetrominoes::new(4, 100, 5).get(3));
        assert_eq!(a.get(3), a.get(103), "index wraps at len");
        assert_ne!(a.get(3), a.get(4));
        assert_ne!(a.get(3), Tetrominoes::new(4, 100, 6).get(3));
    }

    #[test]
    fn three_pieces_of_four_blocks_that_never_overlap_and_exact_maps() {
        let data = Tetrominoes::new(4, 0, 1);
        let n = 28;
        assert_eq!(data.shape().numel(), 3 * n * n);
        for i in 0..200 {
            let pieces = data.pieces(i);
            assert_eq!(pieces.len(), PIECES);
            let mut covered = BTreeSet::new();
            for p in &pieces {
                for (r, c) in p.blocks() {
                    assert!(r < BLOCKS && c < BLOCKS, "image {i}: {p:?} off the canvas");
                    assert!(
                        covered.insert((r, c)),
                        "image {i}: pieces overlap at {r},{c}"
                    );
                }
            }
            assert_eq!(covered.len(), 4 * PIECES);
            let image = data.get(i as usize);
            assert_eq!(image.part_map, None);
            let map = image.object_map.unwrap();
            for id in 1..=PIECES as u16 {
                let pixels = map.iter().filter(|&&m| m == id).count();
                assert_eq!(
                    pixels,
                    4 * 16,
                    "image {i}: piece {id} has 4 blocks of 16 pixels"
                );
            }
            // The map says exactly which pixels are coloured, and with what.
            for (at, &id) in map.iter().enumerate() {
                let rgb = [0, 1, 2].map(|c| image.pixels[c * n * n + at]);
                match id {
                    0 => assert_eq!(rgb, [0.0; 3], "image {i}: background is black"),
                    id => assert_eq!(rgb, COLOURS[pieces[usize::from(id) - 1].colour]),
                }
            }
        }
    }
}

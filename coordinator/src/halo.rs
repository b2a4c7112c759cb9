//! Which cells a tile reads from outside itself, and hence which workers
//! must talk to each other (DESIGN.md section 4).
//!
//! A location attends to neighbours drawn within a radius that grows with
//! the level; the widest radius, rounded down to whole cells, is the halo
//! width ("reach") of every tile. The halo of a tile is the frame of cells
//! within `reach` rows and columns around it (a Chebyshev box, as in the
//! worker's `Tile::rect`), so two workers are peers when their tiles are at
//! most `reach` cells apart along both axes. That relation is symmetric:
//! a peer both sends to and receives from the tile.

use glom_protocol::message::TileAssignment;
use glom_protocol::Config;

use crate::plan::TileSpec;

/// Halo width of every level, in grid cells: the largest row or column
/// offset a sampled neighbour can have (`Config::lateral_reach`, the same
/// definition the workers draw neighbours from; the whole grid with
/// `model.attention = "all"`).
pub fn level_reaches(cfg: &Config) -> Vec<usize> {
    (0..cfg.model.levels)
        .map(|l| cfg.lateral_reach(l))
        .collect()
}

/// Halo width of the run: the widest level's reach (0 for no level).
pub fn halo_reach(cfg: &Config) -> usize {
    level_reaches(cfg).into_iter().max().unwrap_or(0)
}

/// The wire form of a tile.
pub fn tile_assignment(tile: &TileSpec) -> TileAssignment {
    TileAssignment {
        rows: (tile.rows.start as u32, tile.rows.end as u32),
        cols: (tile.cols.start as u32, tile.cols.end as u32),
    }
}

/// Whether the half-open ranges `a` and `b` come within `reach` of each
/// other (overlapping ranges are at distance 0).
fn within(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>, reach: usize) -> bool {
    b.start < a.end + reach && a.start < b.end + reach
}

/// Indices of the tiles, other than `tiles[i]`, that hold a cell of its
/// halo: the workers tile `i` exchanges embeddings with.
pub fn peers_of(tiles: &[TileSpec], i: usize, reach: usize) -> Vec<usize> {
    let me = &tiles[i];
    (0..tiles.len())
        .filter(|&j| j != i)
        .filter(|&j| within(&me.rows, &tiles[j].rows, reach))
        .filter(|&j| within(&me.cols, &tiles[j].cols, reach))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;

    #[test]
    fn reach_of_the_default_config() {
        // 5 levels, sigma 1 -> 4, cutoff 2.5. Sigma per level is
        // 4^(l/4) = 1, 1.414, 2, 2.828, 4; radius 2.5 sigma = 2.5, 3.54, 5,
        // 7.07, 10 (computed by hand, as the worker's neighbour_specs does).
        let mut cfg = Config::default();
        cfg.model.neighbour_sigma = [1.0, 4.0];
        assert_eq!(level_reaches(&cfg), vec![2, 3, 5, 7, 10]);
        assert_eq!(halo_reach(&cfg), 10);
        // The default's [1, 1.5]: sigma 1, 1.107, 1.225, 1.355, 1.5;
        // radius 2.5, 2.77, 3.06, 3.39, 3.75.
        let default = Config::default();
        assert_eq!(level_reaches(&default), vec![2, 2, 3, 3, 3]);
        assert_eq!(halo_reach(&default), 3);
    }

    #[test]
    fn attention_over_all_makes_every_tile_a_peer_of_every_other() {
        let mut cfg = Config::default(); // an 8x8 grid
        cfg.model.attention = glom_protocol::config::Attention::All;
        assert!(level_reaches(&cfg).iter().all(|&r| r >= 7));
        let tiles = plan(8, 8, 4).unwrap();
        for i in 0..tiles.len() {
            let others: Vec<usize> = (0..tiles.len()).filter(|&j| j != i).collect();
            assert_eq!(peers_of(&tiles, i, halo_reach(&cfg)), others);
        }
    }

    #[test]
    fn reach_is_at_least_one_cell() {
        let mut cfg = Config::default();
        cfg.model.neighbour_sigma = [0.2, 0.3];
        cfg.model.neighbour_cutoff = 1.0;
        assert_eq!(level_reaches(&cfg), vec![1; cfg.model.levels]);
    }

    #[test]
    fn peers_are_the_tiles_within_reach() {
        // 6 tiles of 8x8: rows 0..4 | 4..8, cols 0..3 | 3..6 | 6..8.
        let tiles = plan(8, 8, 6).unwrap();
        assert_eq!(peers_of(&tiles, 0, 1), vec![1, 3, 4]);
        assert_eq!(peers_of(&tiles, 1, 1), vec![0, 2, 3, 4, 5]);
        // Tile 2 starts 4 columns right of tile 0's last column.
        assert_eq!(peers_of(&tiles, 0, 3), vec![1, 3, 4]);
        assert_eq!(peers_of(&tiles, 0, 4), vec![1, 2, 3, 4, 5]);
        assert_eq!(peers_of(&tiles, 0, 0), vec![] as Vec<usize>);
    }
}

//! The grid of locations, tiles of it, and the neighbour sets of lateral
//! attention.
//!
//! Neighbours of a location at a level are drawn without replacement from a
//! gaussian centred on it, wider at higher levels (paper section 6). The
//! draw is keyed by `(seed, step, level, global location)`, so it depends on
//! nothing a shard knows that another does not: a tile of the grid draws
//! exactly the sets the whole grid would.

use crate::rng::Rng;

/// Stream tag of neighbour draws in [`Rng::from_key`].
const NEIGHBOUR_STREAM: u64 = 0x4e45_4947;

/// An `rows x cols` grid of locations; location ids are row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
}

impl Grid {
    /// A square grid.
    pub fn square(side: usize) -> Self {
        Self {
            rows: side,
            cols: side,
        }
    }

    /// Number of locations.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the grid has no location.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (row, col) of a location id.
    pub fn coords(&self, id: usize) -> (usize, usize) {
        (id / self.cols, id % self.cols)
    }
}

/// The neighbour-sampling gaussian at one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourSpec {
    /// How many neighbours each location attends to.
    pub count: usize,
    /// Standard deviation of the gaussian, in grid cells.
    pub sigma: f64,
    /// Candidates lie within `radius` cells (euclidean) of the location.
    pub radius: f64,
}

impl NeighbourSpec {
    /// Largest row or column offset a neighbour can have: the halo width.
    pub fn reach(&self) -> usize {
        self.radius.floor() as usize
    }
}

/// Neighbours of `loc`: up to `spec.count` distinct other locations, drawn
/// without replacement with probability proportional to
/// `exp(-dist^2 / (2 sigma^2))` among those within `spec.radius`. Fewer when
/// fewer candidates exist (grid corners). Sorted by id, so a set is the same
/// whatever the draw order.
pub fn sample_neighbours(
    grid: Grid,
    loc: usize,
    spec: &NeighbourSpec,
    seed: u64,
    step_key: u64,
    level: usize,
) -> Vec<usize> {
    let (r0, c0) = grid.coords(loc);
    let reach = spec.reach() as isize;
    let mut cands: Vec<(usize, f64)> = Vec::new();
    for dr in -reach..=reach {
        for dc in -reach..=reach {
            if dr == 0 && dc == 0 {
                continue;
            }
            let (r, c) = (r0 as isize + dr, c0 as isize + dc);
            if r < 0 || c < 0 || r >= grid.rows as isize || c >= grid.cols as isize {
                continue;
            }
            let d2 = (dr * dr + dc * dc) as f64;
            if d2 > spec.radius * spec.radius {
                continue;
            }
            let w = (-d2 / (2.0 * spec.sigma * spec.sigma)).exp();
            cands.push((r as usize * grid.cols + c as usize, w));
        }
    }
    if spec.count >= cands.len() {
        // Every candidate is drawn: the set needs no random numbers.
        let mut out: Vec<usize> = cands.into_iter().map(|c| c.0).collect();
        out.sort_unstable();
        return out;
    }
    let mut rng = Rng::from_key(&[seed, NEIGHBOUR_STREAM, step_key, level as u64, loc as u64]);
    let mut out = Vec::with_capacity(spec.count.min(cands.len()));
    while out.len() < spec.count && !cands.is_empty() {
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let mut u = rng.uniform() * total;
        let mut pick = cands.len() - 1;
        for (i, c) in cands.iter().enumerate() {
            if u < c.1 {
                pick = i;
                break;
            }
            u -= c.1;
        }
        out.push(cands.swap_remove(pick).0);
    }
    out.sort_unstable();
    out
}

/// A rectangular tile of the grid that one engine computes, and the halo of
/// other locations whose embeddings it reads through lateral attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    pub grid: Grid,
    /// Global ids of the tile's own locations, row-major within the tile.
    pub locs: Vec<usize>,
    /// Global ids of halo locations (outside the tile, within reach), sorted.
    pub halo: Vec<usize>,
}

impl Tile {
    /// The whole grid as one tile: no halo.
    pub fn whole(grid: Grid) -> Self {
        Self {
            grid,
            locs: (0..grid.len()).collect(),
            halo: Vec::new(),
        }
    }

    /// Rows `r0..r1` and columns `c0..c1`, with the halo of every location
    /// within `reach` cells outside it.
    pub fn rect(
        grid: Grid,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        reach: usize,
    ) -> Self {
        let mut locs = Vec::new();
        for r in rows.clone() {
            for c in cols.clone() {
                locs.push(r * grid.cols + c);
            }
        }
        let mut halo = Vec::new();
        let r_lo = rows.start.saturating_sub(reach);
        let r_hi = (rows.end + reach).min(grid.rows);
        let c_lo = cols.start.saturating_sub(reach);
        let c_hi = (cols.end + reach).min(grid.cols);
        for r in r_lo..r_hi {
            for c in c_lo..c_hi {
                if !(rows.contains(&r) && cols.contains(&c)) {
                    halo.push(r * grid.cols + c);
                }
            }
        }
        Self { grid, locs, halo }
    }

    /// Index of a global location in the tile's gather order (own locations
    /// first, then the halo), if it is there.
    pub fn local_index(&self, global: usize) -> Option<usize> {
        self.locs.iter().position(|&g| g == global).or_else(|| {
            self.halo
                .iter()
                .position(|&g| g == global)
                .map(|i| i + self.locs.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NeighbourSpec {
        NeighbourSpec {
            count: 6,
            sigma: 1.5,
            radius: 3.0,
        }
    }

    #[test]
    fn neighbours_are_distinct_others_within_reach_and_deterministic() {
        let g = Grid::square(8);
        for loc in 0..g.len() {
            let a = sample_neighbours(g, loc, &spec(), 3, 7, 1);
            assert_eq!(a, sample_neighbours(g, loc, &spec(), 3, 7, 1));
            assert!(!a.contains(&loc));
            let mut d = a.clone();
            d.dedup();
            assert_eq!(d.len(), a.len());
            assert_eq!(
                a.len(),
                6,
                "8x8 grid has >= 6 candidates within 3 cells of {loc}"
            );
            let (r, c) = g.coords(loc);
            for &n in &a {
                let (nr, nc) = g.coords(n);
                let d2 = (nr as f64 - r as f64).powi(2) + (nc as f64 - c as f64).powi(2);
                assert!(d2 <= 9.0);
            }
        }
        let other_step = (0..g.len()).any(|l| {
            sample_neighbours(g, l, &spec(), 3, 8, 1) != sample_neighbours(g, l, &spec(), 3, 7, 1)
        });
        assert!(other_step, "a new step draws new sets");
    }

    #[test]
    fn neighbours_do_not_depend_on_tiling() {
        let g = Grid::square(8);
        let whole = Tile::whole(g);
        let quarters = [
            Tile::rect(g, 0..4, 0..4, 3),
            Tile::rect(g, 0..4, 4..8, 3),
            Tile::rect(g, 4..8, 0..4, 3),
            Tile::rect(g, 4..8, 4..8, 3),
        ];
        for level in 0..3 {
            for &loc in &whole.locs {
                let tile = quarters.iter().find(|t| t.locs.contains(&loc)).unwrap();
                let from_whole = sample_neighbours(whole.grid, loc, &spec(), 11, 5, level);
                let from_tile = sample_neighbours(tile.grid, loc, &spec(), 11, 5, level);
                assert_eq!(from_whole, from_tile);
                for n in from_tile {
                    assert!(
                        tile.local_index(n).is_some(),
                        "neighbour {n} of {loc} outside tile + halo"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_over_all_reads_every_other_location() {
        use glom_protocol::config::{Attention, Config};
        let mut cfg = Config::default(); // an 8x8 grid
        cfg.model.attention = Attention::All;
        let g = Grid::square(cfg.grid_side());
        let specs = crate::model::neighbour_specs(&cfg);
        assert_eq!(specs.len(), cfg.model.levels);
        for (level, spec) in specs.iter().enumerate() {
            assert!(spec.reach() >= g.rows - 1, "level {level}: the whole grid");
            for loc in [0, 9, 63] {
                let want: Vec<usize> = (0..g.len()).filter(|&y| y != loc).collect();
                assert_eq!(sample_neighbours(g, loc, spec, 0, 3, level), want);
            }
        }
    }

    #[test]
    fn closer_cells_are_drawn_more_often() {
        let g = Grid::square(9);
        let s = NeighbourSpec {
            count: 1,
            sigma: 1.0,
            radius: 3.0,
        };
        let centre = 4 * 9 + 4;
        let (mut near, mut far) = (0, 0);
        for step in 0..2000 {
            let n = sample_neighbours(g, centre, &s, 1, step, 0)[0];
            let (r, c) = g.coords(n);
            let d2 = (r as i64 - 4).pow(2) + (c as i64 - 4).pow(2);
            if d2 == 1 {
                near += 1;
            } else if d2 >= 8 {
                far += 1;
            }
        }
        assert!(near > 5 * far, "near {near} far {far}");
    }
}

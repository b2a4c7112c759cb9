//! The shard plan: a `rows x cols` grid of locations cut into `n`
//! rectangular tiles of balanced size, one per worker.
//!
//! Tiles are rectangles so that each worker's halo (the locations of other
//! tiles its lateral attention reads) is a thin frame around it: the traffic
//! per step grows with the tile's perimeter, not with the model's size.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One worker's rectangle of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileSpec {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

impl TileSpec {
    /// Number of locations in the tile.
    pub fn len(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// Whether the tile has no location.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("cluster.workers = {workers} must be at least 1")]
    NoWorkers { workers: usize },
    #[error("{workers} workers cannot each get a tile of a {rows}x{cols} grid")]
    TooManyWorkers {
        workers: usize,
        rows: usize,
        cols: usize,
    },
}

/// `n` contiguous ranges covering `0..len` whose sizes differ by at most one.
fn split(len: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / n, len % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let r = start..start + size;
            start += size;
            r
        })
        .collect()
}

/// Cut the grid into `workers` tiles: a `tr x tc` arrangement with
/// `tr * tc = workers` whose tiles are closest to square (smallest total
/// perimeter, so the least halo traffic), row-major order.
pub fn plan(rows: usize, cols: usize, workers: usize) -> Result<Vec<TileSpec>, PlanError> {
    if workers == 0 {
        return Err(PlanError::NoWorkers { workers });
    }
    let best = (1..=workers)
        .filter(|tr| workers.is_multiple_of(*tr) && *tr <= rows && workers / tr <= cols)
        .min_by_key(|tr| {
            let tc = workers / tr;
            // Perimeter of one tile, in units of 1 / (tr * tc) to stay integral.
            rows * tc + cols * tr
        })
        .ok_or(PlanError::TooManyWorkers {
            workers,
            rows,
            cols,
        })?;
    let tc = workers / best;
    let mut tiles = Vec::with_capacity(workers);
    for r in split(rows, best) {
        for c in split(cols, tc) {
            tiles.push(TileSpec {
                rows: r.clone(),
                cols: c,
            });
        }
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_exactly_once(tiles: &[TileSpec], rows: usize, cols: usize) {
        let mut seen = vec![0; rows * cols];
        for t in tiles {
            for r in t.rows.clone() {
                for c in t.cols.clone() {
                    seen[r * cols + c] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{tiles:?}");
    }

    #[test]
    fn tiles_cover_the_grid_once_and_are_balanced() {
        for (rows, cols, n) in [
            (8, 8, 1),
            (8, 8, 2),
            (8, 8, 4),
            (7, 7, 3),
            (7, 7, 4),
            (8, 8, 6),
            (5, 9, 5),
        ] {
            let tiles = plan(rows, cols, n).unwrap();
            assert_eq!(tiles.len(), n);
            covers_exactly_once(&tiles, rows, cols);
            let sizes: Vec<usize> = tiles.iter().map(TileSpec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= rows.max(cols), "{rows}x{cols}/{n}: {sizes:?}");
        }
    }

    #[test]
    fn four_workers_on_a_square_grid_get_quarters() {
        let tiles = plan(8, 8, 4).unwrap();
        assert_eq!(
            tiles[0],
            TileSpec {
                rows: 0..4,
                cols: 0..4
            }
        );
        assert_eq!(
            tiles[3],
            TileSpec {
                rows: 4..8,
                cols: 4..8
            }
        );
    }

    #[test]
    fn impossible_plans_are_errors() {
        assert_eq!(plan(8, 8, 0), Err(PlanError::NoWorkers { workers: 0 }));
        assert!(matches!(
            plan(2, 2, 5),
            Err(PlanError::TooManyWorkers { .. })
        ));
    }
}

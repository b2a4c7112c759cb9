//! `glom bench --scale halo`: halo bytes per step against the number of
//! tiles, beside the minimum the tiling implies. No model runs: the
//! figures come from the planner the cluster uses.
//!
//! - **sent**: what the workers put on the wire per step (payload), from
//!   the coordinator's plan (`glom_coordinator::plan`, `halo::peers_of`)
//!   and each worker's [`HaloPlan`]: every cell of a tile within the
//!   widest level's reach (a Chebyshev box) of a peer's tile, at every
//!   level, every iteration, for every image of the batch. It is the
//!   `payload_bytes_per_step` of a run's plan.json and summary.json.
//! - **reachable**: the cells a peer's lateral attention could read at all:
//!   at each level l, the cells of a tile within that level's euclidean
//!   radius (`model.neighbour_radius(l)`) of some cell of the peer's tile;
//!   the least a sender can send without knowing the draw.
//! - **drawn**: the cells the peer's locations actually drew as
//!   neighbours in a step (level by level; one draw per step, shared by
//!   the iterations), the mean over steps 0 to 3: the least a sender can
//!   send knowing the draw, which every worker can compute (it is keyed
//!   by seed, step, level and location).
//!
//! Each figure counts (cell, level, receiving worker) triples, times d x
//! iterations x batch x bytes per value (`cluster.halo_precision`).

use std::collections::HashSet;

use anyhow::Result;
use glom_coordinator::halo::{halo_reach, peers_of, tile_assignment};
use glom_coordinator::plan::{plan, TileSpec};
use glom_protocol::config::HaloPrecision;
use glom_protocol::Config;
use glom_worker::model::grid::{sample_neighbours, Grid};
use glom_worker::model::neighbour_specs;
use glom_worker::runtime::halo::tile_of;
use glom_worker::runtime::HaloPlan;
use serde::Serialize;

/// Steps whose neighbour draws the `drawn` figure averages.
const DRAWN_STEPS: u64 = 4;

/// One tiling's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HaloRow {
    pub(crate) workers: usize,
    /// Tile arrangement, rows x columns of tiles.
    pub(crate) arrangement: (usize, usize),
    /// Peers per worker, summed over the workers (ordered pairs).
    pub(crate) links: usize,
    pub(crate) sent_bytes: u64,
    pub(crate) reachable_bytes: u64,
    pub(crate) drawn_bytes: f64,
}

/// Bytes of one (cell, level, receiver) triple in a step.
fn bytes_per_cell(cfg: &Config) -> u64 {
    let per_value = match cfg.cluster.halo_precision {
        HaloPrecision::F32 => 4,
        HaloPrecision::Bf16 => 2,
    };
    (cfg.model.dim * cfg.model.iterations * cfg.train.batch_size * per_value) as u64
}

/// The figures of `cfg`'s grid cut into each of `workers` tiles (counts the
/// grid cannot be cut into are left out).
pub(crate) fn measure(cfg: &Config, workers: &[usize]) -> Result<Vec<HaloRow>> {
    let side = cfg.grid_side();
    let mut rows = Vec::new();
    for &n in workers {
        let Ok(tiles) = plan(side, side, n) else {
            eprintln!("{n} workers cannot split a {side}x{side} grid: left out");
            continue;
        };
        rows.push(row(cfg, &tiles)?);
    }
    Ok(rows)
}

fn row(cfg: &Config, tiles: &[TileSpec]) -> Result<HaloRow> {
    let m = &cfg.model;
    let side = cfg.grid_side();
    let grid = Grid::square(side);
    let reach = halo_reach(cfg);
    let mut sent = 0;
    let mut links = 0;
    for i in 0..tiles.len() {
        let peers: Vec<_> = peers_of(tiles, i, reach)
            .into_iter()
            .map(|j| (j as u32, tile_assignment(&tiles[j])))
            .collect();
        links += peers.len();
        let tile = tile_of(grid, &tile_assignment(&tiles[i]), reach);
        sent += HaloPlan::new(&tile, &peers, reach)?.payload_bytes_per_step(
            m.levels,
            m.dim,
            m.iterations,
            cfg.train.batch_size,
            cfg.cluster.halo_precision,
        );
    }
    let mut owner = vec![0usize; grid.len()];
    for (i, t) in tiles.iter().enumerate() {
        for r in t.rows.clone() {
            for c in t.cols.clone() {
                owner[r * side + c] = i;
            }
        }
    }
    let specs = neighbour_specs(cfg);
    // Reachable: (cell, level, receiving tile) with a cell of that tile
    // within the level's radius.
    let mut reachable = 0u64;
    for (cell, &own) in owner.iter().enumerate() {
        let (r0, c0) = grid.coords(cell);
        for spec in &specs {
            let k = spec.reach() as isize;
            let mut readers = HashSet::new();
            for dr in -k..=k {
                for dc in -k..=k {
                    let (r, c) = (r0 as isize + dr, c0 as isize + dc);
                    let inside = (0..side as isize).contains(&r) && (0..side as isize).contains(&c);
                    if inside && ((dr * dr + dc * dc) as f64) <= spec.radius * spec.radius {
                        readers.insert(owner[r as usize * side + c as usize]);
                    }
                }
            }
            readers.remove(&own);
            reachable += readers.len() as u64;
        }
    }
    // Drawn: (cell, level, receiving tile) with a location of that tile
    // that drew the cell in the step.
    let mut drawn = 0u64;
    for step in 0..DRAWN_STEPS {
        for (level, spec) in specs.iter().enumerate() {
            let mut reads = HashSet::new();
            for (x, &reader) in owner.iter().enumerate() {
                for y in sample_neighbours(grid, x, spec, cfg.seed, step, level) {
                    if owner[y] != reader {
                        reads.insert((y, reader));
                    }
                }
            }
            drawn += reads.len() as u64;
        }
    }
    let cols = tiles.iter().filter(|t| t.rows.start == 0).count();
    let per_cell = bytes_per_cell(cfg);
    Ok(HaloRow {
        workers: tiles.len(),
        arrangement: (tiles.len() / cols.max(1), cols),
        links,
        sent_bytes: sent,
        reachable_bytes: reachable * per_cell,
        drawn_bytes: (drawn * per_cell) as f64 / DRAWN_STEPS as f64,
    })
}

/// The table of `--scale halo`.
pub(crate) fn table(cfg: &Config, rows: &[HaloRow]) -> String {
    let m = &cfg.model;
    let side = cfg.grid_side();
    let reaches: Vec<usize> = (0..m.levels).map(|l| m.neighbour_reach(l)).collect();
    let mut out = format!(
        "glom bench --scale halo: {side}x{side} grid, {} levels (reach {reaches:?} cells), d {}, \
         {} iterations, batch {}, {:?} halo; MiB per step, all workers\n\n",
        m.levels, m.dim, m.iterations, cfg.train.batch_size, cfg.cluster.halo_precision
    );
    out.push_str(&format!(
        "{:>7} {:>7} {:>6} {:>10} {:>10} {:>10} {:>12} {:>10}\n",
        "workers", "tiles", "links", "sent", "reachable", "drawn", "sent/reach", "sent/drawn"
    ));
    let mib = |b: f64| b / 1048576.0;
    for r in rows {
        let ratio = |min: f64| {
            if min > 0.0 {
                format!("{:.2}", r.sent_bytes as f64 / min)
            } else {
                "-".into()
            }
        };
        out.push_str(&format!(
            "{:>7} {:>7} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>12} {:>10}\n",
            r.workers,
            format!("{}x{}", r.arrangement.0, r.arrangement.1),
            r.links,
            mib(r.sent_bytes as f64),
            mib(r.reachable_bytes as f64),
            mib(r.drawn_bytes),
            ratio(r.reachable_bytes as f64),
            ratio(r.drawn_bytes),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One worker sends nothing; on the default 8x8 grid with the top
    /// level's neighbourhood 4 cells wide (reach 10, wider than the grid)
    /// two workers each send their whole tile at every level:
    /// 32 cells x 5 levels x 2 workers x d 32 x 6 iterations x batch 32 x 4
    /// bytes; no minimum exceeds what is sent.
    #[test]
    fn halo_figures_of_the_default_grid() {
        let mut cfg = Config::default();
        cfg.model.neighbour_sigma = [1.0, 4.0];
        let rows = measure(&cfg, &[1, 2, 4]).unwrap();
        assert_eq!((rows[0].sent_bytes, rows[0].reachable_bytes), (0, 0));
        assert_eq!(rows[0].drawn_bytes, 0.0);
        assert_eq!(rows[1].sent_bytes, 32 * 5 * 2 * 32 * 6 * 32 * 4);
        assert_eq!(rows[2].arrangement, (2, 2));
        for r in &rows[1..] {
            assert!(r.drawn_bytes > 0.0, "{r:?}");
            assert!(r.drawn_bytes <= r.reachable_bytes as f64, "{r:?}");
            assert!(r.reachable_bytes <= r.sent_bytes, "{r:?}");
        }
    }
}

//! k-means, the reference segmenter: grouping patches by their raw colour
//! alone, told the true number of segments, shows how much of an island
//! score colour explains before any learning.

use super::row_count;
use crate::rng::Rng;

/// Lloyd iterations per restart at most.
const MAX_ITERATIONS: usize = 100;

/// k-means of `n` rows of `dim` values (Euclidean) into `k` clusters:
/// k-means++ seeding from `rng`, Lloyd iterations until no row moves, and
/// of `restarts` such runs (at least 1) the one of least total squared
/// distance. Returns one label per row, `0..m` numbered in order of first
/// appearance (`m <= k`: `k` is capped at the number of distinct rows, and
/// `k = 0` is read as 1).
pub fn kmeans(rows: &[f32], dim: usize, k: usize, restarts: usize, rng: &mut Rng) -> Vec<usize> {
    let n = row_count(rows, dim);
    if n == 0 {
        return Vec::new();
    }
    let k = k.clamp(1, n);
    let mut best: Option<(f64, Vec<usize>)> = None;
    for _ in 0..restarts.max(1) {
        let mut centres = seed(rows, dim, k, rng);
        let mut labels = vec![usize::MAX; n];
        for _ in 0..MAX_ITERATIONS {
            let mut moved = false;
            for (i, row) in rows.chunks_exact(dim).enumerate() {
                let c = nearest(row, &centres, dim).0;
                moved |= labels[i] != c;
                labels[i] = c;
            }
            if !moved {
                break;
            }
            update(rows, dim, &labels, &mut centres);
        }
        let cost: f64 = rows
            .chunks_exact(dim)
            .map(|row| nearest(row, &centres, dim).1)
            .sum();
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, labels));
        }
    }
    renumber(&best.map(|(_, l)| l).unwrap_or_default())
}

fn squared(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x - y).powi(2))
        .sum()
}

/// The closest centre and its squared distance (ties: the first).
fn nearest(row: &[f32], centres: &[f32], dim: usize) -> (usize, f64) {
    centres
        .chunks_exact(dim)
        .enumerate()
        .map(|(c, centre)| (c, squared(row, centre)))
        .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
}

/// k-means++: the first centre a uniform row, each next one a row drawn
/// with probability in proportion to its squared distance to the closest
/// centre so far (a uniform row when every row sits on a centre).
fn seed(rows: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = rows.len() / dim;
    let first = rng.below(n as u64) as usize;
    let mut centres = rows[first * dim..(first + 1) * dim].to_vec();
    while centres.len() < k * dim {
        let d: Vec<f64> = rows
            .chunks_exact(dim)
            .map(|row| nearest(row, &centres, dim).1)
            .collect();
        let total: f64 = d.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.uniform() * total;
            d.iter()
                .position(|&x| {
                    target -= x;
                    target < 0.0 && x > 0.0
                })
                .unwrap_or_else(|| d.iter().rposition(|&x| x > 0.0).unwrap_or(0))
        } else {
            rng.below(n as u64) as usize
        };
        centres.extend_from_slice(&rows[pick * dim..(pick + 1) * dim]);
    }
    centres
}

/// Each centre the mean of its rows (a centre without rows stays).
fn update(rows: &[f32], dim: usize, labels: &[usize], centres: &mut [f32]) {
    let k = centres.len() / dim;
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (row, &c) in rows.chunks_exact(dim).zip(labels) {
        counts[c] += 1;
        for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row) {
            *s += f64::from(x);
        }
    }
    for c in (0..k).filter(|&c| counts[c] > 0) {
        for j in 0..dim {
            centres[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
        }
    }
}

/// Labels renamed `0..m` in order of first appearance.
fn renumber(labels: &[usize]) -> Vec<usize> {
    let mut names: Vec<usize> = Vec::new();
    labels
        .iter()
        .map(|&l| match names.iter().position(|&x| x == l) {
            Some(i) => i,
            None => {
                names.push(l);
                names.len() - 1
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_well_apart_colours_and_is_deterministic() {
        // Three colours, four rows each, with a little spread.
        let centres = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2]];
        let rows: Vec<f32> = (0..12)
            .flat_map(|i| centres[i % 3].map(|v| v + 0.01 * (i / 3) as f32))
            .collect();
        let labels = kmeans(&rows, 3, 3, 4, &mut Rng::new(1));
        assert_eq!(labels, (0..12).map(|i| i % 3).collect::<Vec<_>>());
        assert_eq!(labels, kmeans(&rows, 3, 3, 4, &mut Rng::new(1)));
    }

    #[test]
    fn k_is_capped_and_degenerate_inputs_hold() {
        let rows = [0.5f32; 8]; // four identical rows of 2
        assert_eq!(kmeans(&rows, 2, 3, 2, &mut Rng::new(0)), vec![0; 4]);
        assert_eq!(kmeans(&rows, 2, 0, 1, &mut Rng::new(0)), vec![0; 4]);
        assert!(kmeans(&[], 2, 3, 1, &mut Rng::new(0)).is_empty());
        let two = [0.0f32, 1.0];
        assert_eq!(kmeans(&two, 1, 5, 1, &mut Rng::new(0)), vec![0, 1]);
    }
}

//! Islands: reading GLOM's parse tree out of the embeddings.
//!
//! In GLOM a node of the parse tree is not a unit of the network but an
//! *island of agreement*: the set of locations whose embeddings at one level
//! have become nearly the same vector (GLOM paper, overview and section 7).
//! To see the tree we cluster the embeddings of one level of one image.
//! Agreement is about direction rather than length (the attention and the
//! consensus both compare vectors by dot products), so the distance is the
//! cosine distance `1 - cos`, and average linkage merges two candidate
//! islands only when their members agree on average, not through one chain
//! of close neighbours.

use super::{row_count, unit_rows};

/// Subtract the mean vector of the set from every row (rows of `dim` values).
///
/// A fixed cosine threshold degenerates when all vectors share a large common
/// component (e.g. a bias every location carries): every pair then has a
/// cosine near 1 and everything becomes one island. Removing the common
/// component first makes the threshold measure the differences that matter.
pub fn center_rows(rows: &[f32], dim: usize) -> Vec<f32> {
    let n = row_count(rows, dim);
    if n == 0 {
        return Vec::new();
    }
    let mut mean = vec![0f64; dim];
    for row in rows.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    rows.chunks_exact(dim)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, &m)| (f64::from(x) - m) as f32)
        })
        .collect()
}

/// When [`agglomerate`] stops merging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// Merge while the average-linkage cosine distance (`1 - cos`) of the
    /// closest pair of clusters is `<=` this.
    Threshold(f32),
    /// Merge until exactly `k` clusters remain (`k = 0` is read as 1; if
    /// `k >= n`, every row is its own cluster).
    Clusters(usize),
}

const NONE: usize = usize::MAX;

/// Agglomerative clustering of `n` rows of `dim` values, average linkage on
/// cosine distance.
///
/// Returns one label per row; labels are `0..m` numbered in order of first
/// appearance. Deterministic: among equally close pairs of clusters the one
/// with the smallest (first, second) index pair merges first, a cluster being
/// named by its smallest row index. A zero row has no direction, so it is at
/// distance 1 from everything, other zero rows included (as are rows with
/// non-finite values).
///
/// Cost: an `n x n` distance matrix with Lance-Williams updates
/// (`d(k, i+j) = (|i| d(k,i) + |j| d(k,j)) / (|i| + |j|)`) and a cached
/// nearest neighbour per cluster, so `O(n^2)` memory and typically `O(n^2)`
/// time (`O(n^3)` worst case).
pub fn agglomerate(rows: &[f32], dim: usize, stop: Stop) -> Vec<usize> {
    let n = row_count(rows, dim);
    if n == 0 {
        return Vec::new();
    }
    let (target, threshold) = match stop {
        Stop::Threshold(t) => (1, f64::from(t)),
        Stop::Clusters(k) => (k.max(1), f64::INFINITY),
    };
    let mut dist = cosine_distances(rows, dim);
    let mut size = vec![1usize; n];
    let mut active = vec![true; n];
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    // nn[a]: the closest active cluster b > a (ties: smallest b), so the
    // global minimum over (nn_d[a], a) is the minimum over (d, a, b).
    let mut nn = vec![NONE; n];
    let mut nn_d = vec![f64::INFINITY; n];
    for a in 0..n {
        (nn[a], nn_d[a]) = nearest_after(a, &dist, &active);
    }
    let mut remaining = n;
    while remaining > target {
        let mut best = NONE;
        for a in (0..n).filter(|&a| active[a] && nn[a] != NONE) {
            if best == NONE || nn_d[a] < nn_d[best] {
                best = a;
            }
        }
        if best == NONE || nn_d[best] > threshold {
            break;
        }
        let (i, j) = (best, nn[best]);
        // Merge j into i (i < j, so i stays the smallest member index).
        let (si, sj) = (size[i] as f64, size[j] as f64);
        for k in (0..n).filter(|&k| active[k] && k != i && k != j) {
            let d = (si * dist[k * n + i] + sj * dist[k * n + j]) / (si + sj);
            dist[k * n + i] = d;
            dist[i * n + k] = d;
        }
        size[i] += size[j];
        active[j] = false;
        nn[j] = NONE;
        let moved = std::mem::take(&mut members[j]);
        members[i].extend(moved);
        remaining -= 1;
        for a in (0..n).filter(|&a| active[a]) {
            if a == i || nn[a] == i || nn[a] == j {
                (nn[a], nn_d[a]) = nearest_after(a, &dist, &active);
            } else if a < i {
                // Only d(a, i) changed in this row. A weighted mean of the old
                // d(a, i) and d(a, j) is never below both, so it becomes the
                // closest only by a tie or rounding; keep the cache exact.
                let d = dist[a * n + i];
                if d < nn_d[a] || (d == nn_d[a] && i < nn[a]) {
                    (nn[a], nn_d[a]) = (i, d);
                }
            }
        }
    }
    let mut owner = vec![0usize; n];
    for (c, mem) in members.iter().enumerate() {
        for &r in mem {
            owner[r] = c;
        }
    }
    first_appearance(&owner)
}

/// The closest active cluster with index above `a`, and its distance.
fn nearest_after(a: usize, dist: &[f64], active: &[bool]) -> (usize, f64) {
    let n = active.len();
    let mut best = (NONE, f64::INFINITY);
    for b in (a + 1..n).filter(|&b| active[b]) {
        let d = dist[a * n + b];
        if best.0 == NONE || d < best.1 {
            best = (b, d);
        }
    }
    best
}

/// Full matrix of `1 - cos` between rows, clamped to `[0, 2]`; rows without
/// a direction are at distance 1 from every row.
fn cosine_distances(rows: &[f32], dim: usize) -> Vec<f64> {
    let (unit, ok) = unit_rows(rows, dim);
    let n = ok.len();
    let mut dist = vec![0f64; n * n];
    for i in 0..n {
        let ui = &unit[i * dim..(i + 1) * dim];
        for j in i + 1..n {
            let d = if ok[i] && ok[j] {
                let uj = &unit[j * dim..(j + 1) * dim];
                let dot: f64 = ui.iter().zip(uj).map(|(x, y)| x * y).sum();
                (1.0 - dot).clamp(0.0, 2.0)
            } else {
                1.0
            };
            dist[i * n + j] = d;
            dist[j * n + i] = d;
        }
    }
    dist
}

/// Renames arbitrary labels to `0..m` in order of first appearance.
fn first_appearance(labels: &[usize]) -> Vec<usize> {
    let mut names = vec![NONE; labels.iter().max().map_or(0, |&m| m + 1)];
    let mut next = 0;
    labels
        .iter()
        .map(|&l| {
            if names[l] == NONE {
                names[l] = next;
                next += 1;
            }
            names[l]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::adjusted_rand_index;
    use crate::rng::Rng;

    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * dim).map(|_| rng.normal() as f32).collect()
    }

    fn count(labels: &[usize]) -> usize {
        labels.iter().max().map_or(0, |&m| m + 1)
    }

    /// Two groups along +e0 / -e0, small noise, and a common offset of 10 in
    /// every one of the 8 dimensions; group of row i is i % 2.
    fn offset_groups() -> (Vec<f32>, Vec<usize>) {
        let (n, dim) = (20, 8);
        let mut rng = Rng::new(5);
        let mut rows = Vec::new();
        let truth: Vec<usize> = (0..n).map(|i| i % 2).collect();
        for &g in &truth {
            for d in 0..dim {
                let signal = if d == 0 { [1.0, -1.0][g] } else { 0.0 };
                rows.push((10.0 + signal + 0.05 * rng.normal()) as f32);
            }
        }
        (rows, truth)
    }

    #[test]
    fn common_offset_merges_everything_unless_centered() {
        let (rows, truth) = offset_groups();
        // Without centering, rows are about (11,10,..,10) and (9,10,..,10):
        // cos = (99 + 7*100) / (sqrt(821) sqrt(781)) = 799 / 800.8 = 0.998,
        // a distance of 0.002 <= 0.3, so everything is one island.
        let raw = agglomerate(&rows, 8, Stop::Threshold(0.3));
        assert!(raw.iter().all(|&l| l == 0), "{raw:?}");
        // Centering removes the offset: rows become about +e0 and -e0 (the
        // groups are balanced, so the mean of dim 0 is about 10), cosine
        // distance about 0 within a group and about 2 across.
        let centered = center_rows(&rows, 8);
        let islands = agglomerate(&centered, 8, Stop::Threshold(0.3));
        assert_eq!(count(&islands), 2);
        assert_eq!(adjusted_rand_index(&islands, &truth), 1.0);
    }

    #[test]
    fn center_rows_removes_the_mean() {
        // Mean of (1,2) and (3,6) is (2,4): centered rows (-1,-2) and (1,2).
        assert_eq!(
            center_rows(&[1.0, 2.0, 3.0, 6.0], 2),
            vec![-1.0, -2.0, 1.0, 2.0]
        );
    }

    #[test]
    fn stop_at_k_clusters_gives_exactly_k() {
        let rows = random_rows(30, 4, 1);
        for k in [1, 2, 5, 29, 30, 45] {
            let labels = agglomerate(&rows, 4, Stop::Clusters(k));
            assert_eq!(labels.len(), 30);
            assert_eq!(count(&labels), k.min(30), "k = {k}");
        }
        assert_eq!(count(&agglomerate(&rows, 4, Stop::Clusters(0))), 1);
    }

    #[test]
    fn labels_follow_first_appearance() {
        // Directions alternate between the y axis and the x axis.
        let rows = [0.0, 1.0, 1.0, 0.0, 0.0, 1.1, 1.1, 0.0, 0.1, 2.0];
        assert_eq!(
            agglomerate(&rows, 2, Stop::Threshold(0.1)),
            vec![0, 1, 0, 1, 0]
        );
        let labels = agglomerate(&random_rows(40, 3, 2), 3, Stop::Clusters(6));
        let mut seen = 0;
        for &l in &labels {
            assert!(l <= seen, "label {l} before {seen}");
            if l == seen {
                seen += 1;
            }
        }
    }

    #[test]
    fn deterministic_with_ties_broken_by_smallest_pair() {
        let rows = random_rows(50, 5, 3);
        let a = agglomerate(&rows, 5, Stop::Threshold(0.5));
        assert_eq!(a, agglomerate(&rows, 5, Stop::Threshold(0.5)));
        // Three identical rows: all distances are 0, so (0, 1) merges first.
        let same = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        assert_eq!(agglomerate(&same, 2, Stop::Clusters(2)), vec![0, 0, 1]);
    }

    #[test]
    fn zero_rows_are_at_distance_one() {
        let rows = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(agglomerate(&rows, 2, Stop::Threshold(0.99)), vec![0, 1, 2]);
        assert_eq!(agglomerate(&rows, 2, Stop::Threshold(1.0)), vec![0, 0, 0]);
    }

    /// Direct average linkage: recompute every cluster-pair distance as the
    /// mean over member pairs, merge the smallest; O(n^4), for checking only.
    fn naive(rows: &[f32], dim: usize, k: usize) -> Vec<usize> {
        let n = rows.len() / dim;
        let dist = cosine_distances(rows, dim);
        let mut clusters: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        while clusters.len() > k {
            let mut best = (f64::INFINITY, 0, 0);
            for a in 0..clusters.len() {
                for b in a + 1..clusters.len() {
                    let mut s = 0.0;
                    for &x in &clusters[a] {
                        for &y in &clusters[b] {
                            s += dist[x * n + y];
                        }
                    }
                    let d = s / (clusters[a].len() * clusters[b].len()) as f64;
                    if d < best.0 {
                        best = (d, a, b);
                    }
                }
            }
            let moved = clusters.remove(best.2);
            clusters[best.1].extend(moved);
        }
        let mut owner = vec![0; n];
        for (c, mem) in clusters.iter().enumerate() {
            for &r in mem {
                owner[r] = c;
            }
        }
        first_appearance(&owner)
    }

    #[test]
    fn matches_direct_average_linkage() {
        for seed in 0..4 {
            let rows = random_rows(25, 3, 100 + seed);
            for k in [1, 3, 7, 12, 20] {
                assert_eq!(
                    agglomerate(&rows, 3, Stop::Clusters(k)),
                    naive(&rows, 3, k),
                    "seed {seed} k {k}"
                );
            }
        }
    }

    #[test]
    fn a_thousand_rows_is_fast_enough() {
        let rows = random_rows(1000, 16, 9);
        let start = std::time::Instant::now();
        let labels = agglomerate(&rows, 16, Stop::Clusters(10));
        assert_eq!(count(&labels), 10);
        assert!(
            start.elapsed().as_secs_f64() < 20.0,
            "{:?}",
            start.elapsed()
        );
    }
}

//! Collapse measures for a sample of embeddings.
//!
//! GLOM's islands are useful only if different parts get different vectors.
//! Its consensus pressure (every location pulled towards its neighbours and
//! towards the top-down and bottom-up predictions) has a trivial optimum:
//! every embedding the same vector (GLOM paper, section 7 on islands; the
//! paper's contrastive term exists to prevent this). These numbers say how
//! far a sample of `n` embeddings of dimension `dim` is from that optimum:
//!
//! - [`effective_rank`]: RankMe (Garrido et al. 2023), the exponential of the
//!   entropy of the normalised singular values; 1 for a collapsed sample;
//! - [`mean_dim_std`]: the spread of the normalised embeddings per dimension;
//!   0 for a collapsed sample;
//! - [`mean_pairwise_cosine`]: 1 for a collapsed sample.

use serde::Serialize;

use super::{row_count, unit_rows};

/// The three collapse measures of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CollapseStats {
    /// RankMe effective rank, in `[1, min(n, dim)]` (0 for an all-zero sample).
    pub effective_rank: f64,
    /// Mean over dimensions of the std over rows of the L2-normalised rows.
    pub mean_dim_std: f64,
    /// Mean cosine similarity over all unordered pairs of rows.
    pub mean_cosine: f64,
}

/// All three measures of one sample.
pub fn collapse_stats(rows: &[f32], dim: usize) -> CollapseStats {
    CollapseStats {
        effective_rank: effective_rank(rows, dim),
        mean_dim_std: mean_dim_std(rows, dim),
        mean_cosine: mean_pairwise_cosine(rows, dim),
    }
}

/// RankMe effective rank (Garrido et al. 2023) of the `n x dim` sample
/// matrix, *not* centered: with singular values `s_i` and
/// `p_i = s_i / (sum s + eps)`, `rank = exp(-sum p_i ln p_i)` (terms with
/// `p_i = 0` count 0).
///
/// Identical rows give 1; `n` orthonormal rows give `n`. The singular values
/// are the square roots of the eigenvalues of the smaller Gram matrix
/// (`X X^T` or `X^T X`), computed in `f64` by [`symmetric_eigenvalues`].
/// Singular values below `f32::EPSILON` times the largest are read as 0: the
/// rows are `f32`, so such directions are below the input's own resolution,
/// and the Gram matrix's rounding noise (eigenvalues near `1e-16` of the
/// largest, singular values near `1e-8`) would otherwise add spurious entropy
/// to a collapsed sample. An empty or all-zero sample has rank 0.
pub fn effective_rank(rows: &[f32], dim: usize) -> f64 {
    let n = row_count(rows, dim);
    if n == 0 {
        return 0.0;
    }
    let x: Vec<f64> = rows.iter().map(|&v| f64::from(v)).collect();
    let (size, gram) = if n <= dim {
        let mut g = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v = dot(&x[i * dim..(i + 1) * dim], &x[j * dim..(j + 1) * dim]);
                g[i * n + j] = v;
                g[j * n + i] = v;
            }
        }
        (n, g)
    } else {
        let mut g = vec![0f64; dim * dim];
        for row in x.chunks_exact(dim) {
            for (a, &ra) in row.iter().enumerate() {
                for (b, &rb) in row.iter().enumerate().skip(a) {
                    g[a * dim + b] += ra * rb;
                }
            }
        }
        for a in 0..dim {
            for b in 0..a {
                g[a * dim + b] = g[b * dim + a];
            }
        }
        (dim, g)
    };
    let eig = symmetric_eigenvalues(&gram, size);
    let largest = eig.iter().cloned().fold(0.0, f64::max);
    if largest <= 0.0 || !largest.is_finite() {
        return 0.0;
    }
    let floor = f64::from(f32::EPSILON) * largest.sqrt();
    let s: Vec<f64> = eig
        .iter()
        .map(|&e| e.max(0.0).sqrt())
        .map(|si| if si > floor { si } else { 0.0 })
        .collect();
    let total: f64 = s.iter().sum::<f64>() + 1e-12;
    let entropy: f64 = s
        .iter()
        .map(|&si| si / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    entropy.exp()
}

/// Mean over dimensions of the (population) standard deviation over rows of
/// the L2-normalised rows. Identical rows give 0; normalising first makes it
/// a statement about directions, comparable across models and scales.
/// An empty sample gives 0.
pub fn mean_dim_std(rows: &[f32], dim: usize) -> f64 {
    let n = row_count(rows, dim);
    if n == 0 {
        return 0.0;
    }
    let (unit, _) = unit_rows(rows, dim);
    let nf = n as f64;
    let mut mean = vec![0f64; dim];
    for row in unit.chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= nf);
    // Two passes, so identical rows give exactly zero spread.
    let mut var = vec![0f64; dim];
    for row in unit.chunks_exact(dim) {
        for ((q, &m), &v) in var.iter_mut().zip(&mean).zip(row) {
            *q += (v - m).powi(2);
        }
    }
    var.iter().map(|&q| (q / nf).sqrt()).sum::<f64>() / dim as f64
}

/// Mean cosine similarity over all unordered pairs `i < j` of rows; 1.0 when
/// there are fewer than two rows. A zero row has cosine 0 with everything.
///
/// Computed in `O(n dim)` from the sum `u` of the unit rows `u_i`:
/// `sum_{i<j} u_i . u_j = (|u|^2 - sum |u_i|^2) / 2`.
pub fn mean_pairwise_cosine(rows: &[f32], dim: usize) -> f64 {
    let n = row_count(rows, dim);
    if n < 2 {
        return 1.0;
    }
    let (unit, _) = unit_rows(rows, dim);
    let mut total = vec![0f64; dim];
    for row in unit.chunks_exact(dim) {
        total.iter_mut().zip(row).for_each(|(t, &v)| *t += v);
    }
    let self_terms: f64 = unit.chunks_exact(dim).map(|u| dot(u, u)).sum();
    let pair_sum = 0.5 * (dot(&total, &total) - self_terms);
    pair_sum / (0.5 * n as f64 * (n as f64 - 1.0))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Eigenvalues, in ascending order, of the symmetric `n x n` matrix `m`
/// (row-major). Cyclic Jacobi rotations in `f64`: `O(n^3)` per sweep, a few
/// sweeps, but simple, dependency-free and accurate to rounding for the
/// small Gram matrices used here.
pub fn symmetric_eigenvalues(m: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(m.len(), n * n, "symmetric_eigenvalues: matrix is not n x n");
    let mut a = m.to_vec();
    let scale: f64 = a.iter().map(|v| v * v).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| p * n + q))
            .map(|i| a[i] * a[i])
            .sum();
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // Rotation J (J_pp = J_qq = c, J_pq = s, J_qp = -s) with
                // (J^T A J)_pq = 0: t = tan of the angle, the smaller root of
                // t^2 + 2 theta t - 1 = 0 for stability.
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
            }
        }
    }
    let mut eig: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    eig.sort_by(f64::total_cmp);
    eig
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn identical_vectors_are_fully_collapsed() {
        let row = [0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4];
        let rows: Vec<f32> = (0..5).flat_map(|_| row).collect();
        // One nonzero singular value: p = (1, 0, ...), entropy 0, rank e^0 = 1.
        let stats = collapse_stats(&rows, 6);
        assert!((stats.effective_rank - 1.0).abs() < 1e-6, "{stats:?}");
        assert!(stats.mean_dim_std.abs() < 1e-12, "{stats:?}");
        assert!((stats.mean_cosine - 1.0).abs() < 1e-12, "{stats:?}");
        // Also through the dim x dim Gram matrix (more rows than dimensions).
        let many: Vec<f32> = (0..9).flat_map(|_| row).collect();
        assert!((effective_rank(&many, 6) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn orthonormal_set_has_full_rank() {
        // e0..e3 in dim 6: Gram = I_4, singular values 1,1,1,1, p_i = 1/4,
        // entropy ln 4, rank 4. Mean cosine 0 (all pairs orthogonal).
        let mut rows = vec![0f32; 4 * 6];
        for i in 0..4 {
            rows[i * 6 + i] = 1.0;
        }
        assert!((effective_rank(&rows, 6) - 4.0).abs() < 1e-6);
        assert!(mean_pairwise_cosine(&rows, 6).abs() < 1e-12);
    }

    #[test]
    fn unequal_singular_values() {
        // Rows (1,0) and (0,2): singular values 1 and 2, p = (1/3, 2/3),
        // entropy = (1/3) ln 3 + (2/3) ln 1.5 = 0.636514, rank = 1.889882.
        let want = ((1.0f64 / 3.0) * 3f64.ln() + (2.0 / 3.0) * 1.5f64.ln()).exp();
        assert!((want - 1.889882).abs() < 1e-6);
        assert!((effective_rank(&[1.0, 0.0, 0.0, 2.0], 2) - want).abs() < 1e-9);
        // A zero third row changes nothing, through the dim x dim path.
        let three = [1.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        assert!((effective_rank(&three, 2) - want).abs() < 1e-9);
        assert_eq!(effective_rank(&[0.0; 4], 2), 0.0);
    }

    #[test]
    fn known_cosines_and_stds() {
        // cos((1,0), (1,1)) = 1 / sqrt(2).
        let c = mean_pairwise_cosine(&[1.0, 0.0, 1.0, 1.0], 2);
        assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12, "{c}");
        // (1,0), (-1,0), (0,1): pair cosines -1, 0, 0, mean -1/3.
        let c = mean_pairwise_cosine(&[1.0, 0.0, -1.0, 0.0, 0.0, 1.0], 2);
        assert!((c + 1.0 / 3.0).abs() < 1e-12, "{c}");
        // A zero row: cosines 0 and 0 with the others, 1 between (1,0), (2,0).
        let c = mean_pairwise_cosine(&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0], 2);
        assert!((c - 1.0 / 3.0).abs() < 1e-12, "{c}");
        assert_eq!(mean_pairwise_cosine(&[1.0, 2.0], 2), 1.0);
        // Unit rows (1,0) and (0,5)->(0,1): each dimension takes values {1, 0},
        // population std 0.5, so the mean over dimensions is 0.5.
        let s = mean_dim_std(&[1.0, 0.0, 0.0, 5.0], 2);
        assert!((s - 0.5).abs() < 1e-12, "{s}");
    }

    #[test]
    fn jacobi_on_a_known_matrix() {
        // [[2,1],[1,2]] has eigenvalues 1 and 3; the separate 3 adds a third.
        let m = [2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0];
        let eig = symmetric_eigenvalues(&m, 3);
        for (got, want) in eig.iter().zip([1.0, 3.0, 3.0]) {
            assert!((got - want).abs() < 1e-12, "{eig:?}");
        }
    }

    #[test]
    fn jacobi_preserves_trace_and_frobenius_norm() {
        // Eigenvalues of a symmetric matrix sum to its trace and their squares
        // sum to its squared Frobenius norm.
        let n = 7;
        let mut rng = Rng::new(3);
        let mut m = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v = rng.normal();
                m[i * n + j] = v;
                m[j * n + i] = v;
            }
        }
        let eig = symmetric_eigenvalues(&m, n);
        let trace: f64 = (0..n).map(|i| m[i * n + i]).sum();
        let frob: f64 = m.iter().map(|v| v * v).sum();
        assert!((eig.iter().sum::<f64>() - trace).abs() < 1e-10);
        assert!((eig.iter().map(|e| e * e).sum::<f64>() - frob).abs() < 1e-10);
        assert!(eig.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn random_gaussian_sample_is_far_from_collapse() {
        let mut rng = Rng::new(8);
        let rows: Vec<f32> = (0..200 * 16).map(|_| rng.normal() as f32).collect();
        let stats = collapse_stats(&rows, 16);
        // Isotropic: 16 similar singular values, rank close to 16.
        assert!(stats.effective_rank > 14.0, "{stats:?}");
        assert!(stats.mean_cosine.abs() < 0.05, "{stats:?}");
        // Each coordinate of a random unit vector in 16-d has std 1/4.
        assert!((stats.mean_dim_std - 0.25).abs() < 0.03, "{stats:?}");
    }
}

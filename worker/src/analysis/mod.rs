//! Evaluation of what a GLOM model learned, on plain numbers.
//!
//! GLOM's claim is that a parse tree appears as *islands of agreement*:
//! locations whose embeddings at one level have become nearly the same
//! vector (GLOM paper, overview and section 7). Checking that claim needs a
//! few measurements that are independent of the model code, so they work on
//! slices of `f32` rows (`n` rows of `dim` values, row-major) and never on
//! tensors:
//!
//! - find the islands and compare them with the true parts and objects;
//! - detect representational collapse, the failure mode where every
//!   location agrees with every other one and the islands say nothing;
//! - measure how much class information the embeddings carry (linear probe);
//! - score reconstructions (PSNR).
//!
//! # Layout
//! - [`cluster`]: [`center_rows`] and average-linkage [`agglomerate`] on
//!   cosine distance, stopped by a distance [`Stop::Threshold`] or a number
//!   of islands [`Stop::Clusters`].
//! - [`ari`]: [`adjusted_rand_index`], agreement of islands with ground-truth
//!   part or object maps.
//! - [`collapse`]: RankMe [`effective_rank`], [`mean_dim_std`],
//!   [`mean_pairwise_cosine`], bundled as [`CollapseStats`]; the Jacobi
//!   eigenvalue routine [`symmetric_eigenvalues`] they rest on.
//! - [`kmeans`](mod@kmeans): [`kmeans()`], the colour reference segmenter.
//! - [`probe`]: [`LinearProbe`], a softmax regression on frozen embeddings,
//!   and [`probe_accuracy`] for a train/test split.
//! - [`psnr_db`] (here): reconstruction quality.

pub mod ari;
pub mod cluster;
pub mod collapse;
pub mod kmeans;
pub mod probe;

pub use ari::adjusted_rand_index;
pub use cluster::{agglomerate, center_rows, Stop};
pub use collapse::{
    collapse_stats, effective_rank, mean_dim_std, mean_pairwise_cosine, symmetric_eigenvalues,
    CollapseStats,
};
pub use kmeans::kmeans;
pub use probe::{probe_accuracy, LinearProbe, ProbeOptions};

/// The PSNR reported for a perfect (or better than 1e-10 MSE) reconstruction,
/// so that logs and plots never see infinity.
pub const PSNR_CAP_DB: f64 = 100.0;

/// Peak signal-to-noise ratio in dB for signals in `[0, 1]` (peak 1):
/// `10 log10(1 / mse)`. An `mse <= 0` (a perfect reconstruction) and any value
/// above the cap give [`PSNR_CAP_DB`].
pub fn psnr_db(mse: f64) -> f64 {
    if mse.is_nan() || mse <= 0.0 {
        return PSNR_CAP_DB;
    }
    (10.0 * (1.0 / mse).log10()).min(PSNR_CAP_DB)
}

/// Number of rows in a row-major `n x dim` sample; panics on a zero `dim` or
/// a length that is not a multiple of `dim` (both are programming errors).
pub(crate) fn row_count(rows: &[f32], dim: usize) -> usize {
    assert!(dim > 0, "row dimension must be positive");
    assert_eq!(
        rows.len() % dim,
        0,
        "sample length {} is not a multiple of the row dimension {dim}",
        rows.len()
    );
    rows.len() / dim
}

/// Rows converted to `f64` and scaled to unit L2 norm; an all-zero row stays
/// zero. The second value says, per row, whether it had a nonzero norm.
pub(crate) fn unit_rows(rows: &[f32], dim: usize) -> (Vec<f64>, Vec<bool>) {
    let n = row_count(rows, dim);
    let mut out = Vec::with_capacity(rows.len());
    let mut nonzero = Vec::with_capacity(n);
    for row in rows.chunks_exact(dim) {
        let norm = row
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        let ok = norm > 0.0 && norm.is_finite();
        let inv = if ok { 1.0 / norm } else { 0.0 };
        out.extend(row.iter().map(|&x| f64::from(x) * inv));
        nonzero.push(ok);
    }
    (out, nonzero)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_errors() {
        // mse 0.01 = 10^-2, so 10 log10(10^2) = 20 dB; mse 1 (peak) gives 0 dB.
        assert!((psnr_db(0.01) - 20.0).abs() < 1e-12);
        assert!(psnr_db(1.0).abs() < 1e-12);
        // A perfect reconstruction and a tiny error both hit the cap.
        assert_eq!(psnr_db(0.0), PSNR_CAP_DB);
        assert_eq!(psnr_db(1e-30), PSNR_CAP_DB);
    }

    #[test]
    fn unit_rows_normalise_and_keep_zero_rows() {
        // (3, 4) has norm 5, so it becomes (0.6, 0.8); (0, 0) stays zero.
        let (u, ok) = unit_rows(&[3.0, 4.0, 0.0, 0.0], 2);
        assert!((u[0] - 0.6).abs() < 1e-12 && (u[1] - 0.8).abs() < 1e-12);
        assert_eq!(&u[2..], &[0.0, 0.0]);
        assert_eq!(ok, vec![true, false]);
    }

    #[test]
    #[should_panic(expected = "not a multiple")]
    fn ragged_sample_is_rejected() {
        row_count(&[1.0, 2.0, 3.0], 2);
    }
}

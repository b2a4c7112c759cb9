//! Adjusted Rand index: how well GLOM's islands match the true parse.
//!
//! Islands found by [`super::agglomerate`] have arbitrary label names and an
//! arbitrary number of clusters, so they are compared with the ground-truth
//! part or object maps by a partition agreement score that ignores names.
//! The raw Rand index rewards any two random partitions with many small
//! clusters; the adjusted version of Hubert & Arabie (1985) subtracts its
//! expectation under random labelings with the same cluster sizes, so chance
//! agreement scores about 0 and identical partitions score 1.

use std::collections::HashMap;

/// Adjusted Rand index (Hubert & Arabie) of two labelings of the same items.
///
/// With `n_ij` the contingency counts, `a_i`, `b_j` its row and column sums
/// and `C(x) = x (x - 1) / 2` the number of pairs:
/// `index = sum C(n_ij)`, `expected = sum C(a_i) * sum C(b_j) / C(n)`,
/// `max = (sum C(a_i) + sum C(b_j)) / 2`, and
/// `ARI = (index - expected) / (max - expected)`.
///
/// Identical partitions (up to renaming) always give exactly 1.0, including
/// the degenerate cases where the formula is 0/0 (everything in one cluster
/// in both, or every item alone in both). When `max == expected` and the
/// partitions differ, the result is 0.0. Fewer than two items give 1.0 (all
/// partitions of them are the same).
///
/// # Panics
/// If the two labelings have different lengths: that is a programming error,
/// not a data condition.
pub fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "adjusted_rand_index: labelings of different lengths"
    );
    let n = a.len();
    if n < 2 {
        return 1.0;
    }
    let (ka, ca) = compact(a);
    let (kb, cb) = compact(b);
    let mut cells: HashMap<(usize, usize), u64> = HashMap::new();
    let mut row = vec![0u64; ka];
    let mut col = vec![0u64; kb];
    for (&i, &j) in ca.iter().zip(&cb) {
        *cells.entry((i, j)).or_insert(0) += 1;
        row[i] += 1;
        col[j] += 1;
    }
    // Every row and column of the table has at least one nonzero cell, so
    // exactly `ka == kb` cells means each cluster of `a` is one cluster of `b`.
    if cells.len() == ka && ka == kb {
        return 1.0;
    }
    let index: f64 = cells.values().map(|&x| pairs(x)).sum();
    let sum_a: f64 = row.iter().map(|&x| pairs(x)).sum();
    let sum_b: f64 = col.iter().map(|&x| pairs(x)).sum();
    let expected = sum_a * sum_b / pairs(n as u64);
    let max = 0.5 * (sum_a + sum_b);
    let denom = max - expected;
    if denom.abs() <= 1e-12 * max.max(1.0) {
        return 0.0;
    }
    (index - expected) / denom
}

/// `C(x, 2)`, the number of unordered pairs among `x` items.
fn pairs(x: u64) -> f64 {
    let x = x as f64;
    0.5 * x * (x - 1.0)
}

/// Labels renamed to `0..k` in order of first appearance; returns `k` too.
fn compact(labels: &[usize]) -> (usize, Vec<usize>) {
    let mut names: HashMap<usize, usize> = HashMap::new();
    let out = labels
        .iter()
        .map(|&l| {
            let next = names.len();
            *names.entry(l).or_insert(next)
        })
        .collect();
    (names.len(), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn identical_partitions_with_renamed_labels_score_one() {
        let a = [0, 0, 1, 1, 2, 2, 2];
        let b = [5, 5, 3, 3, 9, 9, 9];
        assert_eq!(adjusted_rand_index(&a, &b), 1.0);
    }

    #[test]
    fn degenerate_partitions() {
        // Both "all in one" and both "all alone": 0/0 by the formula, but the
        // partitions are identical, so 1.
        assert_eq!(adjusted_rand_index(&[0; 5], &[7; 5]), 1.0);
        assert_eq!(adjusted_rand_index(&[0, 1, 2, 3], &[3, 2, 1, 0]), 1.0);
        // One cluster against singletons: index 0, sum_a = C(4) = 6, sum_b = 0,
        // expected 0, max 3, so ARI = 0 / 3 = 0.
        assert_eq!(adjusted_rand_index(&[0; 4], &[0, 1, 2, 3]), 0.0);
        assert_eq!(adjusted_rand_index(&[], &[]), 1.0);
    }

    #[test]
    fn textbook_value() {
        // a = [0,0,0,1,1,1], b = [0,0,1,1,2,2]. Contingency table:
        //   a=0: b0 = 2, b1 = 1        a=1: b1 = 1, b2 = 2
        // index    = C(2)+C(1)+C(1)+C(2) = 1+0+0+1 = 2
        // sum_a    = C(3)+C(3) = 6;  sum_b = C(2)*3 = 3;  C(6) = 15
        // expected = 6*3/15 = 1.2;   max = (6+3)/2 = 4.5
        // ARI      = (2-1.2)/(4.5-1.2) = 0.8/3.3 = 8/33 = 0.242424...
        let a = [0, 0, 0, 1, 1, 1];
        let b = [0, 0, 1, 1, 2, 2];
        let ari = adjusted_rand_index(&a, &b);
        assert!((ari - 8.0 / 33.0).abs() < 1e-12, "ari {ari}");
        assert!((adjusted_rand_index(&b, &a) - ari).abs() < 1e-15);
    }

    #[test]
    fn worse_than_chance_is_negative() {
        // a = [0,0,1,1], b = [0,1,0,1]: no pair together in both, index 0;
        // sum_a = sum_b = 2, C(4) = 6, expected = 4/6, max = 2,
        // ARI = (0 - 2/3) / (2 - 2/3) = -0.5.
        let ari = adjusted_rand_index(&[0, 0, 1, 1], &[0, 1, 0, 1]);
        assert!((ari + 0.5).abs() < 1e-12, "ari {ari}");
    }

    #[test]
    fn independent_random_labelings_score_about_zero() {
        let mut rng = Rng::new(11);
        let a: Vec<usize> = (0..1000).map(|_| rng.below(4) as usize).collect();
        let b: Vec<usize> = (0..1000).map(|_| rng.below(5) as usize).collect();
        let ari = adjusted_rand_index(&a, &b);
        assert!(ari.abs() < 0.05, "ari {ari}");
        // The same labels with a few changed still score high but below 1.
        let mut c = a.clone();
        for x in c.iter_mut().take(50) {
            *x = (*x + 1) % 4;
        }
        let close = adjusted_rand_index(&a, &c);
        assert!(close > 0.8 && close < 1.0, "close {close}");
    }

    #[test]
    #[should_panic(expected = "different lengths")]
    fn length_mismatch_panics() {
        adjusted_rand_index(&[0, 1], &[0]);
    }
}

//! Linear probe: how much class information the embeddings carry.
//!
//! Agreement alone can be reached by collapse, so a trained GLOM is also
//! asked whether its embeddings (e.g. the top level, averaged over the
//! image) still tell the classes apart. The standard test is a linear probe:
//! a softmax regression trained on frozen features. It is convex, so its
//! accuracy measures the features rather than the probe's training luck.

use super::row_count;
use crate::rng::Rng;

/// Training settings for [`LinearProbe::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Gradient step for unit-scale, uncorrelated features; capped at `1/L`
    /// (see [`LinearProbe::train`]) so correlated features cannot diverge.
    pub learning_rate: f64,
    /// L2 penalty `l2/2 |W|^2` on the weights (not the biases).
    pub l2: f64,
    /// Seed for the minibatch order and the curvature estimate.
    pub seed: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            epochs: 200,
            learning_rate: 0.5,
            l2: 1e-4,
            seed: 0,
        }
    }
}

/// Minibatch size; a training set this small is trained full-batch.
const BATCH: usize = 256;

/// Multinomial logistic regression on standardised features.
///
/// The per-feature mean and standard deviation are computed on the training
/// set and stored, so test features are transformed exactly like training
/// ones. Deterministic for a given seed.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbe {
    dim: usize,
    num_classes: usize,
    mean: Vec<f64>,
    /// `1 / std` per feature (1 for a constant feature).
    inv_std: Vec<f64>,
    /// Row-major `num_classes x dim`.
    weights: Vec<f64>,
    bias: Vec<f64>,
}

impl LinearProbe {
    /// Train on `n` rows of `dim` features with labels in `0..num_classes`.
    ///
    /// Minibatch gradient descent on the mean cross-entropy plus the L2
    /// penalty, batches of up to 256 rows in an order shuffled by the seed
    /// each epoch. The step is `min(learning_rate, 1/L)` where
    /// `L = lambda_max(E[x x^T]) / 2 + l2` bounds the curvature (the softmax
    /// Hessian is at most 1/2 per logit direction; `x` is a standardised row
    /// with a 1 appended for the bias). Standardised but strongly correlated
    /// features (as in a nearly collapsed embedding) have `lambda_max` up to
    /// `dim`, where a fixed step would oscillate or diverge.
    ///
    /// # Panics
    /// On an empty training set, a label count that differs from the row
    /// count, `num_classes == 0` or a label out of range.
    pub fn train(
        features: &[f32],
        dim: usize,
        labels: &[u32],
        num_classes: usize,
        opts: &ProbeOptions,
    ) -> LinearProbe {
        let n = row_count(features, dim);
        assert!(n > 0, "linear probe: empty training set");
        assert_eq!(n, labels.len(), "linear probe: one label per row");
        assert!(num_classes > 0, "linear probe: no classes");
        assert!(
            labels.iter().all(|&l| (l as usize) < num_classes),
            "linear probe: label out of range"
        );
        let (mean, inv_std) = standardisation(features, dim);
        let mut probe = LinearProbe {
            dim,
            num_classes,
            mean,
            inv_std,
            weights: vec![0.0; num_classes * dim],
            bias: vec![0.0; num_classes],
        };
        let x = probe.standardise(features);
        let mut rng = Rng::new(opts.seed);
        let lipschitz = 0.5 * top_second_moment(&x, dim, &mut rng) + opts.l2;
        let step = opts.learning_rate.min(1.0 / lipschitz);
        let mut order: Vec<usize> = (0..n).collect();
        let mut grad_w = vec![0f64; num_classes * dim];
        let mut grad_b = vec![0f64; num_classes];
        let mut p = vec![0f64; num_classes];
        for _epoch in 0..opts.epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(BATCH) {
                grad_w.iter_mut().for_each(|g| *g = 0.0);
                grad_b.iter_mut().for_each(|g| *g = 0.0);
                for &r in batch {
                    let xr = &x[r * dim..(r + 1) * dim];
                    probe.logits_into(xr, &mut p);
                    softmax(&mut p);
                    p[labels[r] as usize] -= 1.0;
                    for (c, &pc) in p.iter().enumerate() {
                        let g = &mut grad_w[c * dim..(c + 1) * dim];
                        g.iter_mut().zip(xr).for_each(|(g, &v)| *g += pc * v);
                        grad_b[c] += pc;
                    }
                }
                let inv = 1.0 / batch.len() as f64;
                for (w, &g) in probe.weights.iter_mut().zip(&grad_w) {
                    *w -= step * (g * inv + opts.l2 * *w);
                }
                for (b, &g) in probe.bias.iter_mut().zip(&grad_b) {
                    *b -= step * g * inv;
                }
            }
        }
        probe
    }

    /// The most probable class of each row (ties: the smaller class).
    pub fn predict(&self, features: &[f32]) -> Vec<u32> {
        let x = self.standardise(features);
        let mut logits = vec![0f64; self.num_classes];
        x.chunks_exact(self.dim)
            .map(|row| {
                self.logits_into(row, &mut logits);
                let mut best = 0;
                for (c, &v) in logits.iter().enumerate() {
                    if v > logits[best] {
                        best = c;
                    }
                }
                best as u32
            })
            .collect()
    }

    /// Fraction of rows whose predicted class is the label (0 for no rows).
    pub fn accuracy(&self, features: &[f32], labels: &[u32]) -> f64 {
        let predicted = self.predict(features);
        assert_eq!(
            predicted.len(),
            labels.len(),
            "linear probe: one label per row"
        );
        if labels.is_empty() {
            return 0.0;
        }
        let hits = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
        hits as f64 / labels.len() as f64
    }

    /// Feature dimension the probe was trained on.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn standardise(&self, features: &[f32]) -> Vec<f64> {
        row_count(features, self.dim);
        features
            .chunks_exact(self.dim)
            .flat_map(|row| {
                row.iter()
                    .zip(self.mean.iter().zip(&self.inv_std))
                    .map(|(&v, (&m, &s))| (f64::from(v) - m) * s)
            })
            .collect()
    }

    fn logits_into(&self, x: &[f64], out: &mut [f64]) {
        for (c, o) in out.iter_mut().enumerate() {
            let w = &self.weights[c * self.dim..(c + 1) * self.dim];
            *o = self.bias[c] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
        }
    }
}

/// Convenience: the first `train_fraction` of the rows (rounded, at least one
/// and, when there are two or more rows, leaving at least one) train the
/// probe, the rest test it; returns the test accuracy. Shuffle the rows
/// first if their order is not random.
pub fn probe_accuracy(
    features: &[f32],
    dim: usize,
    labels: &[u32],
    num_classes: usize,
    train_fraction: f64,
    opts: &ProbeOptions,
) -> f64 {
    let n = row_count(features, dim);
    assert_eq!(n, labels.len(), "linear probe: one label per row");
    assert!(n >= 2, "linear probe: need rows to train and to test");
    let n_train = ((train_fraction * n as f64).round() as usize).clamp(1, n - 1);
    let split = n_train * dim;
    let probe = LinearProbe::train(
        &features[..split],
        dim,
        &labels[..n_train],
        num_classes,
        opts,
    );
    probe.accuracy(&features[split..], &labels[n_train..])
}

/// Per-feature mean and `1 / std` (population); a constant feature gets
/// scale 1, so it standardises to 0 instead of dividing by zero.
fn standardisation(features: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (features.len() / dim) as f64;
    let mut mean = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m += f64::from(v));
    }
    mean.iter_mut().for_each(|m| *m /= n);
    // Two passes, so a constant feature has exactly zero variance.
    let mut var = vec![0f64; dim];
    for row in features.chunks_exact(dim) {
        for ((q, &m), &v) in var.iter_mut().zip(&mean).zip(row) {
            *q += (f64::from(v) - m).powi(2);
        }
    }
    let inv_std = var
        .iter()
        .zip(&mean)
        .map(|(&q, &m)| {
            let std = (q / n).sqrt();
            if std > 1e-12 * m.abs().max(1.0) {
                1.0 / std
            } else {
                1.0
            }
        })
        .collect();
    (mean, inv_std)
}

/// Largest eigenvalue of `E[x x^T]` for rows `x` with a 1 appended, by power
/// iteration from a seeded random start (60 iterations; it converges from
/// below, so the result is padded by 10%).
fn top_second_moment(x: &[f64], dim: usize, rng: &mut Rng) -> f64 {
    let n = (x.len() / dim) as f64;
    let mut v: Vec<f64> = (0..=dim).map(|_| rng.normal()).collect();
    let mut lambda = 1.0;
    for _ in 0..60 {
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        v.iter_mut().for_each(|a| *a /= norm);
        let mut next = vec![0f64; dim + 1];
        for row in x.chunks_exact(dim) {
            let proj = v[dim] + row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
            next.iter_mut().zip(row).for_each(|(o, &r)| *o += proj * r);
            next[dim] += proj;
        }
        next.iter_mut().for_each(|a| *a /= n);
        lambda = next.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        v = next;
    }
    1.1 * lambda.max(1e-12)
}

/// In-place softmax, shifted by the maximum for stability.
fn softmax(z: &mut [f64]) {
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    z.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    z.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rows: class `c` (uniform over 3) at `4 e_c` in `dim` 4, plus
    /// N(0, 0.5^2) noise in every dimension.
    fn three_blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = Rng::new(seed);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let c = rng.below(3) as usize;
            for d in 0..4 {
                let centre = if d == c { 4.0 } else { 0.0 };
                x.push((centre + 0.5 * rng.normal()) as f32);
            }
            y.push(c as u32);
        }
        (x, y)
    }

    #[test]
    fn separable_classes_are_learned() {
        // Centres are 4 sqrt(2) = 5.66 apart, so the midway boundary is 2.83
        // away, 5.7 noise standard deviations: essentially no Bayes error.
        let (x, y) = three_blobs(300, 1);
        let acc = probe_accuracy(&x, 4, &y, 3, 0.7, &ProbeOptions::default());
        assert!(acc > 0.95, "accuracy {acc}");
    }

    #[test]
    fn same_seed_same_probe() {
        let (x, y) = three_blobs(400, 2);
        let opts = ProbeOptions {
            epochs: 20,
            seed: 9,
            ..ProbeOptions::default()
        };
        let a = LinearProbe::train(&x, 4, &y, 3, &opts);
        let b = LinearProbe::train(&x, 4, &y, 3, &opts);
        assert_eq!(a, b);
        assert_eq!(a.predict(&x), b.predict(&x));
        assert_eq!((a.dim(), a.num_classes()), (4, 3));
    }

    #[test]
    fn random_labels_give_chance_accuracy() {
        // Labels independent of the features: test accuracy ~ 1/4, with a
        // standard error of sqrt(0.25 * 0.75 / 500) = 0.019 on 500 test rows.
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..1000 * 8).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..1000).map(|_| rng.below(4) as u32).collect();
        let acc = probe_accuracy(&x, 8, &y, 4, 0.5, &ProbeOptions::default());
        assert!((acc - 0.25).abs() < 0.08, "accuracy {acc}");
    }

    #[test]
    fn scale_and_constant_features_do_not_matter() {
        // Standardisation makes a feature in thousands and a constant one
        // harmless: the blobs stay as separable as before.
        let (x, y) = three_blobs(300, 4);
        let wide: Vec<f32> = x
            .chunks_exact(4)
            .flat_map(|r| [r[0] * 1000.0, r[1], r[2], r[3], 7.0])
            .collect();
        let acc = probe_accuracy(&wide, 5, &y, 3, 0.7, &ProbeOptions::default());
        assert!(acc > 0.95, "accuracy {acc}");
    }

    #[test]
    fn curvature_of_perfectly_correlated_features() {
        // 16 standardised copies of one +-1 feature: E[x x^T] on the features
        // is the all-ones 16 x 16 matrix (eigenvalue 16), and the appended
        // bias coordinate is uncorrelated with them (eigenvalue 1). The
        // estimate is 16 padded by 10%: 17.6.
        let x: Vec<f64> = (0..100)
            .flat_map(|i| [if i % 2 == 0 { 1.0 } else { -1.0 }; 16])
            .collect();
        let lambda = top_second_moment(&x, 16, &mut Rng::new(0));
        assert!((lambda - 17.6).abs() < 1e-6, "{lambda}");
        // Such features are still learned with the capped step.
        let mut rng = Rng::new(5);
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..400 {
            let s = rng.normal();
            feats.extend((0..16).map(|_| (s + 0.01 * rng.normal()) as f32));
            labels.push(u32::from(s > 0.0));
        }
        let acc = probe_accuracy(&feats, 16, &labels, 2, 0.5, &ProbeOptions::default());
        assert!(acc > 0.95, "accuracy {acc}");
    }
}

//! The students' loss terms other than distillation, on plain tensors.
//!
//! Positive-only distillation toward the consensus has a trivial solution:
//! every location and every image the same vector (paper section 7). The
//! terms here are what can be added to keep representations that should
//! differ apart. Every one reads one-step predictions (in local learning,
//! the default, no gradient flows through settling) and takes its
//! statistics over the images of the batch
//! at each location separately, never across locations: so the locations of
//! one image stay free to agree (islands can form), and each location's
//! term is its own, the same bits whatever the tiling.
//!
//! Inputs are `[P, B, d]` (locations, images, dimensions); every term
//! returns one value per location, `[P]` ([`cosine`] and [`hinge`], which
//! the awake and the sleep negatives share, one per vector pair).

use candle_core::{Tensor, D};
use glom_protocol::config::VarianceForm;

use crate::error::Result;

/// Added to a variance before its log or square root.
pub const VARIANCE_EPS: f64 = 1e-4;

/// `x` minus its mean over the images of the batch (axis 1).
fn centred(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_sub(&x.mean_keepdim(1)?)?)
}

/// Variance term: per location, the mean over dimensions k of
/// `-log(Var_b(x_k) + eps)` (`Log`: the barrier of Halvagal & Zenke 2023,
/// "latent predictive learning") or `relu(target - sqrt(Var_b(x_k) + eps))`
/// (`Hinge`: VICReg's variance term, Bardes et al. 2022, taken per
/// location). `Var_b` is the unbiased variance over the batch; a batch of
/// one gives zeros.
///
/// On the CPU this is one fused kernel with its backward in closed form
/// (`stats.rs`); elsewhere candle's operations.
pub fn variance(x: &Tensor, form: VarianceForm, target: f64) -> Result<Tensor> {
    let (p, b, _) = x.dims3()?;
    if b < 2 {
        return Ok(Tensor::zeros(p, x.dtype(), x.device())?);
    }
    if let Some(v) = super::stats::batch_stat(x, super::stats::Stat::Variance(form, target))? {
        return Ok(v);
    }
    variance_ops(x, form, target)
}

/// [`variance`] as candle operations (for `b >= 2`).
pub(crate) fn variance_ops(x: &Tensor, form: VarianceForm, target: f64) -> Result<Tensor> {
    let (_, b, _) = x.dims3()?;
    let var = ((centred(x)?.sqr()?.sum(1)? / (b - 1) as f64)? + VARIANCE_EPS)?; // [P, d]
    Ok(match form {
        VarianceForm::Log => var.log()?.mean(1)?.neg()?,
        VarianceForm::Hinge => var.sqrt()?.neg()?.affine(1.0, target)?.relu()?.mean(1)?,
    })
}

/// Per location `[P]`: the variance term and the decorrelation term, each
/// `None` when not asked for.
pub(crate) type BatchTerms = (Option<Tensor>, Option<Tensor>);

/// The variance term (if `variance` gives its form and target) and the
/// decorrelation term (if `covariance`) of every prediction in `preds`
/// (each `[P, B, d]`), each summed per location over the predictions in
/// their order: `([P], [P])`, `None` for a term not asked for.
///
/// On the CPU each prediction takes one kernel pass for both terms, and
/// its gradient from both comes back as one tensor; elsewhere the
/// predictions are stacked and go through [`variance`] and [`covariance`].
pub(crate) fn variance_and_covariance(
    preds: &[Tensor],
    variance: Option<(VarianceForm, f64)>,
    covariance: bool,
) -> Result<BatchTerms> {
    use super::stats::Stat;
    let mut stats = Vec::new();
    if let Some((form, target)) = variance {
        stats.push(Stat::Variance(form, target));
    }
    if covariance {
        stats.push(Stat::Covariance);
    }
    if stats.is_empty() || preds.is_empty() {
        return Ok((None, None));
    }
    let mut sums: Vec<Option<Tensor>> = vec![None; stats.len()];
    for pred in preds {
        let Some(both) = super::stats::batch_stats(pred, &stats)? else {
            return stacked(preds, variance, covariance);
        };
        for (t, sum) in sums.iter_mut().enumerate() {
            let term = both.narrow(1, t, 1)?.squeeze(1)?;
            *sum = Some(match sum.take() {
                None => term,
                Some(s) => (s + term)?,
            });
        }
    }
    let mut sums = sums.into_iter().flatten();
    let v = variance.and_then(|_| sums.next());
    let c = if covariance { sums.next() } else { None };
    Ok((v, c))
}

/// [`variance_and_covariance`] over the stacked predictions.
fn stacked(
    preds: &[Tensor],
    variance: Option<(VarianceForm, f64)>,
    covariance: bool,
) -> Result<BatchTerms> {
    let all = Tensor::cat(preds, 0)?;
    variance_and_covariance_of_stack(&all, preds.len(), variance, covariance)
}

/// [`variance_and_covariance`] of `n` predictions already stacked into
/// `all [n P, B, d]`, one term at a time over the stack. InfoNCE reads
/// the same stack: with it on, the three terms' gradients meet in the
/// stack's gradient, in the order they always have.
pub(crate) fn variance_and_covariance_of_stack(
    all: &Tensor,
    n: usize,
    variance: Option<(VarianceForm, f64)>,
    covariance: bool,
) -> Result<BatchTerms> {
    let p = all.dim(0)? / n.max(1);
    let per_location = |x: Tensor| -> Result<Tensor> { Ok(x.reshape((n, p))?.sum(0)?) };
    let v = match variance {
        Some((form, target)) => Some(per_location(self::variance(all, form, target)?)?),
        None => None,
    };
    let c = match covariance {
        true => Some(per_location(self::covariance(all)?)?),
        false => None,
    };
    Ok((v, c))
}

/// Decorrelation term (VICReg's covariance term, per location): the mean
/// over pairs of different dimensions `k != k'` of `Cov_b(x_k, x_k')^2`,
/// with the unbiased covariance over the batch.
///
/// On the CPU this is one fused kernel with its backward in closed form
/// (`stats.rs`); elsewhere candle's operations.
pub fn covariance(x: &Tensor) -> Result<Tensor> {
    let (p, b, d) = x.dims3()?;
    if b < 2 || d < 2 {
        return Ok(Tensor::zeros(p, x.dtype(), x.device())?);
    }
    if let Some(v) = super::stats::batch_stat(x, super::stats::Stat::Covariance)? {
        return Ok(v);
    }
    covariance_ops(x)
}

/// [`covariance`] as candle operations (for `b >= 2`, `d >= 2`).
pub(crate) fn covariance_ops(x: &Tensor) -> Result<Tensor> {
    let (_, b, d) = x.dims3()?;
    let c = centred(x)?;
    let ct = c.transpose(1, 2)?.contiguous()?;
    let cov = (ct.matmul(&c)? / (b - 1) as f64)?; // [P, d, d]
    let all = cov.sqr()?.sum(2)?.sum(1)?;
    let diag = (c.sqr()?.sum(1)? / (b - 1) as f64)?.sqr()?.sum(1)?;
    Ok(((all - diag)? / (d * (d - 1)) as f64)?)
}

/// InfoNCE (van den Oord et al. 2018) at each location: image b's
/// prediction must pick its own positive among the positives of every
/// image of the batch at the same location, by cosine similarity divided
/// by `temperature`. The negatives are other images at the same location
/// only, so a per-location net cannot win by encoding its position. Sum of
/// the cross-entropies over the images, `[P]`.
pub fn info_nce(pred: &Tensor, positive: &Tensor, temperature: f64) -> Result<Tensor> {
    info_nce_with(pred, positive, None, temperature)
}

/// `x` scaled to unit length over the last axis.
pub fn unit(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// [`info_nce`] with more negatives for each prediction: `extra` is
/// `(cos, mask)`, `cos` `[P, B, G]` the cosine similarity of image b's
/// prediction at each location to its G own further negatives (in a video,
/// the same location of the same sequence at nearby frames, paper section
/// 12.2), `mask` `[P, 1, G]` added to their logits (0 for a negative, a
/// large negative number for an empty slot). Each image's softmax runs over
/// the B positives of the batch and its G further negatives.
pub fn info_nce_with(
    pred: &Tensor,
    positive: &Tensor,
    extra: Option<(&Tensor, &Tensor)>,
    temperature: f64,
) -> Result<Tensor> {
    let (p, b, _) = pred.dims3()?;
    if b < 2 && extra.is_none() {
        return Ok(Tensor::zeros(p, pred.dtype(), pred.device())?);
    }
    let q = unit(pred)?;
    let k = unit(positive)?.transpose(1, 2)?.contiguous()?;
    let mut logits = (q.matmul(&k)? / temperature)?; // [P, B, B]
    if let Some((cos, mask)) = extra {
        let more = (cos / temperature)?.broadcast_add(mask)?; // [P, B, G]
        logits = Tensor::cat(&[&logits, &more], 2)?;
    }
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?.narrow(2, 0, b)?;
    let eye = Tensor::eye(b, pred.dtype(), pred.device())?;
    Ok(logp.broadcast_mul(&eye)?.sum(2)?.sum(1)?.neg()?)
}

/// Cosine similarity over the last axis (with the engine's epsilon), with
/// broadcasting between `a` and `b`.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = a.broadcast_mul(b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok(dot.broadcast_div(&(na.broadcast_mul(&nb)? + 1e-6)?)?)
}

/// The hinge of the negative terms (awake and asleep), elementwise over
/// all but the last axis:
/// `relu(cos(pred, neg) - margin)`. Zero, with zero gradient, for pairs
/// already separated beyond the margin (paper section 7, footnote 24:
/// maintain separation rather than maximise distance).
pub fn hinge(pred: &Tensor, neg: &Tensor, margin: f64) -> Result<Tensor> {
    Ok((cosine(pred, neg)? - margin)?.relu()?)
}

/// Awake hinge on the cosine similarity between each prediction and the
/// consensus of an unrelated context (another image: the batch shifted by
/// one, at the same location, so the pairing does not depend on the
/// tiling), penalising only similarity above `margin` ([`hinge`]). Sum over
/// images, `[P]`.
pub fn hinge_negative(pred: &Tensor, consensus: &Tensor, margin: f64) -> Result<Tensor> {
    let (p, b, _) = pred.dims3()?;
    if b < 2 {
        return Ok(Tensor::zeros(p, pred.dtype(), pred.device())?);
    }
    let other = Tensor::cat(
        &[&consensus.narrow(1, 1, b - 1)?, &consensus.narrow(1, 0, 1)?],
        1,
    )?;
    Ok(hinge(pred, &other, margin)?.sum(1)?)
}

/// Sum of `[P, B, d]` over everything but the location axis: `[P]`.
pub fn per_location_sum(x: &Tensor) -> Result<Tensor> {
    Ok(x.sum(2)?.sum(1)?)
}

/// `sum_{b,k} (pred - target)^2` of `[P, B, d]` tensors, per location
/// `[P]`: a student's distillation error (DESIGN.md section 2). One fused
/// op with its backward on the CPU (`sqerr.rs`), candle's operations
/// elsewhere; the two round differently.
pub fn squared_error(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if let Some(v) = super::sqerr::squared_error(pred, target)? {
        return Ok(v);
    }
    per_location_sum(&(pred - target)?.sqr()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(v: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn values(x: Tensor) -> Vec<f32> {
        x.to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    /// Value bits and the gradient bits of `sum(v * 2 + c * 10)` into
    /// every prediction, through `f`.
    fn terms_and_grads(
        preds: &[candle_core::Var],
        f: &dyn Fn(&[Tensor]) -> BatchTerms,
    ) -> Vec<Vec<u32>> {
        let ts: Vec<Tensor> = preds.iter().map(|v| v.as_tensor().clone()).collect();
        let (v, c) = f(&ts);
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        let mut out = Vec::new();
        for (term, w) in [(v, 2.0), (c, 10.0)] {
            if let Some(term) = term {
                out.push(values(term.clone()).iter().map(|x| x.to_bits()).collect());
                loss = (loss + (term * w).unwrap().sum_all().unwrap()).unwrap();
            }
        }
        let grads = loss.backward().unwrap();
        for p in preds {
            let g = grads.get(p).unwrap().flatten_all().unwrap();
            out.push(values(g).iter().map(|x| x.to_bits()).collect());
        }
        out
    }

    #[test]
    fn both_batch_terms_in_one_pass_match_the_stacked_terms_to_the_bit() {
        let preds: Vec<candle_core::Var> = (0..5)
            .map(|i| {
                // Deterministic values, a different spread per prediction.
                let v: Vec<f32> = (0..6 * 9 * 7)
                    .map(|j| ((j * 7919 + i * 104_729) as f32 * 0.618).sin() * (1.0 + i as f32))
                    .collect();
                candle_core::Var::from_tensor(&t(&v, (6, 9, 7))).unwrap()
            })
            .collect();
        for (variance, covariance) in [
            (Some((VarianceForm::Log, 1.0)), true),
            (Some((VarianceForm::Hinge, 1.5)), true),
            (Some((VarianceForm::Log, 1.0)), false),
            (None, true),
        ] {
            let one_pass = terms_and_grads(&preds, &|p| {
                variance_and_covariance(p, variance, covariance).unwrap()
            });
            let stack = terms_and_grads(&preds, &|p| stacked(p, variance, covariance).unwrap());
            assert_eq!(one_pass.len(), stack.len());
            for (a, b) in one_pass.iter().zip(&stack) {
                assert_eq!(a, b, "{variance:?} {covariance}");
            }
        }
        assert!(matches!(
            variance_and_covariance(&[], Some((VarianceForm::Log, 1.0)), true),
            Ok((None, None))
        ));
    }

    #[test]
    fn variance_is_per_location_and_punishes_a_constant_batch() {
        // Location 0: images (0, 0) and (2, 4): variances 2 and 8.
        // Location 1: the same vector in both images: variance 0.
        let x = t(&[0., 0., 2., 4., 1., 1., 1., 1.], (2, 2, 2));
        let log = values(variance(&x, VarianceForm::Log, 1.0).unwrap());
        let want0 = -((2.0f64 + 1e-4).ln() + (8.0f64 + 1e-4).ln()) / 2.0;
        assert!((f64::from(log[0]) - want0).abs() < 1e-5, "{log:?}");
        assert!((f64::from(log[1]) + 1e-4f64.ln()).abs() < 1e-4, "{log:?}");
        let hinge = values(variance(&x, VarianceForm::Hinge, 2.0).unwrap());
        // sqrt(2) < 2 pushes, sqrt(8) > 2 does not.
        let want0 = (2.0 - (2.0f64 + 1e-4).sqrt()) / 2.0;
        assert!((f64::from(hinge[0]) - want0).abs() < 1e-5, "{hinge:?}");
        assert!(
            (f64::from(hinge[1]) - (2.0 - 1e-2)).abs() < 1e-5,
            "{hinge:?}"
        );
    }

    #[test]
    fn covariance_sees_correlated_dimensions_only() {
        // Location 0: dims equal (perfectly correlated), covariance 0.5 each way.
        // Location 1: dims uncorrelated over the batch.
        let x = t(&[0., 0., 1., 1., 0., 0., 1., 0., 0., 1., 1., 1.], (2, 3, 2));
        let c = values(covariance(&x).unwrap());
        // Location 0: values (0,1,0): var 1/3, cov 1/3; mean over the 2 off
        // diagonal entries of cov^2 = 1/9.
        assert!((c[0] - 1.0 / 9.0).abs() < 1e-6, "{c:?}");
        // Location 1: dims (1,0,1) and (0,1,1): cov = -1/6, squared 1/36.
        assert!((c[1] - 1.0 / 36.0).abs() < 1e-6, "{c:?}");
    }

    #[test]
    fn info_nce_is_low_when_each_image_matches_its_own_positive() {
        let own = t(&[1., 0., 0., 1.], (1, 2, 2));
        let swapped = t(&[0., 1., 1., 0.], (1, 2, 2));
        let good = values(info_nce(&own, &own, 0.1).unwrap())[0];
        let bad = values(info_nce(&own, &swapped, 0.1).unwrap())[0];
        // Each image: -log(e^10 / (e^10 + e^0)) ~ 4.5e-5; swapped: ~10.
        assert!(good < 1e-3, "{good}");
        assert!((bad - 20.0).abs() < 1e-2, "{bad}");
    }

    #[test]
    fn further_negatives_join_the_softmax_and_empty_slots_do_not() {
        let own = t(&[1., 0., 0., 1.], (1, 2, 2));
        let base = values(info_nce(&own, &own, 0.1).unwrap())[0];
        // Slot 0: a negative as similar as the positive (cos 1); slot 1: empty.
        let cos = t(&[1., 0., 1., 0.], (1, 2, 2));
        let mask = t(&[0., -1e9], (1, 1, 2));
        let with = values(info_nce_with(&own, &own, Some((&cos, &mask)), 0.1).unwrap())[0];
        // Each image: -log(e^10 / (e^10 + e^0 + e^10)) ~ log 2.
        assert!(
            (with - base - 2.0 * 2f32.ln()).abs() < 1e-3,
            "{with} {base}"
        );
        let none = t(&[-1e9, -1e9], (1, 1, 2));
        let masked = values(info_nce_with(&own, &own, Some((&cos, &none)), 0.1).unwrap())[0];
        assert!((masked - base).abs() < 1e-6, "{masked} {base}");
        // One image: the batch has no negative, the further ones still count.
        let one = t(&[1., 0.], (1, 1, 2));
        let c1 = t(&[1., 0.], (1, 1, 2));
        let single = values(info_nce_with(&one, &one, Some((&c1, &mask)), 0.1).unwrap())[0];
        assert!((single - 2f32.ln()).abs() < 1e-3, "{single}");
    }

    #[test]
    fn batch_terms_of_a_single_image_are_zero() {
        let x = t(&[1., 2.], (1, 1, 2));
        for v in [
            variance(&x, VarianceForm::Log, 1.0).unwrap(),
            covariance(&x).unwrap(),
            info_nce(&x, &x, 0.1).unwrap(),
        ] {
            assert_eq!(values(v), vec![0.0]);
        }
    }
}

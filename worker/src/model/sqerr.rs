//! The squared error of a prediction toward its target, summed per
//! location ([`super::terms::squared_error`]), as one CPU op with its
//! backward.
//!
//! Every student's distillation term is `sum_{b,k} (pred - target)^2` at
//! each location (DESIGN.md section 2), some sixty of them in a local step
//! by default. As candle operations each was a subtraction, a square and
//! two sums, four graph nodes and, in the backward, four gradient buffers
//! filled with zeros and added into; here it is one pass forward and one
//! backward. The target takes no gradient unless it tracks one (students
//! distil toward the detached consensus).
//!
//! Each location sums its `B * d` squares in f64 into eight interleaved
//! partial sums (element i into sum i mod 8) added in order at the end, so
//! the result is the same whatever the SIMD width, the threads or the
//! tiling. Other dtypes and devices take candle's operations.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::cpu::Real as Elem;

/// `sum_{b,k} (pred - target)^2` per location, `[P]`, for `pred` and
/// `target` `[P, B, d]` on the CPU in f32 or f64; `None` elsewhere (the
/// caller takes candle's operations).
pub(crate) fn squared_error(pred: &Tensor, target: &Tensor) -> Result<Option<Tensor>> {
    let same = pred.dims() == target.dims() && pred.dtype() == target.dtype();
    if !same
        || pred.rank() != 3
        || !pred.device().is_cpu()
        || !target.device().is_cpu()
        || !matches!(pred.dtype(), DType::F32 | DType::F64)
    {
        return Ok(None);
    }
    Ok(Some(
        pred.contiguous()?
            .apply_op2(&target.contiguous()?, SquaredError)?,
    ))
}

struct SquaredError;

/// `(pred, target, g [P]) -> 2 g[p] (pred - target)`, the gradient for
/// `pred` (the target's is its negation).
struct SquaredErrorGrad;

/// Partial sums per location.
const LANES: usize = 8;

/// Locations per thread's piece of work.
const LOCATIONS_PER_PIECE: usize = 8;

#[inline(always)]
fn location_sum<T: Elem>(a: &[T], b: &[T]) -> f64 {
    let mut lanes = [0f64; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (ra, rb) in (&mut ca).zip(&mut cb) {
        for ((s, &x), &y) in lanes.iter_mut().zip(ra).zip(rb) {
            let e = x.to_f64() - y.to_f64();
            *s += e * e;
        }
    }
    for ((s, &x), &y) in lanes.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        let e = x.to_f64() - y.to_f64();
        *s += e * e;
    }
    lanes.iter().fold(0.0, |acc, &s| acc + s)
}

fn forward<T: Elem>(a: &[T], b: &[T], p: usize) -> Vec<T> {
    let plane = a.len() / p.max(1);
    super::cpu::fresh(
        p,
        LOCATIONS_PER_PIECE,
        p > 1,
        |i, o: &mut [T], _: &mut ()| {
            for (j, o) in o.iter_mut().enumerate() {
                let loc = i * LOCATIONS_PER_PIECE + j;
                let range = loc * plane..(loc + 1) * plane;
                *o = T::from_f64(location_sum(&a[range.clone()], &b[range]));
            }
        },
    )
}

fn backward<T: Elem>(a: &[T], b: &[T], g: &[T], p: usize) -> Vec<T> {
    let plane = a.len() / p.max(1);
    // An empty plane makes the piece length 0: `fresh` returns zeros.
    super::cpu::fresh(
        a.len(),
        LOCATIONS_PER_PIECE * plane,
        p > 1,
        |i, o: &mut [T], _: &mut ()| {
            for (j, o) in o.chunks_exact_mut(plane).enumerate() {
                let loc = i * LOCATIONS_PER_PIECE + j;
                let range = loc * plane..(loc + 1) * plane;
                let two_g = 2.0 * g[loc].to_f64();
                for ((o, &x), &y) in o.iter_mut().zip(&a[range.clone()]).zip(&b[range]) {
                    *o = T::from_f64(two_g * (x.to_f64() - y.to_f64()));
                }
            }
        },
    )
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    super::cpu::contiguous(data, layout, "squared error")
}

impl CustomOp2 for SquaredError {
    fn name(&self) -> &'static str {
        "glom-squared-error"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, _, _) = l1.shape().dims3()?;
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "squared error: prediction {:?} and target {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(forward(contiguous(a, l1)?, contiguous(b, l2)?, p))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(forward(contiguous(a, l1)?, contiguous(b, l2)?, p))
            }
            _ => candle_core::bail!("squared error: f32 or f64, both the same"),
        };
        Ok((out, Shape::from(p)))
    }

    fn bwd(
        &self,
        pred: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let d_pred = pred.apply_op3_no_bwd(target, &g, &SquaredErrorGrad)?;
        let d_target = if target.track_op() {
            Some(d_pred.neg()?)
        } else {
            None
        };
        Ok((Some(d_pred), d_target))
    }
}

impl candle_core::CustomOp3 for SquaredErrorGrad {
    fn name(&self) -> &'static str {
        "glom-squared-error-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, _, _) = l1.shape().dims3()?;
        if l1.shape() != l2.shape() || l3.shape().dims() != [p] {
            candle_core::bail!(
                "squared error grad: shapes {:?}, {:?} and gradient {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(g)) => {
                CpuStorage::F32(backward(
                    contiguous(a, l1)?,
                    contiguous(b, l2)?,
                    contiguous(g, l3)?,
                    p,
                ))
            }
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(g)) => {
                CpuStorage::F64(backward(
                    contiguous(a, l1)?,
                    contiguous(b, l2)?,
                    contiguous(g, l3)?,
                    p,
                ))
            }
            _ => candle_core::bail!("squared error grad: f32 or f64, all the same"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(seed: f64, dims: (usize, usize, usize), dtype: DType) -> Tensor {
        let n = dims.0 * dims.1 * dims.2;
        let v: Vec<f64> = (0..n).map(|i| ((i as f64 + seed) * 0.37).sin()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn f64s(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Value and both gradients of `sum_p w[p] * term[p]`, by the kernel or
    /// by candle's operations.
    fn run(pred: &Var, target: &Var, w: &Tensor, kernel: bool) -> [Vec<f64>; 3] {
        let (a, b) = (pred.as_tensor(), target.as_tensor());
        let term = if kernel {
            squared_error(a, b).unwrap().unwrap()
        } else {
            (a - b)
                .unwrap()
                .sqr()
                .unwrap()
                .sum(2)
                .unwrap()
                .sum(1)
                .unwrap()
        };
        let loss = (term.clone() * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        [
            f64s(&term),
            f64s(grads.get(a).unwrap()),
            f64s(grads.get(b).unwrap()),
        ]
    }

    #[test]
    fn values_and_gradients_match_candles_operations() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-4)] {
            // 7 * 3 = 21 elements per location: the partial sums' tail too.
            let dims = (5, 7, 3);
            let pred = Var::from_tensor(&ramp(0.0, dims, dtype)).unwrap();
            let target = Var::from_tensor(&ramp(11.0, dims, dtype)).unwrap();
            let w = Tensor::new(&[1.0f64, -2.0, 0.5, 3.0, 0.0], &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let ours = run(&pred, &target, &w, true);
            let theirs = run(&pred, &target, &w, false);
            for (what, (o, t)) in ["value", "d pred", "d target"]
                .iter()
                .zip(ours.iter().zip(&theirs))
            {
                assert_eq!(o.len(), t.len());
                for (x, y) in o.iter().zip(t) {
                    assert!(
                        (x - y).abs() <= tol * (1.0 + y.abs()),
                        "{dtype:?} {what}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_detached_target_gets_no_gradient_and_locations_stand_alone() {
        let dims = (6, 4, 5);
        let pred = Var::from_tensor(&ramp(1.0, dims, DType::F32)).unwrap();
        let target = ramp(2.0, dims, DType::F32);
        let term = squared_error(pred.as_tensor(), &target).unwrap().unwrap();
        let grads = term.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&target).is_none());
        assert!(grads.get(pred.as_tensor()).is_some());
        let whole = f64s(&term);
        for loc in [0, 3, 5] {
            let one = squared_error(
                &pred.as_tensor().narrow(0, loc, 1).unwrap(),
                &target.narrow(0, loc, 1).unwrap(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(
                f64s(&one)[0].to_bits(),
                whole[loc].to_bits(),
                "location {loc}"
            );
        }
    }

    #[test]
    fn other_shapes_and_dtypes_take_candles_path() {
        let a = ramp(0.0, (2, 3, 4), DType::F32);
        assert!(squared_error(&a, &ramp(0.0, (2, 3, 4), DType::F64))
            .unwrap()
            .is_none());
        assert!(squared_error(&a, &ramp(0.0, (2, 4, 3), DType::F32))
            .unwrap()
            .is_none());
        let bf = a.to_dtype(DType::BF16).unwrap();
        assert!(squared_error(&bf, &bf).unwrap().is_none());
    }
}

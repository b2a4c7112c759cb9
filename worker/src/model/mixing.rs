//! The weighted mean of a level's four contributions ([`super::mix`],
//! paper section 9.1) in one pass, for local learning.
//!
//! As candle operations the mean is eight passes over `[P, B, d]` (four
//! scalings, three sums, one division), each with a fresh buffer, at
//! every level of every iteration. Under local learning only the
//! bottom-up prediction carries a gradient into it (the others are
//! detached), so here the other three are read inside a single op on the
//! bottom-up prediction, whose backward is the chain of scalings candle's
//! backward would apply. Every element takes the same operations, in the
//! same order and with the same roundings, as the candle path (`x * c` is
//! candle's `x * c + 0` in the element type, `x / c` its `x * (1 / c) +
//! 0`), so the bits are the same (tests).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::MixWeights;

/// `Some(mix)` in one pass when the inputs allow it (CPU, f32 or f64, one
/// shape, and no gradient through `td`, `prev` or `lat`); `None` for the
/// caller to take candle's operations.
pub(super) fn fused(
    bu: &Tensor,
    td: Option<&Tensor>,
    prev: &Tensor,
    lat: &Tensor,
    w: MixWeights,
) -> Result<Option<Tensor>> {
    let others: Vec<&Tensor> = [Some(prev), Some(lat), td].into_iter().flatten().collect();
    let fits = bu.device().is_cpu()
        && matches!(bu.dtype(), DType::F32 | DType::F64)
        && others.iter().all(|t| {
            t.device().is_cpu()
                && t.dtype() == bu.dtype()
                && t.shape() == bu.shape()
                && !t.track_op()
        });
    if !fits {
        return Ok(None);
    }
    let mut den = w.bottom_up + w.previous + w.lateral;
    if td.is_some() {
        den += w.top_down;
    }
    let op = Mix {
        prev: prev.contiguous()?,
        lat: lat.contiguous()?,
        td: td.map(Tensor::contiguous).transpose()?,
        w,
        inv_den: 1.0 / den,
    };
    Ok(Some(bu.contiguous()?.apply_op1(op)?))
}

struct Mix {
    prev: Tensor,
    lat: Tensor,
    td: Option<Tensor>,
    w: MixWeights,
    /// `1 / den`, as candle's division by a scalar takes it.
    inv_den: f64,
}

/// Elements per thread's piece of work.
const CHUNK: usize = 1 << 14;

/// Runs `f` on the elements of contiguous CPU tensor `t`.
fn read<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    super::cpu::with_elements(t, "mix", f)
}

impl Mix {
    fn run<T: candle_core::WithDType + Default + Send + Sync>(&self, bu: &[T]) -> Result<Vec<T>> {
        read(&self.prev, |prev: &[T]| {
            read(&self.lat, |lat: &[T]| match &self.td {
                Some(td) => read(td, |td: &[T]| self.run_with(bu, prev, lat, Some(td))),
                None => Ok(self.run_with(bu, prev, lat, None)),
            })?
        })?
    }

    fn run_with<T: candle_core::WithDType + Default + Send + Sync>(
        &self,
        bu: &[T],
        prev: &[T],
        lat: &[T],
        td: Option<&[T]>,
    ) -> Vec<T> {
        let f = T::from_f64;
        let (wb, wp, wl, wt) = (
            f(self.w.bottom_up),
            f(self.w.previous),
            f(self.w.lateral),
            f(self.w.top_down),
        );
        let (inv, zero) = (f(self.inv_den), f(0.0));
        super::cpu::fresh(bu.len(), CHUNK, true, |i, o: &mut [T], _: &mut ()| {
            let r = i * CHUNK..i * CHUNK + o.len();
            let (bu, prev, lat) = (&bu[r.clone()], &prev[r.clone()], &lat[r.clone()]);
            let three = |b: T, p: T, l: T| ((b * wb + zero) + (p * wp + zero)) + (l * wl + zero);
            match td {
                Some(td) => {
                    let rows = o.iter_mut().zip(bu).zip(prev).zip(lat).zip(&td[r]);
                    for ((((o, &b), &p), &l), &t) in rows {
                        *o = (three(b, p, l) + (t * wt + zero)) * inv + zero;
                    }
                }
                None => {
                    for (((o, &b), &p), &l) in o.iter_mut().zip(bu).zip(prev).zip(lat) {
                        *o = three(b, p, l) * inv + zero;
                    }
                }
            }
        })
    }
}

impl CustomOp1 for Mix {
    fn name(&self) -> &'static str {
        "glom-mix"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use super::cpu::contiguous;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(contiguous(v, l, "mix")?)?),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(contiguous(v, l, "mix")?)?),
            _ => candle_core::bail!("mix: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    /// `d/d bu`: candle's backward of `(bu * wb + ...) / den`, the
    /// incoming gradient scaled by `1 / den`, then by `wb`.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .affine(self.inv_den, 0.0)?
                .affine(self.w.bottom_up, 0.0)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::bits;
    use super::*;
    use candle_core::{Device, Var};

    fn tensor(seed: u32, dtype: DType) -> Tensor {
        let v: Vec<f32> = (0..4 * 3 * 5)
            .map(|i| ((i * 37 + seed as usize * 101) as f32 * 0.73).sin() * 2.0)
            .collect();
        Tensor::from_vec(v, (4, 3, 5), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn one_pass_is_bitwise_candles_operations_and_so_is_its_gradient() {
        let w = MixWeights {
            bottom_up: 0.3,
            top_down: 0.7,
            previous: 1.1,
            lateral: 0.45,
        };
        for dtype in [DType::F32, DType::F64] {
            let bu = Var::from_tensor(&tensor(1, dtype)).unwrap();
            let (td, prev, lat) = (tensor(2, dtype), tensor(3, dtype), tensor(4, dtype));
            let r = tensor(5, dtype);
            for td in [Some(&td), None] {
                let one = fused(bu.as_tensor(), td, &prev, &lat, w).unwrap().unwrap();
                let ops = super::super::mix_ops(bu.as_tensor(), td, &prev, &lat, w).unwrap();
                assert_eq!(bits(&one), bits(&ops), "{dtype:?} value");
                let g1 = (&one * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&ops * &r).unwrap().sum_all().unwrap().backward().unwrap();
                assert_eq!(
                    bits(g1.get(&bu).unwrap()),
                    bits(g2.get(&bu).unwrap()),
                    "{dtype:?} gradient"
                );
            }
        }
    }

    #[test]
    fn a_gradient_through_another_contribution_takes_candles_path() {
        let w = MixWeights {
            bottom_up: 1.0,
            top_down: 1.0,
            previous: 1.0,
            lateral: 1.0,
        };
        let bu = tensor(1, DType::F32);
        let prev = Var::from_tensor(&tensor(2, DType::F32)).unwrap();
        let lat = tensor(3, DType::F32);
        assert!(fused(&bu, None, prev.as_tensor(), &lat, w)
            .unwrap()
            .is_none());
        assert!(fused(&bu, None, &prev.as_tensor().detach(), &lat, w)
            .unwrap()
            .is_some());
    }
}

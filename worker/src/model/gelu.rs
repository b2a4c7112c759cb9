//! GELU (tanh form; Hendrycks & Gimpel 2016) with a fused backward pass.
//!
//! candle's `Tensor::gelu` computes the forward in one pass, but its
//! gradient as a dozen separate tensor operations (two `powf`, a `tanh`,
//! several affine and binary maps), each a full pass over the hidden layer
//! with a freshly allocated buffer; in a training step of per-location nets
//! that was a large share of the time (`docs/experiments/performance.md`).
//! This op computes the same forward and, in one pass, the same gradient:
//! every element goes through exactly the floating-point operations, in
//! the same order and with the same constants, that candle's version
//! applies one tensor at a time, so results are bitwise those of
//! `Tensor::gelu` (tested) and trained numbers do not change.
//!
//! Other dtypes and devices fall back to candle's `gelu`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// `gelu(x)` with the fused backward; `x` any shape.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// The forward op (its backward is [`GeluGrad`]).
struct Gelu;

/// `grad * gelu'(x)`: the op of the backward pass, on `(x, grad)`.
struct GeluGrad;

#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI_F32: f32 = 0.79788456080286535587989211986876373;
#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI_F64: f64 = 0.79788456080286535587989211986876373;

/// The element-wise arithmetic, for f32 and f64, written as candle writes
/// it (forward: `UnaryOpT for Gelu`; backward: the tensor expression of
/// `backprop.rs` for `UnaryOp::Gelu`, each tensor-scalar operation being an
/// affine map `v * mul + add`).
macro_rules! gelu_fns {
    ($fwd:ident, $bwd:ident, $t:ty, $sqrt:expr) => {
        #[inline(always)]
        fn $fwd(v: $t) -> $t {
            0.5 * v * (1.0 + <$t>::tanh($sqrt * v * (1.0 + 0.044715 * v * v)))
        }

        #[inline(always)]
        fn $bwd(x: $t, grad: $t) -> $t {
            let affine = |v: $t, mul: f64, add: f64| v * (mul as $t) + (add as $t);
            // candle's exponents are run-time values, so it calls the
            // library's `powf`; a constant exponent would let the compiler
            // turn `powf(t, 2)` into `t * t`, which rounds differently.
            let (three, two) = std::hint::black_box((3.0, 2.0));
            let cube = x.powf(three);
            let tanh = (affine(cube, 0.0356774, 0.0) + affine(x, 0.797885, 0.0)).tanh();
            let left = affine(tanh, 0.5, 0.0);
            let poly = affine(cube, 0.0535161, 0.0) + affine(x, 0.398942, 0.0);
            let one_minus = affine(tanh.powf(two), -1.0, 1.0);
            let d = affine(left + poly * one_minus, 1.0, 0.5);
            grad * d
        }
    };
}
gelu_fns!(fwd_f32, bwd_f32, f32, SQRT_TWO_OVER_PI_F32);
gelu_fns!(fwd_f64, bwd_f64, f64, SQRT_TWO_OVER_PI_F64);

/// Elements per block of the parallel map: large enough that handing a
/// block to a thread costs little against its `tanh` calls.
const BLOCK: usize = 4096;

/// `[f(0), ..., f(n - 1)]`, blocks shared out over candle's CPU thread pool
/// (each element is computed alone, so the result does not depend on the
/// sharing).
fn par_map<T: Copy + Default + Send + Sync>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); n];
    if n <= BLOCK {
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(i);
        }
        return out;
    }
    let blocks: Vec<Mutex<Option<&mut [T]>>> =
        out.chunks_mut(BLOCK).map(|c| Mutex::new(Some(c))).collect();
    candle_core::utils::barrier_pool().execute_chunked(blocks.len(), |range| {
        for b in range {
            let block = blocks[b].lock().ok().and_then(|mut c| c.take());
            for (j, o) in block
                .expect("each block is computed once")
                .iter_mut()
                .enumerate()
            {
                *o = f(b * BLOCK + j);
            }
        }
    });
    out
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "glom-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(v) => {
                let x = contiguous(v, layout, "gelu")?;
                CpuStorage::F32(par_map(x.len(), |i| fwd_f32(x[i])))
            }
            CpuStorage::F64(v) => {
                let x = contiguous(v, layout, "gelu")?;
                CpuStorage::F64(par_map(x.len(), |i| fwd_f64(x[i])))
            }
            _ => candle_core::bail!("gelu: f32 or f64 only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &GeluGrad)?))
    }
}

impl candle_core::CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "glom-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("gelu grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let (x, g) = (
                    contiguous(x, l1, "gelu grad")?,
                    contiguous(g, l2, "gelu grad")?,
                );
                CpuStorage::F32(par_map(x.len(), |i| bwd_f32(x[i], g[i])))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let (x, g) = (
                    contiguous(x, l1, "gelu grad")?,
                    contiguous(g, l2, "gelu grad")?,
                );
                CpuStorage::F64(par_map(x.len(), |i| bwd_f64(x[i], g[i])))
            }
            _ => candle_core::bail!("gelu grad: f32 or f64, both the same"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Forward values and gradients, bit for bit, against candle's gelu,
    /// on random values and the awkward ones (zeros of both signs, large
    /// magnitudes, subnormals).
    fn same_as_candle(dtype: DType) -> Result<()> {
        let dev = Device::Cpu;
        let mut values: Vec<f64> = Tensor::randn(0f64, 3.0, 200_000, &dev)?.to_vec1()?;
        values.extend([0.0, -0.0, 1e-40, -1e-40, 1e-8, 30.0, -30.0, 1e4, -1e4, 88.0]);
        let n = values.len();
        let x = Tensor::from_vec(values, n, &dev)?.to_dtype(dtype)?;
        let weights = Tensor::randn(0f64, 1.0, n, &dev)?.to_dtype(dtype)?;
        let run = |ours: bool| -> Result<(Tensor, Tensor)> {
            let v = Var::from_tensor(&x)?;
            let y = if ours {
                gelu(v.as_tensor())?
            } else {
                v.as_tensor().gelu()?
            };
            let loss = (&y * &weights)?.sum_all()?;
            let grads = loss.backward()?;
            Ok((y, grads.get(v.as_tensor()).expect("a gradient").clone()))
        };
        let ((y0, g0), (y1, g1)) = (run(false)?, run(true)?);
        let bits = |t: &Tensor| -> Result<Vec<u64>> {
            Ok(match dtype {
                DType::F32 => t
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits() as u64)
                    .collect(),
                _ => t.to_vec1::<f64>()?.iter().map(|v| v.to_bits()).collect(),
            })
        };
        assert_eq!(bits(&y0)?, bits(&y1)?, "{dtype:?} forward");
        let (b0, b1) = (bits(&g0)?, bits(&g1)?);
        let xs: Vec<f64> = x.to_dtype(DType::F64)?.to_vec1()?;
        let gs: Vec<f64> = g0.to_dtype(DType::F64)?.to_vec1()?;
        let hs: Vec<f64> = g1.to_dtype(DType::F64)?.to_vec1()?;
        let bad: Vec<usize> = (0..n).filter(|&i| b0[i] != b1[i]).collect();
        assert!(
            bad.is_empty(),
            "{dtype:?} gradient: {} of {n} differ, first at x = {} ({} vs {})",
            bad.len(),
            xs[bad[0]],
            gs[bad[0]],
            hs[bad[0]]
        );
        Ok(())
    }

    #[test]
    fn bitwise_the_same_as_candles_gelu_in_f32_and_f64() -> Result<()> {
        same_as_candle(DType::F32)?;
        same_as_candle(DType::F64)
    }
}

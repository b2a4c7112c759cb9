//! Lateral attention without a gradient, in one pass per location.
//!
//! Under local learning (paper section 12.1) the embeddings that lateral
//! attention reads are detached, so its result carries no gradient and
//! none of the intermediate tensors of candle's version of
//! [`super::lateral`] need to exist: the gathered neighbours
//! `[P, n, B, d]`, their products with the query (another `[P, n, B, d]`),
//! the scores, the softmax's five tensors and the weighted neighbours
//! (a third `[P, n, B, d]`). With 8 neighbours each of those is eight times
//! a level's state, allocated, filled and summed by candle's general
//! strided reduction every level of every iteration. This op reads each
//! neighbour's row where it lies and writes only the result.
//!
//! Bitwise the same as the candle path (tested): every element goes
//! through the same floating-point operations in the same order (the dot
//! product summed by candle's own `VecOps::vec_reduce_sum`, the scale as
//! candle's affine map `s * mul + 0`, the padding added, the softmax as
//! `exp(s - max) / sum` with the sum in neighbour order from zero, and the
//! weighted sum in neighbour order from zero), so trained numbers do not
//! change. Each location is computed from its own rows alone, so the
//! result does not depend on how locations are shared between threads.

use std::ops::{Add, AddAssign, Div, DivAssign, Mul, Sub};

use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `sum_y softmax_y(mul <e_x, e_y> + pad) e_y` for `e [P, B, d]`, `src
/// [P + H, B, d]` and `pad [P, n, 1]`, with the neighbours `idx [P * n]`
/// (rows of `src`), giving `[P, B, d]` without a gradient; `None` where
/// this op does not apply (a dtype other than f32 and f64, a device other
/// than the CPU, an input that needs a gradient, or no neighbours at all),
/// and the caller takes candle's path.
pub(crate) fn lateral_detached(
    e: &Tensor,
    src: &Tensor,
    idx: &Tensor,
    pad: &Tensor,
    mul: f64,
) -> Result<Option<Tensor>> {
    let applies = matches!(e.dtype(), DType::F32 | DType::F64)
        && src.dtype() == e.dtype()
        && pad.dtype() == e.dtype()
        && e.device().is_cpu()
        && src.device().is_cpu()
        && !e.track_op()
        && !src.track_op()
        && !pad.track_op()
        && idx.dtype() == DType::U32
        && idx.rank() == 1
        && idx.dim(0)? > 0;
    if !applies {
        return Ok(None);
    }
    let op = Lateral {
        idx: idx.to_vec1::<u32>()?,
        mul,
    };
    Ok(Some(e.contiguous()?.apply_op3_no_bwd(
        &src.contiguous()?,
        &pad.contiguous()?,
        &op,
    )?))
}

struct Lateral {
    idx: Vec<u32>,
    mul: f64,
}

trait Elem:
    VecOps
    + Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + AddAssign
    + DivAssign
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    fn from_f64(v: f64) -> Self;
    fn exp(self) -> Self;
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Elem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// Sizes: P locations, n neighbours, B images, d dimensions, S rows of
/// the source.
#[derive(Clone, Copy)]
struct Dims {
    p: usize,
    n: usize,
    b: usize,
    d: usize,
    s: usize,
}

/// Multiply-adds below which a call stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

fn run<T: Elem>(op: &Lateral, dims: Dims, e: &[T], src: &[T], pad: &[T]) -> Result<Vec<T>> {
    let Dims { p, n, b, d, s } = dims;
    if op.idx.len() != p * n {
        candle_core::bail!(
            "lateral: {} neighbour indices for {p} locations x {n} neighbours",
            op.idx.len()
        );
    }
    if let Some(&bad) = op.idx.iter().find(|&&i| i as usize >= s) {
        candle_core::bail!("lateral: neighbour index {bad} out of range for {s} source rows");
    }
    let plane = b * d;
    let mut out = vec![T::default(); p * plane];
    if out.is_empty() {
        return Ok(out);
    }
    let mul = T::from_f64(op.mul);
    let zero = T::from_f64(0.0);
    let one = |loc: usize, o: &mut [T], scratch: &mut Vec<T>| {
        let nb = &op.idx[loc * n..(loc + 1) * n];
        // scratch: n scores per image, then the d products of one dot.
        scratch.clear();
        scratch.resize(n * b + d, zero);
        let (scores, prod) = scratch.split_at_mut(n * b);
        for (j, &row) in nb.iter().enumerate() {
            let g = &src[row as usize * plane..(row as usize + 1) * plane];
            for img in 0..b {
                let q = &e[loc * plane + img * d..loc * plane + (img + 1) * d];
                let k = &g[img * d..(img + 1) * d];
                for ((pr, &kv), &qv) in prod.iter_mut().zip(k).zip(q) {
                    *pr = kv * qv;
                }
                let mut dot = zero;
                // SAFETY: `prod` holds d initialised elements.
                unsafe { T::vec_reduce_sum(prod.as_ptr(), &mut dot, d) };
                scores[j * b + img] = dot * mul + zero + pad[loc * n + j];
            }
        }
        // Softmax over the neighbours, image by image; then the weights
        // are the normalised exponentials, in place.
        for img in 0..b {
            let mut max = scores[img];
            for j in 0..n {
                let v = scores[j * b + img];
                if max < v {
                    max = v;
                }
            }
            let mut den = zero;
            for j in 0..n {
                let num = (scores[j * b + img] - max).exp();
                scores[j * b + img] = num;
                den += num;
            }
            for j in 0..n {
                scores[j * b + img] /= den;
            }
        }
        for (j, &row) in nb.iter().enumerate() {
            let g = &src[row as usize * plane..(row as usize + 1) * plane];
            for img in 0..b {
                let w = scores[j * b + img];
                let k = &g[img * d..(img + 1) * d];
                for (ov, &kv) in o[img * d..(img + 1) * d].iter_mut().zip(k) {
                    *ov += kv * w;
                }
            }
        }
    };
    let parallel = p > 1 && p * n * plane > PARALLEL_WORK;
    super::cpu::for_each_chunk(&mut out, plane, parallel, |loc, o, scratch| {
        one(loc, o, scratch)
    });
    Ok(out)
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    super::cpu::contiguous(data, layout, "lateral")
}

impl CustomOp3 for Lateral {
    fn name(&self) -> &'static str {
        "glom-lateral"
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
        let (p, b, d) = l1.shape().dims3()?;
        let (s, b2, d2) = l2.shape().dims3()?;
        let (p3, n, one) = l3.shape().dims3()?;
        if b != b2 || d != d2 || p3 != p || one != 1 {
            candle_core::bail!(
                "lateral: incompatible shapes {:?}, {:?} and {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let dims = Dims { p, n, b, d, s };
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(e), CpuStorage::F32(src), CpuStorage::F32(pad)) => {
                CpuStorage::F32(run(
                    self,
                    dims,
                    contiguous(e, l1)?,
                    contiguous(src, l2)?,
                    contiguous(pad, l3)?,
                )?)
            }
            (CpuStorage::F64(e), CpuStorage::F64(src), CpuStorage::F64(pad)) => {
                CpuStorage::F64(run(
                    self,
                    dims,
                    contiguous(e, l1)?,
                    contiguous(src, l2)?,
                    contiguous(pad, l3)?,
                )?)
            }
            _ => candle_core::bail!("lateral: f32 or f64 inputs, all of one dtype"),
        };
        Ok((out, Shape::from((p, b, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(seed: u64, dims: &[usize], dtype: DType) -> Tensor {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let len: usize = dims.iter().product();
        let v: Vec<f64> = (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect()
    }

    /// Neighbour indices into `s` source rows and a padding mask with some
    /// padded slots (index = the location itself, -1e9 in the mask).
    fn draw(p: usize, n: usize, s: usize, dtype: DType) -> (Tensor, Tensor) {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for loc in 0..p {
            for k in 0..n {
                if (loc + k) % 5 == 4 {
                    ids.push(loc as u32);
                    mask.push(-1e9f32);
                } else {
                    ids.push(((loc * 7 + k * 13) % s) as u32);
                    mask.push(0.0);
                }
            }
        }
        let idx = Tensor::from_vec(ids, p * n, &Device::Cpu).unwrap();
        let pad = Tensor::from_vec(mask, (p, n, 1), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (idx, pad)
    }

    #[test]
    fn bitwise_the_same_as_candles_ops() {
        for dtype in [DType::F32, DType::F64] {
            // (P, halo rows, n, B, d): one thread, and enough work to share.
            for (i, &(p, h, n, b, d)) in [(3, 2, 4, 5, 7), (64, 20, 8, 32, 32), (1, 0, 1, 1, 1)]
                .iter()
                .enumerate()
            {
                let e = random(10 * i as u64, &[p, b, d], dtype);
                let halo = random(10 * i as u64 + 1, &[h, b, d], dtype);
                let src = Tensor::cat(&[&e, &halo], 0).unwrap();
                let (idx, pad) = draw(p, n, p + h, dtype);
                for beta in [1.0, 17.5] {
                    let ours = lateral_detached(&e, &src, &idx, &pad, beta / d as f64)
                        .unwrap()
                        .expect("applies to detached inputs");
                    let reference = crate::model::lateral_ops(&e, &src, &idx, &pad, beta).unwrap();
                    assert_eq!(ours.dims(), reference.dims());
                    assert_eq!(
                        bits(&ours),
                        bits(&reference),
                        "{dtype:?} {:?}",
                        (p, n, b, d)
                    );
                }
            }
        }
    }

    #[test]
    fn inputs_that_need_a_gradient_take_candles_path() {
        let e = Var::from_tensor(&random(1, &[4, 3, 5], DType::F32)).unwrap();
        let (idx, pad) = draw(4, 2, 4, DType::F32);
        let none = lateral_detached(e.as_tensor(), e.as_tensor(), &idx, &pad, 0.2).unwrap();
        assert!(none.is_none());
        // Through the public entry point the gradient still flows.
        let out = crate::model::lateral(e.as_tensor(), e.as_tensor(), &idx, &pad, 1.0).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(e.as_tensor()).is_some());
    }

    #[test]
    fn an_index_outside_the_source_is_an_error() {
        let e = random(2, &[2, 3, 4], DType::F32);
        let idx = Tensor::from_vec(vec![0u32, 5], 2, &Device::Cpu).unwrap();
        let pad = Tensor::zeros((2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let err = lateral_detached(&e, &e, &idx, &pad, 1.0).unwrap_err();
        assert!(err.to_string().contains("neighbour index 5"), "{err}");
    }
}

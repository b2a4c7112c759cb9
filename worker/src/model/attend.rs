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
//! Each location is computed from its own rows alone, in a fixed order:
//! every dot product in eight interleaved partial sums added in a fixed
//! tree, the softmax along the images with f32's `exp` by a polynomial
//! that vectorises (within a unit in the last place; exactly 0 for padded
//! neighbours), the weighted sum in neighbour order from zero, no fused
//! multiply-add. So the result does not depend on the SIMD width, the
//! threads or the tiling (tested), and it is within float rounding of
//! candle's operations, which stay the differentiable path (tested).

use std::ops::{Add, Div, Mul, Sub};

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
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    fn from_f64(v: f64) -> Self;
    /// `exp(x)` for `x <= 0` (a score less the largest one).
    fn exp_nonpositive(x: Self) -> Self;
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }

    /// `2^k exp(r)`, `k = round(x / ln 2)`, `|r| <= ln 2 / 2`, `exp(r)` by
    /// its degree-6 Taylor polynomial (relative error below 2e-7, about
    /// one unit in the last place), in plain multiplies and adds that
    /// vectorise; exactly 0 below -87 (where f32 has no normal number
    /// left), so padded neighbours weigh nothing.
    #[inline(always)]
    fn exp_nonpositive(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        // ln 2 in two parts, the high one exact with trailing zero bits.
        #[allow(clippy::excessive_precision)]
        const LN2_HI: f32 = 0.693_145_751_953_125;
        #[allow(clippy::excessive_precision)]
        const LN2_LO: f32 = 1.428_606_765_330_187e-6;
        const MAGIC: f32 = 12_582_912.0;
        let v = x.max(-87.0);
        let k = (v * LOG2E + MAGIC) - MAGIC;
        let r = (v - k * LN2_HI) - k * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        let e = p * f32::from_bits(((k as i32 + 127) as u32) << 23);
        if x < -87.0 {
            0.0
        } else {
            e
        }
    }
}

impl Elem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn exp_nonpositive(x: f64) -> f64 {
        x.exp()
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

/// Partial sums of a dot product: element i goes into sum i mod `LANES`,
/// and the sums are added in a fixed tree, so a dot product is the same
/// whatever the SIMD width.
const LANES: usize = 8;

#[inline(always)]
fn dot<T: Elem>(q: &[T], k: &[T]) -> T {
    let mut acc = [T::default(); LANES];
    let (mut cq, mut ck) = (q.chunks_exact(LANES), k.chunks_exact(LANES));
    for (a, b) in (&mut cq).zip(&mut ck) {
        for l in 0..LANES {
            acc[l] = acc[l] + a[l] * b[l];
        }
    }
    for (l, (&a, &b)) in cq.remainder().iter().zip(ck.remainder()).enumerate() {
        acc[l] = acc[l] + a * b;
    }
    let half = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (half[0] + half[2]) + (half[1] + half[3])
}

/// One location's result into `o [B, d]`; `scratch` holds the scores
/// `[n, B]` (neighbour-major, so the softmax runs along the images).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn location<T: Elem>(
    dims: Dims,
    nb: &[u32],
    q: &[T],
    src: &[T],
    pad: &[T],
    mul: T,
    o: &mut [T],
    scratch: &mut Vec<T>,
) {
    let Dims { n, b, d, .. } = dims;
    let plane = b * d;
    let zero = T::default();
    scratch.clear();
    scratch.resize(n * b + 2 * b, zero);
    let (scores, rest) = scratch.split_at_mut(n * b);
    let (max, den) = rest.split_at_mut(b);
    for (j, &row) in nb.iter().enumerate() {
        let g = &src[row as usize * plane..(row as usize + 1) * plane];
        for (img, s) in scores[j * b..(j + 1) * b].iter_mut().enumerate() {
            let dq = &q[img * d..(img + 1) * d];
            *s = dot(dq, &g[img * d..(img + 1) * d]) * mul + pad[j];
        }
    }
    // Softmax over the neighbours, for all images at once.
    max.copy_from_slice(&scores[..b]);
    for row in scores.chunks_exact(b).skip(1) {
        for (m, &v) in max.iter_mut().zip(row) {
            if *m < v {
                *m = v;
            }
        }
    }
    den.fill(zero);
    for row in scores.chunks_exact_mut(b) {
        for ((s, &m), dn) in row.iter_mut().zip(max.iter()).zip(den.iter_mut()) {
            *s = T::exp_nonpositive(*s - m);
            *dn = *dn + *s;
        }
    }
    for row in scores.chunks_exact_mut(b) {
        for (s, &dn) in row.iter_mut().zip(den.iter()) {
            *s = *s / dn;
        }
    }
    // The weighted sum, in neighbour order from zero.
    for (j, &row) in nb.iter().enumerate() {
        let g = &src[row as usize * plane..(row as usize + 1) * plane];
        let w = &scores[j * b..(j + 1) * b];
        for ((orow, grow), &wj) in o.chunks_exact_mut(d).zip(g.chunks_exact(d)).zip(w) {
            for (ov, &kv) in orow.iter_mut().zip(grow) {
                *ov = *ov + kv * wj;
            }
        }
    }
}

/// [`location`] for every location of `locs`, compiled for the vector
/// width the CPU has.
#[derive(Clone, Copy)]
struct Kernel<'a, T> {
    dims: Dims,
    idx: &'a [u32],
    e: &'a [T],
    src: &'a [T],
    pad: &'a [T],
    mul: T,
}

impl<T: Elem> Kernel<'_, T> {
    #[inline(always)]
    fn run(self, loc: usize, o: &mut [T], scratch: &mut Vec<T>) {
        let Dims { n, b, d, .. } = self.dims;
        let plane = b * d;
        location(
            self.dims,
            &self.idx[loc * n..(loc + 1) * n],
            &self.e[loc * plane..(loc + 1) * plane],
            self.src,
            &self.pad[loc * n..(loc + 1) * n],
            self.mul,
            o,
            scratch,
        )
    }

    fn dispatch(self, loc: usize, o: &mut [T], scratch: &mut Vec<T>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, checked just above.
                unsafe { self.run_avx512(loc, o, scratch) };
                return;
            }
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU supports AVX, checked just above.
                unsafe { self.run_avx(loc, o, scratch) };
                return;
            }
        }
        self.run(loc, o, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    unsafe fn run_avx(self, loc: usize, o: &mut [T], scratch: &mut Vec<T>) {
        self.run(loc, o, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(self, loc: usize, o: &mut [T], scratch: &mut Vec<T>) {
        self.run(loc, o, scratch)
    }
}

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
    let kernel = Kernel {
        dims,
        idx: &op.idx,
        e,
        src,
        pad,
        mul: T::from_f64(op.mul),
    };
    let parallel = p > 1 && p * n * plane > PARALLEL_WORK;
    super::cpu::for_each_chunk(&mut out, plane, parallel, |loc, o, scratch| {
        kernel.dispatch(loc, o, scratch)
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

    /// Largest absolute difference of two tensors, in f64.
    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        (f(a) - f(b))
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// As accurate as candle's operations: in f64 within 1e-13 of them, in
    /// f32 no further from the f64 result of the same inputs than candle's
    /// f32 operations are (twice their error, plus 1e-6).
    #[test]
    fn as_accurate_as_candles_ops() {
        // (P, halo rows, n, B, d): one thread, and enough work to share.
        for (i, &(p, h, n, b, d)) in [(3, 2, 4, 5, 7), (64, 20, 8, 32, 32), (1, 0, 1, 1, 1)]
            .iter()
            .enumerate()
        {
            // f32 inputs, and the same values in f64.
            let e32 = random(10 * i as u64, &[p, b, d], DType::F32);
            let halo32 = random(10 * i as u64 + 1, &[h, b, d], DType::F32);
            for beta in [1.0, 17.5] {
                let mut exact = None;
                for dtype in [DType::F64, DType::F32] {
                    let e = e32.to_dtype(dtype).unwrap();
                    let src = Tensor::cat(&[&e, &halo32.to_dtype(dtype).unwrap()], 0).unwrap();
                    let (idx, pad) = draw(p, n, p + h, dtype);
                    let ours = lateral_detached(&e, &src, &idx, &pad, beta / d as f64)
                        .unwrap()
                        .expect("applies to detached inputs");
                    let theirs = crate::model::lateral_ops(&e, &src, &idx, &pad, beta).unwrap();
                    assert_eq!(ours.dims(), theirs.dims());
                    let case = format!("{dtype:?} {:?} beta {beta}", (p, n, b, d));
                    match exact.take() {
                        None => {
                            assert!(max_diff(&ours, &theirs) < 1e-13, "{case}");
                            exact = Some(theirs);
                        }
                        Some(x) => {
                            let (ours, theirs) = (max_diff(&ours, &x), max_diff(&theirs, &x));
                            assert!(ours <= 2.0 * theirs + 1e-6, "{case}: {ours} vs {theirs}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_simd_path_and_any_split_give_the_same_bits() {
        let (p, h, n, b, d) = (6, 3, 5, 7, 13);
        let e32 = random(5, &[p, b, d], DType::F32);
        let src = Tensor::cat(&[&e32, &random(6, &[h, b, d], DType::F32)], 0).unwrap();
        let (idx, pad) = draw(p, n, p + h, DType::F32);
        let whole = lateral_detached(&e32, &src, &idx, &pad, 0.7)
            .unwrap()
            .unwrap();
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let (ev, sv, pv) = (flat(&e32), flat(&src), flat(&pad));
        let ids: Vec<u32> = idx.to_vec1().unwrap();
        let kernel = Kernel {
            dims: Dims {
                p,
                n,
                b,
                d,
                s: p + h,
            },
            idx: &ids,
            e: &ev,
            src: &sv,
            pad: &pv,
            mul: 0.7f32,
        };
        let want = flat(&whole);
        let plane = b * d;
        type Path<'a> = (&'a str, Box<dyn Fn(usize, &mut [f32], &mut Vec<f32>) + 'a>);
        let mut paths: Vec<Path> = vec![("plain", Box::new(|l, o, s| kernel.run(l, o, s)))];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: checked just above.
                paths.push((
                    "avx",
                    Box::new(|l, o, s| unsafe { kernel.run_avx(l, o, s) }),
                ));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                paths.push((
                    "avx512",
                    Box::new(|l, o, s| unsafe { kernel.run_avx512(l, o, s) }),
                ));
            }
        }
        for (name, f) in paths {
            let mut out = vec![0f32; p * plane];
            // Locations one by one, in reverse: each stands alone.
            for loc in (0..p).rev() {
                f(
                    loc,
                    &mut out[loc * plane..(loc + 1) * plane],
                    &mut Vec::new(),
                );
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "{name}");
        }
        // Padded neighbours weigh exactly nothing.
        assert_eq!(<f32 as Elem>::exp_nonpositive(-1e9), 0.0);
        assert_eq!(<f32 as Elem>::exp_nonpositive(0.0), 1.0);
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

//! Lateral attention (paper equation 3.1) in one pass per location, with
//! its backward.
//!
//! candle's version of [`super::lateral`] builds, every level of every
//! iteration, the gathered neighbours `[P, n, B, d]`, their products with
//! the query (another `[P, n, B, d]`), the scores, the softmax's five
//! tensors and the weighted neighbours (a third `[P, n, B, d]`), each
//! allocated, filled and summed by candle's general strided reduction,
//! and as many again in its backward. This op reads each neighbour's row
//! where it lies and writes only the result. Under local learning (paper
//! section 12.1) and in inference nothing needs a gradient and the op
//! builds no graph node; under backpropagation through time its backward
//! ([`LateralGrad`]) recomputes the weights and gives the gradients of the
//! queries and of every source row (own and halo) in two passes.
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
/// (rows of `src`), giving `[P, B, d]`, differentiable in `e` and `src`
/// (the padding is a constant); `None` where this op does not apply (a
/// dtype other than f32 and f64, a device other than the CPU, a padding
/// that needs a gradient, or no neighbours at all), and the caller takes
/// candle's path.
pub(crate) fn lateral_kernel(
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
    let (e, src, pad) = (e.contiguous()?, src.contiguous()?, pad.contiguous()?);
    Ok(Some(if e.track_op() || src.track_op() {
        e.apply_op3(&src, &pad, op)?
    } else {
        e.apply_op3_no_bwd(&src, &pad, &op)?
    }))
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

    /// [`super::cpu::exp_f32`] (relative error below 2e-7, about one unit
    /// in the last place, vectorising); exactly 0 below -87 (where f32 has
    /// no normal number left), so padded neighbours weigh nothing.
    #[inline(always)]
    fn exp_nonpositive(x: f32) -> f32 {
        let e = super::cpu::exp_f32(x.max(-87.0));
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

/// The attention weights of one location into `scratch[..n * B]`
/// (neighbour-major, `[n, B]`, so the softmax runs along the images),
/// `scratch` holding `2 B` more for the softmax's work.
#[inline(always)]
fn weights<T: Elem>(
    dims: Dims,
    nb: &[u32],
    q: &[T],
    src: &[T],
    pad: &[T],
    mul: T,
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
}

/// One location's result into `o [B, d]` (zero on entry).
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
    weights(dims, nb, q, src, pad, mul, scratch);
    let scores = &scratch[..n * b];
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

    /// [`Kernel::run`] at the widest SIMD the CPU has.
    fn dispatch(self, loc: usize, o: &mut [T], scratch: &mut Vec<T>) {
        super::cpu::dispatch(At {
            kernel: self,
            loc,
            o,
            scratch,
        })
    }
}

/// One location of a [`Kernel`], into `o`: what [`super::cpu::dispatch`]
/// compiles per SIMD width.
struct At<'a, 'b, T> {
    kernel: Kernel<'a, T>,
    loc: usize,
    o: &'b mut [T],
    scratch: &'b mut Vec<T>,
}

impl<T: Elem> super::cpu::Kernel for At<'_, '_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        self.kernel.run(self.loc, self.o, self.scratch)
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
    let kernel = Kernel {
        dims,
        idx: &op.idx,
        e,
        src,
        pad,
        mul: T::from_f64(op.mul),
    };
    let parallel = p > 1 && p * n * plane > PARALLEL_WORK;
    Ok(super::cpu::fresh(
        p * plane,
        plane,
        parallel,
        |loc, o, scratch| kernel.dispatch(loc, o, scratch),
    ))
}

/// The gradients of [`run`]'s output for `dout [P, B, d]`: with `w` the
/// weights, `dw_j = <dout, src_j>` and `ds_j = w_j (dw_j - sum_k w_k dw_k)`
/// per image, `d e = mul sum_j ds_j src_j` and, for every row r of the
/// source, `d src_r = sum over (location, j) reading r of w_j dout + mul
/// ds_j e` (the padding takes none). Returned as one `[P + S, B, d]`
/// buffer, `d e` first. Every location's `d e`, weights and `ds` come from
/// its own rows; each source row sums its readers in ascending (location,
/// neighbour) order from zero; so the result is the same however the work
/// is shared between threads.
fn run_grad<T: Elem>(
    op: &LateralGrad,
    dims: Dims,
    e: &[T],
    src: &[T],
    dout: &[T],
) -> Result<Vec<T>> {
    let Dims { p, n, b, d, s } = dims;
    if op.idx.len() != p * n || op.pad.len() != p * n {
        candle_core::bail!(
            "lateral grad: {} indices and {} paddings for {p} locations x {n} neighbours",
            op.idx.len(),
            op.pad.len()
        );
    }
    if let Some(&bad) = op.idx.iter().find(|&&i| i as usize >= s) {
        candle_core::bail!("lateral grad: neighbour index {bad} out of range for {s} source rows");
    }
    let plane = b * d;
    let mul = T::from_f64(op.mul);
    let pad: Vec<T> = op.pad.iter().map(|&v| T::from_f64(v)).collect();
    // Per location: d e [B, d], then the weights and ds, [n, B] each.
    let per_loc = plane + 2 * n * b;
    let parallel = p > 1 && p * n * plane > PARALLEL_WORK;
    let first = super::cpu::fresh(p * per_loc, per_loc, parallel, |loc, out, scratch| {
        let nb = &op.idx[loc * n..(loc + 1) * n];
        let q = &e[loc * plane..(loc + 1) * plane];
        let go = &dout[loc * plane..(loc + 1) * plane];
        weights(dims, nb, q, src, &pad[loc * n..(loc + 1) * n], mul, scratch);
        let (de, rest) = out.split_at_mut(plane);
        let (w, ds) = rest.split_at_mut(n * b);
        w.copy_from_slice(&scratch[..n * b]);
        // dw into ds, then c = sum_j w dw per image, then ds.
        for (j, &row) in nb.iter().enumerate() {
            let g = &src[row as usize * plane..(row as usize + 1) * plane];
            for img in 0..b {
                ds[j * b + img] = dot(&go[img * d..(img + 1) * d], &g[img * d..(img + 1) * d]);
            }
        }
        let c = &mut scratch[n * b..n * b + b];
        c.fill(T::default());
        for (wr, dr) in w.chunks_exact(b).zip(ds.chunks_exact(b)) {
            for ((cv, &wv), &dv) in c.iter_mut().zip(wr).zip(dr) {
                *cv = *cv + wv * dv;
            }
        }
        for (wr, dr) in w.chunks_exact(b).zip(ds.chunks_exact_mut(b)) {
            for ((dv, &wv), &cv) in dr.iter_mut().zip(wr).zip(c.iter()) {
                *dv = wv * (*dv - cv);
            }
        }
        for (j, &row) in nb.iter().enumerate() {
            let g = &src[row as usize * plane..(row as usize + 1) * plane];
            for img in 0..b {
                let k = mul * ds[j * b + img];
                for (o, &gv) in de[img * d..(img + 1) * d]
                    .iter_mut()
                    .zip(&g[img * d..(img + 1) * d])
                {
                    *o = *o + k * gv;
                }
            }
        }
    });
    // The readers of every source row, in ascending (location, neighbour).
    let mut starts = vec![0usize; s + 1];
    for &r in &op.idx {
        starts[r as usize + 1] += 1;
    }
    for r in 0..s {
        starts[r + 1] += starts[r];
    }
    let mut fill = starts.clone();
    let mut readers = vec![0usize; p * n];
    for (slot, &r) in op.idx.iter().enumerate() {
        readers[fill[r as usize]] = slot;
        fill[r as usize] += 1;
    }
    let mut out = vec![T::default(); (p + s) * plane];
    let (de_all, dsrc) = out.split_at_mut(p * plane);
    for (loc, de) in de_all.chunks_exact_mut(plane).enumerate() {
        de.copy_from_slice(&first[loc * per_loc..loc * per_loc + plane]);
    }
    let parallel = s > 1 && p * n * plane > PARALLEL_WORK;
    super::cpu::for_each_chunk(dsrc, plane, parallel, |r, o, _: &mut ()| {
        for &slot in &readers[starts[r]..starts[r + 1]] {
            let (loc, j) = (slot / n, slot % n);
            let base = loc * per_loc + plane;
            let w = &first[base + j * b..base + (j + 1) * b];
            let ds = &first[base + n * b + j * b..base + n * b + (j + 1) * b];
            let go = &dout[loc * plane..(loc + 1) * plane];
            let q = &e[loc * plane..(loc + 1) * plane];
            for img in 0..b {
                let (wv, k) = (w[img], mul * ds[img]);
                let rows = o[img * d..(img + 1) * d]
                    .iter_mut()
                    .zip(&go[img * d..(img + 1) * d])
                    .zip(&q[img * d..(img + 1) * d]);
                for ((ov, &gv), &qv) in rows {
                    *ov = *ov + (wv * gv + k * qv);
                }
            }
        }
    });
    Ok(out)
}

/// The backward of [`Lateral`]: `(e, src, dout) -> [d e; d src]`.
struct LateralGrad {
    idx: Vec<u32>,
    pad: Vec<f64>,
    mul: f64,
}

impl CustomOp3 for LateralGrad {
    fn name(&self) -> &'static str {
        "glom-lateral-grad"
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
        if b != b2 || d != d2 || l3.shape().dims() != [p, b, d] || p == 0 {
            candle_core::bail!(
                "lateral grad: incompatible shapes {:?}, {:?} and {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let n = self.idx.len() / p;
        let dims = Dims { p, n, b, d, s };
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(e), CpuStorage::F32(src), CpuStorage::F32(g)) => {
                CpuStorage::F32(run_grad(
                    self,
                    dims,
                    contiguous(e, l1)?,
                    contiguous(src, l2)?,
                    contiguous(g, l3)?,
                )?)
            }
            (CpuStorage::F64(e), CpuStorage::F64(src), CpuStorage::F64(g)) => {
                CpuStorage::F64(run_grad(
                    self,
                    dims,
                    contiguous(e, l1)?,
                    contiguous(src, l2)?,
                    contiguous(g, l3)?,
                )?)
            }
            _ => candle_core::bail!("lateral grad: f32 or f64 inputs, all of one dtype"),
        };
        Ok((out, Shape::from((p + s, b, d))))
    }
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

    fn bwd(
        &self,
        e: &Tensor,
        src: &Tensor,
        pad: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = LateralGrad {
            idx: self.idx.clone(),
            pad: pad.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?,
            mul: self.mul,
        };
        let both =
            e.contiguous()?
                .apply_op3_no_bwd(&src.contiguous()?, &grad_res.contiguous()?, &op)?;
        let (p, s) = (e.dim(0)?, src.dim(0)?);
        let de = e.track_op().then(|| both.narrow(0, 0, p)).transpose()?;
        let dsrc = src.track_op().then(|| both.narrow(0, p, s)).transpose()?;
        Ok((de, dsrc, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(seed: u64, dims: &[usize], dtype: DType) -> Tensor {
        super::super::testutil::random(seed, dims, dtype, |u| u * 4.0 - 2.0)
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
        if a.elem_count() == 0 {
            return 0.0;
        }
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
                    let ours = lateral_kernel(&e, &src, &idx, &pad, beta / d as f64)
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
        let whole = lateral_kernel(&e32, &src, &idx, &pad, 0.7)
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
            use super::super::cpu::{run_avx, run_avx512};
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: checked just above.
                paths.push((
                    "avx",
                    Box::new(|loc, o, scratch| unsafe {
                        run_avx(At {
                            kernel,
                            loc,
                            o,
                            scratch,
                        })
                    }),
                ));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                paths.push((
                    "avx512",
                    Box::new(|loc, o, scratch| unsafe {
                        run_avx512(At {
                            kernel,
                            loc,
                            o,
                            scratch,
                        })
                    }),
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

    /// Gradients of `sum(out * r)` for the tile's embeddings (as queries
    /// and as source rows) and the halo rows, by the kernel or by candle's
    /// ops.
    fn grads(kernel: bool, e: &Var, halo: &Var, idx: &Tensor, pad: &Tensor) -> [Tensor; 2] {
        let src = Tensor::cat(&[e.as_tensor(), halo.as_tensor()], 0).unwrap();
        // The queries also as a separate input, so both gradient paths of
        // e (query and source row) are exercised.
        let q = (e.as_tensor() * 1.0).unwrap();
        let d = q.dim(2).unwrap();
        let out = if kernel {
            lateral_kernel(&q, &src, idx, pad, 3.0 / d as f64)
                .unwrap()
                .expect("applies on the CPU")
        } else {
            crate::model::lateral_ops(&q, &src, idx, pad, 3.0).unwrap()
        };
        let r = random(77, out.dims(), out.dtype());
        let g = (out * r).unwrap().sum_all().unwrap().backward().unwrap();
        [
            g.get(e.as_tensor()).unwrap().clone(),
            g.get(halo.as_tensor()).unwrap().clone(),
        ]
    }

    #[test]
    fn gradients_match_candles_ops() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for &(p, h, n, b, d) in &[(3, 2, 4, 5, 7), (12, 5, 6, 8, 16), (1, 0, 1, 1, 1)] {
                let e = Var::from_tensor(&random(20, &[p, b, d], dtype)).unwrap();
                let halo = Var::from_tensor(&random(21, &[h, b, d], dtype)).unwrap();
                let (idx, pad) = draw(p, n, p + h, dtype);
                let ours = grads(true, &e, &halo, &idx, &pad);
                let theirs = grads(false, &e, &halo, &idx, &pad);
                for (what, (o, t)) in ["e", "halo"].iter().zip(ours.iter().zip(&theirs)) {
                    assert_eq!(o.dims(), t.dims());
                    let scale = 1.0 + max_diff(t, &t.zeros_like().unwrap());
                    let diff = max_diff(o, t);
                    assert!(
                        diff <= tol * scale,
                        "{dtype:?} {:?} d{what}: {diff}",
                        (p, n, b, d)
                    );
                }
            }
        }
    }

    #[test]
    fn the_backward_gives_the_same_bits_each_time() {
        let (p, h, n, b, d) = (64, 20, 8, 32, 32);
        let e = Var::from_tensor(&random(30, &[p, b, d], DType::F32)).unwrap();
        let halo = Var::from_tensor(&random(31, &[h, b, d], DType::F32)).unwrap();
        let (idx, pad) = draw(p, n, p + h, DType::F32);
        let flat = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        // Enough work to be shared between threads in both passes, where
        // a race or an order that depended on the sharing would show.
        let all = grads(true, &e, &halo, &idx, &pad);
        let again = grads(true, &e, &halo, &idx, &pad);
        for (a, b) in all.iter().zip(&again) {
            assert_eq!(flat(a), flat(b));
        }
    }

    #[test]
    fn an_index_outside_the_source_is_an_error() {
        let e = random(2, &[2, 3, 4], DType::F32);
        let idx = Tensor::from_vec(vec![0u32, 5], 2, &Device::Cpu).unwrap();
        let pad = Tensor::zeros((2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let err = lateral_kernel(&e, &e, &idx, &pad, 1.0).unwrap_err();
        assert!(err.to_string().contains("neighbour index 5"), "{err}");
    }
}

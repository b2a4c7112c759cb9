//! The variance and decorrelation terms ([`super::terms::variance`],
//! [`super::terms::covariance`]) as CPU kernels with their backward.
//!
//! A local step stacks every prediction it made (54 of them by default)
//! into one `[N, B, d]` tensor and takes both terms over it; as candle
//! operations that was some twenty passes over the stack (the batch mean
//! by candle's strided reduction, the centring, the products through one
//! small gemm call per slice, squares and sums), each with a fresh buffer,
//! and as many again in the backward: about a fifth of a step
//! (`docs/experiments/performance.md`). Here each slice `x [B, d]` is one
//! pass forward and one backward, with the gradients in closed form:
//!
//! - centred `c = x - mean_b(x)`, variances `v_k = sum_b c_bk^2 / (B - 1)`;
//! - `Log`: `-mean_k log(v_k + eps)`, `d/dx_bk = -2 c_bk / (d (B - 1) (v_k + eps))`;
//! - `Hinge`: `mean_k relu(target - sqrt(v_k + eps))`,
//!   `d/dx_bk = -c_bk / (d (B - 1) sqrt(v_k + eps))` where the hinge is active;
//! - covariance `C = c^T c / (B - 1)`: `sum_{k != k'} C_kk'^2 / (d (d - 1))`,
//!   `d/dx_bk = 4 sum_{k' != k} C_kk' c_bk' / ((B - 1) d (d - 1))`.
//!
//! When the batch is smaller than d (the peer preset: 32 against 64), the
//! covariance terms go through the batch's Gram matrix `G = c c^T [B, B]`
//! instead, at half the multiply-adds: `||c^T c||_F = ||c c^T||_F`, so
//! `sum_{k != k'} C_kk'^2 = ||G||_F^2 / (B - 1)^2 - sum_k v_k^2`, and
//! `sum_{k' != k} C_kk' c_bk' = (G c)_bk / (B - 1) - v_k c_bk`. (With B <
//! d the matrix C has rank below d, so its off-diagonal part is never
//! small against its diagonal, and the difference loses no precision that
//! f64 would notice.)
//!
//! (The centring's own gradient vanishes: every column of `c` sums to
//! zero over the batch.) Each slice is computed alone, in a fixed order,
//! so the result does not depend on how slices are shared between threads
//! or on the tiling. It rounds differently from the candle operations,
//! which remain the path for other dtypes and devices (and the reference
//! of the tests).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use glom_protocol::config::VarianceForm;

use super::cpu::Real as Elem;
use super::terms::VARIANCE_EPS;

/// Which term, and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stat {
    Variance(VarianceForm, f64),
    Covariance,
}

/// The term of every slice of `x [N, B, d]`, `[N]`, differentiable; `None`
/// where the kernel does not apply (not f32/f64 on the CPU) and the
/// caller takes candle's operations.
pub(crate) fn batch_stat(x: &Tensor, stat: Stat) -> Result<Option<Tensor>> {
    let n = x.dim(0)?;
    batch_stats(x, &[stat])?.map(|t| t.reshape(n)).transpose()
}

/// Several terms of every slice of `x [N, B, d]` in one pass, `[N, T]`
/// for the `T` terms of `stats` in their order, differentiable (one
/// gradient into `x` for all of them: each element is the sum, in the
/// element type and in the order of `stats`, of the terms' own gradients,
/// which is what candle's backward would add up for them one by one).
/// `None` where the kernel does not apply (not f32/f64 on the CPU).
pub(crate) fn batch_stats(x: &Tensor, stats: &[Stat]) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(None);
    }
    if stats.is_empty() {
        candle_core::bail!("batch statistics: no term asked for");
    }
    Ok(Some(x.contiguous()?.apply_op1(StatOp(stats.to_vec()))?))
}

struct StatOp(Vec<Stat>);

/// `d/dx` of the terms, scaled per slice and term by the incoming gradient.
struct StatGrad(Vec<Stat>);

/// Scratch of one slice, in f64: the batch mean `[d]`, centred values
/// `[B, d]` (and, for the Gram form, their transpose `[d, B]`), variances
/// `[d]`, the covariance matrix `[d, d]` (zero on its diagonal) or, when
/// `gram`, the Gram matrix `c c^T [B, B]`, and the gradient's work `[B, d]`.
#[derive(Default)]
struct Scratch {
    mean: Vec<f64>,
    c: Vec<f64>,
    ct: Vec<f64>,
    v: Vec<f64>,
    cov: Vec<f64>,
    gram: bool,
    acc: Vec<f64>,
}

/// Centre slice `x [B, d]` into `s.c` and fill `s.v` (and `s.cov` when
/// asked), all in f64.
#[inline(always)]
fn moments<T: Elem>(x: &[T], b: usize, d: usize, want_cov: bool, s: &mut Scratch) {
    // One pass to widen, one to sum, one to centre and sum the squares
    // (each sum in the same order as a pass of its own would take).
    s.c.clear();
    s.c.extend(x[..b * d].iter().map(|v| v.to_f64()));
    s.mean.clear();
    s.mean.resize(d, 0.0);
    for row in s.c.chunks_exact(d) {
        for (m, &c) in s.mean.iter_mut().zip(row) {
            *m += c;
        }
    }
    for m in &mut s.mean {
        *m /= b as f64;
    }
    let norm = 1.0 / (b - 1) as f64;
    s.v.clear();
    s.v.resize(d, 0.0);
    for row in s.c.chunks_exact_mut(d) {
        for ((c, &m), v) in row.iter_mut().zip(&s.mean).zip(s.v.iter_mut()) {
            *c -= m;
            *v += *c * *c;
        }
    }
    for v in &mut s.v {
        *v *= norm;
    }
    s.gram = want_cov && b < d;
    if s.gram {
        // `G = c c^T`, each entry summed over the d columns in ascending
        // order by the per-location products' kernel (which reads its
        // right-hand matrix row by row: hence `c^T` as a copy).
        super::locmm::transpose(&s.c, b, d, &mut s.ct);
        // Every entry is written (no zero fill first).
        s.cov.resize(b * b, 0.0);
        super::locmm::gemm::<f64, 8>(b, d, b, &s.c, d, 1, &s.ct, &mut s.cov);
    } else if want_cov {
        // `C = c^T c`: each entry summed over the batch in ascending order
        // by the register-blocked kernel of the per-location products (the
        // blocks on and above the diagonal, the rest mirrored). The
        // diagonal is set to zero: neither the term nor its gradient reads
        // it, and the gradient's product then skips it for free. Every
        // entry is written, so no zero fill first.
        s.cov.resize(d * d, 0.0);
        super::locmm::gemm_symmetric::<f64, 8>(d, b, &s.c, &mut s.cov);
        for (k, row) in s.cov.chunks_exact_mut(d).enumerate() {
            row[k] = 0.0;
            for v in row {
                *v *= norm;
            }
        }
    }
}

/// The term of one slice (after [`moments`]).
#[inline(always)]
fn value(stat: Stat, d: usize, s: &Scratch) -> f64 {
    match stat {
        // No pair of dimensions to decorrelate.
        Stat::Covariance if d < 2 => 0.0,
        Stat::Variance(VarianceForm::Log, _) => {
            -s.v.iter().map(|v| (v + VARIANCE_EPS).ln()).sum::<f64>() / d as f64
        }
        Stat::Variance(VarianceForm::Hinge, target) => {
            s.v.iter()
                .map(|v| (target - (v + VARIANCE_EPS).sqrt()).max(0.0))
                .sum::<f64>()
                / d as f64
        }
        Stat::Covariance if s.gram => {
            let norm = 1.0 / (s.c.len() / d - 1) as f64;
            let all = sum_of_squares(&s.cov) * norm * norm;
            let diagonal = s.v.iter().map(|v| v * v).sum::<f64>();
            (all - diagonal) / (d * (d - 1)) as f64
        }
        // The diagonal is zero (`moments`), so the sum over all entries is
        // the sum off it.
        Stat::Covariance => sum_of_squares(&s.cov) / (d * (d - 1)) as f64,
    }
}

/// `sum_i v_i^2`, in eight interleaved partial sums (a single running sum
/// had been a chain of d^2 dependent additions per slice). The value of a
/// term only: its gradient is in closed form and does not read it.
#[inline(always)]
fn sum_of_squares(v: &[f64]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f64; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += x * x;
        }
    }
    for (s, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *s += x * x;
    }
    lanes.iter().fold(0.0, |acc, &s| acc + s)
}

/// `g * d(term)/dx` of one slice into `out [B, d]` (after [`moments`]),
/// or, if `add`, added to what `out` holds (in the element type).
#[inline(always)]
fn gradient<T: Elem>(
    stat: Stat,
    b: usize,
    d: usize,
    g: f64,
    s: &mut Scratch,
    out: &mut [T],
    add: bool,
) {
    let bm1 = (b - 1) as f64;
    let put = |o: &mut T, v: f64| {
        *o = if add {
            *o + T::from_f64(v)
        } else {
            T::from_f64(v)
        }
    };
    match stat {
        Stat::Covariance if d < 2 => {
            for o in out.iter_mut() {
                put(o, 0.0);
            }
        }
        Stat::Variance(form, target) => {
            s.acc.clear();
            s.acc.extend(s.v.iter().map(|&v| match form {
                VarianceForm::Log => -2.0 / (d as f64 * bm1 * (v + VARIANCE_EPS)),
                VarianceForm::Hinge => {
                    let root = (v + VARIANCE_EPS).sqrt();
                    if target - root > 0.0 {
                        -1.0 / (d as f64 * bm1 * root)
                    } else {
                        0.0
                    }
                }
            }));
            for (orow, crow) in out.chunks_exact_mut(d).zip(s.c.chunks_exact(d)) {
                for ((o, &c), &sc) in orow.iter_mut().zip(crow).zip(&s.acc) {
                    put(o, g * sc * c);
                }
            }
        }
        Stat::Covariance if s.gram => {
            // `c @ C'` (below) as `G c / (B - 1) - v_k c_bk`, each entry of
            // `G c` summed over the batch in ascending order.
            let scale = 4.0 / (bm1 * (d * (d - 1)) as f64);
            // Every entry is written (no zero fill first).
            s.acc.resize(b * d, 0.0);
            super::locmm::gemm::<f64, 8>(b, b, d, &s.cov, b, 1, &s.c, &mut s.acc);
            let norm = 1.0 / bm1;
            for ((orow, arow), crow) in out
                .chunks_exact_mut(d)
                .zip(s.acc.chunks_exact(d))
                .zip(s.c.chunks_exact(d))
            {
                for (((o, &a), &c), &v) in orow.iter_mut().zip(arow).zip(crow).zip(&s.v) {
                    put(o, g * scale * (a * norm - v * c));
                }
            }
        }
        Stat::Covariance => {
            // The gradient is `c @ C'` with C' the covariance off its
            // diagonal (zero there, see `moments`), each entry summed over
            // the rows of C' in ascending order.
            let scale = 4.0 / (bm1 * (d * (d - 1)) as f64);
            // Every entry is written (no zero fill first).
            s.acc.resize(b * d, 0.0);
            super::locmm::gemm::<f64, 8>(b, d, d, &s.c, d, 1, &s.cov, &mut s.acc);
            for (o, &a) in out.iter_mut().zip(&s.acc) {
                put(o, g * scale * a);
            }
        }
    }
}

/// Slices per thread's piece of work.
const SLICES_PER_PIECE: usize = 16;

/// What one piece of slices computes: their terms into `out [slices, T]`
/// (`g` is `None`), or `sum_t g[i, t] * d(term t)/dx` into
/// `out [slices, B, d]`.
#[derive(Clone, Copy)]
struct Piece<'a, T> {
    stats: &'a [Stat],
    x: &'a [T],
    g: Option<&'a [T]>,
    b: usize,
    d: usize,
}

impl<T: Elem> Piece<'_, T> {
    /// Slices `first..` of the piece whose results go to `out`.
    #[inline(always)]
    fn run(self, first: usize, out: &mut [T], s: &mut Scratch) {
        let (b, d) = (self.b, self.d);
        let plane = b * d;
        let terms = self.stats.len();
        let want_cov = d >= 2 && self.stats.contains(&Stat::Covariance);
        let x = |slice: usize| &self.x[slice * plane..(slice + 1) * plane];
        match self.g {
            None => {
                for (j, o) in out.chunks_exact_mut(terms).enumerate() {
                    moments(x(first + j), b, d, want_cov, s);
                    for (o, &stat) in o.iter_mut().zip(self.stats) {
                        *o = T::from_f64(value(stat, d, s));
                    }
                }
            }
            Some(g) => {
                for (j, o) in out.chunks_exact_mut(plane).enumerate() {
                    moments(x(first + j), b, d, want_cov, s);
                    let g = &g[(first + j) * terms..(first + j + 1) * terms];
                    for (t, (&stat, &g)) in self.stats.iter().zip(g).enumerate() {
                        gradient(stat, b, d, g.to_f64(), s, o, t > 0);
                    }
                }
            }
        }
    }

    /// [`Piece::run`] at the widest SIMD the CPU has.
    fn dispatch(self, first: usize, out: &mut [T], s: &mut Scratch) {
        super::cpu::dispatch(Slices {
            piece: self,
            first,
            out,
            s,
        })
    }
}

/// A [`Piece`] from slice `first` on, into `out`: what
/// [`super::cpu::dispatch`] compiles per SIMD width.
struct Slices<'a, 'b, T> {
    piece: Piece<'a, T>,
    first: usize,
    out: &'b mut [T],
    s: &'b mut Scratch,
}

impl<T: Elem> super::cpu::Kernel for Slices<'_, '_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        self.piece.run(self.first, self.out, self.s)
    }
}

/// The terms `[n, T]` (no `g`) or the gradients `[n, B, d]` (with
/// `g [n, T]`) of the `n` slices of `x [n, B, d]`, pieces of
/// [`SLICES_PER_PIECE`] slices shared over the thread pool. A batch of
/// one has no variance: every term and gradient is zero.
fn compute<T: Elem>(
    stats: &[Stat],
    x: &[T],
    g: Option<&[T]>,
    n: usize,
    b: usize,
    d: usize,
) -> Vec<T> {
    let per_slice = if g.is_some() { b * d } else { stats.len() };
    if b < 2 {
        return vec![T::default(); n * per_slice];
    }
    let piece = Piece { stats, x, g, b, d };
    super::cpu::fresh(
        n * per_slice,
        SLICES_PER_PIECE * per_slice,
        n > 1,
        |i, o, s: &mut Scratch| piece.dispatch(i * SLICES_PER_PIECE, o, s),
    )
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    super::cpu::contiguous(data, layout, "batch statistics")
}

impl CustomOp1 for StatOp {
    fn name(&self) -> &'static str {
        "glom-batch-stat"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, b, d) = l.shape().dims3()?;
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(compute(&self.0, contiguous(v, l)?, None, n, b, d))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(compute(&self.0, contiguous(v, l)?, None, n, b, d))
            }
            _ => candle_core::bail!("batch statistics: f32 or f64 only"),
        };
        Ok((out, Shape::from((n, self.0.len()))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &StatGrad(self.0.clone()),
        )?))
    }
}

impl candle_core::CustomOp2 for StatGrad {
    fn name(&self) -> &'static str {
        "glom-batch-stat-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, b, d) = l1.shape().dims3()?;
        if l2.shape().dims() != [n, self.0.len()] {
            candle_core::bail!(
                "batch statistics grad: gradient {:?} for {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(compute(
                &self.0,
                contiguous(x, l1)?,
                Some(contiguous(g, l2)?),
                n,
                b,
                d,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(compute(
                &self.0,
                contiguous(x, l1)?,
                Some(contiguous(g, l2)?),
                n,
                b,
                d,
            )),
            _ => candle_core::bail!("batch statistics grad: f32 or f64, both the same"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::f64s;
    use super::*;
    use crate::model::terms;
    use candle_core::Var;

    fn random(seed: u64, dims: (usize, usize, usize), dtype: DType) -> Tensor {
        super::super::testutil::random(seed, dims, dtype, |u| u * 2.0 - 1.0)
    }

    /// The term and the gradient of `sum(term * w)` through the kernel or
    /// through candle's operations.
    fn run(x: &Tensor, w: &Tensor, stat: Stat, kernel: bool) -> (Vec<f64>, Vec<f64>) {
        let v = Var::from_tensor(x).unwrap();
        let y = match (stat, kernel) {
            (_, true) => batch_stat(v.as_tensor(), stat).unwrap().unwrap(),
            (Stat::Variance(form, target), false) => {
                terms::variance_ops(v.as_tensor(), form, target).unwrap()
            }
            (Stat::Covariance, false) => terms::covariance_ops(v.as_tensor()).unwrap(),
        };
        let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
        (f64s(&y), f64s(grads.get(v.as_tensor()).unwrap()))
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what} [{i}]: {x} vs {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn values_and_gradients_match_candles_operations() {
        let stats = [
            Stat::Variance(VarianceForm::Log, 1.0),
            Stat::Variance(VarianceForm::Hinge, 1.0),
            // A target that leaves some hinges inactive.
            Stat::Variance(VarianceForm::Hinge, 0.55),
            Stat::Covariance,
        ];
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
            for (i, &(n, b, d)) in [(3, 5, 4), (40, 16, 32), (1, 2, 2)].iter().enumerate() {
                let x = random(7 * i as u64 + 1, (n, b, d), dtype);
                let w = random(7 * i as u64 + 2, (n, 1, 1), dtype)
                    .reshape(n)
                    .unwrap();
                for stat in stats {
                    let (y0, g0) = run(&x, &w, stat, false);
                    let (y1, g1) = run(&x, &w, stat, true);
                    let what = format!("{stat:?} {dtype:?} {:?}", (n, b, d));
                    close(&y1, &y0, tol, &format!("{what} value"));
                    close(&g1, &g0, tol, &format!("{what} gradient"));
                }
            }
        }
    }

    #[test]
    fn a_slice_does_not_depend_on_the_others() {
        let x = random(3, (37, 8, 6), DType::F32);
        for stat in [Stat::Variance(VarianceForm::Log, 1.0), Stat::Covariance] {
            let whole = f64s(&batch_stat(&x, stat).unwrap().unwrap());
            for k in [0, 17, 36] {
                let one = x.narrow(0, k, 1).unwrap();
                let alone = f64s(&batch_stat(&one, stat).unwrap().unwrap());
                assert_eq!(alone[0].to_bits(), whole[k].to_bits(), "{stat:?} slice {k}");
            }
        }
    }

    #[test]
    fn every_simd_path_gives_the_same_bits() {
        let (n, b, d) = (5, 9, 13);
        let x: Vec<f32> = f64s(&random(4, (n, b, d), DType::F32))
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let g: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
        for stat in [
            Stat::Variance(VarianceForm::Log, 1.0),
            Stat::Variance(VarianceForm::Hinge, 2.0),
            Stat::Covariance,
        ] {
            for grads in [None, Some(&g[..])] {
                let piece = Piece {
                    stats: &[stat],
                    x: &x,
                    g: grads,
                    b,
                    d,
                };
                let len = if grads.is_some() { n * b * d } else { n };
                let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
                let mut add = |name, f: &dyn Fn(&mut [f32], &mut Scratch)| {
                    let mut out = vec![0f32; len];
                    f(&mut out, &mut Scratch::default());
                    paths.push((name, out));
                };
                add("plain", &|o, s| piece.run(0, o, s));
                add("dispatched", &|o, s| piece.dispatch(0, o, s));
                #[cfg(target_arch = "x86_64")]
                {
                    use super::super::cpu::{run_avx, run_avx512};
                    if std::arch::is_x86_feature_detected!("avx") {
                        // SAFETY: checked just above.
                        add("avx", &|out, s| unsafe {
                            run_avx(Slices {
                                piece,
                                first: 0,
                                out,
                                s,
                            })
                        });
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: checked just above.
                        add("avx512", &|out, s| unsafe {
                            run_avx512(Slices {
                                piece,
                                first: 0,
                                out,
                                s,
                            })
                        });
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for (name, out) in &paths[1..] {
                    assert_eq!(
                        bits(out),
                        bits(&paths[0].1),
                        "{stat:?}, {name}, grads {}",
                        grads.is_some()
                    );
                }
            }
        }
    }
}

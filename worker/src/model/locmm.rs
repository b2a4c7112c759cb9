//! Batched matrix product with one small weight matrix per location:
//! `y[p] = x[p] @ w[p]` for `x [P, B, in]` and `w [P, in, out]`.
//!
//! In per-location mode every grid location owns its MLP weights, so the
//! nets are many tiny products (B ~ 16 rows, 32..64 columns) rather than
//! one large one. candle's CPU batched matmul makes one general gemm call
//! per location, each with its own setup and buffers, at a fraction of the
//! speed of one shared-weight matmul of the same FLOPs; in a training step
//! these calls cost far more than their arithmetic (mostly in memory
//! management) and dominated the step. This module is a candle custom op
//! (forward and backward) for f32 and f64 that shares the locations out
//! over candle's CPU thread pool and multiplies each location with a
//! register-blocked kernel whose inner loop runs along the output row, so
//! it vectorises.
//!
//! Bitwise reproducibility: every location is computed by one thread, from
//! its own `x[p]` and `w[p]` only, with a blocking that depends only on the
//! matrix sizes, and every output element sums its products in ascending
//! order from zero, each step one IEEE fused multiply-add (no
//! reassociation). A location's result is therefore the same whatever P
//! is, however the locations are shared between threads, and whichever SIMD
//! width the CPU offers, so a grid split into tiles on several machines
//! gives the same numbers as the whole grid on one. x86 CPUs without FMA
//! (before 2013) take libm's exact `fma`, the same bits at a fraction of
//! the speed.
//!
//! Other dtypes and devices fall back to candle's matmul.

use std::ops::{Add, Mul};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `y[p] = x[p] @ w[p]` for `x [P, B, in]`, `w [P, in, out]`, giving
/// `[P, B, out]`, differentiable in both arguments.
pub(crate) fn loc_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (p, _, input) = x.dims3()?;
    let (pw, iw, _) = w.dims3()?;
    let supported = matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && p == pw
        && input == iw;
    if !supported {
        return x.matmul(w);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, LocMatmul(Product::Forward))
}

/// `y[p] = x[p] @ w[p] + b[p]` for `x [P, B, in]`, `w [P, in, out]` and
/// `b [P, 1, out]`, giving `[P, B, out]`, differentiable in all three: the
/// product and the bias in one pass over the output, and in one backward
/// node. Bitwise the same as [`loc_matmul`] followed by `broadcast_add`
/// (the bias is added to the finished sum, and its gradient sums `dy` over
/// the batch in ascending order from zero, as candle's `sum_keepdim`
/// does), so trained numbers do not change. Unsupported dtypes, devices
/// or shapes take that unfused path.
pub(crate) fn loc_affine(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !affine_supported(x, w, b)? {
        return loc_matmul(x, w)?.broadcast_add(b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LocAffine::plain())
}

/// `gelu(x[p] @ w[p] + b[p])` (`gelu.rs`), shapes as [`loc_affine`]: the
/// activation is applied to each location's output as soon as it is
/// finished, in one graph node. When a gradient may flow, the forward pass
/// keeps GELU's slope at every output (computed with the value, from the
/// same exponential), and the backward multiplies the incoming gradient
/// by it: no node and no gradient buffer for the pre-activation, and no
/// second pass through the exponential. Bitwise the same as
/// `gelu(loc_affine(x, w, b))`, which is the path for unsupported
/// dtypes, devices or shapes.
pub(crate) fn loc_affine_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !affine_supported(x, w, b)? {
        return super::gelu::gelu(&loc_affine(x, w, b)?);
    }
    let keep_slope = x.track_op() || w.track_op() || b.track_op();
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LocAffine::gelu(keep_slope),
    )
}

/// Whether [`LocAffine`] takes `x [P, B, in]`, `w [P, in, out]` and
/// `b [P, 1, out]`.
fn affine_supported(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<bool> {
    let (p, _, input) = x.dims3()?;
    let (pw, iw, out) = w.dims3()?;
    Ok(matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype()
        && x.dtype() == b.dtype()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && b.device().is_cpu()
        && p == pw
        && input == iw
        && b.dims() == [p, 1, out])
}

/// The gradients `(dy[p] @ w[p]^T, x[p]^T @ dy[p])` of `y = x @ w` with
/// respect to x and w, given `dy [P, B, out]` (f32 and f64 on the CPU),
/// each only for an argument that takes a gradient: an input detached from
/// the graph (every net's input under local learning) gets none, which
/// saves its product and the buffer candle's backward would fill with
/// zeros and add it into. The weights' gradient is `None` also once the
/// open sink took it ([`weight_grad`]).
pub(crate) fn loc_matmul_grads(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let dx = if x.track_op() {
        Some(dy.apply_op2_no_bwd(&w.contiguous()?, &LocMatmul(Product::GradX))?)
    } else {
        None
    };
    Ok((dx, weight_grad(x, w, &dy)?))
}

/// `x[p]^T @ dy[p]` for `x [P, B, in]` and `dy [P, B, out]`, the gradient
/// of `w [P, in, out]` in `y = x @ w`, or `None` if `w` takes none. While
/// [`super::grads::backward`] runs, it goes to the sink: its first
/// contribution as a fresh buffer, each later one added into the sum in
/// place ([`AddGradW`]: location by location, each product finished in a
/// small buffer and added as `sum + product`, the sink's own addition, so
/// the same bits), with no buffer of the whole gradient and no second
/// pass over it; then `None`. Otherwise the fresh gradient.
fn weight_grad(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
    if !w.track_op() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    if let Some(sum) = super::grads::sunk_sum(w) {
        if sum.elem_count() > 0 {
            sum.inplace_op3(&x, dy, &AddGradW)?;
        }
        return Ok(None);
    }
    let dw = x.apply_op2_no_bwd(dy, &LocMatmul(Product::GradW))?;
    super::grads::sink(w, Some(dw))
}

/// The ops' dispatch on the element type: `$body` with each `$name` the
/// contiguous elements of storage `$s` (layout `$l`), `$t` their type and
/// `$nr` its register block width (f32: 16, f64: 8), its value the
/// elements of the new storage; an error naming `$op` unless every
/// storage is f32 or every one f64.
macro_rules! by_dtype {
    ($op:expr; $(($name:ident, $s:expr, $l:expr)),+; |$t:ident, $nr:ident| $body:expr) => {
        match ($($s,)+) {
            ($(CpuStorage::F32($name),)+) => {
                type $t = f32;
                #[allow(dead_code)]
                const $nr: usize = 16;
                $(let $name: &[$t] = super::cpu::contiguous($name, $l, $op)?;)+
                CpuStorage::F32($body)
            }
            ($(CpuStorage::F64($name),)+) => {
                type $t = f64;
                #[allow(dead_code)]
                const $nr: usize = 8;
                $(let $name: &[$t] = super::cpu::contiguous($name, $l, $op)?;)+
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!(
                "{}: f32 or f64 inputs of one dtype only, got {:?}",
                $op,
                [$($s.dtype()),+]
            ),
        }
    };
}

/// Which of the three products of the forward and backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Product {
    /// `(x [P, B, in], w [P, in, out]) -> x @ w [P, B, out]`.
    Forward,
    /// `(dy [P, B, out], w [P, in, out]) -> dy @ w^T [P, B, in]`.
    GradX,
    /// `(x [P, B, in], dy [P, B, out]) -> x^T @ dy [P, in, out]`.
    GradW,
}

struct LocMatmul(Product);

impl CustomOp2 for LocMatmul {
    fn name(&self) -> &'static str {
        match self.0 {
            Product::Forward => "loc-matmul",
            Product::GradX => "loc-matmul-grad-x",
            Product::GradW => "loc-matmul-grad-w",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, a1, a2) = l1.shape().dims3()?;
        let (p2, b1, b2) = l2.shape().dims3()?;
        // Sizes of one location's product C [m, n] = A [m, k] @ B [k, n].
        let (m, k, n) = match self.0 {
            Product::Forward => (a1, a2, b2),
            Product::GradX => (a1, a2, b1),
            Product::GradW => (a2, a1, b2),
        };
        let consistent = p == p2
            && match self.0 {
                Product::Forward => a2 == b1,
                Product::GradX => a2 == b2,
                Product::GradW => a1 == b1,
            };
        if !consistent {
            candle_core::bail!(
                "{}: incompatible shapes {:?} and {:?}",
                self.name(),
                l1.shape(),
                l2.shape()
            );
        }
        let dims = Dims {
            p,
            m,
            k,
            n,
            a_len: a1 * a2,
            b_len: b1 * b2,
        };
        let shape = Shape::from((p, m, n));
        let storage = by_dtype!(self.name(); (a, s1, l1), (b, s2, l2); |T, NR| {
            run::<T, NR>(self.0, dims, a, b, None, Act::None, None).0
        });
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.0 != Product::Forward {
            return Err(candle_core::Error::BackwardNotSupported { op: self.name() });
        }
        let (dx, dw) = loc_matmul_grads(arg1, arg2, grad_res)?;
        Ok((dx, super::grads::sink(arg2, dw)?))
    }
}

/// [`loc_affine`]'s op: `(x, w, b) -> x @ w + b`, and
/// [`loc_affine_gelu`]'s: `gelu(x @ w + b)`.
struct LocAffine {
    /// `None`: no activation. `Some`: GELU, and (when `keep`) its slope at
    /// every output, kept by the forward pass for the backward.
    gelu: Option<Slope>,
}

struct Slope {
    keep: bool,
    kept: std::sync::Mutex<Option<Tensor>>,
}

impl LocAffine {
    fn plain() -> Self {
        Self { gelu: None }
    }

    fn gelu(keep: bool) -> Self {
        Self {
            gelu: Some(Slope {
                keep,
                kept: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The forward pass of one dtype, keeping the slope as asked.
    fn forward<T: Elem + candle_core::WithDType, const NR: usize>(
        &self,
        dims: Dims,
        x: &[T],
        w: &[T],
        b: &[T],
    ) -> Result<Vec<T>> {
        let act = match &self.gelu {
            None => Act::None,
            Some(s) if s.keep => Act::GeluKeepSlope,
            Some(_) => Act::Gelu,
        };
        let (out, slope) = run::<T, NR>(Product::Forward, dims, x, w, Some(b), act, None);
        if let (Some(s), Some(slope)) = (&self.gelu, slope) {
            let t = Tensor::from_vec(slope, (dims.p, dims.m, dims.n), &candle_core::Device::Cpu)?;
            *s.kept.lock().map_err(|_| lock_error(self.name()))? = Some(t);
        }
        Ok(out)
    }
}

impl CustomOp3 for LocAffine {
    fn name(&self) -> &'static str {
        match self.gelu {
            None => "loc-affine",
            Some(_) => "loc-affine-gelu",
        }
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
        let (p, m, k) = l1.shape().dims3()?;
        let (p2, k2, n) = l2.shape().dims3()?;
        if p != p2 || k != k2 || l3.shape().dims() != [p, 1, n] {
            candle_core::bail!(
                "loc-affine: incompatible shapes {:?}, {:?} and {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let dims = Dims {
            p,
            m,
            k,
            n,
            a_len: m * k,
            b_len: k * n,
        };
        let storage = by_dtype!(self.name(); (x, s1, l1), (w, s2, l2), (b, s3, l3); |T, NR| {
            self.forward::<T, NR>(dims, x, w, b)?
        });
        Ok((storage, Shape::from((p, m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Through GELU: the incoming gradient times the kept slope, `g *
        // gelu'(z)`, as GELU's own backward computes it.
        let through;
        let grad_res = match &self.gelu {
            None => grad_res,
            Some(s) => {
                let kept = s.kept.lock().map_err(|_| lock_error(self.name()))?.clone();
                let Some(slope) = kept else {
                    candle_core::bail!("loc-affine-gelu: no slope kept for the backward pass");
                };
                through = grad_res.mul(&slope)?;
                &through
            }
        };
        let (dx, dw) = loc_matmul_grads(x, w, grad_res)?;
        let db = bias_grad(b, grad_res)?;
        Ok((dx, super::grads::sink(w, dw)?, super::grads::sink(b, db)?))
    }
}

/// `gelu(x[p] @ w1[p] + b1[p]) @ w2[p] + b2[p]`, a whole per-location
/// MLP as one graph node (shapes as [`loc_affine`]: `x [P, B, in]`, `w1
/// [P, in, h]`, `b1 [P, 1, h]`, `w2 [P, h, out]`, `b2 [P, 1, out]`,
/// giving `[P, B, out]`). As two nodes ([`loc_affine_gelu`], then
/// [`loc_affine`]), candle's backward made the hidden layer's gradient a
/// buffer of zeros plus the incoming one, then multiplied it by GELU's
/// slope in another pass; here the backward takes the product through the
/// slope in the same pass as `dy @ w2^T`, with the same roundings (so the
/// same bits: `(0 + g) * slope`), and the hidden layer has no node.
///
/// The biases are held by the node rather than passed as its arguments
/// (candle's custom ops take three), so their gradients go to the sink of
/// [`super::grads::backward`]: an MLP that takes a gradient is one node
/// only inside [`super::grads::fusing`] (the trainer's step, the sleep
/// jobs), whose backward runs through that sink; a backward of such a
/// node outside it is an error naming this op. Elsewhere, and for a bias
/// that takes a gradient when nothing else does (candle would not visit
/// the node), or that is not a contiguous variable (no sink could take
/// its gradient), and for unsupported dtypes, devices or shapes: the two
/// nodes. With nothing to differentiate (inference), always one node.
pub(crate) fn loc_mlp_gelu(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    let held = |b: &Tensor| (b.is_variable() || !b.track_op()) && b.is_contiguous();
    let args_track = x.track_op() || w1.track_op() || w2.track_op();
    let keep = args_track || b1.track_op() || b2.track_op();
    let one_node = !keep || (args_track && super::grads::is_fusing());
    if !one_node || !mlp_supported(x, w1, b1, w2, b2)? || !held(b1) || !held(b2) {
        return loc_affine(&loc_affine_gelu(x, w1, b1)?, w2, b2);
    }
    x.contiguous()?.apply_op3(
        &w1.contiguous()?,
        &w2.contiguous()?,
        LocMlp {
            b1: b1.clone(),
            b2: b2.clone(),
            keep,
            kept: std::sync::Mutex::new(None),
        },
    )
}

/// Whether [`LocMlp`] takes `x [P, B, in]`, `w1 [P, in, h]`, `b1 [P, 1,
/// h]`, `w2 [P, h, out]` and `b2 [P, 1, out]`.
fn mlp_supported(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Result<bool> {
    if !affine_supported(x, w1, b1)? {
        return Ok(false);
    }
    let (p, _, hidden) = w1.dims3()?;
    let (p2, h2, out) = w2.dims3()?;
    Ok(p == p2
        && hidden == h2
        && w2.dtype() == x.dtype()
        && b2.dtype() == x.dtype()
        && w2.device().is_cpu()
        && b2.device().is_cpu()
        && b2.dims() == [p, 1, out])
}

/// [`loc_mlp_gelu`]'s op: `(x, w1, w2) -> gelu(x @ w1 + b1) @ w2 + b2`.
struct LocMlp {
    b1: Tensor,
    b2: Tensor,
    /// Keep the hidden layer and GELU's slope for the backward.
    keep: bool,
    /// `(hidden, slope)`, `[P, B, h]` each, once the forward pass ran.
    kept: std::sync::Mutex<Option<(Tensor, Tensor)>>,
}

impl LocMlp {
    /// The forward pass of one dtype: the two products of
    /// [`loc_affine_gelu`] and [`loc_affine`], the same calls.
    fn forward<T: Elem + candle_core::WithDType, const NR: usize>(
        &self,
        (x, xl): (&[T], &Layout),
        (w1, l1): (&[T], &Layout),
        (w2, l2): (&[T], &Layout),
    ) -> Result<Vec<T>> {
        let (p, m, k) = xl.shape().dims3()?;
        let (_, _, hidden) = l1.shape().dims3()?;
        let (_, _, n) = l2.shape().dims3()?;
        let first = Dims {
            p,
            m,
            k,
            n: hidden,
            a_len: m * k,
            b_len: k * hidden,
        };
        let second = Dims {
            p,
            m,
            k: hidden,
            n,
            a_len: m * hidden,
            b_len: hidden * n,
        };
        let act = if self.keep {
            Act::GeluKeepSlope
        } else {
            Act::Gelu
        };
        let name = "loc-mlp-gelu";
        let (h, slope) = super::cpu::with_elements(&self.b1, name, |b1: &[T]| {
            run::<T, NR>(Product::Forward, first, x, w1, Some(b1), act, None)
        })?;
        let (y, _) = super::cpu::with_elements(&self.b2, name, |b2: &[T]| {
            run::<T, NR>(Product::Forward, second, &h, w2, Some(b2), Act::None, None)
        })?;
        if let Some(slope) = slope {
            let cpu = candle_core::Device::Cpu;
            let h = Tensor::from_vec(h, (p, m, hidden), &cpu)?;
            let slope = Tensor::from_vec(slope, (p, m, hidden), &cpu)?;
            *self.kept.lock().map_err(|_| lock_error(name))? = Some((h, slope));
        }
        Ok(y)
    }
}

/// The error of a poisoned lock of what `op` keeps for its backward.
fn lock_error(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: lock poisoned"))
}

/// The bias's gradient for the gradient `dy [P, B, out]` of an affine
/// layer's output ([`BatchSum`]), or `None` if `b` takes none.
fn bias_grad(b: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
    b.track_op()
        .then(|| dy.contiguous()?.apply_op1_no_bwd(&BatchSum))
        .transpose()
}

impl CustomOp3 for LocMlp {
    fn name(&self) -> &'static str {
        "loc-mlp-gelu"
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
        let (p, m, k) = l1.shape().dims3()?;
        let (p1, k1, hidden) = l2.shape().dims3()?;
        let (p2, h2, n) = l3.shape().dims3()?;
        if p != p1 || p != p2 || k != k1 || hidden != h2 {
            candle_core::bail!(
                "loc-mlp-gelu: incompatible shapes {:?}, {:?} and {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        if self.b1.dims() != [p, 1, hidden] || self.b2.dims() != [p, 1, n] {
            candle_core::bail!(
                "loc-mlp-gelu: biases {:?} and {:?} for {p} locations, {hidden} hidden, {n} out",
                self.b1.dims(),
                self.b2.dims()
            );
        }
        let storage = by_dtype!(self.name(); (x, s1, l1), (w1, s2, l2), (w2, s3, l3); |T, NR| {
            self.forward::<T, NR>((x, l1), (w1, l2), (w2, l3))?
        });
        Ok((storage, Shape::from((p, m, n))))
    }

    /// The backward of the two nodes it replaces, in their order: the
    /// second layer's (`dw2`, `db2`, and `dh = dy @ w2^T` taken through
    /// GELU's slope), then the first's (`dx`, `dw1`, `db1`), each weight's
    /// and bias's gradient handed to the sink in that order.
    fn bwd(
        &self,
        x: &Tensor,
        w1: &Tensor,
        w2: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kept = self
            .kept
            .lock()
            .map_err(|_| lock_error(self.name()))?
            .clone();
        let Some((h, slope)) = kept else {
            candle_core::bail!("loc-mlp-gelu: no hidden layer kept for the backward pass");
        };
        let dy = dy.contiguous()?;
        let dw2 = weight_grad(&h, w2, &dy)?;
        super::grads::sink_held(&self.b2, bias_grad(&self.b2, &dy)?, self.name())?;
        if !(x.track_op() || w1.track_op() || self.b1.track_op()) {
            return Ok((None, None, dw2));
        }
        let through = dy.apply_op3_no_bwd(w2, &slope, &GradThroughSlope)?;
        let (dx, dw1) = loc_matmul_grads(x, w1, &through)?;
        super::grads::sink_held(&self.b1, bias_grad(&self.b1, &through)?, self.name())?;
        Ok((dx, dw1, dw2))
    }
}

/// `(dy [P, B, out], w [P, h, out], slope [P, B, h]) -> (0 + dy @ w^T) *
/// slope`: the gradient of a hidden GELU layer's input (see [`run`]'s
/// `times`).
struct GradThroughSlope;

impl CustomOp3 for GradThroughSlope {
    fn name(&self) -> &'static str {
        "loc-grad-through-slope"
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
        let (p, m, n) = l1.shape().dims3()?;
        let (p2, k, n2) = l2.shape().dims3()?;
        if p != p2 || n != n2 || l3.shape().dims() != [p, m, k] {
            candle_core::bail!(
                "{}: incompatible shapes {:?}, {:?} and {:?}",
                self.name(),
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        // GradX's sizes: C [m, k] = dy [m, n] @ w^T [n, k].
        let dims = Dims {
            p,
            m,
            k: n,
            n: k,
            a_len: m * n,
            b_len: k * n,
        };
        let storage = by_dtype!(self.name(); (a, s1, l1), (b, s2, l2), (t, s3, l3); |T, NR| {
            run::<T, NR>(Product::GradX, dims, a, b, None, Act::None, Some(t)).0
        });
        Ok((storage, Shape::from((p, m, k))))
    }
}

/// `sum [P, in, out] += x^T @ dy` for `x [P, B, in]` and `dy [P, B, out]`,
/// in place ([`weight_grad`]): each location's product into a buffer of
/// the thread's, then `sum + product`, element by element.
struct AddGradW;

impl candle_core::InplaceOp3 for AddGradW {
    fn name(&self) -> &'static str {
        "loc-grad-w-add"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
        dy: &CpuStorage,
        yl: &Layout,
    ) -> Result<()> {
        let (p, b, input) = xl.shape().dims3()?;
        let (p2, b2, out) = yl.shape().dims3()?;
        if p != p2 || b != b2 || dl.shape().dims() != [p, input, out] {
            candle_core::bail!(
                "{}: incompatible shapes {:?}, {:?} and {:?}",
                self.name(),
                dl.shape(),
                xl.shape(),
                yl.shape()
            );
        }
        // GradW's sizes: C [in, out] = x^T [in, B] @ dy [B, out].
        let d = Dims {
            p,
            m: input,
            k: b,
            n: out,
            a_len: b * input,
            b_len: b * out,
        };
        fn go<T: Elem, const NR: usize>(d: Dims, sum: &mut [T], x: &[T], dy: &[T]) {
            let c_len = d.m * d.n;
            let parallel = d.p > 1 && d.p * c_len * d.k > PARALLEL_WORK;
            type Scratch<T> = (Vec<T>, Vec<T>);
            super::cpu::for_each_chunk(sum, c_len, parallel, |loc, sum, s: &mut Scratch<T>| {
                let (c, t) = s;
                c.clear();
                c.resize(c_len, T::default());
                let (a, b) = (
                    &x[loc * d.a_len..(loc + 1) * d.a_len],
                    &dy[loc * d.b_len..(loc + 1) * d.b_len],
                );
                location::<T, NR>(Product::GradW, d, a, b, c, t);
                for (s, &v) in sum.iter_mut().zip(c.iter()) {
                    *s = *s + v;
                }
            });
        }
        let name = self.name();
        match (dst, x, dy) {
            (CpuStorage::F32(s), CpuStorage::F32(x), CpuStorage::F32(y)) => {
                let s = super::cpu::contiguous_mut(s, dl, name)?;
                let read = super::cpu::contiguous::<f32>;
                go::<f32, 16>(d, s, read(x, xl, name)?, read(y, yl, name)?)
            }
            (CpuStorage::F64(s), CpuStorage::F64(x), CpuStorage::F64(y)) => {
                let s = super::cpu::contiguous_mut(s, dl, name)?;
                let read = super::cpu::contiguous::<f64>;
                go::<f64, 8>(d, s, read(x, xl, name)?, read(y, yl, name)?)
            }
            (s, x, y) => candle_core::bail!(
                "{}: unsupported dtypes {:?}, {:?} and {:?}",
                self.name(),
                s.dtype(),
                x.dtype(),
                y.dtype()
            ),
        }
        Ok(())
    }
}

/// `y [P, B, out] + b [1, 1, out]`: one bias row added to every row, as
/// `y.broadcast_add(b)` (the shared nets' bias), as one node whose
/// backward sums `dy` over all `P B` rows in ascending order from zero
/// ([`BatchSum`]) for `b`. candle's backward of the broadcast took that
/// sum by its general reduction, element by element with two integer
/// divisions each, on one thread: a fifth of a BPTT step with shared
/// nets. Same bits, forward and backward (candle's reduction adds the
/// rows in the same order). Other dtypes, devices and shapes take
/// `broadcast_add`.
pub(crate) fn shared_bias_add(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, _, out) = y.dims3()?;
    let supported = matches!(y.dtype(), DType::F32 | DType::F64)
        && y.dtype() == b.dtype()
        && y.device().is_cpu()
        && b.device().is_cpu()
        && b.dims() == [1, 1, out];
    if !supported {
        return y.broadcast_add(b);
    }
    y.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
}

/// [`shared_bias_add`]'s op.
struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "shared-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, m, n) = l1.shape().dims3()?;
        if l2.shape().dims() != [1, 1, n] {
            candle_core::bail!(
                "{}: bias {:?} for {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            );
        }
        fn add<T: Elem>(y: &[T], b: &[T], rows: usize, n: usize) -> Vec<T> {
            let chunk = (PARALLEL_WORK / n.max(1)).max(1) * n;
            super::cpu::fresh(
                rows * n,
                chunk,
                rows * n > PARALLEL_WORK,
                |i, o, _: &mut ()| {
                    let y = &y[i * chunk..i * chunk + o.len()];
                    for (orow, yrow) in o.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
                        for ((o, &v), &bv) in orow.iter_mut().zip(yrow).zip(b) {
                            *o = v + bv;
                        }
                    }
                },
            )
        }
        let storage = by_dtype!(self.name(); (y, s1, l1), (b, s2, l2); |T, NR| {
            add::<T>(y, b, p * m, n)
        });
        Ok((storage, Shape::from((p, m, n))))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy_out = y.track_op().then(|| dy.clone());
        let db = if b.track_op() {
            let (p, m, n) = dy.dims3()?;
            let rows = dy.contiguous()?.reshape((1, p * m, n))?;
            Some(rows.apply_op1_no_bwd(&BatchSum)?)
        } else {
            None
        };
        Ok((dy_out, db))
    }
}

/// `dy [P, B, out] -> [P, 1, out]`: the sum over the batch, in ascending
/// order from zero (the bias gradient of [`loc_affine`]).
struct BatchSum;

impl candle_core::CustomOp1 for BatchSum {
    fn name(&self) -> &'static str {
        "loc-batch-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (p, m, n) = l.shape().dims3()?;
        // Each location's sum by one thread, the locations shared out.
        fn sum<T: Elem>(v: &[T], p: usize, m: usize, n: usize) -> Vec<T> {
            let parallel = p > 1 && p * m * n > PARALLEL_WORK;
            super::cpu::fresh(p * n, n, parallel, |loc, o, _: &mut ()| {
                for row in v[loc * m * n..(loc + 1) * m * n].chunks_exact(n) {
                    for (o, &d) in o.iter_mut().zip(row) {
                        *o = *o + d;
                    }
                }
            })
        }
        let storage = by_dtype!(self.name(); (v, s, l); |T, NR| sum::<T>(v, p, m, n));
        Ok((storage, Shape::from((p, 1, n))))
    }
}

/// Sizes of one call: P products `C [m, n] = A [m, k] @ B [k, n]`, with
/// `a_len` and `b_len` elements of the two inputs per location.
#[derive(Debug, Clone, Copy)]
struct Dims {
    p: usize,
    m: usize,
    k: usize,
    n: usize,
    a_len: usize,
    b_len: usize,
}

pub(crate) trait Elem:
    Copy + Default + Send + Sync + Add<Output = Self> + Mul<Output = Self>
{
    /// `self * b + c` rounded once (IEEE fused multiply-add): one
    /// instruction where the CPU has FMA, else libm's exact emulation, the
    /// same bits either way.
    fn mul_add(self, b: Self, c: Self) -> Self;

    /// GELU in place over `v`, its slope into `slope` where given
    /// ([`super::gelu::InPlace`], at the widest SIMD the CPU has).
    fn gelu(v: &mut [Self], slope: Option<&mut [Self]>);

    /// [`gemm_generic`] for 512-bit vectors, with a register block two
    /// vectors wide (32 f32, 16 f64).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and FMA.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_avx512(
        m: usize,
        k: usize,
        n: usize,
        a: &[Self],
        rs: usize,
        cs: usize,
        b: &[Self],
        c: &mut [Self],
        blocks: Blocks,
    );

    /// [`gemm_generic`]'s result from a hand-blocked kernel for 256-bit
    /// vectors ([`avx2`]).
    ///
    /// # Safety
    /// The CPU must support AVX and FMA.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_avx2(
        m: usize,
        k: usize,
        n: usize,
        a: &[Self],
        rs: usize,
        cs: usize,
        b: &[Self],
        c: &mut [Self],
        blocks: Blocks,
    );
}

/// [`Elem`] for a float type: its AVX-512 block width and AVX2 kernel.
macro_rules! elem {
    ($t:ty, $nr512:expr, $avx2:ident) => {
        impl Elem for $t {
            #[inline(always)]
            fn mul_add(self, b: $t, c: $t) -> $t {
                <$t>::mul_add(self, b, c)
            }

            fn gelu(v: &mut [$t], slope: Option<&mut [$t]>) {
                super::cpu::dispatch(super::gelu::InPlace { v, slope })
            }

            #[cfg(target_arch = "x86_64")]
            unsafe fn gemm_avx512(
                m: usize,
                k: usize,
                n: usize,
                a: &[$t],
                rs: usize,
                cs: usize,
                b: &[$t],
                c: &mut [$t],
                blocks: Blocks,
            ) {
                gemm_avx512::<$t, $nr512>(m, k, n, a, rs, cs, b, c, blocks)
            }

            #[cfg(target_arch = "x86_64")]
            unsafe fn gemm_avx2(
                m: usize,
                k: usize,
                n: usize,
                a: &[$t],
                rs: usize,
                cs: usize,
                b: &[$t],
                c: &mut [$t],
                blocks: Blocks,
            ) {
                avx2::$avx2(m, k, n, a, rs, cs, b, c, blocks)
            }
        }
    };
}

elem!(f32, 32, gemm_f32);
elem!(f64, 16, gemm_f64);

/// Multiply-adds below which a call stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

/// Rows of the register block.
const MR: usize = 4;

/// The activation applied to a finished location's output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    None,
    Gelu,
    /// GELU, and its slope at every output into a second buffer.
    GeluKeepSlope,
}

/// All P products, the locations shared out over candle's CPU thread pool
/// (the one its element-wise ops use, so no second pool competes for the
/// cores). `NR` is the width of the register block. With `bias`
/// (`[P, n]`, forward product only), location p's bias row is added to
/// every row of its finished product, and then `act` applied (the slope
/// comes back for [`Act::GeluKeepSlope`]). With `times` (`[P, m, n]`),
/// every output `c` becomes `(0 + c) * times`: an incoming gradient taken
/// through GELU's kept slope, rounded as candle's backward rounds it (the
/// sum of a fresh gradient into zeros, then the product).
fn run<T: Elem, const NR: usize>(
    product: Product,
    d: Dims,
    a: &[T],
    b: &[T],
    bias: Option<&[T]>,
    act: Act,
    times: Option<&[T]>,
) -> (Vec<T>, Option<Vec<T>>) {
    let c_len = d.m * d.n;
    let len = d.p * c_len;
    let one = |loc: usize, c: &mut [T], slope: Option<&mut [T]>, scratch: &mut Vec<T>| {
        let a = &a[loc * d.a_len..(loc + 1) * d.a_len];
        let b = &b[loc * d.b_len..(loc + 1) * d.b_len];
        location::<T, NR>(product, d, a, b, c, scratch);
        if let Some(bias) = bias {
            let row_bias = &bias[loc * d.n..(loc + 1) * d.n];
            for row in c.chunks_exact_mut(d.n) {
                for (o, &v) in row.iter_mut().zip(row_bias) {
                    *o = *o + v;
                }
            }
        }
        if act != Act::None {
            T::gelu(c, slope);
        }
        if let Some(times) = times {
            let times = &times[loc * c_len..(loc + 1) * c_len];
            for (o, &t) in c.iter_mut().zip(times) {
                *o = (T::default() + *o) * t;
            }
        }
    };
    let parallel = d.p > 1 && len * d.k > PARALLEL_WORK;
    if act == Act::GeluKeepSlope {
        let (out, slope) = super::cpu::fresh_pair(len, c_len, parallel, |loc, c, s, scratch| {
            one(loc, c, Some(s), scratch)
        });
        (out, Some(slope))
    } else {
        let out = super::cpu::fresh(len, c_len, parallel, |loc, c, scratch| {
            one(loc, c, None, scratch)
        });
        (out, None)
    }
}

/// One location's product into `c [m, n]`.
fn location<T: Elem, const NR: usize>(
    product: Product,
    d: Dims,
    a: &[T],
    b: &[T],
    c: &mut [T],
    scratch: &mut Vec<T>,
) {
    let Dims { m, k, n, .. } = d;
    match product {
        // A = x [B, in] (row stride in), B = w [in, out].
        Product::Forward => gemm::<T, NR>(m, k, n, a, k, 1, b, c),
        // A = dy [B, out], B = w^T [out, in] (transposed into scratch).
        Product::GradX => {
            transpose(b, n, k, scratch);
            gemm::<T, NR>(m, k, n, a, k, 1, scratch, c)
        }
        // A = x^T [in, B] (read in place: row stride 1, column stride in),
        // B = dy [B, out].
        Product::GradW => gemm::<T, NR>(m, k, n, a, 1, m, b, c),
    }
}

/// `dst [cols, rows] = src [rows, cols]^T`, eight source rows at a time:
/// each pass reads eight rows front to back and writes eight adjacent
/// elements of every destination row (an element at a time, the rows read
/// down their columns, had been a twentieth of a training step).
pub(crate) fn transpose<T: Copy + Default>(src: &[T], rows: usize, cols: usize, dst: &mut Vec<T>) {
    const BLOCK: usize = 8;
    dst.clear();
    dst.resize(rows * cols, T::default());
    let src = &src[..rows * cols];
    let mut r0 = 0;
    while r0 + BLOCK <= rows {
        let block: [&[T]; BLOCK] =
            std::array::from_fn(|i| &src[(r0 + i) * cols..(r0 + i + 1) * cols]);
        for (c, out) in dst.chunks_exact_mut(rows).enumerate() {
            let out = &mut out[r0..r0 + BLOCK];
            for (o, row) in out.iter_mut().zip(&block) {
                *o = row[c];
            }
        }
        r0 += BLOCK;
    }
    for r in r0..rows {
        let row = &src[r * cols..(r + 1) * cols];
        for (c, &v) in row.iter().enumerate() {
            dst[c * rows + r] = v;
        }
    }
}

/// `C [m, n] = A [m, k] @ B [k, n]`, B and C row-major, A with row stride
/// `rs` and column stride `cs`. Dispatches on the SIMD width available
/// (`NR` is the block width for 256-bit vectors; 512-bit ones take
/// [`Elem::gemm_avx512`]'s); every path computes bitwise the same result.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Elem, const NR: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    rs: usize,
    cs: usize,
    b: &[T],
    c: &mut [T],
) {
    gemm_blocks::<T, NR>(m, k, n, a, rs, cs, b, c, Blocks::All)
}

/// `C [d, d] = A^T A` for `A [k, d]` row-major (the covariance's product:
/// `A` is the centred batch): the blocks of [`gemm`] that touch the
/// diagonal or lie above it, then the entries below the diagonal copied
/// from their mirror images. The same bits as [`gemm`] of `A^T` by `A`:
/// entry `(j, i)` sums the same exact products (`a_tj a_ti = a_ti a_tj`)
/// in the same order. About two thirds of the multiply-adds at d = 32.
pub(crate) fn gemm_symmetric<T: Elem, const NR: usize>(d: usize, k: usize, a: &[T], c: &mut [T]) {
    gemm_blocks::<T, NR>(d, k, d, a, 1, d, a, c, Blocks::Upper);
    for i in 1..d {
        for j in 0..i {
            c[i * d + j] = c[j * d + i];
        }
    }
}

/// Which register blocks of C a kernel computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocks {
    All,
    /// Only those with a column at or right of their first row's diagonal
    /// (the others are left as they were; the ragged edges are computed
    /// whole).
    Upper,
}

impl Blocks {
    /// Whether the block of rows from `i0` and columns `j0..j0 + nr` is
    /// skipped.
    #[inline(always)]
    fn skips(self, i0: usize, j0: usize, nr: usize) -> bool {
        self == Blocks::Upper && j0 + nr <= i0
    }
}

/// [`gemm`], for the blocks `blocks` says.
#[allow(clippy::too_many_arguments)]
fn gemm_blocks<T: Elem, const NR: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    rs: usize,
    cs: usize,
    b: &[T],
    c: &mut [T],
    blocks: Blocks,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX-512F and FMA, checked just above.
            unsafe { T::gemm_avx512(m, k, n, a, rs, cs, b, c, blocks) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX and FMA, checked just above.
            unsafe { T::gemm_avx2(m, k, n, a, rs, cs, b, c, blocks) };
            return;
        }
    }
    gemm_generic::<T, NR>(m, k, n, a, rs, cs, b, c, blocks)
}

/// The per-location products on 256-bit vectors (AVX and FMA), blocked by
/// hand: [`gemm_generic`] compiled for AVX2 held a 4 x 2-vector block, eight
/// accumulators, too few to cover the fused multiply-add's latency, and its
/// inner loop kept bounds checks and reloaded a pointer from the stack
/// every step (44% of a one-thread training step on an AMD EPYC without
/// AVX-512). These kernels hold 6 x 2 vectors (twelve accumulators, two
/// vectors of B and one broadcast of A: fifteen of the sixteen registers)
/// and walk raw pointers. Each output is still one chain of fused
/// multiply-adds over k in ascending order from zero, so the bits are
/// [`gemm_generic`]'s.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Rows of the register block.
    const MR: usize = 6;

    /// `$kernel::<rows>(args)` for a row count of 1 to [`MR`] known only
    /// at run time (each count its own unrolled kernel).
    macro_rules! by_rows {
        ($rows:expr, $kernel:ident($($arg:expr),*)) => {
            match $rows {
                6 => $kernel::<6>($($arg),*),
                5 => $kernel::<5>($($arg),*),
                4 => $kernel::<4>($($arg),*),
                3 => $kernel::<3>($($arg),*),
                2 => $kernel::<2>($($arg),*),
                _ => $kernel::<1>($($arg),*),
            }
        };
    }

    /// One kernel per element type: `$w` lanes a vector and its intrinsics.
    macro_rules! kernel {
        ($gemm:ident, $block:ident, $edge:ident, $mask:ident, $t:ty, $w:expr, $zero:ident,
         $load:ident, $store:ident, $maskload:ident, $maskstore:ident, $splat:ident,
         $fma:ident) => {
            /// `C [m, n] = A [m, k] @ B [k, n]` as [`super::gemm`] (same
            /// arguments, same bits), for the blocks `blocks` says.
            ///
            /// # Safety
            /// The CPU must support AVX and FMA.
            #[target_feature(enable = "avx,fma")]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $gemm(
                m: usize,
                k: usize,
                n: usize,
                a: &[$t],
                rs: usize,
                cs: usize,
                b: &[$t],
                c: &mut [$t],
                blocks: super::Blocks,
            ) {
                assert!(b.len() >= k * n && c.len() >= m * n);
                assert!(m == 0 || k == 0 || a.len() > (m - 1) * rs + (k - 1) * cs);
                let nr = 2 * $w;
                let n_full = n - n % nr;
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                // Each block of up to MR rows: its two-vector column
                // blocks, then the ragged right edge one vector (or part
                // of one) at a time, the accumulators in registers as in
                // the blocks (a row-by-row loop through memory had made
                // d = 24 run at half the speed of d = 32).
                let mut i0 = 0;
                while i0 < m {
                    let rows = (m - i0).min(MR);
                    for j0 in (0..n_full).step_by(nr) {
                        if blocks.skips(i0, j0, nr) {
                            continue;
                        }
                        // SAFETY: rows i0..i0 + rows of A and C, columns
                        // j0..j0 + nr of B and C, all inside the slices by
                        // the assertions above.
                        unsafe {
                            let (a, b, c) = (ap.add(i0 * rs), bp.add(j0), cp.add(i0 * n + j0));
                            by_rows!(rows, $block(k, n, a, rs, cs, b, c))
                        }
                    }
                    for j0 in (n_full..n).step_by($w) {
                        let mask = $mask((n - j0).min($w));
                        // SAFETY: as above; the lanes past column n are
                        // masked out of every load and store.
                        unsafe {
                            let (a, b, c) = (ap.add(i0 * rs), bp.add(j0), cp.add(i0 * n + j0));
                            by_rows!(rows, $edge(k, n, a, rs, cs, b, c, mask))
                        }
                    }
                    i0 += rows;
                }
            }

            /// `R` rows by the lanes of one vector that `mask` keeps, as
            /// [`$block`] computes each of its columns.
            ///
            /// # Safety
            /// AVX and FMA; every element of a kept lane is in bounds.
            #[target_feature(enable = "avx,fma")]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $edge<const R: usize>(
                k: usize,
                n: usize,
                a: *const $t,
                rs: usize,
                cs: usize,
                b: *const $t,
                c: *mut $t,
                mask: __m256i,
            ) {
                let mut acc = [$zero(); R];
                let (mut a, mut b) = (a, b);
                for _ in 0..k {
                    // SAFETY: the caller's bounds; masked lanes are not
                    // read.
                    unsafe {
                        let bv = $maskload(b, mask);
                        for r in 0..R {
                            let av = $splat(&*a.add(r * rs));
                            acc[r] = $fma(av, bv, acc[r]);
                        }
                    }
                    a = a.wrapping_add(cs);
                    b = b.wrapping_add(n);
                }
                for (r, acc) in acc.into_iter().enumerate() {
                    // SAFETY: the caller's bounds; masked lanes are not
                    // written.
                    unsafe { $maskstore(c.add(r * n), mask, acc) };
                }
            }

            /// `R` rows by two vectors of C, from A's rows at `a` (row
            /// stride `rs`, column stride `cs`) and B's columns at `b`
            /// (row stride `n`).
            ///
            /// # Safety
            /// AVX and FMA; every element read or written is in bounds.
            #[target_feature(enable = "avx,fma")]
            #[inline]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $block<const R: usize>(
                k: usize,
                n: usize,
                a: *const $t,
                rs: usize,
                cs: usize,
                b: *const $t,
                c: *mut $t,
            ) {
                let mut lo = [$zero(); R];
                let mut hi = [$zero(); R];
                let (mut a, mut b) = (a, b);
                for _ in 0..k {
                    // SAFETY: the caller's bounds; the pointers move past
                    // the end only after the last step (wrapping_add).
                    unsafe {
                        let b0 = $load(b);
                        let b1 = $load(b.add($w));
                        for r in 0..R {
                            let av = $splat(&*a.add(r * rs));
                            lo[r] = $fma(av, b0, lo[r]);
                            hi[r] = $fma(av, b1, hi[r]);
                        }
                    }
                    a = a.wrapping_add(cs);
                    b = b.wrapping_add(n);
                }
                for r in 0..R {
                    // SAFETY: the caller's bounds.
                    unsafe {
                        $store(c.add(r * n), lo[r]);
                        $store(c.add(r * n + $w), hi[r]);
                    }
                }
            }
        };
    }

    /// A mask keeping the first `cols` (1..=8) of eight f32 lanes.
    #[target_feature(enable = "avx")]
    fn mask_f32(cols: usize) -> __m256i {
        let m: [i32; 8] = std::array::from_fn(|i| if i < cols { -1 } else { 0 });
        // SAFETY: `m` is 32 readable bytes.
        unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
    }

    /// A mask keeping the first `cols` (1..=4) of four f64 lanes.
    #[target_feature(enable = "avx")]
    fn mask_f64(cols: usize) -> __m256i {
        let m: [i64; 4] = std::array::from_fn(|i| if i < cols { -1 } else { 0 });
        // SAFETY: `m` is 32 readable bytes.
        unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
    }

    kernel!(
        gemm_f32,
        block_f32,
        edge_f32,
        mask_f32,
        f32,
        8,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_maskload_ps,
        _mm256_maskstore_ps,
        _mm256_broadcast_ss,
        _mm256_fmadd_ps
    );
    kernel!(
        gemm_f64,
        block_f64,
        edge_f64,
        mask_f64,
        f64,
        4,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_maskload_pd,
        _mm256_maskstore_pd,
        _mm256_broadcast_sd,
        _mm256_fmadd_pd
    );
}

/// [`gemm_generic`] compiled for 512-bit vectors (AVX-512F) and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512<T: Elem, const NR: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    rs: usize,
    cs: usize,
    b: &[T],
    c: &mut [T],
    blocks: Blocks,
) {
    gemm_generic::<T, NR>(m, k, n, a, rs, cs, b, c, blocks)
}

/// The kernel: blocks of `MR x NR` outputs held in registers while the
/// products are summed over k in ascending order (i-k-j order, the j loop
/// vectorised), then the ragged right and bottom edges with the same
/// summation order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_generic<T: Elem, const NR: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    rs: usize,
    cs: usize,
    b: &[T],
    c: &mut [T],
    blocks: Blocks,
) {
    assert!(b.len() >= k * n && c.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * rs + (k - 1) * cs);
    let n_full = n - n % NR;
    let m_full = m - m % MR;
    for i0 in (0..m_full).step_by(MR) {
        for j0 in (0..n_full).step_by(NR) {
            if blocks.skips(i0, j0, NR) {
                continue;
            }
            let mut acc = [[T::default(); NR]; MR];
            for t in 0..k {
                let brow: &[T; NR] = b[t * n + j0..t * n + j0 + NR].try_into().unwrap();
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = a[(i0 + r) * rs + t * cs];
                    for (o, &bv) in acc.iter_mut().zip(brow) {
                        *o = av.mul_add(bv, *o);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = (i0 + r) * n + j0;
                c[row..row + NR].copy_from_slice(acc);
            }
        }
    }
    // Right edge of the full row blocks, then the remaining rows.
    if n_full < n {
        for i in 0..m_full {
            edge_row(i, n_full, k, n, a, rs, cs, b, c);
        }
    }
    for i in m_full..m {
        edge_row(i, 0, k, n, a, rs, cs, b, c);
    }
}

/// Columns `j0..n` of row `i` of C, summed over k in ascending order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn edge_row<T: Elem>(
    i: usize,
    j0: usize,
    k: usize,
    n: usize,
    a: &[T],
    rs: usize,
    cs: usize,
    b: &[T],
    c: &mut [T],
) {
    let out = &mut c[i * n + j0..(i + 1) * n];
    out.fill(T::default());
    for t in 0..k {
        let av = a[i * rs + t * cs];
        for (o, &bv) in out.iter_mut().zip(&b[t * n + j0..(t + 1) * n]) {
            *o = av.mul_add(bv, *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{bits, stream};
    use super::*;
    use candle_core::Var;

    /// Uniform values in [-1, 1) from a fixed seed.
    fn random(seed: u64, dims: (usize, usize, usize), dtype: DType) -> Tensor {
        super::super::testutil::random(seed, dims, dtype, |u| u - 1.0)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .fold(0.0, f64::max)
    }

    /// Output and the gradients of `sum(y * r)` for x and w, through
    /// either the custom op or candle's matmul.
    fn run_both(x: &Tensor, w: &Tensor, r: &Tensor, custom: bool) -> [Tensor; 3] {
        let xv = Var::from_tensor(x).unwrap();
        let wv = Var::from_tensor(w).unwrap();
        let y = if custom {
            loc_matmul(xv.as_tensor(), wv.as_tensor()).unwrap()
        } else {
            xv.as_tensor().matmul(wv.as_tensor()).unwrap()
        };
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap().clone();
        let dw = grads.get(wv.as_tensor()).unwrap().clone();
        [y, dx, dw]
    }

    const SHAPES: [(usize, usize, usize, usize); 9] = [
        (1, 1, 1, 1),
        (1, 1, 7, 5),
        (1, 16, 32, 64),
        (3, 1, 64, 32),
        (4, 5, 3, 17),
        (8, 16, 64, 32),
        (5, 9, 33, 47),
        (64, 16, 32, 64),
        (2, 4, 0, 3),
    ];

    fn check_against_matmul(dtype: DType, tol: f64) {
        for (i, &(p, b, input, out)) in SHAPES.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = random(seed, (p, b, input), dtype);
            let w = random(seed + 1, (p, input, out), dtype);
            let r = random(seed + 2, (p, b, out), dtype);
            let ours = run_both(&x, &w, &r, true);
            let reference = run_both(&x, &w, &r, false);
            for (what, (o, e)) in ["y", "dx", "dw"].iter().zip(ours.iter().zip(&reference)) {
                assert_eq!(o.dtype(), dtype);
                let diff = max_diff(o, e);
                assert!(diff <= tol, "{what} {:?}: {diff}", (p, b, input, out));
            }
        }
    }

    #[test]
    fn matches_matmul_f32() {
        check_against_matmul(DType::F32, 1e-5);
    }

    #[test]
    fn matches_matmul_f64() {
        check_against_matmul(DType::F64, 1e-12);
    }

    type Affine = dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor;

    /// `f(x, w, b)` and the gradients of `sum(y * r)` for x, w and b.
    fn affine_with(f: &Affine, x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor) -> [Tensor; 4] {
        let (xv, wv, bv) = (
            Var::from_tensor(x).unwrap(),
            Var::from_tensor(w).unwrap(),
            Var::from_tensor(b).unwrap(),
        );
        let y = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor());
        let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        [y.clone(), g(&xv), g(&wv), g(&bv)]
    }

    /// `x @ w + b` through [`loc_affine`] or through the product and
    /// candle's `broadcast_add`.
    fn affine_both(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, fused: bool) -> [Tensor; 4] {
        if fused {
            affine_with(&|x, w, b| loc_affine(x, w, b).unwrap(), x, w, b, r)
        } else {
            let plain = |x: &Tensor, w: &Tensor, b: &Tensor| {
                loc_matmul(x, w).unwrap().broadcast_add(b).unwrap()
            };
            affine_with(&plain, x, w, b, r)
        }
    }

    #[test]
    fn the_fused_gelu_is_bitwise_gelu_after_the_product() {
        let fused = |x: &Tensor, w: &Tensor, b: &Tensor| loc_affine_gelu(x, w, b).unwrap();
        let apart = |x: &Tensor, w: &Tensor, b: &Tensor| {
            super::super::gelu::gelu(&loc_affine(x, w, b).unwrap()).unwrap()
        };
        for dtype in [DType::F32, DType::F64] {
            for (i, &(p, b, input, out)) in SHAPES.iter().enumerate() {
                let seed = 300 + 10 * i as u64;
                // Pre-activations over GELU's whole curve, tails included.
                let x = (random(seed, (p, b, input), dtype) * 3.0).unwrap();
                let w = random(seed + 1, (p, input, out), dtype);
                let bias = random(seed + 2, (p, 1, out), dtype);
                let r = random(seed + 3, (p, b, out), dtype);
                let one = affine_with(&fused, &x, &w, &bias, &r);
                let two = affine_with(&apart, &x, &w, &bias, &r);
                for (what, (f, e)) in ["y", "dx", "dw", "db"].iter().zip(one.iter().zip(&two)) {
                    assert_eq!(f.dims(), e.dims(), "{what}");
                    let shape = (p, b, input, out);
                    assert_eq!(bits(f), bits(e), "{what} {dtype:?} {shape:?}");
                }
                // Without any gradient to keep a slope for, the same values.
                let y = loc_affine_gelu(&x, &w, &bias).unwrap();
                assert_eq!(bits(&y), bits(&one[0]), "{dtype:?} untracked");
            }
        }
    }

    /// `y = mlp(mlp(x))` through [`loc_mlp_gelu`] or its two nodes (the
    /// same weights twice, as over settling iterations, so each gradient
    /// sums two contributions), and, from [`super::super::grads::backward`]
    /// of `sum(y * r)`, `[y, dx, dw1, db1, dw2, db2]` (`dx` only when
    /// `x_tracked`).
    fn mlp_with(
        whole: bool,
        x: &Tensor,
        ws: &[Tensor; 4],
        r: &Tensor,
        x_tracked: bool,
    ) -> Vec<Tensor> {
        let vars: Vec<Var> = ws.iter().map(|w| Var::from_tensor(w).unwrap()).collect();
        let [w1, b1, w2, b2] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let xv = Var::from_tensor(x).unwrap();
        let input = if x_tracked {
            xv.as_tensor().clone()
        } else {
            x.clone()
        };
        let mlp = |h: &Tensor| {
            if whole {
                loc_mlp_gelu(h, w1, b1, w2, b2).unwrap()
            } else {
                loc_affine(&loc_affine_gelu(h, w1, b1).unwrap(), w2, b2).unwrap()
            }
        };
        let (y, grads) = super::super::grads::fusing(|| {
            let y = mlp(&mlp(&input));
            let loss = (&y * r).unwrap().sum_all().unwrap();
            (y, super::super::grads::backward(&loss).unwrap())
        });
        let mut out = vec![y.clone()];
        if x_tracked {
            out.push(grads.get(xv.as_tensor()).unwrap().clone());
        }
        out.extend(
            vars.iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone()),
        );
        out
    }

    #[test]
    fn the_whole_mlp_is_bitwise_its_two_nodes() {
        for dtype in [DType::F32, DType::F64] {
            for (i, &(p, b, d, hidden)) in SHAPES.iter().enumerate() {
                let seed = 500 + 10 * i as u64;
                let x = (random(seed, (p, b, d), dtype) * 2.0).unwrap();
                let ws = [
                    random(seed + 1, (p, d, hidden), dtype),
                    random(seed + 2, (p, 1, hidden), dtype),
                    (random(seed + 3, (p, hidden, d), dtype) * 0.5).unwrap(),
                    random(seed + 4, (p, 1, d), dtype),
                ];
                let r = random(seed + 5, (p, b, d), dtype);
                for x_tracked in [false, true] {
                    let whole = mlp_with(true, &x, &ws, &r, x_tracked);
                    let apart = mlp_with(false, &x, &ws, &r, x_tracked);
                    assert_eq!(whole.len(), apart.len());
                    for (j, (w, a)) in whole.iter().zip(&apart).enumerate() {
                        assert_eq!(w.dims(), a.dims(), "{j}");
                        let case = (dtype, (p, b, d, hidden), x_tracked);
                        assert_eq!(bits(w), bits(a), "output {j} of {case:?}");
                    }
                }
                // Nothing tracked: the same values, nothing kept.
                let y = loc_mlp_gelu(&x, &ws[0], &ws[1], &ws[2], &ws[3]).unwrap();
                let e = loc_affine(
                    &loc_affine_gelu(&x, &ws[0], &ws[1]).unwrap(),
                    &ws[2],
                    &ws[3],
                );
                assert_eq!(bits(&y), bits(&e.unwrap()), "{dtype:?} untracked");
            }
        }
    }

    #[test]
    fn a_plain_backward_works_outside_the_fused_scope_and_is_an_error_inside() {
        let (p, b, d, hidden) = (3, 4, 5, 6);
        let x = random(1, (p, b, d), DType::F32);
        let ws = [(p, d, hidden), (p, 1, hidden), (p, hidden, d), (p, 1, d)]
            .map(|dims| Var::from_tensor(&random(2, dims, DType::F32)).unwrap());
        let [w1, b1, w2, b2] = [0, 1, 2, 3].map(|i| ws[i].as_tensor());
        let loss = || loc_mlp_gelu(&x, w1, b1, w2, b2).unwrap().sum_all().unwrap();
        // Outside: two nodes, and candle's own backward reaches every weight.
        let grads = loss().backward().unwrap();
        assert!(ws.iter().all(|w| grads.get(w.as_tensor()).is_some()));
        // Inside: one node, whose biases need model::backward's sink.
        let err = super::super::grads::fusing(|| loss().backward().unwrap_err().to_string());
        assert!(
            err.contains("loc-mlp-gelu") && err.contains("model::backward"),
            "{err}"
        );
    }

    #[test]
    fn a_bias_that_alone_takes_a_gradient_gets_it() {
        let (p, b, d, hidden) = (2, 3, 4, 5);
        let x = random(1, (p, b, d), DType::F64);
        let w1 = random(2, (p, d, hidden), DType::F64);
        let w2 = random(3, (p, hidden, d), DType::F64);
        let b1 = Var::from_tensor(&random(4, (p, 1, hidden), DType::F64)).unwrap();
        let b2 = Var::from_tensor(&random(5, (p, 1, d), DType::F64)).unwrap();
        let grads = super::super::grads::fusing(|| {
            let y = loc_mlp_gelu(&x, &w1, b1.as_tensor(), &w2, b2.as_tensor()).unwrap();
            super::super::grads::backward(&y.sum_all().unwrap()).unwrap()
        });
        let apart = loc_affine(
            &loc_affine_gelu(&x, &w1, b1.as_tensor()).unwrap(),
            &w2,
            b2.as_tensor(),
        );
        let want = apart.unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&b1, &b2] {
            let (got, want) = (grads.get(v.as_tensor()), want.get(v.as_tensor()));
            assert_eq!(bits(got.unwrap()), bits(want.unwrap()));
        }
    }

    #[test]
    fn the_shared_bias_is_bitwise_broadcast_add_forward_and_backward() {
        for dtype in [DType::F32, DType::F64] {
            for &(p, b, n) in &[(1, 1, 1), (3, 5, 7), (64, 16, 32), (49, 32, 64)] {
                let seed = 700 + (p * b + n) as u64;
                let y = Var::from_tensor(&random(seed, (p, b, n), dtype)).unwrap();
                let bias = Var::from_tensor(&random(seed + 1, (1, 1, n), dtype)).unwrap();
                let r = random(seed + 2, (p, b, n), dtype);
                let run = |ours: bool| {
                    let (yt, bt) = (y.as_tensor(), bias.as_tensor());
                    let out = if ours {
                        shared_bias_add(yt, bt).unwrap()
                    } else {
                        yt.broadcast_add(bt).unwrap()
                    };
                    let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
                    [out.clone(), g(&y), g(&bias)]
                };
                let (ours, theirs) = (run(true), run(false));
                for (what, (o, t)) in ["y", "dy", "db"].iter().zip(ours.iter().zip(&theirs)) {
                    assert_eq!(o.dims(), t.dims(), "{what}");
                    assert_eq!(bits(o), bits(t), "{what} {dtype:?} {:?}", (p, b, n));
                }
            }
        }
    }

    #[test]
    fn the_fused_bias_is_bitwise_the_product_then_broadcast_add() {
        for dtype in [DType::F32, DType::F64] {
            for (i, &(p, b, input, out)) in SHAPES.iter().enumerate() {
                let seed = 100 + 10 * i as u64;
                let x = random(seed, (p, b, input), dtype);
                let w = random(seed + 1, (p, input, out), dtype);
                let bias = random(seed + 2, (p, 1, out), dtype);
                let r = random(seed + 3, (p, b, out), dtype);
                let fused = affine_both(&x, &w, &bias, &r, true);
                let plain = affine_both(&x, &w, &bias, &r, false);
                for (what, (f, e)) in ["y", "dx", "dw", "db"].iter().zip(fused.iter().zip(&plain)) {
                    assert_eq!(f.dims(), e.dims(), "{what}");
                    assert_eq!(
                        bits(f),
                        bits(e),
                        "{what} {dtype:?} {:?}",
                        (p, b, input, out)
                    );
                }
            }
        }
    }

    #[test]
    fn a_detached_input_gets_no_gradient_and_the_weights_the_same() {
        let (p, b, input, out) = (3, 5, 4, 6);
        let x = random(40, (p, b, input), DType::F32);
        let w = Var::from_tensor(&random(41, (p, input, out), DType::F32)).unwrap();
        let bias = Var::from_tensor(&random(42, (p, 1, out), DType::F32)).unwrap();
        let r = random(43, (p, b, out), DType::F32);
        let grads_with = |x: &Tensor| {
            let y = loc_affine(x, w.as_tensor(), bias.as_tensor()).unwrap();
            (y * &r).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let tracked = Var::from_tensor(&x).unwrap();
        let all = grads_with(tracked.as_tensor());
        let detached = grads_with(&x);
        assert!(all.get(tracked.as_tensor()).is_some());
        assert!(detached.get(&x).is_none());
        for t in [w.as_tensor(), bias.as_tensor()] {
            assert_eq!(bits(all.get(t).unwrap()), bits(detached.get(t).unwrap()));
        }
    }

    #[test]
    fn a_bias_of_another_shape_takes_the_unfused_path() {
        let x = random(1, (3, 4, 8), DType::F32);
        let w = random(2, (3, 8, 5), DType::F32);
        let shared_bias = random(3, (1, 1, 5), DType::F32);
        let y = loc_affine(&x, &w, &shared_bias).unwrap();
        let e = loc_matmul(&x, &w)
            .unwrap()
            .broadcast_add(&shared_bias)
            .unwrap();
        assert_eq!(bits(&y), bits(&e));
    }

    #[test]
    fn other_dtypes_fall_back() {
        let x = random(1, (3, 4, 8), DType::F16);
        let w = random(2, (3, 8, 5), DType::F16);
        let y = loc_matmul(&x, &w).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let e = x.matmul(&w).unwrap();
        assert_eq!(bits(&y), bits(&e));
    }

    #[test]
    fn a_location_does_not_depend_on_the_others() {
        for dtype in [DType::F32, DType::F64] {
            for (p, b, input, out) in [(8, 16, 32, 64), (8, 16, 64, 32), (8, 5, 33, 47)] {
                let x = random(3, (p, b, input), dtype);
                let w = random(4, (p, input, out), dtype);
                let r = random(5, (p, b, out), dtype);
                let whole = run_both(&x, &w, &r, true);
                for loc in 0..p {
                    let part = |t: &Tensor| t.narrow(0, loc, 1).unwrap();
                    // Fresh copies, and views with a start offset.
                    let copy = |t: &Tensor| part(t).copy().unwrap();
                    let alone = run_both(&copy(&x), &copy(&w), &copy(&r), true);
                    for (a, full) in alone.iter().zip(&whole) {
                        assert_eq!(bits(a), bits(&part(full)), "location {loc}");
                    }
                    let y = loc_matmul(&part(&x), &part(&w)).unwrap();
                    assert_eq!(bits(&y), bits(&part(&whole[0])), "location {loc}");
                }
                // A tile of locations 2..6 gives the same as the whole.
                let tile = |t: &Tensor| t.narrow(0, 2, 4).unwrap();
                let y = loc_matmul(&tile(&x), &tile(&w)).unwrap();
                assert_eq!(bits(&y), bits(&tile(&whole[0])));
            }
        }
    }

    /// Every path of [`gemm`] this CPU can run, on `A` read row-major and
    /// transposed in place, against the scalar edge loop: the same bits.
    fn simd_paths_agree<T: Elem + PartialEq + std::fmt::Debug, const NR: usize>(
        from: fn(f64) -> T,
    ) {
        for (m, k, n) in [
            (16, 32, 64),
            (5, 33, 47),
            (1, 1, 1),
            (4, 3, 16),
            (32, 32, 32),
            // Every remainder of the 6-row block, ragged columns.
            (13, 7, 40),
            (6, 32, 8),
            (35, 32, 64),
            (3, 2, 33),
            (8, 64, 24),
        ] {
            let a: Vec<T> = stream(8, m * k)
                .into_iter()
                .map(|u| u - 1.0)
                .map(from)
                .collect();
            let b: Vec<T> = stream(9, k * n)
                .into_iter()
                .map(|u| u - 1.0)
                .map(from)
                .collect();
            for (rs, cs) in [(k, 1), (1, m)] {
                let mut scalar = vec![T::default(); m * n];
                for i in 0..m {
                    edge_row(i, 0, k, n, &a, rs, cs, &b, &mut scalar);
                }
                let mut paths: Vec<(&str, Vec<T>)> = Vec::new();
                let mut run = |name, f: &dyn Fn(&mut [T])| {
                    let mut c = vec![T::default(); m * n];
                    f(&mut c);
                    paths.push((name, c));
                };
                run("dispatched", &|c| gemm::<T, NR>(m, k, n, &a, rs, cs, &b, c));
                run("baseline", &|c| {
                    gemm_generic::<T, NR>(m, k, n, &a, rs, cs, &b, c, Blocks::All)
                });
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: checked just above.
                        run("avx2", &|c| unsafe {
                            T::gemm_avx2(m, k, n, &a, rs, cs, &b, c, Blocks::All)
                        });
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: checked just above.
                        run("avx512", &|c| unsafe {
                            T::gemm_avx512(m, k, n, &a, rs, cs, &b, c, Blocks::All)
                        });
                    }
                }
                for (name, c) in &paths {
                    // Compared as values: no product here is -0 or NaN, so
                    // equal values are equal bits.
                    assert_eq!(c, &scalar, "{name} path, {m}x{k}x{n}, strides {rs},{cs}");
                }
            }
        }
    }

    #[test]
    fn every_simd_path_rounds_alike() {
        simd_paths_agree::<f32, 16>(|v| v as f32);
        simd_paths_agree::<f64, 8>(|v| v);
    }

    /// `A^T A` from the upper blocks and their mirror: the bits of the
    /// whole product, on every block remainder.
    fn symmetric_is_the_whole_product<T: Elem + PartialEq + std::fmt::Debug, const NR: usize>(
        from: fn(f64) -> T,
    ) {
        for (d, k) in [
            (1, 3),
            (2, 1),
            (5, 4),
            (8, 32),
            (13, 7),
            (32, 32),
            (33, 16),
            (64, 9),
        ] {
            let a: Vec<T> = stream(11, k * d)
                .into_iter()
                .map(|u| u - 1.0)
                .map(from)
                .collect();
            let mut whole = vec![T::default(); d * d];
            gemm::<T, NR>(d, k, d, &a, 1, d, &a, &mut whole);
            let mut upper = vec![T::default(); d * d];
            gemm_symmetric::<T, NR>(d, k, &a, &mut upper);
            assert_eq!(upper, whole, "d {d}, k {k}");
        }
    }

    #[test]
    fn symmetric_product_rounds_as_the_whole() {
        symmetric_is_the_whole_product::<f32, 16>(|v| v as f32);
        symmetric_is_the_whole_product::<f64, 8>(|v| v);
    }

    #[test]
    fn transpose_moves_every_element_once() {
        for (rows, cols) in [(0, 3), (1, 1), (3, 5), (8, 8), (17, 4), (64, 32), (33, 9)] {
            let src: Vec<u32> = (0..(rows * cols) as u32).collect();
            let mut dst = vec![7u32; 3];
            transpose(&src, rows, cols, &mut dst);
            assert_eq!(dst.len(), rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn non_contiguous_inputs() {
        let x = random(6, (4, 8, 6), DType::F32);
        let w = random(7, (4, 5, 6), DType::F32).transpose(1, 2).unwrap();
        let y = loc_matmul(&x, &w).unwrap();
        let e = x.matmul(&w.contiguous().unwrap()).unwrap();
        assert!(max_diff(&y, &e) <= 1e-5);
    }
}

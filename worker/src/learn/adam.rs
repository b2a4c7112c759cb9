//! Adam with decoupled weight decay (AdamW), deterministic and with its
//! state exposed, so checkpoints can store and restore it exactly.
//!
//! The update is elementwise, so in per-location mode each location's nets
//! are optimised independently: no statistic is pooled across locations.
//! On the CPU each parameter's step is one pass over its values, moments
//! and gradient, bitwise the tensor operations it replaces (which remain
//! the path on other devices).

use candle_core::{
    backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var,
};

use crate::error::Result;

/// Hyper-parameters of [`Adam`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamParams {
    /// The usual betas and epsilon with the given rate and decay.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

/// AdamW over a fixed list of variables.
pub struct Adam {
    pub params: AdamParams,
    vars: Vec<Var>,
    /// First and second moment estimates, one per variable.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Number of updates applied so far.
    pub t: u64,
}

impl Adam {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<Var>, params: AdamParams) -> Result<Self> {
        // Separate buffers: the CPU step updates the moments in place.
        let zeros = || {
            vars.iter()
                .map(|v| v.as_tensor().zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(Self {
            params,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// Apply one update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            if in_place(
                var.as_tensor(),
                g,
                &self.m[i],
                &self.v[i],
                Constants::of(p, bc1, bc2),
            )? {
                continue;
            }
            let (param, m, v) = step_ops(var.as_tensor(), g, &self.m[i], &self.v[i], p, bc1, bc2)?;
            var.set(&param)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// One AdamW step of one parameter as tensor operations (any device and
/// dtype): the new `(param, m, v)`. `bc1` and `bc2` are the bias
/// corrections `1 - beta^t`.
fn step_ops(
    param: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    p: AdamParams,
    bc1: f64,
    bc2: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let m = ((m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
    let v = ((v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
    let m_hat = (&m / bc1)?;
    let v_hat = (&v / bc2)?;
    let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
    let decayed = (param * (1.0 - p.lr * p.weight_decay))?;
    Ok(((decayed - (update * p.lr)?)?, m, v))
}

/// The scalars of one step, as the tensor operations of the unfused path
/// use them: each is cast to the element type before use.
#[derive(Clone, Copy)]
struct Constants {
    beta1: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    inv_bc1: f64,
    inv_bc2: f64,
    eps: f64,
    decay: f64,
    lr: f64,
}

impl Constants {
    fn of(p: AdamParams, bc1: f64, bc2: f64) -> Self {
        Self {
            beta1: p.beta1,
            one_minus_beta1: 1.0 - p.beta1,
            beta2: p.beta2,
            one_minus_beta2: 1.0 - p.beta2,
            inv_bc1: 1.0 / bc1,
            inv_bc2: 1.0 / bc2,
            eps: p.eps,
            decay: 1.0 - p.lr * p.weight_decay,
            lr: p.lr,
        }
    }
}

trait Elem:
    Copy
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn from_f64(v: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Elem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Elements per thread's piece of work.
const CHUNK: usize = 1 << 14;

/// The three passes of a step, each written into the buffer it updates.
/// Every operation is the tensor path's, in its order and with its
/// roundings (candle's `x * c` is `x * c + 0` in the element type, `x / c`
/// is `x * (1 / c) + 0`), so the bits are the same.
#[derive(Clone, Copy)]
enum Pass {
    /// `m <- m beta1 + g (1 - beta1)`, reading `g`.
    First(Constants),
    /// `v <- v beta2 + g^2 (1 - beta2)`, reading `g`.
    Second(Constants),
    /// `param <- param decay - lr m_hat / (sqrt(v_hat) + eps)`, reading the
    /// new `m` and `v`.
    Param(Constants),
}

impl Pass {
    fn run<T: Elem>(self, dst: &mut [T], a: &[T], b: &[T]) {
        let f = T::from_f64;
        let zero = f(0.0);
        match self {
            Pass::First(c) => {
                let (b1, c1) = (f(c.beta1), f(c.one_minus_beta1));
                for (m, &g) in dst.iter_mut().zip(a) {
                    *m = (*m * b1 + zero) + (g * c1 + zero);
                }
            }
            Pass::Second(c) => {
                let (b2, c2) = (f(c.beta2), f(c.one_minus_beta2));
                for (v, &g) in dst.iter_mut().zip(a) {
                    *v = (*v * b2 + zero) + ((g * g) * c2 + zero);
                }
            }
            Pass::Param(c) => {
                let (ib1, ib2, one, eps) = (f(c.inv_bc1), f(c.inv_bc2), f(1.0), f(c.eps));
                let (decay, lr) = (f(c.decay), f(c.lr));
                for ((p, &m), &v) in dst.iter_mut().zip(a).zip(b) {
                    let m_hat = m * ib1 + zero;
                    let v_hat = v * ib2 + zero;
                    let update = m_hat / (v_hat.sqrt() * one + eps);
                    *p = (*p * decay + zero) - (update * lr + zero);
                }
            }
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Pass::First(_) => "adam-first-moment",
            Pass::Second(_) => "adam-second-moment",
            Pass::Param(_) => "adam-param",
        }
    }

    /// `self` over `dst` in pieces shared out over candle's CPU thread pool
    /// (each element depends on its own position only); an error unless
    /// every buffer is contiguous, of one type and one length.
    fn apply(
        self,
        dst: &mut CpuStorage,
        dl: &Layout,
        a: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<()> {
        fn go<T: Elem>(
            pass: Pass,
            dst: (&mut [T], &Layout),
            a: (&[T], &Layout),
            b: Option<(&[T], &Layout)>,
        ) -> candle_core::Result<()> {
            use crate::model::{contiguous, contiguous_mut};
            let op = pass.label();
            let dst = contiguous_mut(dst.0, dst.1, op)?;
            let a = contiguous(a.0, a.1, op)?;
            let b = match b {
                Some((b, l)) => contiguous(b, l, op)?,
                None => &[],
            };
            if a.len() != dst.len() || (!b.is_empty() && b.len() != dst.len()) {
                candle_core::bail!("{op}: buffers of different lengths");
            }
            let parallel = dst.len() > CHUNK;
            crate::model::for_each_chunk(dst, CHUNK, parallel, |i, piece, _: &mut ()| {
                let lo = i * CHUNK;
                let hi = lo + piece.len();
                let b = if b.is_empty() { b } else { &b[lo..hi] };
                pass.run(piece, &a[lo..hi], b);
            });
            Ok(())
        }
        let (al, bl) = (a.1, b.map(|(_, l)| l));
        match (dst, a.0, b.map(|(s, _)| s)) {
            (CpuStorage::F32(d), CpuStorage::F32(x), None) => go(self, (d, dl), (x, al), None),
            (CpuStorage::F32(d), CpuStorage::F32(x), Some(CpuStorage::F32(y))) => {
                go(self, (d, dl), (x, al), bl.map(|l| (&y[..], l)))
            }
            (CpuStorage::F64(d), CpuStorage::F64(x), None) => go(self, (d, dl), (x, al), None),
            (CpuStorage::F64(d), CpuStorage::F64(x), Some(CpuStorage::F64(y))) => {
                go(self, (d, dl), (x, al), bl.map(|l| (&y[..], l)))
            }
            _ => candle_core::bail!("{}: f32 or f64, all the same", self.label()),
        }
    }
}

impl InplaceOp2 for Pass {
    fn name(&self) -> &'static str {
        self.label()
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        self.apply(s1, l1, (s2, l2), None)
    }
}

impl InplaceOp3 for Pass {
    fn name(&self) -> &'static str {
        self.label()
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        self.apply(s1, l1, (s2, l2), Some((s3, l3)))
    }
}

/// Whether two tensors are views of one buffer.
fn shares_storage(a: &Tensor, b: &Tensor) -> bool {
    let (sa, _) = a.storage_and_layout();
    let (sb, _) = b.storage_and_layout();
    std::ptr::eq(&*sa, &*sb)
}

/// One AdamW step of `param` with gradient `g`, updating `param`, `m` and
/// `v` in place (three passes, no buffer allocated), when all four are
/// contiguous CPU tensors of one shape and type, f32 or f64, the three
/// updated in storage of their own; `false`, with nothing changed,
/// otherwise (the caller takes the tensor operations).
fn in_place(param: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, c: Constants) -> Result<bool> {
    let fits = [param, g, m, v].iter().all(|t| {
        t.device().is_cpu()
            && t.is_contiguous()
            && t.shape() == param.shape()
            && t.dtype() == param.dtype()
            && matches!(t.dtype(), DType::F32 | DType::F64)
    }) && [(m, v), (m, param), (v, param), (g, m), (g, v), (g, param)]
        .iter()
        .all(|(a, b)| !shares_storage(a, b));
    if !fits {
        return Ok(false);
    }
    m.inplace_op2(g, &Pass::First(c))?;
    v.inplace_op2(g, &Pass::Second(c))?;
    param.inplace_op3(m, v, &Pass::Param(c))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One Adam step from zero moments moves every parameter by exactly
    /// lr * sign(grad) (m_hat = g, v_hat = g^2, so update = g / |g|).
    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let x = Var::new(&[1.0f64, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut opt = Adam::new(
            vec![x.clone()],
            AdamParams {
                eps: 0.0,
                ..AdamParams::new(0.1, 0.0)
            },
        )
        .unwrap();
        // loss = sum(x^2): grad = 2x.
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let got: Vec<f64> = x.as_tensor().to_vec1().unwrap();
        for (g, want) in got.iter().zip([0.9, -1.9, 2.9]) {
            assert!((g - want).abs() < 1e-12, "{got:?}");
        }
        assert_eq!(opt.t, 1);
    }

    #[test]
    fn the_fused_step_is_bitwise_the_tensor_operations() {
        let p = AdamParams::new(3e-3, 0.05);
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let dev = Device::Cpu;
            let wave = |k: f64| {
                let v: Vec<f64> = (0..257)
                    .map(|i| ((i as f64 + k) * 0.731).sin() * (1.0 + k))
                    .collect();
                Tensor::from_vec(v, 257, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
            };
            let mut ops = (
                wave(0.0),
                wave(1.0).abs().unwrap(),
                wave(2.0).sqr().unwrap(),
            );
            // Copies in their own storage, updated in place.
            let copy = |t: &Tensor| (t + 0.0).unwrap();
            let one_pass = (copy(&ops.0), copy(&ops.1), copy(&ops.2));
            for t in 1..=3 {
                let g = wave(3.0 + t as f64);
                let bc1 = 1.0 - p.beta1.powi(t);
                let bc2 = 1.0 - p.beta2.powi(t);
                ops = step_ops(&ops.0, &g, &ops.1, &ops.2, p, bc1, bc2).unwrap();
                let c = Constants::of(p, bc1, bc2);
                assert!(in_place(&one_pass.0, &g, &one_pass.1, &one_pass.2, c).unwrap());
                let bits = |t: &Tensor| -> Vec<u64> {
                    let v: Vec<f64> = t
                        .to_dtype(candle_core::DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&one_pass.0), bits(&ops.0), "{dtype:?} step {t}: param");
                assert_eq!(bits(&one_pass.1), bits(&ops.1), "{dtype:?} step {t}: m");
                assert_eq!(bits(&one_pass.2), bits(&ops.2), "{dtype:?} step {t}: v");
            }
        }
    }

    #[test]
    fn moments_sharing_a_buffer_take_the_tensor_operations() {
        let dev = Device::Cpu;
        let param = Tensor::new(&[1.0f32, 2.0], &dev).unwrap();
        let g = Tensor::new(&[0.5f32, -0.5], &dev).unwrap();
        let m = param.zeros_like().unwrap();
        let c = Constants::of(AdamParams::new(0.1, 0.0), 0.1, 0.001);
        assert!(shares_storage(&m, &m.clone()));
        assert!(!in_place(&param, &g, &m, &m.clone(), c).unwrap());
        assert_eq!(
            param.to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0],
            "left unchanged"
        );
        let v = m.zeros_like().unwrap();
        assert!(!shares_storage(&m, &v));
        assert!(in_place(&param, &g, &m, &v, c).unwrap());
        // Moved against the gradient's sign.
        let moved = param.to_vec1::<f32>().unwrap();
        assert!(moved[0] < 1.0 && moved[1] > 2.0, "{moved:?}");
    }
}

//! Backpropagation with the per-location nets' weight gradients summed in
//! place.
//!
//! candle's `backward` keeps one gradient per tensor and adds every new
//! contribution into it as `sum = sum + g`: the first contribution is added
//! to a buffer of zeros made for it, and every addition allocates a fresh
//! buffer. A per-location net's weights `[P, in, out]` are as large as a
//! layer's activations, and each is used once per settling iteration, so in
//! a local training step these sums (a zero fill, then one allocation and
//! one pass over three buffers per use) were among the largest costs.
//!
//! [`backward`] runs candle's backward while a sink is open on the calling
//! thread. The per-location products (`locmm.rs`) then hand a variable's
//! gradient to the sink instead of returning it to candle: the first
//! contribution is kept as it is, and each later one is added into it in
//! place, in the order candle's backward produces them. Each element is
//! therefore `((g1 + g2) + g3) + ...`, the same additions as candle's
//! `((0 + g1) + g2) + ...` (adding to zero changes no value), so trained
//! numbers are the same to the bit (tests). When the sink closes, its sums
//! join candle's gradients under the variables' ids; a variable that also
//! took gradient through candle's own ops gets the sum of both.
//!
//! From a net's second use on, a per-location product adds its weight
//! gradient into the sum location by location as it finishes it
//! ([`sunk_sum`], `locmm::weight_grad`), the same additions.
//!
//! Outside [`backward`] (a plain `Tensor::backward`) the products return
//! their gradients to candle as before. A whole-MLP node
//! (`locmm::loc_mlp_gelu`) holds its biases, whose gradients only the
//! sink can take: such nodes are made only inside [`fusing`], whose
//! backward must run through [`backward`].

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor, TensorId};

thread_local! {
    /// The open sink of this thread: variable id -> its gradient so far.
    static SINK: RefCell<Option<HashMap<TensorId, Tensor>>> = const { RefCell::new(None) };
    /// Whether whole-MLP nodes may be made on this thread ([`fusing`]).
    static FUSING: Cell<bool> = const { Cell::new(false) };
}

/// Closes the sink when dropped, so an error or a panic inside candle's
/// backward does not leave it open for a later plain backward.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        SINK.with(|s| s.borrow_mut().take());
    }
}

/// `loss.backward()`, with the gradients of the per-location products'
/// variables summed in place (see the module docs); the same gradients,
/// to the bit, as `loss.backward()`.
///
/// Errors: candle's, and an error if a sink is already open on this
/// thread (a backward inside a backward).
pub(crate) fn backward(loss: &Tensor) -> Result<GradStore> {
    let already = SINK.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_some() {
            return true;
        }
        *s = Some(HashMap::new());
        false
    });
    if already {
        candle_core::bail!("backward: called inside another backward on this thread");
    }
    let open = Open;
    let mut grads = loss.backward()?;
    let sunk = SINK.with(|s| s.borrow_mut().take()).unwrap_or_default();
    drop(open);
    for (id, g) in sunk {
        let g = match grads.get_id(id) {
            Some(other) => (other + g)?,
            None => g,
        };
        grads.insert_id(id, g);
    }
    Ok(grads)
}

/// `grad` for `param`, or `None` once it is added to the open sink: only
/// a variable's gradient, only while [`backward`] runs on this thread,
/// only a contiguous CPU gradient of `param`'s shape. `grad` must own its
/// buffer (a kernel's fresh output, not a view of another tensor): the
/// first contribution becomes the sum and is added into in place.
pub(crate) fn sink(param: &Tensor, grad: Option<Tensor>) -> Result<Option<Tensor>> {
    let Some(grad) = grad else {
        return Ok(None);
    };
    if !param.is_variable()
        || !grad.device().is_cpu()
        || !grad.is_contiguous()
        || grad.dims() != param.dims()
        || grad.dtype() != param.dtype()
    {
        return Ok(Some(grad));
    }
    SINK.with(|s| {
        let mut s = s.borrow_mut();
        let Some(sums) = s.as_mut() else {
            return Ok(Some(grad));
        };
        match sums.entry(param.id()) {
            // An empty parameter's gradients have nothing to add (and
            // candle refuses to write into an empty tensor in place).
            Entry::Occupied(sum) if grad.elem_count() > 0 => {
                sum.get().inplace_op2(&grad, &AddInPlace)?
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(grad);
            }
        }
        Ok(None)
    })
}

/// `f()` with every per-location GELU MLP that takes a gradient made as
/// one node ([`super::locmm::loc_mlp_gelu`]) on this thread. Such a node
/// hands its biases' gradients to the sink, so every backward of what `f`
/// builds must run through [`backward`] (the trainer's step and the sleep
/// jobs' run in it); anywhere else (a plain `Tensor::backward`) those
/// MLPs are two nodes each, with the same bits.
pub(crate) fn fusing<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the flag back as it was, on return or unwind.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FUSING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FUSING.with(|c| c.replace(true)));
    f()
}

/// Whether this thread runs inside [`fusing`].
pub(crate) fn is_fusing() -> bool {
    FUSING.with(Cell::get)
}

/// The gradient summed so far in the open sink for `param` (sharing its
/// buffer), for a kernel to add its next contribution into in place;
/// `None` when no sink is open or it holds nothing for `param` yet.
pub(crate) fn sunk_sum(param: &Tensor) -> Option<Tensor> {
    SINK.with(|s| s.borrow().as_ref()?.get(&param.id()).cloned())
}

/// [`sink`] for the gradient of a parameter that a node holds rather than
/// takes as an argument (so candle could not take the gradient back): an
/// error naming `op` if no sink is open to take it (a plain
/// `Tensor::backward` rather than [`backward`]).
pub(crate) fn sink_held(param: &Tensor, grad: Option<Tensor>, op: &str) -> Result<()> {
    match sink(param, grad)? {
        None => Ok(()),
        Some(_) => candle_core::bail!(
            "{op}: the gradient of a parameter it holds needs the sink of model::backward, \
             not a plain Tensor::backward"
        ),
    }
}

/// Elements per thread's piece of work.
const CHUNK: usize = 1 << 14;

/// `dst <- dst + src`, element by element (the addition candle's `add`
/// makes), over candle's CPU thread pool.
struct AddInPlace;

impl InplaceOp2 for AddInPlace {
    fn name(&self) -> &'static str {
        "grad-sum-in-place"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        fn go<T: Copy + Send + Sync + std::ops::Add<Output = T>>(
            dst: &mut [T],
            dl: &Layout,
            src: &[T],
            sl: &Layout,
        ) -> Result<()> {
            let op = "grad-sum-in-place";
            let dst = super::cpu::contiguous_mut(dst, dl, op)?;
            let src = super::cpu::contiguous(src, sl, op)?;
            if dst.len() != src.len() {
                candle_core::bail!("{op}: buffers of different lengths");
            }
            let parallel = dst.len() > CHUNK;
            super::cpu::for_each_chunk(dst, CHUNK, parallel, |i, piece, _: &mut ()| {
                let (lo, len) = (i * CHUNK, piece.len());
                for (d, &s) in piece.iter_mut().zip(&src[lo..lo + len]) {
                    *d = *d + s;
                }
            });
            Ok(())
        }
        match (dst, src) {
            (CpuStorage::F32(d), CpuStorage::F32(s)) => go(d, dl, s, sl),
            (CpuStorage::F64(d), CpuStorage::F64(s)) => go(d, dl, s, sl),
            (d, s) => candle_core::bail!(
                "grad-sum-in-place: unsupported dtypes {:?} and {:?}",
                d.dtype(),
                s.dtype()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::bits;
    use super::*;
    use candle_core::{DType, Var};

    fn random(seed: u64, dims: (usize, usize, usize), dtype: DType) -> Tensor {
        super::super::testutil::random(seed, dims, dtype, |u| u - 1.0)
    }

    /// A net applied three times with the same per-location weights (as
    /// over settling iterations), a tanh between, and a plain matmul
    /// reading `x`: `sum(y * r)`, plus `extra(w)` if given.
    fn loss(
        x: &Var,
        w: &Var,
        b: &Var,
        r: &Tensor,
        extra: Option<&dyn Fn(&Tensor) -> Tensor>,
    ) -> Tensor {
        let (w_t, b_t) = (w.as_tensor(), b.as_tensor());
        let mut h = x.as_tensor().clone();
        for _ in 0..3 {
            h = super::super::locmm::loc_affine(&h, w_t, b_t)
                .unwrap()
                .tanh()
                .unwrap();
        }
        let mut l = (h * r).unwrap().sum_all().unwrap();
        if let Some(f) = extra {
            l = (l + f(w_t)).unwrap();
        }
        l
    }

    fn vars(dtype: DType) -> (Var, Var, Var, Tensor) {
        let (p, batch, d) = (5, 7, 33);
        let x = Var::from_tensor(&random(1, (p, batch, d), dtype)).unwrap();
        let w = Var::from_tensor(&(random(2, (p, d, d), dtype) * 0.3).unwrap()).unwrap();
        let b = Var::from_tensor(&random(3, (p, 1, d), dtype)).unwrap();
        let r = random(4, (p, batch, d), dtype);
        (x, w, b, r)
    }

    #[test]
    fn the_same_gradients_to_the_bit_as_candles_backward() {
        for dtype in [DType::F32, DType::F64] {
            let (x, w, b, r) = vars(dtype);
            let plain = loss(&x, &w, &b, &r, None).backward().unwrap();
            let sunk = backward(&loss(&x, &w, &b, &r, None)).unwrap();
            for v in [&x, &w, &b] {
                let (a, s) = (plain.get(v).unwrap(), sunk.get(v).unwrap());
                assert_eq!(a.dims(), s.dims());
                assert_eq!(bits(a), bits(s), "{dtype:?}");
            }
        }
    }

    #[test]
    fn a_weight_also_read_by_candles_ops_gets_both_gradients() {
        let decay = |w: &Tensor| (w.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        let (x, w, b, r) = vars(DType::F64);
        let plain = loss(&x, &w, &b, &r, Some(&decay)).backward().unwrap();
        let sunk = backward(&loss(&x, &w, &b, &r, Some(&decay))).unwrap();
        let max_abs = |t: Tensor| -> f64 {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let diff = max_abs((plain.get(&w).unwrap() - sunk.get(&w).unwrap()).unwrap());
        assert!(diff < 1e-12, "{diff}");
        // Without the decay term the gradient differs by w itself.
        let without = backward(&loss(&x, &w, &b, &r, None)).unwrap();
        let with_less = (sunk.get(&w).unwrap() - without.get(&w).unwrap()).unwrap();
        let gap = max_abs((with_less - w.as_tensor()).unwrap());
        assert!(gap < 1e-12, "{gap}");
    }

    #[test]
    fn the_sink_is_closed_afterwards_even_after_an_error() {
        let (x, w, b, r) = vars(DType::F32);
        backward(&loss(&x, &w, &b, &r, None)).unwrap();
        assert!(SINK.with(|s| s.borrow().is_none()));
        // An op without a backward, read after the products.
        struct NoBackward;
        impl candle_core::CustomOp1 for NoBackward {
            fn name(&self) -> &'static str {
                "no-backward"
            }
            fn cpu_fwd(
                &self,
                s: &CpuStorage,
                l: &Layout,
            ) -> Result<(CpuStorage, candle_core::Shape)> {
                Ok((s.clone(), l.shape().clone()))
            }
        }
        let bad = loss(&x, &w, &b, &r, None).apply_op1(NoBackward).unwrap();
        assert!(backward(&bad).is_err());
        assert!(SINK.with(|s| s.borrow().is_none()));
        // A plain backward afterwards returns the weights' gradients itself.
        let plain = loss(&x, &w, &b, &r, None).backward().unwrap();
        assert!(plain.get(&w).is_some() && plain.get(&b).is_some());
    }
}

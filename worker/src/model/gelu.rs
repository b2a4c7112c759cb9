//! GELU, tanh form (Hendrycks & Gimpel 2016, "Gaussian Error Linear
//! Units"), with its exact derivative and a vectorisable `tanh`.
//!
//! `gelu(x) = x/2 (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`;
//! `gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2)`
//! with `t = tanh(u)`.
//!
//! candle's `gelu` calls the C library's `tanh` once per element forward,
//! and its backward is a dozen tensor operations with another `tanh` and
//! two `powf` per element (and constants rounded to six digits): in a
//! local training step of per-location nets those library calls were
//! about a third of all the time (`docs/experiments/performance.md`). Here
//! both passes are one loop each, through `e = exp(2u)` (range reduction
//! and a degree-6 polynomial, in plain multiplies and adds that the
//! compiler vectorises) and `s = 1 / (e + 1)`: `1 + t = 2 e s` and
//! `1 - t = 2 s` have no cancellation, so the tails keep their precision. For f32, values and gradients
//! are within 1e-6 plus 4 units in the last place of the exact function
//! (tested against f64), about what an f32 `tanh` from the library gives.
//!
//! Determinism: every element is computed alone by the same sequence of
//! operations (no fused multiply-add, no reassociation), so results do not
//! depend on the SIMD width, the threads or the tiling. f64 tensors (tests)
//! use the library's `tanh`; other dtypes and devices use candle's `gelu`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `gelu(x)` for `x` of any shape, differentiable.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

#[allow(clippy::excessive_precision)]
const SQRT_TWO_OVER_PI: f64 = 0.797_884_560_802_865_355_879_892_119_868_763_74;
const CUBIC: f64 = 0.044_715;

/// `(e, 1 / (e + 1))` with `e = exp(2u)`, the argument clamped to +-40
/// (where `1 + tanh(u)` and `1 - tanh(u)` are below f32's resolution of
/// any value they multiply). From them, without cancellation:
/// `1 + tanh(u) = 2 e s`, `1 - tanh(u) = 2 s`.
#[inline(always)]
fn exp2u_f32(u: f32) -> (f32, f32) {
    let e = super::cpu::exp_f32(2.0 * u.clamp(-40.0, 40.0));
    (e, 1.0 / (e + 1.0))
}

/// `u(x) = sqrt(2/pi) x (1 + 0.044715 x^2)` in f32.
#[inline(always)]
fn u_f32(x: f32) -> f32 {
    (SQRT_TWO_OVER_PI as f32) * x * (1.0 + (CUBIC as f32) * x * x)
}

/// Beyond +-10, `u` is past the clamp of [`exp2u_f32`] (`e s` is 1 or
/// below 1e-34), so `x` itself is clamped there too where it multiplies
/// a vanishing factor: otherwise that factor, frozen by the clamp, would
/// meet an `x` (and `x^2`) still growing, and the tails would not vanish.
const X_CLAMP: f32 = 10.0;

/// `gelu(x) = x (1 + t) / 2 = x e s`.
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    let (e, s) = exp2u_f32(u_f32(x));
    x.max(-X_CLAMP) * (e * s)
}

/// `g gelu'(x)`.
#[inline(always)]
fn grad_f32(x: f32, g: f32) -> f32 {
    g * gelu_slope_f32(x).1
}

/// `(gelu(x), gelu'(x))` sharing one exponential, the value bitwise
/// [`gelu_f32`]`(x)`: `gelu'(x) = (1 + t)/2 + x/2 (1 - t^2) k (1 + 3 c
/// x^2) = e s + 2 x e s^2 sqrt(2/pi) (1 + 3 0.044715 x^2)`.
#[inline(always)]
fn gelu_slope_f32(x: f32) -> (f32, f32) {
    let (e, s) = exp2u_f32(u_f32(x));
    let es = e * s;
    let xc = x.clamp(-X_CLAMP, X_CLAMP);
    let slope = (SQRT_TWO_OVER_PI as f32) * (1.0 + 3.0 * (CUBIC as f32) * xc * xc);
    (x.max(-X_CLAMP) * es, es + 2.0 * (xc * es) * s * slope)
}

#[inline(always)]
fn gelu_f64(x: f64) -> f64 {
    let t = (SQRT_TWO_OVER_PI * x * (1.0 + CUBIC * x * x)).tanh();
    0.5 * x * (1.0 + t)
}

#[inline(always)]
fn grad_f64(x: f64, g: f64) -> f64 {
    g * gelu_slope_f64(x).1
}

/// `(gelu(x), gelu'(x))` in f64, the value bitwise [`gelu_f64`].
#[inline(always)]
fn gelu_slope_f64(x: f64) -> (f64, f64) {
    let t = (SQRT_TWO_OVER_PI * x * (1.0 + CUBIC * x * x)).tanh();
    let d =
        0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * CUBIC * x * x);
    (0.5 * x * (1.0 + t), d)
}

/// GELU in place over `v`, with `slope[i] = gelu'(v[i])` (of the value
/// before) where `slope` is given: the fused activation of the
/// per-location products (`locmm.rs`), which keeps the slope for its
/// backward instead of a second pass through the exponential.
pub(crate) struct InPlace<'a, T> {
    pub(crate) v: &'a mut [T],
    pub(crate) slope: Option<&'a mut [T]>,
}

/// The element types of [`InPlace`]: GELU's value, and its value with its
/// slope.
pub(crate) trait Activate: Copy {
    fn gelu(self) -> Self;
    fn gelu_slope(self) -> (Self, Self);
}

impl Activate for f32 {
    #[inline(always)]
    fn gelu(self) -> f32 {
        gelu_f32(self)
    }
    #[inline(always)]
    fn gelu_slope(self) -> (f32, f32) {
        gelu_slope_f32(self)
    }
}

impl Activate for f64 {
    #[inline(always)]
    fn gelu(self) -> f64 {
        gelu_f64(self)
    }
    #[inline(always)]
    fn gelu_slope(self) -> (f64, f64) {
        gelu_slope_f64(self)
    }
}

impl<T: Activate> super::cpu::Kernel for InPlace<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        match self.slope {
            Some(slope) => {
                for (x, d) in self.v.iter_mut().zip(slope) {
                    (*x, *d) = x.gelu_slope();
                }
            }
            None => {
                for x in self.v.iter_mut() {
                    *x = x.gelu();
                }
            }
        }
    }
}

/// Elements per block handed to a thread.
const BLOCK: usize = 1 << 14;

/// `out[i] = f(a[i], b[i])` (or `f(a[i], 0)` without `b`), blocks shared
/// over candle's CPU thread pool.
fn map<T: Copy + Default + Send + Sync>(
    a: &[T],
    b: Option<&[T]>,
    f: impl Fn(&[T], Option<&[T]>, &mut [T]) + Sync,
) -> Vec<T> {
    super::cpu::fresh(a.len(), BLOCK, true, |i, o, _: &mut ()| {
        let (lo, hi) = (i * BLOCK, i * BLOCK + o.len());
        f(&a[lo..hi], b.map(|b| &b[lo..hi]), o)
    })
}

/// GELU's f32 value (`grad` false; `b` unused) or `b * gelu'(a)` (`grad`)
/// over `a`, into `out`: what [`super::cpu::dispatch`] compiles per SIMD
/// width.
struct Loop<'a> {
    grad: bool,
    a: &'a [f32],
    b: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl super::cpu::Kernel for Loop<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        match (self.grad, self.b) {
            (true, Some(b)) => {
                for ((o, &x), &g) in self.out.iter_mut().zip(self.a).zip(b) {
                    *o = grad_f32(x, g);
                }
            }
            _ => {
                for (o, &x) in self.out.iter_mut().zip(self.a) {
                    *o = gelu_f32(x);
                }
            }
        }
    }
}

/// `out = gelu(a)` in f32, at the widest SIMD the CPU has.
fn forward_loop(a: &[f32], _b: Option<&[f32]>, out: &mut [f32]) {
    super::cpu::dispatch(Loop {
        grad: false,
        a,
        b: None,
        out,
    })
}

/// `out = b * gelu'(a)` in f32, at the widest SIMD the CPU has.
fn grad_loop(a: &[f32], b: Option<&[f32]>, out: &mut [f32]) {
    super::cpu::dispatch(Loop {
        grad: true,
        a,
        b,
        out,
    })
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    super::cpu::contiguous(data, layout, "gelu")
}

/// The forward op; its backward is [`GeluGrad`].
struct Gelu;

/// `(x, grad) -> grad * gelu'(x)`.
struct GeluGrad;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "glom-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map(contiguous(v, l)?, None, forward_loop)),
            CpuStorage::F64(v) => CpuStorage::F64(map(contiguous(v, l)?, None, |a, _, o| {
                for (o, &x) in o.iter_mut().zip(a) {
                    *o = gelu_f64(x);
                }
            })),
            _ => candle_core::bail!("gelu: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad)?,
        ))
    }
}

impl CustomOp2 for GeluGrad {
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
                CpuStorage::F32(map(contiguous(x, l1)?, Some(contiguous(g, l2)?), grad_loop))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(map(
                contiguous(x, l1)?,
                Some(contiguous(g, l2)?),
                |a, b, o| {
                    let b = b.expect("a gradient");
                    for ((o, &x), &g) in o.iter_mut().zip(a).zip(b) {
                        *o = grad_f64(x, g);
                    }
                },
            )),
            _ => candle_core::bail!("gelu grad: f32 or f64, both the same"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpu::Kernel;
    use super::*;
    use candle_core::{Device, Var};

    /// Values over the range that matters and beyond, with the awkward ones.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 2.5e-4).collect();
        v.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e-8, 30.0, -30.0, 1e4, -1e4, 88.0, -88.0,
        ]);
        v
    }

    #[test]
    fn in_place_with_slope_is_bitwise_the_value_and_gradient_loops_on_every_path() {
        let xs = inputs();
        let g: Vec<f32> = (0..xs.len()).map(|i| 0.25 + (i % 7) as f32).collect();
        let value = map(&xs, None, forward_loop);
        let grad = map(&xs, Some(&g), grad_loop);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        /// The kernel on its own copy of the inputs.
        struct Owned(Vec<f32>, bool);
        impl Kernel for Owned {
            type Output = (Vec<f32>, Vec<f32>);
            #[inline(always)]
            fn run(self) -> Self::Output {
                let Owned(mut v, keep) = self;
                let mut slope = vec![0f32; if keep { v.len() } else { 0 }];
                let slope_out = keep.then_some(&mut slope[..]);
                InPlace {
                    v: &mut v,
                    slope: slope_out,
                }
                .run();
                (v, slope)
            }
        }
        let with = super::super::cpu::paths(|| Owned(xs.clone(), true));
        let without = super::super::cpu::paths(|| Owned(xs.clone(), false));
        let runs = with
            .into_iter()
            .zip(without)
            .map(|((path, (v, slope)), (_, (plain, _)))| (path, (v, slope, plain)));
        for (path, (v, slope, plain)) in runs {
            assert_eq!(bits(&v), bits(&value), "{path}: values");
            assert_eq!(bits(&plain), bits(&value), "{path}: values without slope");
            let through: Vec<f32> = slope.iter().zip(&g).map(|(d, g)| g * d).collect();
            assert_eq!(bits(&through), bits(&grad), "{path}: gradient");
        }
    }

    #[test]
    fn f32_values_and_gradients_are_within_float_precision_of_the_exact_function() {
        let xs = inputs();
        let n = xs.len();
        let x = Tensor::from_vec(xs.clone(), n, &Device::Cpu).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let y = gelu(v.as_tensor()).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dy: Vec<f32> = grads.get(v.as_tensor()).unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.to_vec1().unwrap();
        for i in 0..n {
            let x64 = xs[i] as f64;
            let (want_y, want_d) = (gelu_f64(x64), grad_f64(x64, 1.0));
            // Relative, plus an absolute part: where tanh(u) is near -1
            // (x below about -3) `1 + t` keeps only its absolute precision,
            // as with any f32 tanh.
            let tol = |want: f64| 1e-6 + 4.0 * f32::EPSILON as f64 * want.abs();
            assert!(
                (y[i] as f64 - want_y).abs() <= tol(want_y),
                "gelu({}) = {} against {want_y}",
                xs[i],
                y[i]
            );
            assert!(
                (dy[i] as f64 - want_d).abs() <= tol(want_d),
                "gelu'({}) = {} against {want_d}",
                xs[i],
                dy[i]
            );
        }
    }

    #[test]
    fn close_to_candles_gelu_in_f32_and_f64() {
        for dtype in [DType::F32, DType::F64] {
            let x = Tensor::from_vec(inputs(), inputs().len(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let ours = gelu(&x).unwrap();
            let theirs = x.gelu().unwrap();
            let diff: f64 = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-5, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn every_simd_path_and_any_split_give_the_same_bits() {
        let xs = inputs();
        let g: Vec<f32> = xs.iter().map(|x| (x * 7.0).sin()).collect();
        let mut plain_y = vec![0f32; xs.len()];
        let mut plain_d = vec![0f32; xs.len()];
        for i in 0..xs.len() {
            plain_y[i] = gelu_f32(xs[i]);
            plain_d[i] = grad_f32(xs[i], g[i]);
        }
        let y = map(&xs, None, forward_loop);
        let d = map(&xs, Some(&g), grad_loop);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&plain_y));
        assert_eq!(bits(&d), bits(&plain_d));
        // Each vector width this CPU has, called directly.
        type Path = fn(&[f32], Option<&[f32]>, &mut [f32]);
        let plain_fwd: Path = |a, b, out| {
            Loop {
                grad: false,
                a,
                b,
                out,
            }
            .run()
        };
        let plain_grad: Path = |a, b, out| {
            Loop {
                grad: true,
                a,
                b,
                out,
            }
            .run()
        };
        let mut paths: Vec<(&str, Path, Path)> = vec![("plain", plain_fwd, plain_grad)];
        #[cfg(target_arch = "x86_64")]
        {
            use super::super::cpu::{run_avx, run_avx512};
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: only called when the CPU has AVX, checked here.
                paths.push((
                    "avx",
                    |a, b, out| unsafe {
                        run_avx(Loop {
                            grad: false,
                            a,
                            b,
                            out,
                        })
                    },
                    |a, b, out| unsafe {
                        run_avx(Loop {
                            grad: true,
                            a,
                            b,
                            out,
                        })
                    },
                ));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: only called when the CPU has AVX-512F, checked here.
                paths.push((
                    "avx512",
                    |a, b, out| unsafe {
                        run_avx512(Loop {
                            grad: false,
                            a,
                            b,
                            out,
                        })
                    },
                    |a, b, out| unsafe {
                        run_avx512(Loop {
                            grad: true,
                            a,
                            b,
                            out,
                        })
                    },
                ));
            }
        }
        for (name, fwd, grad) in paths {
            let (mut y, mut d) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            fwd(&xs, None, &mut y);
            grad(&xs, Some(&g), &mut d);
            assert_eq!(bits(&y), bits(&plain_y), "{name} forward");
            assert_eq!(bits(&d), bits(&plain_d), "{name} gradient");
        }
        // An odd-sized piece computed alone matches the whole.
        let (lo, hi) = (12_345, 12_345 + 777);
        let part = map(&xs[lo..hi], None, forward_loop);
        assert_eq!(bits(&part), bits(&y[lo..hi]));
    }
}

//! What the CPU kernels (`locmm.rs`, `attend.rs`, `gelu.rs`, `stats.rs`,
//! `sqerr.rs`, and AdamW's passes) share: the elements of a contiguous
//! input, an output computed chunk by chunk over candle's CPU thread pool,
//! and f32/f64 read through f64.

use std::sync::Mutex;

use candle_core::{Layout, Result};

/// f32 or f64, read and written through f64 (the kernels that compute in
/// f64 inside: `stats.rs`, `sqerr.rs`).
pub(crate) trait Real:
    Copy + Default + Send + Sync + std::ops::Add<Output = Self> + 'static
{
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// A kernel body that [`dispatch`] compiles for the widest SIMD the CPU
/// has. `run` should be `#[inline(always)]`, so that it is compiled
/// inside each of [`run_avx512`], [`run_avx`] and the plain build. The
/// bodies use plain multiplies and adds (no fused multiply-add unless they
/// ask for it), so every path gives the same bits; tests call each path
/// the CPU offers through [`paths`].
pub(crate) trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// `k.run()` compiled for 512-bit vectors (AVX-512F) or 256-bit ones
/// (AVX) where the CPU has them, else for the baseline.
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { run_avx512(k) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX, checked just above.
            return unsafe { run_avx(k) };
        }
    }
    k.run()
}

/// `k.run()` compiled for AVX-512F. Safety: the CPU must support it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn run_avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// `k.run()` compiled for AVX. Safety: the CPU must support it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn run_avx<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Every build of a kernel this CPU can run, by name: "plain", then
/// "avx" and "avx512" where supported, each on a fresh kernel from `make`
/// (for tests that compare the paths).
#[cfg(test)]
pub(crate) fn paths<K: Kernel>(make: impl Fn() -> K) -> Vec<(&'static str, K::Output)> {
    let mut out = vec![("plain", make().run())];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: checked just above.
            out.push(("avx", unsafe { run_avx(make()) }));
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: checked just above.
            out.push(("avx512", unsafe { run_avx512(make()) }));
        }
    }
    out
}

/// `exp(v)` in f32 for `v` in [-87, 88] (callers clamp): `2^k exp(r)`,
/// `k = round(v / ln 2)`, `|r| <= ln 2 / 2`, `exp(r)` by its degree-6
/// Taylor polynomial (relative error below 2e-7, about one unit in the
/// last place). Plain multiplies, adds and integer bit operations, so a
/// loop of it vectorises: `k` is read from the bits of the rounding sum
/// rather than by a float-to-int cast, which Rust's saturating semantics
/// would make element by element. Every element takes the same sequence
/// of operations (no fused multiply-add), whatever the SIMD width.
#[inline(always)]
pub(crate) fn exp_f32(v: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: the high one exact in f32 with trailing zero
    // bits, so that `k * LN2_HI` is exact.
    #[allow(clippy::excessive_precision)]
    const LN2_HI: f32 = 0.693_145_751_953_125;
    #[allow(clippy::excessive_precision)]
    const LN2_LO: f32 = 1.428_606_765_330_187e-6;
    // 1.5 * 2^23: adding it rounds to the nearest integer, which then sits
    // in the low bits of the sum (|v / ln 2| < 2^22).
    const MAGIC: f32 = 12_582_912.0;
    let t = v * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = (v - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The biased exponent of 2^k: k + 127, from t's bits.
    let biased = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// The elements of a contiguous storage described by `layout`; an error
/// naming `op` otherwise.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// `f` on the elements of `t`, a contiguous CPU tensor of element type
/// `T` (a tensor a custom op holds rather than takes as an argument); an
/// error naming `op` otherwise.
pub(crate) fn with_elements<T: candle_core::WithDType, R>(
    t: &candle_core::Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: inputs must be on the CPU");
    };
    Ok(f(contiguous(cpu.as_slice::<T>()?, layout, op)?))
}

/// [`contiguous`] for a storage written in place.
pub(crate) fn contiguous_mut<'a, T>(
    data: &'a mut [T],
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// `f(i, chunk_i, scratch)` for every `chunk`-long piece of `out` (the
/// last may be shorter), in order on the calling thread unless `parallel`,
/// else shared out over candle's CPU thread pool (the one its element-wise
/// ops use, so no second pool competes for the cores); each thread makes
/// one `S::default()` scratch and reuses it for all its pieces. Each piece
/// is handed to exactly one call, so a kernel whose pieces depend only on
/// their own inputs gives the same bits however they are shared.
pub(crate) fn for_each_chunk<T: Send, S: Default>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T], &mut S) + Sync,
) {
    if out.is_empty() || chunk == 0 {
        return;
    }
    let parallel = parallel && out.len() > chunk;
    share(out.chunks_mut(chunk).collect(), parallel, |i, piece, s| {
        f(i, piece, s)
    });
}

/// A new `len`-long vector computed as [`for_each_chunk`] computes into
/// one: each `chunk`-long piece is zeroed and then handed to `f` by the
/// thread that computes it. A vector made zero first (`vec![0; len]`)
/// is filled on the calling thread alone, before the pieces are shared
/// out: at the sizes of a training step (a megabyte for one per-location
/// layer's output and GELU slope) that serial pass had been a tenth of the
/// calling thread's time, with the pool's other threads idle. Zeroed in
/// its piece, the memory is also in the cache when `f` writes it.
pub(crate) fn fresh<T: Copy + Default + Send, S: Default>(
    len: usize,
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T], &mut S) + Sync,
) -> Vec<T> {
    if len == 0 || chunk == 0 {
        return vec![T::default(); len];
    }
    let mut out: Vec<T> = Vec::with_capacity(len);
    let pieces: Vec<_> = out.spare_capacity_mut()[..len].chunks_mut(chunk).collect();
    let parallel = parallel && pieces.len() > 1;
    share(pieces, parallel, |i, piece, s| f(i, zeroed(piece), s));
    // SAFETY: `share` hands every piece to exactly one call, which zeroed
    // all of it (`zeroed`) before anything else; a panic never gets here.
    unsafe { out.set_len(len) };
    out
}

/// [`fresh`] for two new `len`-long vectors cut alike: `f(i, a_i, b_i,
/// scratch)` with the i-th `chunk`-long piece of each.
pub(crate) fn fresh_pair<T: Copy + Default + Send, U: Copy + Default + Send, S: Default>(
    len: usize,
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T], &mut [U], &mut S) + Sync,
) -> (Vec<T>, Vec<U>) {
    if len == 0 || chunk == 0 {
        return (vec![T::default(); len], vec![U::default(); len]);
    }
    let mut a: Vec<T> = Vec::with_capacity(len);
    let mut b: Vec<U> = Vec::with_capacity(len);
    let pieces: Vec<_> = a.spare_capacity_mut()[..len]
        .chunks_mut(chunk)
        .zip(b.spare_capacity_mut()[..len].chunks_mut(chunk))
        .collect();
    let parallel = parallel && pieces.len() > 1;
    share(pieces, parallel, |i, (pa, pb), s| {
        f(i, zeroed(pa), zeroed(pb), s)
    });
    // SAFETY: as in `fresh`, for both vectors (cut into the same pieces).
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

/// `piece` with every element set to `T::default()`, as initialised
/// elements.
fn zeroed<T: Copy + Default>(piece: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    for v in piece.iter_mut() {
        v.write(T::default());
    }
    // SAFETY: every element was written just above, and `MaybeUninit<T>`
    // has the layout of `T`.
    unsafe { &mut *(piece as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// `f(i, piece_i, scratch)` for every piece, on the calling thread unless
/// `parallel`, else over candle's CPU thread pool; one scratch per thread.
fn share<P: Send, S: Default>(pieces: Vec<P>, parallel: bool, f: impl Fn(usize, P, &mut S) + Sync) {
    if !parallel {
        let mut scratch = S::default();
        for (i, piece) in pieces.into_iter().enumerate() {
            f(i, piece, &mut scratch);
        }
        return;
    }
    let pieces: Vec<Mutex<Option<P>>> = pieces.into_iter().map(|p| Mutex::new(Some(p))).collect();
    candle_core::utils::barrier_pool().execute_chunked(pieces.len(), |range| {
        let mut scratch = S::default();
        for i in range {
            let piece = pieces[i].lock().ok().and_then(|mut c| c.take());
            f(i, piece.expect("each piece is computed once"), &mut scratch);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_the_exponential_to_an_ulp_or_two() {
        let mut v = -87.0f32;
        while v <= 88.0 {
            let got = exp_f32(v) as f64;
            let want = (v as f64).exp();
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({v}) = {got}, want {want}"
            );
            v += 0.0137;
        }
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn fresh_pieces_start_at_zero_and_each_is_computed_once() {
        for parallel in [false, true] {
            for (len, chunk) in [(0, 4), (5, 0), (10, 3), (100_000, 1000), (7, 7)] {
                let out: Vec<u64> = fresh(len, chunk, parallel, |i, piece, calls: &mut usize| {
                    *calls += 1;
                    for (j, o) in piece.iter_mut().enumerate() {
                        assert_eq!(*o, 0);
                        *o += (i * chunk + j + 1) as u64;
                    }
                });
                let want: Vec<u64> = if chunk == 0 {
                    vec![0; len]
                } else {
                    (1..=len as u64).collect()
                };
                assert_eq!(out, want, "len {len}, chunk {chunk}, parallel {parallel}");
            }
        }
    }

    #[test]
    fn fresh_pairs_start_at_zero_and_are_cut_alike() {
        for parallel in [false, true] {
            for (len, chunk) in [(0, 4), (5, 0), (10, 3), (100_000, 1000), (7, 7)] {
                let (a, b): (Vec<u32>, Vec<u64>) =
                    fresh_pair(len, chunk, parallel, |i, pa, pb, calls: &mut usize| {
                        *calls += 1;
                        assert_eq!(pa.len(), pb.len());
                        assert!(pa.iter().all(|&v| v == 0) && pb.iter().all(|&v| v == 0));
                        pa.fill(i as u32 + 1);
                        pb.fill(i as u64 + 1);
                    });
                let want = |j: usize| j.checked_div(chunk).map_or(0, |piece| piece + 1);
                let case = format!("len {len}, chunk {chunk}, parallel {parallel}");
                assert_eq!(
                    a,
                    (0..len).map(|j| want(j) as u32).collect::<Vec<_>>(),
                    "{case}"
                );
                assert_eq!(
                    b,
                    (0..len).map(|j| want(j) as u64).collect::<Vec<_>>(),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn every_piece_once_in_either_mode() {
        for parallel in [false, true] {
            for (len, chunk) in [(0, 4), (5, 0), (10, 3), (100_000, 1000), (7, 7)] {
                let mut out = vec![0usize; len];
                for_each_chunk(&mut out, chunk, parallel, |i, piece, calls: &mut usize| {
                    *calls += 1;
                    for (j, o) in piece.iter_mut().enumerate() {
                        *o += i * chunk + j + 1;
                    }
                });
                let want: Vec<usize> = if chunk == 0 {
                    vec![0; len]
                } else {
                    (1..=len).collect()
                };
                assert_eq!(out, want, "len {len}, chunk {chunk}, parallel {parallel}");
            }
        }
    }
}

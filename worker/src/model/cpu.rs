//! What the CPU kernels (`locmm.rs`, `attend.rs`, `gelu.rs`, `stats.rs`,
//! `sqerr.rs`, and AdamW's passes) share: the elements of a contiguous
//! input, an output computed chunk by chunk over candle's CPU thread pool,
//! and f32/f64 read through f64.

use std::sync::Mutex;

use candle_core::{Layout, Result};

/// f32 or f64, read and written through f64 (the kernels that compute in
/// f64 inside: `stats.rs`, `sqerr.rs`).
pub(crate) trait Real: Copy + Default + Send + Sync + 'static {
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

/// The elements of a contiguous storage described by `layout`; an error
/// naming `op` otherwise.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
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
    if !parallel || out.len() <= chunk {
        let mut scratch = S::default();
        for (i, piece) in out.chunks_mut(chunk).enumerate() {
            f(i, piece, &mut scratch);
        }
        return;
    }
    let pieces: Vec<Mutex<Option<&mut [T]>>> =
        out.chunks_mut(chunk).map(|c| Mutex::new(Some(c))).collect();
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

//! What the kernels' tests share: seeded values, and a tensor's values
//! and bits as f64.

use candle_core::{DType, Device, Shape, Tensor};

/// `len` values of the xorshift stream of `seed`, uniform in [0, 2).
pub(crate) fn stream(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64
        })
        .collect()
}

/// A CPU tensor of `dims` and `dtype` whose values are the stream of
/// `seed`, each mapped by `f`.
pub(crate) fn random(
    seed: u64,
    dims: impl Into<Shape>,
    dtype: DType,
    f: impl Fn(f64) -> f64,
) -> Tensor {
    let dims = dims.into();
    let v: Vec<f64> = stream(seed, dims.elem_count()).into_iter().map(f).collect();
    Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The values of `t`, flattened, as f64.
pub(crate) fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The bits of `t`'s values, read as f64 (exact for f32 and f64).
pub(crate) fn bits(t: &Tensor) -> Vec<u64> {
    f64s(t).into_iter().map(f64::to_bits).collect()
}

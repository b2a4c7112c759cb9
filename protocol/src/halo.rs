//! The halo frame: the boundary embeddings one worker sends a neighbour at
//! each settling iteration, the only data that crosses between workers.
//!
//! The payload is f32 or bf16 (half the bytes, about 3 significant digits).
//! Either way it is serialised as one byte string of little-endian values
//! rather than as a sequence of numbers: bincode's variable-length integers
//! would spend 3 bytes on most bf16 values, and a byte string costs one
//! length prefix for the whole payload, which keeps the framing overhead of
//! a realistic frame well under 1%.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Embeddings of some boundary locations at every level, for every image of
/// the batch, after one settling iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaloFrame {
    /// Training step, so a frame that arrives early is kept for its step.
    pub step: u64,
    /// Settling iteration whose output the payload holds.
    pub iteration: u32,
    /// Sender's worker id.
    pub from_worker: u32,
    pub levels: u32,
    /// Global ids of the locations, in the order of the payload.
    pub locations: Vec<u32>,
    /// Images in the batch.
    pub batch: u32,
    /// Embedding dimension.
    pub dim: u32,
    /// Row-major over (level, location in `locations` order, image, component).
    pub payload: HaloPayload,
}

impl HaloFrame {
    /// Number of values the shape calls for (levels x locations x batch x
    /// dim), or `None` if that overflows a `u64`.
    pub fn expected_values(&self) -> Option<u64> {
        (self.levels as u64)
            .checked_mul(self.locations.len() as u64)?
            .checked_mul(self.batch as u64)?
            .checked_mul(self.dim as u64)
    }

    /// Check that the payload holds exactly levels x locations x batch x dim
    /// values; a frame from a buggy or hostile peer must not be indexed
    /// blindly.
    pub fn validate(&self) -> Result<()> {
        let actual = self.payload.len();
        if self.expected_values() == Some(actual as u64) {
            return Ok(());
        }
        let expected = [
            self.locations.len() as u128,
            self.batch as u128,
            self.dim as u128,
        ]
        .into_iter()
        .fold(self.levels as u128, u128::saturating_mul);
        Err(Error::HaloShape {
            levels: self.levels,
            locations: self.locations.len(),
            batch: self.batch,
            dim: self.dim,
            expected,
            actual,
        })
    }
}

/// The values of a halo frame, in one of the two wire precisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HaloPayload {
    /// Full precision: what sharding invariance needs to be bitwise.
    F32(#[serde(with = "le_bytes")] Vec<f32>),
    /// Raw bf16 bit patterns (see [`f32_to_bf16`]).
    Bf16(#[serde(with = "le_bytes")] Vec<u16>),
}

impl HaloPayload {
    /// A bf16 payload rounded from `values` (nearest, ties to even).
    pub fn bf16_from_f32(values: &[f32]) -> Self {
        HaloPayload::Bf16(values.iter().map(|&x| f32_to_bf16(x)).collect())
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            HaloPayload::F32(v) => v.len(),
            HaloPayload::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the values on the wire, without any framing.
    pub fn raw_bytes(&self) -> usize {
        match self {
            HaloPayload::F32(v) => v.len() * 4,
            HaloPayload::Bf16(v) => v.len() * 2,
        }
    }

    /// The values as f32 (exact for both precisions).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            HaloPayload::F32(v) => v.clone(),
            HaloPayload::Bf16(v) => v.iter().map(|&h| bf16_to_f32(h)).collect(),
        }
    }
}

/// Round an f32 to the nearest bf16 (ties to even), as its bit pattern.
/// NaN stays NaN (made quiet, sign kept); overflow rounds to infinity.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Truncating could clear every mantissa bit and make an infinity.
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// Widen a bf16 bit pattern to f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A fixed-size number stored little-endian in a byte string.
trait LeValue: Copy {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

impl LeValue for f32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl LeValue for u16 {
    const SIZE: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(b: &[u8]) -> Self {
        u16::from_le_bytes([b[0], b[1]])
    }
}

/// Serde adapter: a vector of numbers as one little-endian byte string.
mod le_bytes {
    use std::marker::PhantomData;

    use super::{de, Deserializer, LeValue, Serializer};

    pub(super) fn serialize<T: LeValue, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(v.len() * T::SIZE);
        for &x in v {
            x.put(&mut bytes);
        }
        s.serialize_bytes(&bytes)
    }

    pub(super) fn deserialize<'de, T: LeValue, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_bytes(LeVisitor(PhantomData))
    }

    struct LeVisitor<T>(PhantomData<T>);

    impl<'de, T: LeValue> de::Visitor<'de> for LeVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a byte string of {}-byte little-endian values", T::SIZE)
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<T>, E> {
            if !b.len().is_multiple_of(T::SIZE) {
                return Err(E::invalid_length(b.len(), &self));
            }
            Ok(b.chunks_exact(T::SIZE).map(T::get).collect())
        }

        // Self-describing formats (JSON) write bytes as a sequence.
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            self.visit_bytes(&bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between bf16 1.0 (0x3f80) and 1 + 2^-7
        // (0x3f81): the tie goes to the even mantissa, 0x3f80.
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3 * 2^-8 lies between 0x3f81 and 0x3f82: the tie goes to 0x3f82.
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above the tie rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        // The largest finite f32 is past the largest bf16: infinity.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
    }

    #[test]
    fn bf16_is_exact_for_representable_values_and_keeps_nan() {
        for h in [
            0x0000u16, 0x8000, 0x3f80, 0xbf80, 0x4049, 0x0001, 0x7f7f, 0x7f80, 0xff80,
        ] {
            let x = bf16_to_f32(h);
            assert_eq!(f32_to_bf16(x), h, "{h:#06x} = {x}");
        }
        for x in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)] {
            assert!(bf16_to_f32(f32_to_bf16(x)).is_nan(), "{x}");
        }
    }

    #[test]
    fn validate_refuses_a_wrong_payload_length() {
        let mut frame = HaloFrame {
            step: 3,
            iteration: 1,
            from_worker: 0,
            levels: 2,
            locations: vec![4, 5, 6],
            batch: 2,
            dim: 4,
            payload: HaloPayload::F32(vec![0.5; 48]),
        };
        frame.validate().unwrap();
        frame.payload = HaloPayload::bf16_from_f32(&[0.5; 47]);
        let e = frame.validate().unwrap_err().to_string();
        assert!(e.contains("47") && e.contains("48"), "{e}");
        frame.payload = HaloPayload::F32(vec![]);
        frame.levels = u32::MAX;
        frame.batch = u32::MAX;
        frame.dim = u32::MAX;
        assert!(frame.validate().is_err());
    }
}

//! Deterministic, dependency-free random numbers.
//!
//! Every random choice in the trainer (initial weights, neighbour sets,
//! masks, synthetic scenes, batch order) is drawn from a [`Rng`] whose state
//! is derived from a *key*: the run seed plus the coordinates of the choice
//! (step, level, location, image index ...). A key names a stream, so any
//! shard of the grid, on any machine, draws exactly the same numbers for
//! the same key without talking to anyone (DESIGN.md section 1).

/// SplitMix64: small, fast, statistically fine for simulation, and fully
/// specified here, so results never depend on a crate's version.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with one number.
    pub fn new(seed: u64) -> Self {
        Self {
            state: mix(seed ^ GOLDEN),
        }
    }

    /// A generator for the stream named by `key` (e.g. `[seed, step, level, loc]`).
    /// Different keys give independent streams; the same key the same stream.
    pub fn from_key(key: &[u64]) -> Self {
        let mut h = 0x243F_6A88_85A3_08D3u64;
        for &k in key {
            h = mix(h ^ k.wrapping_add(GOLDEN));
        }
        Self { state: h }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform_range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias worth noting
    /// for the small `n` used here (Lemire's multiply-shift).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal sample (Box-Muller; one value per call, for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_stream_and_keys_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::from_key(&[1, 2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::from_key(&[1, 2, 3]);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::from_key(&[1, 2, 4]).next_u64();
        let d = Rng::from_key(&[2, 1, 3]).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_ne!(a[0], d);
    }

    #[test]
    fn uniform_and_normal_have_the_right_moments() {
        let mut r = Rng::new(7);
        let n = 20_000;
        let u: Vec<f64> = (0..n).map(|_| r.uniform()).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let g: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let gm = g.iter().sum::<f64>() / n as f64;
        let gv = g.iter().map(|x| (x - gm) * (x - gm)).sum::<f64>() / n as f64;
        assert!(
            gm.abs() < 0.03 && (gv - 1.0).abs() < 0.05,
            "normal {gm} {gv}"
        );
    }
}

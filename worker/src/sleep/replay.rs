//! A bounded store of recent consensus states (DESIGN.md section 3): what
//! the sleep job dreams from (top level, paper section 12.2) and where it
//! takes the consensus vectors of unrelated contexts (every level).

use std::collections::VecDeque;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Recent settled states of a tile, one item per image: the embedding of
/// every level at every location of the tile. Oldest items are evicted
/// first once `capacity` items are held. Stored tensors are detached copies.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    capacity: usize,
    /// Per item, per level: `[P, d]`.
    items: VecDeque<Vec<Tensor>>,
}

impl ReplayBuffer {
    /// An empty buffer holding at most `capacity` items (images).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: VecDeque::with_capacity(capacity),
        }
    }

    /// The most items held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items held now.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no item is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of levels of the stored items (`None` when empty).
    pub fn levels(&self) -> Option<usize> {
        self.items.front().map(|i| i.len())
    }

    /// Store a settled batch: `levels[l]` is `[P, B, d]`; each of the B
    /// images becomes one item (oldest evicted first).
    pub fn push(&mut self, levels: &[Tensor]) -> Result<()> {
        let first = levels
            .first()
            .ok_or_else(|| Error::Shape("replay: no level to store".into()))?;
        let (p, b, d) = first.dims3()?;
        for (l, t) in levels.iter().enumerate() {
            if t.dims3()? != (p, b, d) {
                return Err(Error::Shape(format!(
                    "replay: level {l} is {:?}, level 0 is [{p}, {b}, {d}]",
                    t.dims()
                )));
            }
        }
        if let Some(have) = self.items.front() {
            let want = (have.len(), have[0].dims2()?);
            if want != (levels.len(), (p, d)) {
                return Err(Error::Shape(format!(
                    "replay: items hold {} levels of [{}, {}], got {} levels of [{p}, {d}]",
                    want.0,
                    want.1 .0,
                    want.1 .1,
                    levels.len()
                )));
            }
        }
        if self.capacity == 0 {
            return Ok(());
        }
        for i in 0..b {
            let item = levels
                .iter()
                .map(|t| Ok(t.detach().narrow(1, i, 1)?.squeeze(1)?.copy()?))
                .collect::<Result<Vec<_>>>()?;
            if self.items.len() == self.capacity {
                self.items.pop_front();
            }
            self.items.push_back(item);
        }
        Ok(())
    }

    /// `n` item indices drawn uniformly with replacement (0 = oldest held).
    pub fn sample_indices(&self, n: usize, rng: &mut Rng) -> Result<Vec<usize>> {
        if self.items.is_empty() {
            return Err(Error::Shape("replay buffer is empty".into()));
        }
        Ok((0..n)
            .map(|_| rng.below(self.items.len() as u64) as usize)
            .collect())
    }

    /// The level-`level` states of the items `idx`, `[P, idx.len(), d]`.
    pub fn gather(&self, level: usize, idx: &[usize]) -> Result<Tensor> {
        let rows = idx
            .iter()
            .map(|&i| {
                let item = self.items.get(i).ok_or_else(|| {
                    Error::Shape(format!("replay: item {i} of {}", self.items.len()))
                })?;
                item.get(level)
                    .cloned()
                    .ok_or_else(|| Error::Shape(format!("replay: level {level} of {}", item.len())))
            })
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Err(Error::Shape("replay: nothing to gather".into()));
        }
        Ok(Tensor::stack(&rows, 1)?)
    }

    /// `n` stored top-level states, `[P, n, d]`.
    pub fn sample_top(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let top = self.levels().unwrap_or(1) - 1;
        self.sample_level(top, n, rng)
    }

    /// `n` stored level-`level` states, `[P, n, d]`.
    pub fn sample_level(&self, level: usize, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let idx = self.sample_indices(n, rng)?;
        self.gather(level, &idx)
    }
}

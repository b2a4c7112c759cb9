//! A bounded store of recent consensus states (DESIGN.md section 3): what
//! the sleep job dreams from (top level, paper section 12.2) and where it
//! takes the consensus vectors of unrelated contexts (every level). Of a
//! video every frame's state is an item, and each item knows its sequence
//! and frame, so the job can take negatives from nearby frames of the
//! dream's own sequence ([`ReplayBuffer::nearby`]).

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
    /// Per item: the serial number of its sequence (one per stored image
    /// or sequence, counted from 0 as they come) and its frame.
    origins: VecDeque<(u64, usize)>,
    /// Serial number of the next sequence stored.
    next_serial: u64,
}

impl ReplayBuffer {
    /// An empty buffer holding at most `capacity` items (images).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            items: VecDeque::with_capacity(capacity),
            origins: VecDeque::with_capacity(capacity),
            next_serial: 0,
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
        self.push_frames(std::slice::from_ref(&levels.to_vec()))
    }

    /// Store a settled batch of sequences: `frames[f][l]` is the `[P, B,
    /// d]` state after frame `f` at level `l`; each of the B sequences gets
    /// the next serial number and every frame of it becomes one item,
    /// frame 0 first (oldest evicted first).
    pub fn push_frames(&mut self, frames: &[Vec<Tensor>]) -> Result<()> {
        let Some(first_frame) = frames.first() else {
            return Err(Error::Shape("replay: no frame to store".into()));
        };
        let b = match first_frame.first() {
            Some(t) => t.dims3()?.1,
            None => return Err(Error::Shape("replay: no level to store".into())),
        };
        let mut per_frame = Vec::with_capacity(frames.len());
        for levels in frames {
            per_frame.push(self.check_and_split(levels)?);
            if per_frame.last().map(Vec::len) != Some(b) {
                return Err(Error::Shape(format!(
                    "replay: every frame needs the same {b} images"
                )));
            }
        }
        if self.capacity == 0 {
            return Ok(());
        }
        for i in 0..b {
            let serial = self.next_serial;
            self.next_serial += 1;
            for (f, items) in per_frame.iter_mut().enumerate() {
                if self.items.len() == self.capacity {
                    self.items.pop_front();
                    self.origins.pop_front();
                }
                self.items.push_back(std::mem::take(&mut items[i]));
                self.origins.push_back((serial, f));
            }
        }
        Ok(())
    }

    /// Items of the same sequence as item `i` whose frame is `g` away
    /// from its frame, for `lo <= g <= hi`, oldest first.
    pub fn nearby(&self, i: usize, [lo, hi]: [usize; 2]) -> Vec<usize> {
        let Some(&(serial, frame)) = self.origins.get(i) else {
            return Vec::new();
        };
        self.origins
            .iter()
            .enumerate()
            .filter(|(_, &(s, f))| s == serial && (lo..=hi).contains(&f.abs_diff(frame)))
            .map(|(j, _)| j)
            .collect()
    }

    /// Items of other sequences than item `i`'s (for still images, every
    /// item but `i`), oldest first.
    pub fn other_sequences(&self, i: usize) -> Vec<usize> {
        let serial = self.origins.get(i).map(|o| o.0);
        self.origins
            .iter()
            .enumerate()
            .filter(|(_, o)| Some(o.0) != serial)
            .map(|(j, _)| j)
            .collect()
    }

    /// The items of one settled batch, `levels[l]` `[P, B, d]`: per image,
    /// per level, `[P, d]` (detached copies), after checking the shapes.
    fn check_and_split(&self, levels: &[Tensor]) -> Result<Vec<Vec<Tensor>>> {
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
        (0..b)
            .map(|i| {
                levels
                    .iter()
                    .map(|t| Ok(t.detach().narrow(1, i, 1)?.squeeze(1)?.copy()?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect()
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

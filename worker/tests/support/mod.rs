//! Helpers of the engine tests: halo exchanges that record the whole
//! grid's states and replay them as a tile's halo.

use candle_core::{DType, Device, Tensor};
use glom_worker::model::HaloExchange;
use glom_worker::Result;

/// Replays the whole grid's states as the halo of a tile.
pub(crate) struct Replay {
    /// Per iteration, per level: the whole grid's `[N, B, d]` state.
    pub(crate) states: Vec<Vec<Tensor>>,
    pub(crate) halo: Vec<usize>,
}

impl HaloExchange for Replay {
    fn send(&mut self, _iteration: usize, _own: &[Tensor]) -> Result<()> {
        Ok(())
    }

    fn receive(&mut self, iteration: usize) -> Result<Vec<Tensor>> {
        let idx = Tensor::new(
            self.halo.iter().map(|&g| g as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        self.states[iteration]
            .iter()
            .map(|s| Ok(s.index_select(&idx, 0)?))
            .collect()
    }
}

/// Records the whole grid's states at the start of every iteration.
pub(crate) struct Record(pub(crate) Vec<Vec<Tensor>>);

impl HaloExchange for Record {
    fn send(&mut self, _iteration: usize, own: &[Tensor]) -> Result<()> {
        self.0.push(own.to_vec());
        Ok(())
    }

    fn receive(&mut self, _iteration: usize) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
}

/// The largest absolute difference between two tensors of one shape.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap()
}

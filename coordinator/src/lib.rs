//! The control plane of the GLOM trainer (DESIGN.md sections 4 and 7): how
//! the grid of locations is cut into tiles, one per worker, who must talk
//! to whom, and the state machine that admits workers, drives the steps,
//! orchestrates checkpoints and aggregates metrics. The coordinator never
//! touches embeddings or weights; it only decides who computes what.
//!
//! Everything here is sans-IO: the network, clocks and files belong to the
//! driver (the binary), which feeds events to [`Coordinator`] and carries
//! out what it polls from it.
//!
//! # Layout
//! - [`plan`]: balanced rectangular tiles of the grid.
//! - [`halo`]: halo width from the neighbour-sampling radius; peers of a tile.
//! - [`state`]: [`Coordinator`], its inputs and outputs ([`Action`]), liveness.
//! - [`membership`]: hellos, admission, the start of the run, departures.
//! - `conns`: the open connections, by id and by when last heard from.
//! - [`liveness`]: heartbeats, silent connections, lost workers, abort.
//! - [`recovery`]: rolling the cluster back to its last checkpoint after a
//!   lost worker, with a replacement or with the survivors.
//! - [`schedule`]: the step driver and checkpoint orchestration.
//! - [`sleep`]: when sleep jobs fall (every N steps, a UTC timetable), and
//!   their reports merged over the grid.
//! - [`metrics`]: per-step metrics aggregated over the workers.
//! - [`error`]: [`Error`] and [`Result`].
//! - `tests`: a fake cluster driving the state machine without sockets.

mod conns;
pub mod error;
pub mod halo;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod schedule;
pub mod sleep;
pub mod state;
mod stop;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use metrics::{GridLevel, GridObservation, StepSummary, WorkerStep};
pub use recovery::Restart;
pub use sleep::{SleepSummary, SleepTrigger};
pub use state::{Action, ConnId, Coordinator, LostReason, Phase, Settings};

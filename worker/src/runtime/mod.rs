//! The networked worker (DESIGN.md sections 4 and 5): the thin I/O around
//! the engine that turns a tile of it into a member of a cluster.
//!
//! - [`halo`]: who sends which boundary embeddings to whom ([`HaloPlan`]),
//!   and the engine's halo exchange over QUIC ([`QuicHalo`]).
//! - [`peers`]: the halo connections between neighbouring workers.
//! - [`node`]: one worker's life: join, assignment, steps, checkpoints,
//!   heartbeats, rejoining after a rollback, shutdown ([`run_worker`]).
//! - [`fault`]: fault injection for recovery tests (`GLOM_FAIL_AT_STEP`).
//!
//! Learning stays local: the only data that crosses between workers is
//! embeddings, and the coordinator gets metrics and shard receipts.

pub mod fault;
pub mod halo;
pub mod node;
pub mod peers;

pub use halo::{HaloPlan, QuicHalo};
pub use node::{run_worker, WorkerExit, WorkerOptions};

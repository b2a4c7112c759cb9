//! The worker side of the GLOM trainer: the model, its learning rules, the
//! data it reads and the evaluation of what it learned. The model and the
//! learning code are pure computation (tensors in, tensors out); the I/O
//! is reading datasets, writing this worker's checkpoint shard, and the
//! thin networked [`runtime`] around the engine.
//!
//! # Layout
//! - [`model`]: the GLOM engine that settles a tile of columns.
//! - [`learn`]: batches, masks, the objective, AdamW, one training step.
//! - [`checkpoint`]: a tile's parameters and optimiser state on disk.
//! - [`eval`]: reconstruction PSNR, islands and their ARI, linear probes.
//! - [`data`]: synthetic part-whole scenes and Fashion-MNIST (IDX files).
//! - [`parse`]: the parse tree of one image (islands per level, parents).
//! - [`analysis`]: clustering, adjusted Rand index, collapse measures, probe.
//! - [`monitor`]: cheap per-level measures for dashboards (co-distillation
//!   disagreement, prediction agreement, cosines, islands).
//! - [`rng`]: keyed deterministic random streams.
//! - [`device`]: the CPU or a CUDA GPU, from `train.device`.
//! - [`sleep`]: the offline sleep job: replay buffer, dreams, negative and
//!   positive phases.
//! - [`runtime`]: the networked worker: joins the coordinator, exchanges
//!   halos with its neighbours over QUIC, trains its tile.

pub mod analysis;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod learn;
pub mod model;
pub mod monitor;
pub mod parse;
pub mod rng;
pub mod runtime;
pub mod sleep;

pub use error::{Error, Result};

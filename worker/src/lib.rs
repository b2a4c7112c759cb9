//! The worker side of the GLOM trainer: the model, its learning rules, the
//! data it reads and the evaluation of what it learned. The model and the
//! learning code are pure computation (tensors in, tensors out); the only
//! I/O here is reading datasets and writing this worker's checkpoint shard.
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
//! - [`sleep`]: the offline sleep job: replay buffer, dreams, negative and
//!   positive phases.

pub mod analysis;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod learn;
pub mod model;
pub mod monitor;
pub mod parse;
pub mod rng;
pub mod sleep;

pub use error::{Error, Result};

//! The control plane of the GLOM trainer: how the grid of locations is cut
//! into tiles, one per worker (DESIGN.md section 4). The coordinator never
//! touches embeddings or weights; it only decides who computes what.
//!
//! # Layout
//! - [`plan`]: balanced rectangular tiles of the grid.

pub mod plan;

//! Types shared by every process of the GLOM trainer, with no I/O: the
//! validated run configuration and its hash (carried in the handshake so a
//! worker cannot join a run configured differently), and the errors.
//!
//! # Layout
//! - [`config`]: the run configuration (TOML schema), defaults, validation.
//! - [`manifest`]: the manifest of a checkpoint directory.
//! - [`error`]: [`Error`] and [`Result`].

pub mod config;
pub mod error;
pub mod manifest;

pub use config::Config;
pub use error::{Error, Result};

//! Types shared by every process of the GLOM trainer, with no I/O: the
//! validated run configuration and its hash (carried in the handshake so a
//! worker cannot join a run configured differently), and the errors.
//!
//! # Layout
//! - [`config`]: the run configuration (TOML schema), defaults, validation.
//! - [`manifest`]: the manifest of a checkpoint directory.
//! - [`message`]: control-plane and peer messages, protocol version, handshake check.
//! - [`halo`]: the halo frame (f32 or bf16 payload) and bf16 conversions.
//! - [`codec`]: length-prefixed frames with a size cap; streaming decoder.
//! - [`error`]: [`Error`] and [`Result`].

pub mod codec;
pub mod config;
pub mod error;
pub mod halo;
pub mod manifest;
pub mod message;

pub use config::Config;
pub use error::{Error, Result};

//! The network layer of the GLOM trainer: every control connection
//! (coordinator <-> worker) and every peer connection (worker <-> worker)
//! is QUIC with mutual TLS, and both ends must hold a certificate signed by
//! the cluster CA, so a process outside the cluster can neither join a run
//! nor feed a worker halos. Messages travel as the length-prefixed frames of
//! `glom_protocol::codec`; this crate only moves those bytes.
//!
//! # Layout
//! - [`certs`]: the cluster CA, issued identities, `glom certs init` and
//!   loading certificates from disk; an in-memory CA for embedded runs.
//! - [`tls`]: rustls/quinn server and client configurations (mTLS, ALPN,
//!   idle timeout, keep-alive) and endpoint helpers.
//! - [`framed`]: sending and receiving protocol messages on QUIC streams.
//! - [`error`]: [`Error`] and [`Result`].

pub mod certs;
pub mod error;
pub mod framed;
pub mod tls;

pub use certs::{EphemeralCa, Identity};
pub use error::{Error, Result};
pub use framed::{send, FramedRecv};
pub use tls::{client_config, server_config, TransportTuning, ALPN};

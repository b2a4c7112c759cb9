//! Errors of the coordinator crate.
//!
//! Only building a [`crate::Coordinator`] can fail: once it runs, a bad
//! worker is answered on the wire (`Refused`, `Error`) or reported as an
//! [`crate::Action`], never returned as an error, so one faulty peer cannot
//! take the coordinator down.

use crate::plan::PlanError;

/// Why a coordinator cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run configuration does not validate; the source names the key.
    #[error("the run configuration is invalid: {0}")]
    Config(#[source] glom_protocol::Error),

    /// The grid cannot be cut into one tile per expected worker.
    /// The reason is in the message, not a `source`: a chain printed with
    /// `{:#}` would say it twice.
    #[error("cannot plan {workers} workers on the {side}x{side} location grid (cluster.workers): {reason}")]
    Plan {
        workers: usize,
        side: usize,
        reason: PlanError,
    },

    /// A coordinator setting is out of range; `key` names the field of
    /// [`crate::Settings`].
    #[error("invalid coordinator setting `{key}`: {message}")]
    Settings { key: &'static str, message: String },
}

/// Result of the coordinator crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

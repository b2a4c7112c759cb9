//! Errors of the worker crate.

use std::path::PathBuf;

/// What can go wrong in the model, its data and its checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (a bug or an exhausted resource).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Reading a dataset failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] glom_protocol::Error),
    /// A checkpoint is missing, corrupt or does not fit the configuration.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The model was asked for something its shape does not allow.
    #[error("{0}")]
    Shape(String),
    /// The networked runtime failed: a peer, the coordinator or the
    /// transport (the message says which and why).
    #[error("{0}")]
    Runtime(String),
    /// The transport refused or lost a connection.
    #[error(transparent)]
    Net(#[from] glom_net::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a checkpoint error.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

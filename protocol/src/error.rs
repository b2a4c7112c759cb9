//! Errors of the protocol crate.

/// What can go wrong in shared types and their validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` is its dotted path (`model.levels`).
    #[error("invalid config value for `{key}`: {message}")]
    Config { key: String, message: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for a configuration error on `key`.
    pub fn config(key: &str, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

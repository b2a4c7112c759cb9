//! Errors of the protocol crate.

/// What can go wrong in shared types, their validation and the wire codec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `key` is its dotted path (`model.levels`).
    #[error("invalid config value for `{key}`: {message}")]
    Config { key: String, message: String },

    /// A frame's length prefix (or an encoded message) is over the frame
    /// cap. Refused before the body is buffered, so a hostile prefix cannot
    /// make the receiver allocate.
    #[error("frame of {bytes} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge { bytes: u64, limit: usize },

    /// A frame size limit outside what the codec supports.
    #[error("frame limit of {requested} bytes is not in 1..={max}")]
    InvalidLimit { requested: usize, max: usize },

    /// A message could not be encoded.
    #[error("could not encode a message: {0}")]
    Encode(#[source] bincode::error::EncodeError),

    /// A frame's body is not a valid message (garbage, another protocol
    /// version, or a message of the other plane).
    #[error("frame body of {bytes} bytes does not decode: {source}")]
    Decode {
        bytes: usize,
        #[source]
        source: bincode::error::DecodeError,
    },

    /// A frame's body holds more bytes than its message used.
    #[error("frame body of {bytes} bytes has {} bytes left after its message", bytes - consumed)]
    TrailingBytes { bytes: usize, consumed: usize },

    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: only {have} of its {need} bytes arrived")]
    Truncated { have: usize, need: usize },

    /// A halo frame's payload does not match its shape.
    #[error(
        "halo frame of {levels} levels x {locations} locations x {batch} images x {dim} dims \
         needs {expected} values but its payload holds {actual}"
    )]
    HaloShape {
        levels: u32,
        locations: usize,
        batch: u32,
        dim: u32,
        /// Saturated product of the shape (it may not fit a machine word).
        expected: u128,
        actual: usize,
    },
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

//! The one error type of the network layer. Each variant says what failed
//! and, where there is one, the offending path, address or value, so that a
//! refused peer or a bad certificate directory is diagnosed from the
//! message alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while making certificates, building TLS
/// configurations or moving frames over QUIC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate authority already exists where a new one would be
    /// written; replacing it would orphan every certificate it signed.
    #[error("refusing to overwrite existing certificate file {path}")]
    Exists { path: PathBuf },

    /// Reading or writing a certificate or key file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A PEM file could not be parsed.
    #[error("cannot read PEM from {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },

    /// A certificate file held no certificate.
    #[error("no certificate in {path}")]
    NoCertificate { path: PathBuf },

    /// A host name or address that cannot be a subject alternative name.
    #[error("invalid host name {host:?} for a certificate: {source}")]
    InvalidHost {
        host: String,
        #[source]
        source: rcgen::Error,
    },

    /// Key generation or certificate signing failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),

    /// rustls refused a certificate, key or configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// The client-certificate verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    /// The TLS configuration lacks the cipher suite QUIC needs.
    #[error("TLS configuration unusable for QUIC: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),

    /// An idle timeout QUIC cannot encode.
    #[error("idle timeout {value:?} is out of range for QUIC")]
    IdleTimeout { value: Duration },

    /// Binding a UDP socket for an endpoint failed.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A connection could not even be attempted (e.g. an invalid server name).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },

    /// The connection failed or was closed, including a refused TLS
    /// handshake (a peer without a certificate of the cluster CA).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),

    /// Writing to a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),

    /// Reading from a stream failed.
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),

    /// The peer sent bytes that are not a valid frame (garbage, a frame
    /// over the size cap, a stream cut inside a frame), or a message was
    /// too large to send.
    #[error("bad frame: {0}")]
    Frame(#[from] glom_protocol::Error),
}

/// Result with the network layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! TLS and QUIC configuration. Both directions authenticate: the server
//! requires a client certificate signed by the cluster CA (rustls'
//! `WebPkiClientVerifier` with that CA as its only root) and the client
//! verifies the server against the same CA, so neither end trusts the
//! system's roots or accepts an anonymous peer.
//!
//! The cryptography is rustls' *ring* provider, the one quinn's default
//! features build, passed explicitly to every builder: nothing depends on a
//! process-wide default provider, so no code path can panic for lack of one
//! and two linked providers cannot make the choice ambiguous.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, TransportConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::certs::Identity;
use crate::error::{Error, Result};

/// Application protocol negotiated on every connection; a peer speaking
/// anything else is refused at the handshake.
pub const ALPN: &[u8] = b"glom/1";

/// Liveness settings of a connection: how a dead peer is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportTuning {
    /// A connection with no traffic for this long is closed, which is how a
    /// vanished worker is detected even without heartbeats.
    pub idle_timeout: Duration,
    /// Interval of QUIC keep-alive pings that hold an otherwise quiet
    /// connection open (e.g. during a long checkpoint); `None` sends none.
    /// Should be well under `idle_timeout`.
    pub keep_alive: Option<Duration>,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(5)),
        }
    }
}

impl TransportTuning {
    fn transport(&self) -> Result<Arc<TransportConfig>> {
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|_| Error::IdleTimeout {
            value: self.idle_timeout,
        })?;
        let mut transport = TransportConfig::default();
        transport.max_idle_timeout(Some(idle));
        transport.keep_alive_interval(self.keep_alive);
        Ok(Arc::new(transport))
    }
}

/// Make *ring* the process-wide rustls provider too, for code outside this
/// crate that asks rustls for its default; a provider already installed is
/// left as it is. Configurations made here never need it.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The crypto provider of every configuration made here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// A server configuration presenting `identity` and accepting only clients
/// whose certificate `ca` signed.
pub fn server_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// A client configuration presenting `identity` and accepting only servers
/// whose certificate `ca` signed (and that is valid for the name dialled).
pub fn client_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(identity.cert_chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(tuning.transport()?);
    Ok(config)
}

/// An endpoint listening on `addr` (port 0 picks a free one; see
/// [`Endpoint::local_addr`]) that can also dial out with `client`, as a
/// worker does for its peers. Must run inside a tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    server: quinn::ServerConfig,
    client: Option<quinn::ClientConfig>,
) -> Result<Endpoint> {
    let mut endpoint =
        Endpoint::server(server, addr).map_err(|source| Error::Bind { addr, source })?;
    if let Some(client) = client {
        endpoint.set_default_client_config(client);
    }
    Ok(endpoint)
}

/// An endpoint that only dials out, bound to `addr` (usually port 0 on the
/// unspecified or loopback address). Must run inside a tokio runtime.
pub fn client_endpoint(addr: SocketAddr, client: quinn::ClientConfig) -> Result<Endpoint> {
    let mut endpoint = Endpoint::client(addr).map_err(|source| Error::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Dial `addr` with the endpoint's client configuration, expecting the
/// server's certificate to be valid for `server_name` (`localhost` on
/// loopback, else a name given to `glom certs init --hosts`).
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Connection> {
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|source| Error::Connect { addr, source })?;
    let connection = connecting.await?;
    tracing::debug!(%addr, server_name, "connected with mutual TLS");
    Ok(connection)
}

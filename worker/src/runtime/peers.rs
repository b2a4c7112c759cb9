//! Halo connections between neighbouring workers (DESIGN.md sections 4, 5).
//!
//! Every worker opens one QUIC connection to each peer and sends on one
//! unidirectional stream: a [`PeerHello`], then a halo frame per settling
//! iteration. It accepts the peers' connections on its own endpoint and
//! reads theirs the same way. A connection whose hello is of another
//! protocol version or configuration, or that claims to be a worker that is
//! not a peer (or one already connected), is closed with the reason; a
//! peer's stream that fails mid-run fails the step that waits for it, with
//! the reason, and nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glom_net::FramedRecv;
use glom_protocol::codec::{decode_body, Limits, PREFIX_BYTES};
use glom_protocol::message::{check_peer_hello, PeerHello, PeerInfo, PeerMessage};
use quinn::{Connection, Endpoint, VarInt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::halo::Arrived;
use crate::error::{Error, Result};

/// QUIC application close code of a refused peer connection.
pub const REFUSED: u32 = 1;

/// Where each expected peer's frames go, taken by its first valid hello.
pub type Routes = Arc<Mutex<HashMap<u32, Sender<std::result::Result<Arrived, String>>>>>;

/// `host:port` resolved to an address, with the host as TLS server name.
pub async fn resolve(addr: &str) -> Result<(SocketAddr, String)> {
    let (host, _) = addr
        .rsplit_once(':')
        .ok_or_else(|| Error::Runtime(format!("address {addr:?} is not of the form HOST:PORT")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let sock = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| Error::Runtime(format!("cannot resolve {addr:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Runtime(format!("{addr:?} resolves to no address")))?;
    Ok((sock, host))
}

/// Connect to `addr`, retrying for up to `patience` while nothing answers
/// (the other process may not be up yet). A TLS refusal is not retried.
pub async fn connect_patiently(
    endpoint: &Endpoint,
    addr: &str,
    patience: Duration,
) -> Result<Connection> {
    let (sock, host) = resolve(addr).await?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match glom_net::tls::connect(endpoint, sock, &host).await {
            Ok(c) => return Ok(c),
            Err(glom_net::Error::Connection(quinn::ConnectionError::TimedOut))
                if tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(addr, "no answer yet; retrying");
            }
            Err(e) => return Err(Error::Runtime(format!("cannot connect to {addr}: {e}"))),
        }
    }
}

/// Send `hello` and then every frame from `frames` to `peer`, until the
/// channel closes. Errors are logged; the dropped receiver then makes the
/// engine's next send fail with the peer's name.
pub async fn send_to_peer(
    endpoint: Endpoint,
    peer: PeerInfo,
    hello: PeerHello,
    mut frames: UnboundedReceiver<Vec<u8>>,
    patience: Duration,
) {
    let id = peer.worker_id;
    let result: Result<()> = async {
        let conn = connect_patiently(&endpoint, &peer.addr, patience).await?;
        let mut stream = conn.open_uni().await.map_err(glom_net::Error::from)?;
        glom_net::send(&mut stream, &PeerMessage::Hello(hello), &Limits::default()).await?;
        while let Some(bytes) = frames.recv().await {
            stream
                .write_all(&bytes)
                .await
                .map_err(glom_net::Error::from)?;
        }
        let _ = stream.finish();
        // Let the peer read the end of the stream before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.stopped()).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(peer = id, addr = %peer.addr, "halo stream to peer failed: {e}");
    }
}

/// Accept halo connections on `endpoint` for as long as it is open.
/// Hellos of another attempt of the cluster (`attempt`) are refused.
pub async fn accept_peers(endpoint: Endpoint, routes: Routes, config_hash: String, attempt: u32) {
    while let Some(incoming) = endpoint.accept().await {
        let (routes, hash) = (routes.clone(), config_hash.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = serve_peer(&conn, &routes, &hash, attempt).await {
                        tracing::warn!(%remote, "halo connection: {e}");
                    }
                }
                Err(e) => tracing::warn!(%remote, "refused a halo connection: {e}"),
            }
        });
    }
}

async fn serve_peer(
    conn: &Connection,
    routes: &Routes,
    config_hash: &str,
    attempt: u32,
) -> Result<()> {
    let limits = Limits::default();
    let stream = conn.accept_uni().await.map_err(glom_net::Error::from)?;
    let mut rx = FramedRecv::new(stream, limits);
    let refuse = |reason: String| {
        conn.close(VarInt::from_u32(REFUSED), reason.as_bytes());
        Error::Runtime(format!("refused: {reason}"))
    };
    let hello = match rx.recv::<PeerMessage>().await {
        Ok(Some(PeerMessage::Hello(h))) => h,
        Ok(Some(_)) => return Err(refuse("the first message was not a peer hello".into())),
        Ok(None) => return Err(refuse("the stream ended before a hello".into())),
        Err(e) => return Err(refuse(format!("unreadable hello: {e}"))),
    };
    if let Err(reason) = check_peer_hello(&hello, config_hash, attempt) {
        return Err(refuse(reason.to_string()));
    }
    let id = hello.worker_id;
    let Some(route) = routes.lock().expect("routes lock").remove(&id) else {
        return Err(refuse(format!(
            "worker {id} is not a neighbour of this tile or is already connected"
        )));
    };
    tracing::debug!(peer = id, "halo stream open");
    loop {
        let body = match rx.recv_body().await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(()),
            Err(e) => {
                let why = format!("bad halo stream from worker {id}: {e}");
                let _ = route.send(Err(why.clone()));
                return Err(refuse(why));
            }
        };
        let wire_bytes = (body.len() + PREFIX_BYTES) as u64;
        match decode_body::<PeerMessage>(&body, &limits) {
            Ok(PeerMessage::Halo(frame)) => {
                if route.send(Ok(Arrived { frame, wire_bytes })).is_err() {
                    return Ok(()); // the worker is shutting down
                }
            }
            Ok(other) => {
                let why = format!("worker {id} sent {other:?} on its halo stream");
                let _ = route.send(Err(why.clone()));
                return Err(refuse(why));
            }
            Err(e) => {
                let why = format!("bad halo frame from worker {id}: {e}");
                let _ = route.send(Err(why.clone()));
                return Err(refuse(why));
            }
        }
    }
}

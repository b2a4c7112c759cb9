//! A loopback echo server over the real transport, and clients for it:
//! enough of a coordinator to see what a connection delivers and how each
//! one ends, without any of the run logic.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use glom_net::tls::{client_endpoint, connect, server_endpoint};
use glom_net::{client_config, send, server_config, FramedRecv, Identity, TransportTuning};
use glom_protocol::codec::Limits;
use glom_protocol::message::ControlMessage;
use quinn::Endpoint;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for something that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server that echoes every control message of the first bidirectional
/// stream of each connection, and reports how each connection ended: the
/// number of messages echoed, or the error that ended it.
pub struct EchoServer {
    pub addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Result<usize, glom_net::Error>>,
    endpoint: Endpoint,
    accept_loop: JoinHandle<()>,
}

impl EchoServer {
    pub fn start(identity: &Identity, ca: &CertificateDer<'static>, limits: Limits) -> Self {
        let config = server_config(identity, ca, &TransportTuning::default()).unwrap();
        let endpoint = server_endpoint(loopback(), config, None).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, outcomes) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        let accept_loop = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let connection = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let outcome = echo(&connection, limits).await;
                    if outcome.is_err() {
                        connection.close(1u32.into(), b"bad frame");
                    }
                    let _ = tx.send(outcome);
                    connection.closed().await;
                });
            }
        });
        Self {
            addr,
            outcomes,
            endpoint,
            accept_loop,
        }
    }

    /// How the next connection ended.
    pub async fn outcome(&mut self) -> Result<usize, glom_net::Error> {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("a connection outcome within the wait")
            .expect("the accept loop is alive")
    }

    /// The accept loop has neither panicked nor stopped.
    pub fn is_serving(&self) -> bool {
        !self.accept_loop.is_finished()
    }

    pub async fn stop(self) {
        self.endpoint.close(0u32.into(), b"done");
        self.accept_loop.abort();
    }
}

async fn echo(connection: &quinn::Connection, limits: Limits) -> Result<usize, glom_net::Error> {
    let (mut tx, rx) = connection.accept_bi().await?;
    let mut rx = FramedRecv::new(rx, limits);
    let mut echoed = 0;
    while let Some(msg) = rx.recv::<ControlMessage>().await? {
        send(&mut tx, &msg, &limits).await?;
        echoed += 1;
    }
    let _ = tx.finish();
    Ok(echoed)
}

/// A client endpoint on loopback presenting `identity`.
pub fn client(identity: &Identity, ca: &CertificateDer<'static>) -> Endpoint {
    let config = client_config(identity, ca, &TransportTuning::default()).unwrap();
    client_endpoint(loopback(), config).unwrap()
}

/// Send `msgs` on one stream, finish it, and return what comes back until
/// the server finishes its side.
pub async fn round_trip(
    endpoint: &Endpoint,
    addr: SocketAddr,
    server_name: &str,
    msgs: &[ControlMessage],
) -> Result<Vec<ControlMessage>, glom_net::Error> {
    let limits = Limits::default();
    let connection = connect(endpoint, addr, server_name).await?;
    let (mut tx, rx) = connection.open_bi().await?;
    for msg in msgs {
        send(&mut tx, msg, &limits).await?;
    }
    let _ = tx.finish();
    let mut rx = FramedRecv::new(rx, limits);
    let mut back = Vec::new();
    while let Some(msg) = rx.recv().await? {
        back.push(msg);
    }
    connection.close(0u32.into(), b"done");
    Ok(back)
}

/// A few messages of different shapes.
pub fn sample_messages() -> Vec<ControlMessage> {
    vec![
        ControlMessage::Hello(glom_protocol::message::Hello::new(
            "cafe",
            "w0",
            "127.0.0.1:9",
        )),
        ControlMessage::Welcome { worker_id: 3 },
        ControlMessage::Heartbeat { now_ms: 1234 },
        ControlMessage::Shutdown {
            reason: "x".repeat(500),
        },
    ]
}

/// Check the server is still accepting: a good client gets its echo.
pub async fn assert_still_serving(server: &mut EchoServer, good: &Endpoint) {
    assert!(server.is_serving(), "accept loop stopped");
    let msgs = sample_messages();
    let back = round_trip(good, server.addr, "localhost", &msgs)
        .await
        .expect("a good client is served");
    assert_eq!(back, msgs);
    assert_eq!(server.outcome().await.unwrap(), msgs.len());
}

//! The transport over real loopback QUIC: messages round-trip between
//! members of the cluster, the TLS handshake refuses anyone else, and a
//! peer sending bad frames gets a clear error without disturbing the
//! server's other connections.

mod support;

use glom_net::tls::connect;
use glom_net::{send, EphemeralCa, Error};
use glom_protocol::codec::{encode, Limits};
use glom_protocol::message::ControlMessage;
use support::{assert_still_serving, client, round_trip, sample_messages, EchoServer, WAIT};

#[tokio::test]
async fn members_of_the_cluster_exchange_control_messages() {
    let ca = EphemeralCa::new().unwrap();
    let mut server = EchoServer::start(
        &ca.issue("coordinator").unwrap(),
        ca.cert(),
        Limits::default(),
    );
    let worker = client(&ca.issue("worker-0").unwrap(), ca.cert());
    let msgs = sample_messages();
    let back = round_trip(&worker, server.addr, "localhost", &msgs)
        .await
        .unwrap();
    assert_eq!(back, msgs);
    assert_eq!(server.outcome().await.unwrap(), msgs.len());
    // A second connection from the same endpoint works too.
    assert_still_serving(&mut server, &worker).await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_over_the_cap_is_refused_before_sending() {
    let ca = EphemeralCa::new().unwrap();
    let server = EchoServer::start(
        &ca.issue("coordinator").unwrap(),
        ca.cert(),
        Limits::default(),
    );
    let worker = client(&ca.issue("worker-0").unwrap(), ca.cert());
    let connection = connect(&worker, server.addr, "localhost").await.unwrap();
    let (mut tx, _rx) = connection.open_bi().await.unwrap();
    let limits = Limits::new(64).unwrap();
    let big = ControlMessage::Error {
        message: "e".repeat(100),
    };
    let err = send(&mut tx, &big, &limits).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Frame(glom_protocol::Error::FrameTooLarge { limit: 64, .. })
        ),
        "{err}"
    );
    server.stop().await;
}

/// The client's certificate is refused: the client sees its connection
/// fail, the server sees a failed handshake that names the certificate.
async fn assert_refused(
    server: &mut EchoServer,
    intruder: &quinn::Endpoint,
    expect_in_server_error: &str,
) {
    let result = tokio::time::timeout(
        WAIT,
        round_trip(intruder, server.addr, "localhost", &sample_messages()),
    )
    .await
    .expect("the refusal is prompt");
    let err = result.expect_err("a client outside the cluster is refused");
    assert!(
        matches!(err, Error::Connection(_) | Error::Read(_) | Error::Write(_)),
        "client side: {err}"
    );
    let server_err = server.outcome().await.expect_err("handshake refused");
    assert!(
        matches!(server_err, Error::Connection(_)),
        "server side: {server_err}"
    );
    let text = server_err.to_string();
    assert!(text.contains(expect_in_server_error), "server side: {text}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_the_server_keeps_serving() {
    let ca = EphemeralCa::new().unwrap();
    let other = EphemeralCa::new().unwrap();
    let mut server = EchoServer::start(
        &ca.issue("coordinator").unwrap(),
        ca.cert(),
        Limits::default(),
    );
    // Trusts the cluster CA, but its own certificate is signed by another.
    let intruder = client(&other.issue("worker-0").unwrap(), ca.cert());
    assert_refused(&mut server, &intruder, "UnknownIssuer").await;
    let good = client(&ca.issue("worker-0").unwrap(), ca.cert());
    assert_still_serving(&mut server, &good).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = EphemeralCa::new().unwrap();
    let mut server = EchoServer::start(
        &ca.issue("coordinator").unwrap(),
        ca.cert(),
        Limits::default(),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![glom_net::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut anonymous = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    anonymous.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    assert_refused(&mut server, &anonymous, "no certificates").await;
    let good = client(&ca.issue("worker-1").unwrap(), ca.cert());
    assert_still_serving(&mut server, &good).await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_outside_the_cluster_is_refused_by_the_client() {
    let ca = EphemeralCa::new().unwrap();
    let other = EphemeralCa::new().unwrap();
    let server = EchoServer::start(
        &other.issue("coordinator").unwrap(),
        other.cert(),
        Limits::default(),
    );
    let worker = client(&ca.issue("worker-0").unwrap(), ca.cert());
    let err = connect(&worker, server.addr, "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    server.stop().await;
}

/// Open a stream as a member of the cluster, write `bytes` as they are,
/// finish, and wait until the server has closed the connection.
async fn send_raw(endpoint: &quinn::Endpoint, server: &EchoServer, bytes: &[u8]) {
    let connection = connect(endpoint, server.addr, "localhost").await.unwrap();
    let (mut tx, _rx) = connection.open_bi().await.unwrap();
    tx.write_all(bytes).await.unwrap();
    let _ = tx.finish();
    let closed = tokio::time::timeout(WAIT, connection.closed())
        .await
        .unwrap();
    assert!(
        closed.to_string().contains("bad frame"),
        "closed by the server for its bad frame: {closed}"
    );
}

/// Deterministic noise (a 64-bit LCG), so a failure can be replayed.
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_other_connections_are_served() {
    let ca = EphemeralCa::new().unwrap();
    let limits = Limits::new(1024).unwrap();
    let mut server = EchoServer::start(&ca.issue("coordinator").unwrap(), ca.cert(), limits);
    let peer = client(&ca.issue("worker-0").unwrap(), ca.cert());

    // Random bytes: whatever their first four say, they are no frame.
    send_raw(&peer, &server, &garbage(4096)).await;
    let err = server.outcome().await.unwrap_err();
    assert!(matches!(err, Error::Frame(_)), "garbage: {err}");
    assert_still_serving(&mut server, &peer).await;

    // A frame whose body is not a message.
    send_raw(&peer, &server, &[3, 0, 0, 0, 0xff, 0xff, 0xff]).await;
    let err = server.outcome().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Frame(glom_protocol::Error::Decode { bytes: 3, .. })
        ),
        "undecodable body: {err}"
    );
    assert_still_serving(&mut server, &peer).await;

    // A length prefix over the cap: refused from the prefix alone.
    let mut oversize = 4096u32.to_le_bytes().to_vec();
    oversize.extend_from_slice(&[0; 100]);
    send_raw(&peer, &server, &oversize).await;
    let err = server.outcome().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Frame(glom_protocol::Error::FrameTooLarge {
                bytes: 4096,
                limit: 1024
            })
        ),
        "oversize: {err}"
    );
    assert_still_serving(&mut server, &peer).await;

    // A valid frame cut short by the end of the stream.
    let mut truncated = encode(&ControlMessage::Heartbeat { now_ms: 7 }, &limits).unwrap();
    truncated.pop();
    let cut = truncated.len();
    send_raw(&peer, &server, &truncated).await;
    let err = server.outcome().await.unwrap_err();
    assert!(
        matches!(err, Error::Frame(glom_protocol::Error::Truncated { have, .. }) if have == cut),
        "truncated: {err}"
    );
    assert_still_serving(&mut server, &peer).await;
    server.stop().await;
}

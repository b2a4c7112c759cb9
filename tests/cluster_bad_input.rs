//! A running `glom coordinator` attacked with bad input and bad peers over
//! real QUIC: a wrong protocol version, a different configuration, a frame
//! over the size cap, random garbage, a truncated frame, and a client whose
//! certificate the cluster CA did not sign. Each is answered with a clear
//! error (or refused at the TLS handshake), and the run still starts and
//! finishes with a real worker afterwards.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glom_net::certs::{load_ca, load_identity, ClusterCa};
use glom_net::tls::{client_config, client_endpoint, connect, TransportTuning};
use glom_net::{FramedRecv, Identity};
use glom_protocol::codec::{encode, Limits, MAX_FRAME_BYTES};
use glom_protocol::message::{ControlMessage, Hello, RefuseReason, PROTOCOL_VERSION};
use rustls_pki_types::CertificateDer;
use support::{ok, Running, TINY};

/// What the coordinator answered to `bytes` sent on a fresh connection:
/// its first message, or the error that ended the connection instead.
async fn answer(
    addr: SocketAddr,
    id: &Identity,
    ca: &CertificateDer<'static>,
    bytes: &[u8],
    finish: bool,
) -> Result<ControlMessage, String> {
    let tuning = TransportTuning {
        idle_timeout: Duration::from_secs(10),
        keep_alive: None,
    };
    let client = client_config(id, ca, &tuning).map_err(|e| e.to_string())?;
    let endpoint =
        client_endpoint("127.0.0.1:0".parse().unwrap(), client).map_err(|e| e.to_string())?;
    let conn = connect(&endpoint, addr, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
    tx.write_all(bytes).await.map_err(|e| e.to_string())?;
    if finish {
        tx.finish().map_err(|e| e.to_string())?;
    }
    let mut rx = FramedRecv::new(rx, Limits::default());
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv::<ControlMessage>()).await;
    conn.close(0u32.into(), b"");
    match got {
        Err(_) => Err("no answer within 20 s".into()),
        Ok(Ok(Some(msg))) => Ok(msg),
        Ok(Ok(None)) => Err("the stream ended without an answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

fn hello(version: u32, hash: &str) -> Vec<u8> {
    let mut h = Hello::new(hash, "intruder", "127.0.0.1:9");
    h.version = version;
    encode(&ControlMessage::Hello(h), &Limits::default()).unwrap()
}

fn bad_input(answer: &Result<ControlMessage, String>, what: &str) -> String {
    match answer {
        Ok(ControlMessage::Error { message }) if message.contains("bad input") => message.clone(),
        other => panic!("{what}: expected an error message, got {other:?}"),
    }
}

#[test]
fn bad_input_and_bad_peers_are_refused_and_the_run_goes_on() {
    glom_net::tls::install_default_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = dir.join("certs");
    ok(&Command::new(env!("CARGO_BIN_EXE_glom"))
        .args(["certs", "init", "--workers", "2", "--out"])
        .arg(&certs)
        .output()
        .unwrap());
    let run = dir.join("run");
    let log_path = dir.join("coordinator.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glom"));
    cmd.args([
        "coordinator",
        "--no-eval",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
    ])
    .arg("--certs")
    .arg(&certs)
    .arg("--out")
    .arg(&run)
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    for s in TINY.iter().chain(&["train.steps=4"]) {
        cmd.arg("--set").arg(s);
    }
    let mut coord = Running {
        child: cmd.spawn().unwrap(),
        name: "glom coordinator",
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr: SocketAddr = loop {
        if let Ok(a) = std::fs::read_to_string(run.join("coordinator_addr.txt")) {
            break a.trim().parse().unwrap();
        }
        assert!(
            coord.child.try_wait().unwrap().is_none(),
            "coordinator exited"
        );
        assert!(Instant::now() < deadline, "coordinator never bound");
        std::thread::sleep(Duration::from_millis(20));
    };

    let ca = load_ca(&certs).unwrap();
    let id = load_identity(&certs, "worker-1").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A hello of another protocol version: refused, saying both versions.
    let got = rt.block_on(answer(
        addr,
        &id,
        &ca,
        &hello(PROTOCOL_VERSION + 7, "x"),
        false,
    ));
    assert_eq!(
        got,
        Ok(ControlMessage::Refused {
            reason: RefuseReason::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 7
            }
        })
    );
    // A worker configured differently: refused, saying both hashes.
    let got = rt.block_on(answer(
        addr,
        &id,
        &ca,
        &hello(PROTOCOL_VERSION, "not-this-run"),
        false,
    ));
    assert!(
        matches!(&got, Ok(ControlMessage::Refused { reason: RefuseReason::ConfigMismatch { theirs, .. } }) if theirs == "not-this-run"),
        "{got:?}"
    );
    // A frame over the size cap: refused from its length prefix alone.
    let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
    let got = rt.block_on(answer(addr, &id, &ca, &prefix, false));
    let m = bad_input(&got, "oversize frame");
    assert!(
        m.contains("cap") || m.contains("limit") || m.contains("large"),
        "{m}"
    );
    // Random garbage in a frame of plausible size.
    let mut garbage = 48u32.to_le_bytes().to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    garbage.extend((0..48).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }));
    bad_input(
        &rt.block_on(answer(addr, &id, &ca, &garbage, false)),
        "garbage",
    );
    // A truncated frame: the stream ends inside it.
    let mut truncated = 100u32.to_le_bytes().to_vec();
    truncated.extend([0u8; 10]);
    let m = bad_input(
        &rt.block_on(answer(addr, &id, &ca, &truncated, true)),
        "truncated frame",
    );
    assert!(m.contains("truncat") || m.contains("end"), "{m}");
    // A client whose certificate another CA signed: refused at the TLS
    // handshake, no message ever reaches the coordinator.
    let stranger = ClusterCa::new().unwrap().issue("worker-0").unwrap();
    let got = rt.block_on(answer(
        addr,
        &stranger,
        &ca,
        &hello(PROTOCOL_VERSION, "x"),
        false,
    ));
    assert!(got.is_err(), "a stranger got an answer: {got:?}");

    // The coordinator is still up and the run goes on with a real worker.
    assert!(
        coord.child.try_wait().unwrap().is_none(),
        "the coordinator died"
    );
    let wlog = dir.join("worker.log");
    let mut w = Command::new(env!("CARGO_BIN_EXE_glom"));
    w.args(["worker", "--name", "worker-0", "--listen", "127.0.0.1:0"])
        .arg("--coordinator")
        .arg(addr.to_string())
        .arg("--certs")
        .arg(&certs)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&wlog).unwrap()));
    for s in TINY.iter().chain(&["train.steps=4"]) {
        w.arg("--set").arg(s);
    }
    let status = w.status().unwrap();
    assert!(status.success(), "{}", read(&wlog));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = coord.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the coordinator did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = read(&log_path);
    assert!(status.success(), "{log}");
    assert!(
        run.join("checkpoints/step-4/manifest.json").is_file(),
        "{log}"
    );
    // Every refusal was logged with its reason.
    for needle in [
        "protocol version mismatch",
        "configuration mismatch",
        "bad input",
        "TLS handshake",
    ] {
        assert!(log.contains(needle), "no {needle:?} in the log: {log}");
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

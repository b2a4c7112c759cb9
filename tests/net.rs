//! `glom certs init` run as a user runs it: the files it writes, its
//! refusal to replace a CA, and certificates that authenticate a QUIC
//! connection when loaded back from disk.

use std::path::Path;
use std::process::{Command, Output};

use glom_net::certs::{load_ca, load_identity};
use glom_net::tls::{client_endpoint, connect, server_endpoint};
use glom_net::{client_config, send, server_config, FramedRecv, TransportTuning};
use glom_protocol::codec::Limits;
use glom_protocol::message::ControlMessage;

fn certs_init(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glom"))
        .args(["certs", "init", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run glom")
}

#[test]
fn certs_init_writes_the_cluster_files_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let run = certs_init(&out, &["--workers", "3", "--hosts", "node-a,10.1.2.3"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for name in ["ca", "coordinator", "worker-0", "worker-1", "worker-2"] {
        for ext in ["pem", "key"] {
            let path = out.join(format!("{name}.{ext}"));
            assert!(path.is_file(), "{} missing", path.display());
            #[cfg(unix)]
            if ext == "key" {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
            }
        }
    }
    assert!(!out.join("worker-3.pem").exists());
    let listed = String::from_utf8_lossy(&run.stdout);
    assert!(
        listed.contains("ca.pem") && listed.contains("worker-2.key"),
        "{listed}"
    );

    let before = std::fs::read(out.join("ca.key")).unwrap();
    let again = certs_init(&out, &[]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    let ca = out.join("ca.pem");
    assert!(stderr.contains(&ca.display().to_string()), "{stderr}");
    assert!(stderr.contains("overwrite"), "{stderr}");
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before);
}

#[tokio::test]
async fn certificates_from_certs_init_carry_a_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let run = certs_init(tmp.path(), &["--workers", "1", "--hosts", "node-a"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ca = load_ca(tmp.path()).unwrap();
    let tuning = TransportTuning::default();
    let limits = Limits::default();

    let coordinator = load_identity(tmp.path(), "coordinator").unwrap();
    let server = server_config(&coordinator, &ca, &tuning).unwrap();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), server, None).unwrap();
    let addr = server.local_addr().unwrap();
    let serve = tokio::spawn(async move {
        let connection = server.accept().await.unwrap().await.unwrap();
        let (mut tx, rx) = connection.accept_bi().await.unwrap();
        let mut rx = FramedRecv::new(rx, limits);
        let hello: ControlMessage = rx.recv().await.unwrap().unwrap();
        assert!(matches!(hello, ControlMessage::Hello(_)), "{hello:?}");
        send(&mut tx, &ControlMessage::Welcome { worker_id: 0 }, &limits)
            .await
            .unwrap();
        tx.finish().unwrap();
        connection.closed().await;
    });

    let worker = load_identity(tmp.path(), "worker-0").unwrap();
    let client = client_config(&worker, &ca, &tuning).unwrap();
    let client = client_endpoint("127.0.0.1:0".parse().unwrap(), client).unwrap();
    let connection = connect(&client, addr, "node-a").await.unwrap();
    let (mut tx, rx) = connection.open_bi().await.unwrap();
    let hello = glom_protocol::message::Hello::new("cafe", "worker-0", "127.0.0.1:1");
    send(&mut tx, &ControlMessage::Hello(hello), &limits)
        .await
        .unwrap();
    let mut rx = FramedRecv::new(rx, limits);
    let welcome: Option<ControlMessage> = rx.recv().await.unwrap();
    assert_eq!(welcome, Some(ControlMessage::Welcome { worker_id: 0 }));
    assert_eq!(rx.recv::<ControlMessage>().await.unwrap(), None);
    connection.close(0u32.into(), b"done");
    serve.await.unwrap();
}

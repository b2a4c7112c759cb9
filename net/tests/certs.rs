//! `glom certs init` as a library call: what it writes, that it never
//! replaces a CA, and that the files it writes authenticate a connection.

mod support;

use std::path::Path;

use glom_net::certs::{init, load_ca, load_identity, worker_name};
use glom_net::{EphemeralCa, Error};
use glom_protocol::codec::Limits;
use support::{client, round_trip, sample_messages, EchoServer};

fn expected_files(workers: usize) -> Vec<String> {
    let mut names = vec!["ca".to_string(), "coordinator".to_string()];
    names.extend((0..workers).map(worker_name));
    names
        .iter()
        .flat_map(|n| [format!("{n}.pem"), format!("{n}.key")])
        .collect()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn init_writes_a_ca_and_identities_with_private_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let written = init(&out, 3, &["node-a".into(), "10.0.0.7".into()]).unwrap();
    let mut expected = expected_files(3);
    expected.sort();
    assert_eq!(file_names(&out), expected);
    assert_eq!(written.len(), expected.len());
    for path in &written {
        let text = std::fs::read_to_string(path).unwrap();
        let is_key = path.extension().unwrap() == "key";
        let marker = if is_key { "PRIVATE KEY" } else { "CERTIFICATE" };
        assert!(text.contains(marker), "{}", path.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            if is_key {
                assert_eq!(mode, 0o600, "{}", path.display());
            } else {
                assert_eq!(mode & 0o022, 0, "{}", path.display());
            }
        }
    }
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), 1, &[]).unwrap();
    let before = std::fs::read(tmp.path().join("ca.key")).unwrap();
    let err = init(tmp.path(), 1, &[]).unwrap_err();
    let ca = tmp.path().join("ca.pem");
    assert!(
        matches!(&err, Error::Exists { path } if *path == ca),
        "{err}"
    );
    assert!(err.to_string().contains(&ca.display().to_string()), "{err}");
    assert_eq!(std::fs::read(tmp.path().join("ca.key")).unwrap(), before);

    // A CA key alone, or a stray worker file, is protected the same way.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("worker-1.key"), "keep me").unwrap();
    let err = init(other.path(), 2, &[]).unwrap_err();
    assert!(err.to_string().contains("worker-1.key"), "{err}");
    assert!(!other.path().join("ca.pem").exists(), "nothing written");
}

#[tokio::test]
async fn certificates_loaded_from_disk_authenticate_a_connection() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), 2, &["node-a".into()]).unwrap();
    let ca = load_ca(tmp.path()).unwrap();
    let coordinator = load_identity(tmp.path(), "coordinator").unwrap();
    let worker = load_identity(tmp.path(), &worker_name(1)).unwrap();
    let mut server = EchoServer::start(&coordinator, &ca, Limits::default());
    let endpoint = client(&worker, &ca);
    let msgs = sample_messages();
    for name in ["localhost", "127.0.0.1", "node-a"] {
        let back = round_trip(&endpoint, server.addr, name, &msgs).await;
        assert_eq!(back.unwrap(), msgs, "dialled as {name}");
        assert_eq!(server.outcome().await.unwrap(), msgs.len());
    }
    // A name the certificate was not issued for is refused by the client.
    let err = round_trip(&endpoint, server.addr, "node-b", &msgs)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    let _ = server.outcome().await;

    // A CA made elsewhere does not vouch for these certificates.
    let stranger = EphemeralCa::new().unwrap();
    let outsider = client(&worker, stranger.cert());
    assert!(round_trip(&outsider, server.addr, "localhost", &msgs)
        .await
        .is_err());
    server.stop().await;
}

#[test]
fn loading_a_missing_or_empty_file_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = load_ca(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    std::fs::write(tmp.path().join("ca.pem"), "not pem").unwrap();
    let err = load_ca(tmp.path()).unwrap_err();
    assert!(matches!(err, Error::NoCertificate { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

//! The cluster's certificates. One CA per cluster signs an identity for the
//! coordinator and for each worker; every connection checks the other end
//! against that CA and nothing else, so membership of the cluster is
//! possession of a key the CA signed.
//!
//! `glom certs init` ([`init`]) writes the CA and the identities as PEM files
//! for multi-host runs (a SLURM job or a Kubernetes Secret distributes them);
//! `glom train` makes an [`EphemeralCa`] in memory instead, which lives and
//! dies with the process. Every identity can act as both TLS server and TLS
//! client, because a worker accepts peer connections as well as making them.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// Names every certificate is valid for, so loopback runs need no `--hosts`.
pub const DEFAULT_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

/// File stem of the CA (`ca.pem`, `ca.key`).
pub const CA_NAME: &str = "ca";

/// File stem of the coordinator's identity.
pub const COORDINATOR_NAME: &str = "coordinator";

/// File stem of worker `i`'s identity (`worker-<i>`).
pub fn worker_name(i: usize) -> String {
    format!("worker-{i}")
}

/// A certificate chain and its private key: what a process presents to the
/// other end of a connection.
#[derive(Debug)]
pub struct Identity {
    /// The leaf certificate first, then any intermediates (none here: the
    /// cluster CA signs leaves directly).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// An identity with its PEM texts, as [`ClusterCa::issue_pem`] makes it for
/// writing to disk.
struct IssuedPem {
    cert_pem: String,
    key_pem: String,
}

/// A certificate authority held in memory: its self-signed certificate and
/// the key that signs identities.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

/// The CA of an embedded run: made in memory at start-up, never written.
pub type EphemeralCa = ClusterCa;

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A fresh CA with a new ECDSA P-256 key.
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        // Named after its key, so that certificates of two clusters never
        // name the same issuer and a stray one reads as "unknown issuer".
        let id: String = params.key_identifier(&key)[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("glom cluster CA {id}"));
        // Signs leaves only: no intermediate may hang below it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate: the only trust root of every connection.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// An identity named `name`, valid for [`DEFAULT_HOSTS`].
    pub fn issue(&self, name: &str) -> Result<Identity> {
        self.issue_for_hosts(name, &[])
    }

    /// An identity named `name`, valid for [`DEFAULT_HOSTS`] and `hosts`
    /// (DNS names or IP addresses).
    pub fn issue_for_hosts(&self, name: &str, hosts: &[String]) -> Result<Identity> {
        let (cert, key) = self.sign(name, hosts)?;
        Ok(Identity {
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    fn issue_pem(&self, name: &str, hosts: &[String]) -> Result<IssuedPem> {
        let (cert, key) = self.sign(name, hosts)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn sign(&self, name: &str, hosts: &[String]) -> Result<(rcgen::Certificate, KeyPair)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("glom {name}"));
        params.subject_alt_names = subject_alt_names(hosts)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }
}

/// [`DEFAULT_HOSTS`] then `hosts`, without duplicates, as SAN entries.
fn subject_alt_names(hosts: &[String]) -> Result<Vec<SanType>> {
    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
    for host in hosts {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_string());
        }
    }
    names
        .into_iter()
        .map(|host| match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => match host.clone().try_into() {
                Ok(dns) => Ok(SanType::DnsName(dns)),
                Err(source) => Err(Error::InvalidHost { host, source }),
            },
        })
        .collect()
}

/// Write a new cluster CA and identities for the coordinator and `workers`
/// workers into `out` (created if missing), valid for [`DEFAULT_HOSTS`] and
/// `hosts`. Refuses to replace any existing file, the CA above all; key files
/// are readable by their owner only. Returns the paths written.
pub fn init(out: &Path, workers: usize, hosts: &[String]) -> Result<Vec<PathBuf>> {
    let mut names = vec![CA_NAME.to_string(), COORDINATOR_NAME.to_string()];
    names.extend((0..workers).map(worker_name));
    for name in &names {
        for ext in ["pem", "key"] {
            let path = out.join(format!("{name}.{ext}"));
            if path.exists() {
                return Err(Error::Exists { path });
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        action: "cannot create directory",
        path: out.to_path_buf(),
        source,
    })?;
    let ca = ClusterCa::new()?;
    let mut files = vec![(CA_NAME.to_string(), ca.cert_pem.clone(), ca.key_pem.clone())];
    for name in &names[1..] {
        let issued = ca.issue_pem(name, hosts)?;
        files.push((name.clone(), issued.cert_pem, issued.key_pem));
    }
    let mut written = Vec::with_capacity(2 * files.len());
    for (name, cert_pem, key_pem) in files {
        written.push(write_new(
            &out.join(format!("{name}.pem")),
            &cert_pem,
            0o644,
        )?);
        written.push(write_new(
            &out.join(format!("{name}.key")),
            &key_pem,
            0o600,
        )?);
    }
    Ok(written)
}

/// Create `path` (never replacing a file) with `mode` from the start, so a
/// key is never readable by others, not even briefly.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<PathBuf> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let io = |action| {
        move |source| Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists {
            path: path.to_path_buf(),
        },
        _ => io("cannot create")(e),
    })?;
    file.write_all(text.as_bytes())
        .map_err(io("cannot write"))?;
    file.sync_all().map_err(io("cannot sync"))?;
    Ok(path.to_path_buf())
}

/// The certificates in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = |source| Error::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The CA certificate `ca.pem` of a directory written by [`init`].
pub fn load_ca(dir: &Path) -> Result<CertificateDer<'static>> {
    let mut certs = load_certs(&dir.join(format!("{CA_NAME}.pem")))?;
    Ok(certs.swap_remove(0))
}

/// The identity `<name>.pem` + `<name>.key` of a directory written by
/// [`init`] (`coordinator`, `worker-0`, ...).
pub fn load_identity(dir: &Path, name: &str) -> Result<Identity> {
    let cert_chain = load_certs(&dir.join(format!("{name}.pem")))?;
    let key_path = dir.join(format!("{name}.key"));
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|source| Error::Pem {
        path: key_path,
        source,
    })?;
    Ok(Identity { cert_chain, key })
}

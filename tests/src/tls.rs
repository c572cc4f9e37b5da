//! A certificate authority of the tests' own: servers get certificates it signs, and peers
//! are told to trust it (`--ca-file`), as a private CA's users would be.

use std::path::PathBuf;
use std::sync::Arc;

/// TLS client settings trusting only the PEM certificates in `pem` (a test CA, pebble's
/// root).
pub fn client_trusting(pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The CA, and the server certificates it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "punchdrop test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca = Self {
            issuer,
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(ca.ca_file(), ca.issuer.pem()).unwrap();
        ca
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// TLS client settings trusting this CA only.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_trusting(self.issuer.pem().as_bytes()).expect("the CA's own certificate")
    }

    /// A certificate for localhost and 127.0.0.1, in `NAME.crt` / `NAME.key`; its DER too.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        self.issue_for(name, &["localhost", "127.0.0.1"])
    }

    /// A certificate for `names` (host names or IP addresses).
    pub fn issue_for(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let issued = self.issue_pinned(name, names);
        (issued.0, issued.1, issued.2)
    }

    /// [`TestCa::issue_for`], with the base64 SHA-256 of the key's SubjectPublicKeyInfo last
    /// (what Chromium's `--ignore-certificate-errors-spki-list` takes).
    pub fn issue_pinned(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let pin = {
            use base64::Engine as _;
            use rcgen::PublicKeyData as _;
            use sha2::Digest as _;
            base64::engine::general_purpose::STANDARD
                .encode(sha2::Sha256::digest(key.subject_public_key_info()))
        };
        (c, k, cert.der().to_vec(), pin)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

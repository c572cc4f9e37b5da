//! TLS for the public listener: https and wss on one port, from a certificate and key in PEM
//! files (what certbot, acme.sh or a private CA write), or from an ACME CA (Let's Encrypt)
//! by TLS-ALPN-01 on that same port ([`Certificates::acme`], the `rustls-acme` crate: the
//! challenge is answered by the certificate resolver itself, so no other port is needed).
//!
//! The files are read again on [`Certificates::reload`] (SIGHUP in the binary), so a renewed
//! certificate needs no restart and cuts nobody off: connections made before keep the
//! certificate they began with, new ones get the new one.
//!
//! Invariant: a reload that fails (a half-written file, a key that is not the certificate's)
//! leaves the certificate being served in place and says why.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("cannot read the private key in {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "the key in {key} is not the key of the certificate in {cert} (or not a key rustls \
         can use: {reason})"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then the intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Where the certificate comes from and how to get an ACME one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The names the certificate is for (the first is the one pages are served by).
    pub domains: Vec<String>,
    /// Account key and certificates are kept here, so a restart does not order again (the
    /// CA's rate limits are per week).
    pub cache: PathBuf,
    /// The CA's ACME directory URL.
    pub directory: String,
    /// `mailto:` addresses the CA may write to about the certificate.
    pub contact: Vec<String>,
    /// Extra roots to trust for the directory (a private ACME CA), besides Mozilla's.
    pub ca_file: Option<PathBuf>,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate being served: from files (swapped whole on reload) or from ACME.
#[derive(Debug)]
pub struct Certificates {
    source: Source,
    provider: Arc<CryptoProvider>,
    /// A certificate is there to serve (from files at once; from ACME once issued or read
    /// from the cache).
    ready: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
enum Source {
    Files {
        files: TlsFiles,
        current: RwLock<Arc<CertifiedKey>>,
    },
    /// Answers TLS-ALPN-01 challenges, and serves the certificate once issued (or read from
    /// the cache); until then handshakes fail.
    Acme(Arc<rustls_acme::ResolvesServerCertAcme>),
}

impl Certificates {
    /// Read the files; an error says which file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(&files, &provider)?;
        Ok(Arc::new(Self {
            source: Source::Files {
                files,
                current: RwLock::new(Arc::new(current)),
            },
            provider,
            ready: Arc::new(true.into()),
        }))
    }

    /// Get the certificate from an ACME CA, and renew it, in the background (on the current
    /// tokio runtime): orders and renewals are logged (info), failures too (warn; they are
    /// retried).
    pub fn acme(settings: AcmeSettings) -> Result<Arc<Self>, TlsError> {
        use futures::StreamExt as _;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = acme_client(&settings, &provider)?;
        let mut state = rustls_acme::AcmeConfig::new_with_client_config(&settings.domains, client)
            .directory(&settings.directory)
            .contact(settings.contact.iter().map(String::as_str))
            .cache(rustls_acme::caches::DirCache::new(settings.cache.clone()))
            .state();
        let resolver = state.resolver();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deployed = ready.clone();
        tracing::info!(directory = %settings.directory, "asking the ACME CA for a certificate");
        tokio::spawn(async move {
            while let Some(event) = state.next().await {
                match event {
                    Ok(ok) => {
                        if matches!(
                            ok,
                            rustls_acme::EventOk::DeployedNewCert
                                | rustls_acme::EventOk::DeployedCachedCert
                        ) {
                            deployed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        tracing::info!("ACME: {ok:?}");
                    }
                    Err(e) => tracing::warn!("ACME: {e}"),
                }
            }
        });
        Ok(Arc::new(Self {
            source: Source::Acme(resolver),
            provider,
            ready,
        }))
    }

    /// Whether there is a certificate to serve yet (an ACME one takes a moment).
    pub fn has_certificate(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Read the files again and serve what they hold from the next connection on; on error
    /// the current certificate stays. (An ACME certificate renews itself: nothing to do.)
    pub fn reload(&self) -> Result<(), TlsError> {
        if let Source::Files { files, current } = &self.source {
            let fresh = read(files, &self.provider)?;
            *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        }
        Ok(())
    }

    /// An acceptor offering these ALPN protocols (none: any client); with ACME and a
    /// protocol list, also the challenge's, which only a CA's validation asks for.
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        if matches!(self.source, Source::Acme(_)) && !alpn.is_empty() {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.source {
            Source::Files { current, .. } => {
                Some(current.read().unwrap_or_else(|e| e.into_inner()).clone())
            }
            Source::Acme(acme) => acme.resolve(hello),
        }
    }
}

/// The TLS client for the ACME directory: Mozilla's roots, plus `ca_file`'s.
fn acme_client(
    settings: &AcmeSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        for cert in read_chain(path)? {
            roots.add(cert).map_err(|e| TlsError::Certificate {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
        files
    }

    fn served(c: &Certificates) -> Vec<u8> {
        match &c.source {
            Source::Files { current, .. } => current.read().unwrap().cert[0].to_vec(),
            Source::Acme(_) => unreachable!("files only here"),
        }
    }

    #[test]
    fn reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_pair(dir.path(), "a");
        let certs = Certificates::load(a.clone()).unwrap();
        let first = served(&certs);

        let b = write_pair(dir.path(), "b");
        std::fs::copy(&b.cert, &a.cert).unwrap();
        // The certificate is new, the key still the old one's: refused, old one kept.
        let e = certs.reload().unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
        assert_eq!(served(&certs), first);

        std::fs::copy(&b.key, &a.key).unwrap();
        certs.reload().unwrap();
        assert_ne!(served(&certs), first);

        std::fs::write(&a.cert, "not a certificate").unwrap();
        let e = certs.reload().unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Certificates::load(TlsFiles {
            cert: dir.path().join("nope.crt"),
            key: dir.path().join("nope.key"),
        })
        .unwrap_err();
        assert!(e.to_string().contains("nope.crt"), "{e}");
    }
}

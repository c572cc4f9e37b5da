//! The WebSocket to the signalling server, over `ws://` or `wss://`.
//!
//! `wss://` trusts Mozilla's roots (built in: a NAS or a minimal container may have no
//! system store) plus the certificates in `--ca-file` / `PUNCHDROP_CA_FILE`, for a server
//! whose certificate a private CA signed (a home lab, the tests). The TLS settings are made
//! once, at start ([`trust`]), so a bad CA file is reported before anything else happens.

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

static CLIENT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Build the TLS client settings: Mozilla's roots and, if given, the PEM certificates in
/// `ca_file`. Call once, before any connection.
pub fn trust(ca_file: Option<&Path>) -> anyhow::Result<()> {
    let config = settings(ca_file)?;
    let _ = CLIENT.set(Arc::new(config));
    Ok(())
}

fn settings(ca_file: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read the CA certificates in {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
        for cert in certs {
            roots.add(cert).with_context(|| {
                format!("{} holds a certificate that is not a CA's", path.display())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS settings")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS client settings (`wss://`, `turns:`).
pub fn client() -> Arc<rustls::ClientConfig> {
    CLIENT
        .get_or_init(|| {
            Arc::new(settings(None).expect("the built-in roots make a valid TLS configuration"))
        })
        .clone()
}

/// Open the WebSocket at `url` (`ws://` or `wss://`), Nagle off: signalling is small
/// messages whose latency is connection setup time.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        true,
        Some(Connector::Rustls(client())),
    )
    .await
    .map_err(explain)?;
    Ok(ws)
}

/// Say what a failed connection means for the user, naming certificate trouble plainly.
fn explain(e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error;
    let why = match &e {
        Error::Io(io) => certificate_trouble(io),
        _ => None,
    };
    anyhow::Error::new(e).context(why.unwrap_or("WebSocket"))
}

/// What a TLS failure says about the server's certificate, in a user's words (`None`: it
/// is not about the certificate).
pub fn certificate_trouble(e: &std::io::Error) -> Option<&'static str> {
    use rustls::CertificateError;
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Some(
            "the server's TLS certificate is not trusted (a private CA's? pass it with \
             --ca-file)",
        ),
        rustls::Error::InvalidCertificate(_) => Some(
            "the server's TLS certificate is not valid for it (expired, or made for another \
             name)",
        ),
        rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure) => Some(
            "the server has no TLS certificate to offer yet (one from an ACME CA may still \
             be on its way)",
        ),
        _ => None,
    }
}

//! HTTPS for the page, API, stream and `/metrics` (`http.tls`).
//!
//! An `auth_token` sent to a page on the LAN over plain HTTP travels in
//! clear, so a site that opens whosin beyond loopback gives it a certificate.
//! The files are read when the config is validated (so `check-config` and a
//! reload name a bad one) and again on every reload, so that a renewed
//! certificate is taken by touching the config file, without a restart.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

/// A problem with `http.tls`: the key it is about (`cert` or `key`) and why.
pub type TlsProblem = (&'static str, String);

/// The server's TLS settings from `files`, or `None` when HTTPS is off.
pub fn server_config(files: &TlsFiles) -> Result<Option<Arc<ServerConfig>>, TlsProblem> {
    let (cert, key) = match (&files.cert, &files.key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err((
                "key",
                "is required beside http.tls.cert: the PEM private key of that certificate".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "cert",
                "is required beside http.tls.key: the PEM certificate chain".into(),
            ));
        }
    };
    let chain = read_chain(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "key",
            format!(
                "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {}",
                key.display(),
                pem_error(&e)
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            (
                "key",
                format!(
                    "{} does not go with the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    // Only HTTP/1.1 is served (the server loop sets its limits on it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                "cert",
                format!("cannot read {}: {}", path.display(), pem_error(&e)),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "cert",
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    // rustls checks the key against the certificate; a certificate that is
    // not one at all is caught here with its file named.
    if let Err(e) = rustls::server::ParsedCertificate::try_from(&chain[0]) {
        return Err((
            "cert",
            format!(
                "{}: the first certificate is not valid: {e}",
                path.display()
            ),
        ));
    }
    Ok(chain)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM section of the right kind in it".into(),
        other => format!("{other:?}"),
    }
}

/// The acceptor the server loop uses; replaced whole on a reload.
#[derive(Clone)]
pub struct Acceptor(Arc<RwLock<tokio_rustls::TlsAcceptor>>);

impl Acceptor {
    /// An acceptor for `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(tokio_rustls::TlsAcceptor::from(
            config,
        ))))
    }

    /// The current acceptor.
    pub fn get(&self) -> tokio_rustls::TlsAcceptor {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads `files` again (a renewed certificate); on a problem the old
    /// certificate stays and the problem is returned for the log.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), String> {
        match server_config(files) {
            Ok(Some(c)) => {
                *self.0.write().unwrap_or_else(|p| p.into_inner()) =
                    tokio_rustls::TlsAcceptor::from(c);
                Ok(())
            }
            Ok(None) => Err("http.tls: switching HTTPS off needs a restart".into()),
            Err((key, why)) => Err(format!("http.tls.{key}: {why}")),
        }
    }
}

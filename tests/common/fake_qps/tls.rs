//! The fake's TLS side (handshakes, client certificate required) and its certificates.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a TLS handshake may take before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently; a
/// failed handshake is counted and skipped.
pub(super) struct TlsListener {
    pub(super) tcp: tokio::net::TcpListener,
    pub(super) acceptor: TlsAcceptor,
    pub(super) handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    pub(super) failures: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        let acceptor = self.acceptor.clone();
                        let failures = self.failures.clone();
                        self.handshakes.spawn(async move {
                            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                            match result {
                                Ok(Ok(tls)) => Some((tls, addr)),
                                Ok(Err(e)) => {
                                    eprintln!("fake QPS: TLS handshake from {addr} failed: {e}");
                                    failures.fetch_add(1, Ordering::SeqCst);
                                    None
                                }
                                Err(_) => {
                                    eprintln!("fake QPS: TLS handshake from {addr} timed out");
                                    failures.fetch_add(1, Ordering::SeqCst);
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        eprintln!("fake QPS: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Writes the certificate files into `dir` and returns the server's TLS config.
pub(super) fn make_certs(dir: &Path, openssl: &Path) -> rustls::ServerConfig {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    // The slow part: RSA keys from openssl, both at once.
    let client_key_path = dir.join("client_key.pem");
    let other_key_path = dir.join("other_client_key.pem");
    let keygens = [&client_key_path, &other_key_path].map(|path| {
        let openssl = openssl.to_path_buf();
        let path = path.clone();
        std::thread::spawn(move || rsa_key(&openssl, &path))
    });
    let [client_key, other_key] = keygens.map(|t| t.join().expect("RSA key generation"));

    let ca_params = |name: &str| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p
    };
    let client_params = || {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "QlikClient");
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p
    };

    let ca =
        CertifiedIssuer::self_signed(ca_params("FakeQps test CA"), KeyPair::generate().unwrap())
            .unwrap();
    std::fs::write(dir.join("root.pem"), ca.pem()).unwrap();

    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca).unwrap();

    let client_cert = client_params().signed_by(&client_key, &ca).unwrap();
    std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();

    let other_ca = CertifiedIssuer::self_signed(
        ca_params("FakeQps UNKNOWN CA"),
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let other_cert = client_params().signed_by(&other_key, &other_ca).unwrap();
    std::fs::write(dir.join("other_client.pem"), other_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap()
}

/// Makes a 2048-bit RSA key at `path` in PKCS#1 PEM (as the QMC exports it)
/// and returns it loaded for signing.
fn rsa_key(openssl: &Path, path: &Path) -> rcgen::KeyPair {
    let genrsa = |extra: &[&str]| {
        Command::new(openssl)
            .arg("genrsa")
            .args(extra)
            .arg("-out")
            .arg(path)
            .arg("2048")
            .output()
            .expect("openssl runs")
    };
    // OpenSSL 3 writes PKCS#8 unless told -traditional; 1.1 knows no
    // -traditional but writes PKCS#1 anyway.
    let out = genrsa(&["-traditional"]);
    if !out.status.success() {
        let out = genrsa(&[]);
        assert!(
            out.status.success(),
            "openssl genrsa: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pkcs1 = std::fs::read_to_string(path).unwrap();
    assert!(
        pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{} is not a PKCS#1 key",
        path.display()
    );
    let out = Command::new(openssl)
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(path)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl pkcs8: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pkcs8 = String::from_utf8(out.stdout).unwrap();
    rcgen::KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .expect("rcgen loads the RSA key")
}

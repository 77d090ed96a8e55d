//! An in-process FAKE of the Qlik Sense proxy service (QPS) API and of the
//! repository service (QRS) app and proxy lists, for tests.
//!
//! It is not Qlik: it serves only the session endpoints whosin uses, and
//! `/qrs/app/full` and `/qrs/proxyservice/full` (which, like the real QRS,
//! also require `X-Qlik-User: UserDirectory=INTERNAL; UserId=sa_repository`), over
//! HTTPS with a required client certificate, and checks the Xrfkey the way
//! the real service does. Certificates are made at start-up in a temporary
//! directory laid out like a QMC export (`client.pem`, `client_key.pem` as an
//! RSA PKCS#1 key, `root.pem`), plus an untrusted `other_client.pem` /
//! `other_client_key.pem` pair signed by a CA the fake does not know.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a request waits in [`Mode::Hang`].
const HANG: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the fake answers requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answers like the proxy service.
    Normal,
    /// Every request answers 403 with body `Forbidden`.
    Forbidden,
    /// Every request waits 30 s before answering (normally); for client timeouts.
    Hang,
    /// Every request answers 200 with body `<html>not json</html>`.
    Garbage,
}

/// One proxy session as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeSession {
    pub user_directory: String,
    pub user_id: String,
    pub user_name: String,
    pub session_id: String,
}

impl FakeSession {
    /// The session as the QPS API shows it. An empty user name is left out
    /// (the real API's `UserName` is optional).
    fn to_json(&self) -> Value {
        let mut v = json!({
            "UserDirectory": self.user_directory,
            "UserId": self.user_id,
            "Attributes": [{"Origin": "FakeQps"}],
            "SessionId": self.session_id,
        });
        if !self.user_name.is_empty() {
            v["UserName"] = json!(self.user_name);
        }
        v
    }
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    /// Sessions by virtual proxy prefix (`""` is the default virtual proxy).
    proxies: BTreeMap<String, Vec<FakeSession>>,
    /// (method, path without query, Xrfkey query value or "").
    requests: Vec<(String, String, String)>,
    /// The repository's apps, as `/qrs/app/full` lists them.
    apps: Vec<Value>,
    /// The repository's proxy services, as `/qrs/proxyservice/full` lists them.
    proxy_services: Vec<Value>,
    /// While set, the QRS endpoints answer 503.
    qrs_down: bool,
    /// The `X-Qlik-User` header of every QRS request.
    qrs_users: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake proxy service on 127.0.0.1; stopped when dropped.
pub struct FakeQps {
    shared: Shared,
    failures: Arc<AtomicUsize>,
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Dropped after the server (fields drop in declaration order, after Drop::drop).
    dir: tempfile::TempDir,
}

impl FakeQps {
    /// Makes the certificates and starts the server. None when the `openssl`
    /// CLI is missing outside CI (under CI that panics, see `tool`).
    pub fn start() -> Option<FakeQps> {
        let openssl = super::tool("openssl", "openssl")?;
        let ok = Command::new(&openssl)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(!super::required(), "`openssl version` fails");
            eprintln!("skipping: `openssl version` fails");
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let tls = make_certs(dir.path(), &openssl);

        let shared: Shared = Arc::new(Mutex::new(Inner {
            mode: Mode::Normal,
            proxies: BTreeMap::from([(String::new(), Vec::new())]),
            requests: Vec::new(),
            apps: Vec::new(),
            proxy_services: Vec::new(),
            qrs_down: false,
            qrs_users: Vec::new(),
        }));
        let failures = Arc::new(AtomicUsize::new(0));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();

        let app = router(shared.clone());
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let counter = failures.clone();
        let thread = std::thread::Builder::new()
            .name("fake-qps".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake QPS runtime");
                rt.block_on(async move {
                    let listener = TlsListener {
                        tcp: tokio::net::TcpListener::from_std(std_listener).unwrap(),
                        acceptor,
                        handshakes: JoinSet::new(),
                        failures: counter,
                    };
                    tokio::select! {
                        r = axum::serve(listener, app) => r.expect("fake QPS serves"),
                        _ = stop => {}
                    }
                });
                // Cancels connection tasks, including requests stuck in Mode::Hang.
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("fake QPS thread");

        Some(FakeQps {
            shared,
            failures,
            port,
            shutdown: Some(shutdown),
            thread: Some(thread),
            dir,
        })
    }

    /// The directory holding `client.pem`, `client_key.pem` (RSA, PKCS#1),
    /// `root.pem`, `other_client.pem` and `other_client_key.pem`.
    pub fn cert_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The HTTPS port on 127.0.0.1 (the certificate is for `localhost` and `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Adds a virtual proxy with this prefix (no effect if it exists).
    pub fn add_virtual_proxy(&self, prefix: &str) {
        lock(&self.shared)
            .proxies
            .entry(prefix.to_string())
            .or_default();
    }

    /// Adds a session to the virtual proxy `prefix` (created if missing).
    /// An empty `name` leaves `UserName` out of the JSON.
    pub fn add_session(&self, prefix: &str, dir: &str, id: &str, name: &str, session_id: &str) {
        lock(&self.shared)
            .proxies
            .entry(prefix.to_string())
            .or_default()
            .push(FakeSession {
                user_directory: dir.to_string(),
                user_id: id.to_string(),
                user_name: name.to_string(),
                session_id: session_id.to_string(),
            });
    }

    /// The sessions of the virtual proxy `prefix` (empty if it does not exist).
    pub fn sessions(&self, prefix: &str) -> Vec<FakeSession> {
        lock(&self.shared)
            .proxies
            .get(prefix)
            .cloned()
            .unwrap_or_default()
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.shared).mode = mode;
    }

    /// Ends the session `session_id` on the virtual proxy `prefix` (as if the
    /// user logged out); false when there was none.
    pub fn remove_session(&self, prefix: &str, session_id: &str) -> bool {
        let mut inner = lock(&self.shared);
        let Some(list) = inner.proxies.get_mut(prefix) else {
            return false;
        };
        let before = list.len();
        list.retain(|s| s.session_id != session_id);
        list.len() < before
    }

    /// Sets the repository's apps: (id, name, stream), as `/qrs/app/full`
    /// lists them (with more fields, as the real one does).
    pub fn set_apps(&self, apps: &[(&str, &str, Option<&str>)]) {
        lock(&self.shared).apps = apps
            .iter()
            .map(|(id, name, stream)| {
                json!({
                    "id": id, "name": name, "published": stream.is_some(),
                    "stream": stream.map(|s| json!({"id": "00000000-0000-0000-0000-000000000001", "name": s})),
                    "owner": {"userDirectory": "LAB", "userId": "admin"}, "tags": [],
                })
            })
            .collect();
    }

    /// Sets the proxy services `/qrs/proxyservice/full` lists (raw JSON).
    pub fn set_proxy_services(&self, services: Vec<Value>) {
        lock(&self.shared).proxy_services = services;
    }

    /// A repository outage (503) while `down`.
    pub fn set_qrs_down(&self, down: bool) {
        lock(&self.shared).qrs_down = down;
    }

    /// The `X-Qlik-User` header of every QRS request so far.
    pub fn qrs_users(&self) -> Vec<String> {
        lock(&self.shared).qrs_users.clone()
    }

    /// Every request that got through TLS: (method, path without query, Xrfkey
    /// query value or "").
    pub fn requests(&self) -> Vec<(String, String, String)> {
        lock(&self.shared).requests.clone()
    }

    /// TLS handshakes that failed (e.g. an untrusted or missing client certificate).
    pub fn handshake_failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }
}

impl Drop for FakeQps {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------- HTTP side

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/qps/session", get(list_default))
        .route("/qps/{prefix}/session", get(list))
        .route("/qps/session/{id}", delete(delete_session_default))
        .route("/qps/{prefix}/session/{id}", delete(delete_session))
        .route("/qps/user/{dir}/{id}", delete(delete_user_default))
        .route("/qps/{prefix}/user/{dir}/{id}", delete(delete_user))
        .route("/qrs/app/full", get(qrs_apps))
        .route("/qrs/proxyservice/full", get(qrs_proxies))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint in the fake QPS") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Logs the request, applies the mode, and checks the Xrfkey.
async fn guard(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    let query_key = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("xrfkey"))
        .map(|(_, value)| value.to_string());
    let mode = {
        let mut inner = lock(&shared);
        inner.requests.push((
            req.method().to_string(),
            req.uri().path().to_string(),
            query_key.clone().unwrap_or_default(),
        ));
        inner.mode
    };
    match mode {
        Mode::Normal => {}
        Mode::Hang => tokio::time::sleep(HANG).await,
        Mode::Forbidden => return (StatusCode::FORBIDDEN, "Forbidden").into_response(),
        Mode::Garbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>not json</html>",
            )
                .into_response();
        }
    }
    let header_key = req
        .headers()
        .get("x-qlik-xrfkey")
        .and_then(|h| h.to_str().ok());
    let valid = query_key.as_deref().is_some_and(|k| {
        k.len() == 16 && k.bytes().all(|b| b.is_ascii_alphanumeric()) && header_key == Some(k)
    });
    if !valid {
        return (StatusCode::BAD_REQUEST, "Xrfkey mismatch").into_response();
    }
    next.run(req).await
}

/// The QRS's own check: the user the request acts for.
fn qrs_guard(shared: &Shared, req_user: Option<&str>) -> Option<Response> {
    let mut inner = lock(shared);
    inner
        .qrs_users
        .push(req_user.unwrap_or_default().to_owned());
    if inner.qrs_down {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response());
    }
    if req_user != Some("UserDirectory=INTERNAL; UserId=sa_repository") {
        return Some((StatusCode::FORBIDDEN, "Forbidden: no such user").into_response());
    }
    None
}

async fn qrs_apps(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let user = headers.get("x-qlik-user").and_then(|h| h.to_str().ok());
    if let Some(r) = qrs_guard(&shared, user) {
        return r;
    }
    axum::Json(Value::Array(lock(&shared).apps.clone())).into_response()
}

async fn qrs_proxies(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let user = headers.get("x-qlik-user").and_then(|h| h.to_str().ok());
    if let Some(r) = qrs_guard(&shared, user) {
        return r;
    }
    axum::Json(Value::Array(lock(&shared).proxy_services.clone())).into_response()
}

fn no_proxy(prefix: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no virtual proxy with prefix {prefix:?}"),
    )
        .into_response()
}

async fn list_default(State(shared): State<Shared>) -> Response {
    list_sessions(&shared, "")
}

async fn list(State(shared): State<Shared>, UrlPath(prefix): UrlPath<String>) -> Response {
    list_sessions(&shared, &prefix)
}

fn list_sessions(shared: &Shared, prefix: &str) -> Response {
    match lock(shared).proxies.get(prefix) {
        Some(sessions) => axum::Json(Value::Array(
            sessions.iter().map(FakeSession::to_json).collect(),
        ))
        .into_response(),
        None => no_proxy(prefix),
    }
}

async fn delete_session_default(
    State(shared): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    remove_session(&shared, "", &id)
}

async fn delete_session(
    State(shared): State<Shared>,
    UrlPath((prefix, id)): UrlPath<(String, String)>,
) -> Response {
    remove_session(&shared, &prefix, &id)
}

fn remove_session(shared: &Shared, prefix: &str, id: &str) -> Response {
    let mut inner = lock(shared);
    let Some(sessions) = inner.proxies.get_mut(prefix) else {
        return no_proxy(prefix);
    };
    match sessions.iter().position(|s| s.session_id == id) {
        Some(i) => axum::Json(sessions.remove(i).to_json()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no session {id:?}")).into_response(),
    }
}

async fn delete_user_default(
    State(shared): State<Shared>,
    UrlPath((dir, id)): UrlPath<(String, String)>,
) -> Response {
    remove_user(&shared, "", &dir, &id)
}

async fn delete_user(
    State(shared): State<Shared>,
    UrlPath((prefix, dir, id)): UrlPath<(String, String, String)>,
) -> Response {
    remove_user(&shared, &prefix, &dir, &id)
}

fn remove_user(shared: &Shared, prefix: &str, dir: &str, id: &str) -> Response {
    let mut inner = lock(shared);
    let Some(sessions) = inner.proxies.get_mut(prefix) else {
        return no_proxy(prefix);
    };
    let (removed, kept): (Vec<_>, Vec<_>) = std::mem::take(sessions).into_iter().partition(|s| {
        s.user_directory.eq_ignore_ascii_case(dir) && s.user_id.eq_ignore_ascii_case(id)
    });
    *sessions = kept;
    axum::Json(Value::Array(
        removed.iter().map(FakeSession::to_json).collect(),
    ))
    .into_response()
}

// ----------------------------------------------------------------- TLS side

/// Accepts TCP connections and completes TLS handshakes concurrently; a
/// failed handshake is counted and skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    failures: Arc<AtomicUsize>,
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

// -------------------------------------------------------------- certificates

/// Writes the certificate files into `dir` and returns the server's TLS config.
fn make_certs(dir: &Path, openssl: &Path) -> rustls::ServerConfig {
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

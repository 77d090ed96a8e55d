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
//!
//! The HTTP side (routes and handlers) is in `fake_qps/routes.rs`, the TLS
//! side and the certificates in `fake_qps/tls.rs`.

mod routes;
mod tls;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use routes::router;
use tls::{TlsListener, make_certs};

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

//! The Qlik proxy service (QPS) API: the proxy's own list of sessions, and
//! ending them, as Ctrl-Q's `session-get` and `session-delete` do.
//!
//! Every request goes over HTTPS with the client certificate exported from
//! the QMC and a fresh Xrfkey (Qlik's protection against cross-site request
//! forgery: the same 16 characters in the query string and the
//! `X-Qlik-Xrfkey` header). Errors name the proxy, the virtual proxy and
//! what went wrong, in words an administrator can act on.

pub mod apps;
pub mod cli;
pub mod qrs;
pub mod reconcile;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{QlikConfig, QlikProxy};

/// One session as the proxy reports it, in whosin's JSON shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxySession {
    /// The proxy node (`qlik.proxies[].host`).
    pub host: String,
    /// The virtual proxy prefix; `""` for the default one.
    pub virtual_proxy: String,
    /// User directory.
    pub user_directory: String,
    /// User id.
    pub user_id: String,
    /// Display name, when the proxy knows it.
    pub user_name: Option<String>,
    /// The proxy's session id (the `X-Qlik-Session` cookie value).
    pub session_id: String,
    /// The session's attributes, as the proxy sends them.
    pub attributes: serde_json::Value,
}

/// The proxy's JSON for one session.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QpsSession {
    user_directory: String,
    user_id: String,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    attributes: serde_json::Value,
    session_id: String,
}

/// A client for every configured proxy.
pub struct Qps {
    client: reqwest::Client,
    timeout: Duration,
}

/// A fresh Xrfkey: 16 random letters and digits.
pub fn xrfkey() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 16];
    // The operating system's generator cannot fail in practice; if it did,
    // a fixed key still works (Qlik only compares query and header).
    let _ = getrandom::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| CHARS[*b as usize % CHARS.len()] as char)
        .collect()
}

/// `proxy:port, virtual proxy "prefix"`, for messages.
pub fn describe(proxy: &QlikProxy, virtual_proxy: &str) -> String {
    format!(
        "{}:{}, virtual proxy {virtual_proxy:?}",
        proxy.host, proxy.port
    )
}

/// Whether `host` (as given on the command line or sent in an event) names
/// `proxy`: its host, that host's first DNS label, or its `node_name`, in any case.
pub fn names(proxy: &QlikProxy, host: &str) -> bool {
    let first_label = proxy.host.split('.').next().unwrap_or(&proxy.host);
    host.eq_ignore_ascii_case(&proxy.host)
        || host.eq_ignore_ascii_case(first_label)
        || proxy
            .node_name
            .as_deref()
            .is_some_and(|n| host.eq_ignore_ascii_case(n))
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "qlik.certificates.{key}: cannot read {}: {e} (export the certificates from the QMC, PEM format)",
            path.display()
        )
    })
}

/// An HTTPS client with the QMC certificates of `c`, for the proxy and the
/// repository APIs alike.
pub(crate) fn https_client(c: &QlikConfig) -> Result<reqwest::Client, String> {
    let certs = &c.certificates;
    let root = read(&certs.root, "root")?;
    let mut identity = read(&certs.client, "client")?;
    identity.push(b'\n');
    identity.extend(read(&certs.client_key, "client_key")?);
    let roots = reqwest::Certificate::from_pem_bundle(&root).map_err(|e| {
        format!(
            "qlik.certificates.root: {} is not a PEM certificate: {e}",
            certs.root.display()
        )
    })?;
    let identity = reqwest::Identity::from_pem(&identity).map_err(|e| {
        format!(
            "qlik.certificates.client / client_key: {} and {} are not a PEM certificate and its private key: {e}",
            certs.client.display(),
            certs.client_key.display()
        )
    })?;
    let timeout = c.request_timeout.get();
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .identity(identity)
        .tls_danger_accept_invalid_hostnames(c.accept_invalid_hostnames)
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| format!("qlik: cannot set up the HTTPS client: {}", chain(&e)))
}

/// A request error in words an administrator can act on.
pub(crate) fn explain(what: &str, e: &reqwest::Error, timeout: Duration) -> String {
    let detail = chain(e);
    if e.is_timeout() {
        format!(
            "{what}: timed out after {timeout:?} (qlik.request_timeout); is the API port reachable?"
        )
    } else if detail.to_ascii_lowercase().contains("certificate")
        || detail.contains("HandshakeFailure")
        || detail.contains("alert")
    {
        format!(
            "{what}: the TLS handshake failed, the certificate was refused ({detail}); check qlik.certificates (exported from this site's QMC) and qlik.accept_invalid_hostnames"
        )
    } else if e.is_connect() {
        format!("{what}: cannot connect ({detail}); is the API port open?")
    } else {
        format!("{what}: {detail}")
    }
}

impl Qps {
    /// A client with the QMC certificates of `c`.
    pub fn new(c: &QlikConfig) -> Result<Self, String> {
        Ok(Self {
            client: https_client(c)?,
            timeout: c.request_timeout.get(),
        })
    }

    fn url(proxy: &QlikProxy, virtual_proxy: &str, path: &str) -> String {
        let prefix = virtual_proxy.trim_matches('/');
        let base = format!("https://{}:{}/qps", proxy.host, proxy.port);
        if prefix.is_empty() {
            format!("{base}/{path}")
        } else {
            format!("{base}/{prefix}/{path}")
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        proxy: &QlikProxy,
        virtual_proxy: &str,
        path: &str,
    ) -> Result<String, String> {
        let key = xrfkey();
        let url = Self::url(proxy, virtual_proxy, path);
        let what = describe(proxy, virtual_proxy);
        let mut url = reqwest::Url::parse(&url).map_err(|e| format!("{what}: {url}: {e}"))?;
        url.query_pairs_mut().append_pair("Xrfkey", &key);
        let resp = self
            .client
            .request(method, url)
            .header("X-Qlik-Xrfkey", &key)
            .send()
            .await
            .map_err(|e| self.explain(&what, &e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| self.explain(&what, &e))?;
        match status.as_u16() {
            200..=299 => Ok(body),
            403 => Err(format!(
                "{what}: 403 Forbidden: the proxy refused the certificate's user; use the certificates exported from this site's QMC"
            )),
            404 => Err(format!(
                "{what}: 404 Not Found: no such virtual proxy or session ({})",
                snippet(&body)
            )),
            _ => Err(format!("{what}: {status}: {}", snippet(&body))),
        }
    }

    fn explain(&self, what: &str, e: &reqwest::Error) -> String {
        explain(what, e, self.timeout)
    }

    /// The sessions of one virtual proxy of `proxy`.
    pub async fn list(
        &self,
        proxy: &QlikProxy,
        virtual_proxy: &str,
    ) -> Result<Vec<ProxySession>, String> {
        let body = self
            .send(reqwest::Method::GET, proxy, virtual_proxy, "session")
            .await?;
        let sessions: Vec<QpsSession> = serde_json::from_str(&body).map_err(|e| {
            format!(
                "{}: unexpected answer, not a session list ({e}): {}",
                describe(proxy, virtual_proxy),
                snippet(&body)
            )
        })?;
        Ok(sessions
            .into_iter()
            .map(|s| ProxySession {
                host: proxy.host.clone(),
                virtual_proxy: virtual_proxy.to_owned(),
                user_directory: s.user_directory,
                user_id: s.user_id,
                user_name: s.user_name.filter(|n| !n.is_empty()),
                session_id: s.session_id,
                attributes: if s.attributes.is_null() {
                    serde_json::Value::Array(Vec::new())
                } else {
                    s.attributes
                },
            })
            .collect())
    }

    /// Ends one session.
    pub async fn end_session(
        &self,
        proxy: &QlikProxy,
        virtual_proxy: &str,
        session_id: &str,
    ) -> Result<(), String> {
        let path = format!("session/{}", encode(session_id));
        self.send(reqwest::Method::DELETE, proxy, virtual_proxy, &path)
            .await
            .map(drop)
    }

    /// Ends every session of one user.
    pub async fn end_user(
        &self,
        proxy: &QlikProxy,
        virtual_proxy: &str,
        directory: &str,
        user_id: &str,
    ) -> Result<(), String> {
        let path = format!("user/{}/{}", encode(directory), encode(user_id));
        self.send(reqwest::Method::DELETE, proxy, virtual_proxy, &path)
            .await
            .map(drop)
    }
}

/// Percent-encodes one path segment.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its causes, which is where reqwest keeps the useful part.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

pub(crate) fn snippet(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(host: &str) -> QlikProxy {
        QlikProxy {
            host: host.into(),
            port: 4243,
            virtual_proxies: vec![String::new()],
            node_name: Some("SENSE-NODE1".into()),
        }
    }

    #[test]
    fn xrfkeys_are_16_letters_and_digits_and_fresh() {
        let a = xrfkey();
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, xrfkey());
    }

    #[test]
    fn urls_for_the_default_and_a_named_virtual_proxy() {
        let p = proxy("qs1.example.com");
        assert_eq!(
            Qps::url(&p, "", "session"),
            "https://qs1.example.com:4243/qps/session"
        );
        assert_eq!(
            Qps::url(&p, "/finance/", "user/LAB/anna"),
            "https://qs1.example.com:4243/qps/finance/user/LAB/anna"
        );
        assert_eq!(encode("LAB\\a b"), "LAB%5Ca%20b");
    }

    #[test]
    fn a_proxy_is_named_by_host_first_label_or_node_name() {
        let p = proxy("qs-node1.example.com");
        assert!(names(&p, "QS-NODE1.example.com"));
        assert!(names(&p, "qs-node1"));
        assert!(names(&p, "sense-node1"));
        assert!(!names(&p, "qs-node2"));
    }
}

//! The Qlik repository service (QRS) API: app names and streams, and the
//! proxy services and virtual proxies of the site (discovery).
//!
//! Same certificates as the proxy API, a fresh Xrfkey per request, and the
//! user header Butler SOS and Ctrl-Q send (`X-Qlik-User: UserDirectory=INTERNAL;
//! UserId=sa_repository`): with the QMC's client certificate the QRS takes
//! the request as that user, which may read every app and proxy.

use std::time::Duration;

use serde::Deserialize;

use super::{explain, snippet, xrfkey};
use crate::apps::AppInfo;
use crate::config::{QlikConfig, QlikProxy};

/// The header that says whom the request acts for.
pub const USER_HEADER: &str = "UserDirectory=INTERNAL; UserId=sa_repository";

/// A client for the repository service.
pub struct Qrs {
    client: reqwest::Client,
    host: String,
    port: u16,
    timeout: Duration,
}

#[derive(Deserialize)]
struct QrsApp {
    id: String,
    name: String,
    #[serde(default)]
    stream: Option<QrsStream>,
}

#[derive(Deserialize)]
struct QrsStream {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrsProxyService {
    #[serde(default)]
    server_node_configuration: Option<QrsNode>,
    #[serde(default)]
    settings: Option<QrsProxySettings>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrsNode {
    #[serde(default)]
    host_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrsProxySettings {
    #[serde(default)]
    rest_listen_port: Option<u16>,
    #[serde(default)]
    virtual_proxies: Vec<QrsVirtualProxy>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QrsVirtualProxy {
    #[serde(default)]
    prefix: Option<String>,
}

impl Qrs {
    /// A client for the QRS of `c`: `repository.host`, else the first proxy's host.
    pub fn new(c: &QlikConfig) -> Result<Self, String> {
        let host = c
            .repository
            .host
            .clone()
            .or_else(|| c.proxies.first().map(|p| p.host.clone()))
            .ok_or_else(|| {
                "qlik.repository.host: no repository host (and no proxy to take it from)".to_owned()
            })?;
        Ok(Self {
            client: super::https_client(c)?,
            host,
            port: c.repository.port,
            timeout: c.request_timeout.get(),
        })
    }

    /// `host:port`, for messages.
    pub fn describe(&self) -> String {
        format!("repository {}:{}", self.host, self.port)
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let key = xrfkey();
        let what = format!("{} {path}", self.describe());
        let mut url =
            reqwest::Url::parse(&format!("https://{}:{}/qrs/{path}", self.host, self.port))
                .map_err(|e| format!("{what}: {e}"))?;
        url.query_pairs_mut().append_pair("xrfkey", &key);
        let resp = self
            .client
            .get(url)
            .header("X-Qlik-Xrfkey", &key)
            .header("X-Qlik-User", USER_HEADER)
            .send()
            .await
            .map_err(|e| explain(&what, &e, self.timeout))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| explain(&what, &e, self.timeout))?;
        match status.as_u16() {
            200..=299 => Ok(body),
            403 => Err(format!(
                "{what}: 403 Forbidden: the repository refused the certificate or the user {USER_HEADER:?}; use the certificates exported from this site's QMC"
            )),
            _ => Err(format!("{what}: {status}: {}", snippet(&body))),
        }
    }

    /// Every app's id, name and stream (`/qrs/app/full`).
    pub async fn apps(&self) -> Result<Vec<(String, AppInfo)>, String> {
        let body = self.get("app/full").await?;
        let apps: Vec<QrsApp> = serde_json::from_str(&body).map_err(|e| {
            format!(
                "{} app/full: unexpected answer, not an app list ({e}): {}",
                self.describe(),
                snippet(&body)
            )
        })?;
        Ok(apps
            .into_iter()
            .map(|a| {
                (
                    a.id,
                    AppInfo {
                        name: a.name,
                        stream: a.stream.map(|s| s.name),
                    },
                )
            })
            .collect())
    }

    /// Every proxy service with its virtual proxies (`/qrs/proxyservice/full`),
    /// as Ctrl-Q reads them.
    pub async fn proxies(&self) -> Result<Vec<QlikProxy>, String> {
        let body = self.get("proxyservice/full").await?;
        let services: Vec<QrsProxyService> = serde_json::from_str(&body).map_err(|e| {
            format!(
                "{} proxyservice/full: unexpected answer, not a proxy service list ({e}): {}",
                self.describe(),
                snippet(&body)
            )
        })?;
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let node = s.server_node_configuration?;
                let host = node.host_name.filter(|h| !h.trim().is_empty())?;
                let settings = s.settings;
                let port = settings
                    .as_ref()
                    .and_then(|s| s.rest_listen_port)
                    .unwrap_or(4243);
                let mut vps: Vec<String> = settings
                    .map(|s| {
                        s.virtual_proxies
                            .into_iter()
                            .map(|v| v.prefix.unwrap_or_default().trim_matches('/').to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if vps.is_empty() {
                    vps.push(String::new());
                }
                vps.sort();
                vps.dedup();
                Some(QlikProxy {
                    host,
                    port,
                    virtual_proxies: vps,
                    node_name: node.name.filter(|n| !n.trim().is_empty()),
                })
            })
            .collect())
    }
}

/// `config` with its proxies completed from the repository when
/// `discover` is on: the configured ones first (they win on the same host),
/// then every other proxy service the QRS lists.
pub async fn with_discovered(config: &QlikConfig) -> Result<QlikConfig, String> {
    let mut out = config.clone();
    if !config.discover {
        return Ok(out);
    }
    let found = Qrs::new(config)?.proxies().await?;
    for p in found {
        if !out
            .proxies
            .iter()
            .any(|c| c.host.eq_ignore_ascii_case(&p.host))
        {
            out.proxies.push(p);
        }
    }
    Ok(out)
}

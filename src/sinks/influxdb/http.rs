//! The three write APIs, which differ only in URL and authentication, and
//! InfluxDB 1.x's `CREATE DATABASE`.

use super::config::InfluxConfig;
use crate::problems::redact_url;
use crate::sinks::split::{Post, PostError};
use crate::sinks::{gzip, redact_error};

/// One server, as the config names it.
pub struct Writer {
    client: reqwest::Client,
    config: InfluxConfig,
    /// The base URL for messages, never with a password in it.
    shown: String,
}

impl Writer {
    /// A writer for `config`.
    pub fn new(config: InfluxConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self {
            shown: redact_url(config.url.trim_end_matches('/')),
            client,
            config,
        })
    }

    /// The server, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Url, PostError> {
        let base = self.config.url.trim_end_matches('/');
        let mut url = reqwest::Url::parse(&format!("{base}/{path}"))
            .map_err(|e| PostError::Retry(format!("{}: not a URL ({e})", self.shown)))?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url)
    }

    fn database(&self) -> &str {
        self.config.database.as_deref().unwrap_or_default()
    }

    /// The write request for this version.
    fn write_request(&self) -> Result<reqwest::RequestBuilder, PostError> {
        let c = &self.config;
        let req = match c.version {
            2 => self
                .client
                .post(self.url(
                    "api/v2/write",
                    &[
                        ("org", c.org.as_deref().unwrap_or_default()),
                        ("bucket", c.bucket.as_deref().unwrap_or_default()),
                        ("precision", "ns"),
                    ],
                )?)
                .header(
                    "Authorization",
                    format!("Token {}", c.token.as_deref().unwrap_or_default()),
                ),
            3 => self
                .client
                .post(self.url(
                    "api/v3/write_lp",
                    &[
                        ("db", self.database()),
                        ("precision", "nanosecond"),
                        // All or nothing, so that splitting finds the
                        // refused lines without writing the rest twice.
                        ("accept_partial", "false"),
                    ],
                )?)
                .bearer_auth(c.token.as_deref().unwrap_or_default()),
            _ => {
                let mut q = vec![("db", self.database()), ("precision", "ns")];
                if let Some(rp) = c.retention_policy.as_deref() {
                    q.push(("rp", rp));
                }
                let mut req = self.client.post(self.url("write", &q)?);
                if let Some(user) = c.username.as_deref() {
                    req = req.basic_auth(user, c.password.as_deref());
                }
                req
            }
        };
        Ok(req)
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), PostError> {
        let gzipped = gzip(&body).map_err(|e| PostError::Retry(e.to_string()))?;
        let resp = self
            .write_request()?
            .header("Content-Encoding", "gzip")
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(gzipped)
            .send()
            .await
            .map_err(|e| PostError::Retry(format!("{}: {}", self.shown, redact_error(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let text: String = text.trim().chars().take(600).collect();
        let msg = format!("{} answered {status}: {text}", self.shown);
        match status.as_u16() {
            // 401, 403 and 404 are retried: a wrong token or a missing
            // database is fixed by the administrator, and dropping events
            // meanwhile would lose them.
            400 | 413 | 422 => Err(PostError::Refused(msg)),
            404 if self.config.version == 1 && missing_database(&text) => {
                Err(PostError::Retry(format!("{MISSING}{msg}")))
            }
            _ => Err(PostError::Retry(msg)),
        }
    }

    /// `CREATE DATABASE`, when the config allows it; the error says why not.
    pub async fn create_database(&self) -> Result<(), String> {
        let db = self.database();
        let q = format!("CREATE DATABASE \"{}\"", db.replace('"', "\\\""));
        let url = self
            .url("query", &[("q", q.as_str())])
            .map_err(|e| format!("{e:?}"))?;
        let mut req = self.client.post(url);
        if let Some(user) = self.config.username.as_deref() {
            req = req.basic_auth(user, self.config.password.as_deref());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{}: {}", self.shown, redact_error(&e)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        // InfluxDB 1.x answers 200 with {"results":[{"error":..}]} too.
        let refused = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["results"][0]["error"].as_str().map(str::to_owned));
        match (status.is_success(), refused) {
            (true, None) => Ok(()),
            (_, Some(e)) => Err(format!("{} refused CREATE DATABASE: {e}", self.shown)),
            (false, None) => Err(format!(
                "{} refused CREATE DATABASE ({status}): {}",
                self.shown,
                text.trim()
            )),
        }
    }

    /// Whether the config lets whosin create a missing database.
    pub fn may_create(&self) -> bool {
        self.config.version == 1 && self.config.create_database
    }
}

/// The start of a retry message for a missing database (version 1).
pub const MISSING: &str = "database missing: ";

/// InfluxDB 1.x: `{"error":"database not found: \"senseops\""}`.
fn missing_database(body: &str) -> bool {
    body.contains("database not found")
}

impl Post for Writer {
    fn destination(&self) -> &str {
        "influxdb"
    }

    async fn post(&self, points: &[String]) -> Result<(), PostError> {
        self.send(points.concat().into_bytes()).await
    }
}

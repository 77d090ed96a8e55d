//! The New Relic sink: Butler SOS's user events (`qs_userEvent`) through the
//! Event API, one sink (and so one cursor) per account.
//!
//! Events go in batches, as a gzip JSON array, to
//! `{url}/v1/accounts/{account_id}/events` with `Api-Key`. What the API
//! refuses for good (400, 413 for one event, other 4xx but the ones below) is
//! skipped and counted; 401, 403, 404, 408, 429, 5xx and network errors are
//! retried with backoff, since a revoked key or an outage is fixed while the
//! events wait in the journal. Every event carries `qs_seq`, so a batch sent
//! again after an error can be told apart from a new one.

mod config;
mod payload;

use std::collections::BTreeMap;
use std::time::Duration;

pub use config::{NewRelicAccount, NewRelicConfig};
pub use payload::scramble;

use crate::problems::redact_url;
use crate::sinks::split::{Post, PostError};
use crate::sinks::{Batch, Delivered, Env, Sink, SinkError, deliver_split, gzip, redact_error};

/// The sink of one account.
pub struct NewRelicSink {
    client: reqwest::Client,
    url: String,
    insert_key: String,
    id: String,
    scramble: bool,
    tags: BTreeMap<String, String>,
    apps: std::sync::Arc<crate::apps::Apps>,
    batch_size: usize,
    flush_interval: Duration,
}

impl NewRelicSink {
    /// The sink of `account`.
    pub fn new(
        c: &NewRelicConfig,
        account: &NewRelicAccount,
        id: String,
        env: &Env,
    ) -> anyhow::Result<Self> {
        let url = format!(
            "{}/v1/accounts/{}/events",
            c.url.trim_end_matches('/'),
            account.account_id
        );
        tracing::info!("new_relic: sending to {}", redact_url(&url));
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            url,
            insert_key: account.insert_key.clone(),
            id,
            scramble: c.scramble,
            tags: env.tags.clone(),
            apps: env.apps.clone(),
            batch_size: c.batch_size,
            flush_interval: c.flush_interval.get(),
        })
    }
}

impl Post for NewRelicSink {
    fn destination(&self) -> &str {
        &self.id
    }

    async fn post(&self, points: &[String]) -> Result<(), PostError> {
        let mut body = String::with_capacity(points.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(p);
        }
        body.push(']');
        let gzipped = gzip(body.as_bytes()).map_err(|e| PostError::Retry(e.to_string()))?;
        let shown = redact_url(&self.url);
        let resp = self
            .client
            .post(&self.url)
            .header("Api-Key", &self.insert_key)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(gzipped)
            .send()
            .await
            .map_err(|e| PostError::Retry(format!("{shown}: {}", redact_error(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .trim()
            .chars()
            .take(600)
            .collect();
        let msg = format!("{shown} answered {status}: {text}");
        match status.as_u16() {
            401 | 403 | 404 | 408 | 429 => Err(PostError::Retry(msg)),
            400..=499 => Err(PostError::Refused(msg)),
            _ => Err(PostError::Retry(msg)),
        }
    }
}

impl Sink for NewRelicSink {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn idle_interval(&self) -> Duration {
        self.flush_interval
    }

    async fn deliver(&mut self, batch: Batch) -> Result<Delivered, SinkError> {
        let events: Vec<String> = batch
            .iter()
            .map(|ev| {
                let app = crate::sinks::app_name(&self.apps, ev);
                payload::event(ev, &self.tags, self.scramble, app.as_deref())
            })
            .collect();
        Ok(Delivered::Done(deliver_split(self, &events).await?))
    }
}

//! The InfluxDB sink: Butler SOS-compatible points for InfluxDB 1.x, 2.x and 3.x.
//!
//! [`line`] encodes line protocol, [`schema`] builds Butler SOS's points,
//! [`summaries`] the periodic ones, and [`http`] posts them to the write API
//! of the configured version. Only what InfluxDB accepted is confirmed; the
//! point times are stable, so a resend after an outage overwrites instead of
//! duplicating.

mod config;
pub mod http;
pub mod line;
pub mod schema;
pub mod summaries;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use config::InfluxConfig;
use schema::{Version, user_event};

use crate::sinks::{
    Batch, Delivered, Env, Journal, Refused, Settled, Sink, SinkError, deliver_split,
};

/// Batches posted and not yet answered. While InfluxDB parses and stores
/// one batch, the next ones are read from the journal, encoded and on their
/// way: the sink's rate is then the server's, not the sum of both sides'.
const PIPELINE: usize = 3;

/// The InfluxDB sink.
pub struct InfluxSink {
    writer: Arc<http::Writer>,
    /// The posts in flight, oldest first (answers are confirmed in order).
    posts: VecDeque<JoinHandle<Result<Option<Refused>, SinkError>>>,
    version: Version,
    tags: Vec<(String, String)>,
    apps: std::sync::Arc<crate::apps::Apps>,
    batch_size: usize,
    flush_interval: Duration,
    /// Whether the summaries' cursor has been set up.
    summaries_ready: bool,
}

impl InfluxSink {
    /// The sink for `config`.
    pub fn new(config: InfluxConfig, env: &Env) -> anyhow::Result<Self> {
        tracing::info!(
            "influxdb: writing to {} (version {})",
            crate::problems::redact_url(&config.url),
            config.version
        );
        Ok(Self {
            version: Version::of(config.version),
            tags: env.tag_pairs(),
            apps: env.apps.clone(),
            batch_size: config.batch_size,
            flush_interval: config.flush_interval.get(),
            writer: Arc::new(http::Writer::new(config)?),
            posts: VecDeque::new(),
            summaries_ready: false,
        })
    }
}

/// Writes `lines`; a missing database (version 1) is created once when the
/// config allows it.
async fn write(writer: &http::Writer, lines: &[String]) -> Result<Option<Refused>, SinkError> {
    match deliver_split(writer, lines).await {
        Err(SinkError(msg)) if msg.starts_with(http::MISSING) => {
            let msg = &msg[http::MISSING.len()..];
            if !writer.may_create() {
                return Err(SinkError(format!(
                    "{msg} (create the database, or set sinks.influxdb.create_database: true)"
                )));
            }
            match writer.create_database().await {
                Ok(()) => {
                    tracing::info!("influxdb: created the database on {}", writer.shown());
                    deliver_split(writer, lines).await
                }
                Err(e) => Err(SinkError(format!(
                    "{msg}; and it cannot be created: {e} (create it, or give the user admin rights)"
                ))),
            }
        }
        other => other,
    }
}

impl Sink for InfluxSink {
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn pipeline(&self) -> usize {
        PIPELINE
    }

    fn idle_interval(&self) -> Duration {
        self.flush_interval
    }

    async fn deliver(&mut self, batch: Batch) -> Result<Delivered, SinkError> {
        let tags: Vec<(&str, &str)> = self
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let lines: Vec<String> = batch
            .iter()
            .map(|ev| {
                let mut l = String::with_capacity(400);
                let app = crate::sinks::app_name(&self.apps, ev);
                user_event(&mut l, ev, self.version, &tags, app.as_deref());
                l
            })
            .collect();
        let writer = self.writer.clone();
        self.posts
            .push_back(tokio::spawn(async move { write(&writer, &lines).await }));
        Ok(Delivered::Pending)
    }

    async fn settled(&mut self) -> Result<Settled, SinkError> {
        let Some(post) = self.posts.front_mut() else {
            return std::future::pending().await;
        };
        // Cancel-safe: the handle stays queued until it has answered.
        let answer = post.await;
        self.posts.pop_front();
        let refused = answer.map_err(|e| SinkError(format!("the post failed: {e}")))??;
        Ok(Settled {
            batches: 1,
            refused,
        })
    }

    async fn reset(&mut self) {
        for p in self.posts.drain(..) {
            p.abort();
        }
    }

    async fn idle(&mut self, journal: &Journal) -> Result<Option<Refused>, SinkError> {
        use summaries::{SUMMARY_CURSOR, SUMMARY_EVERY_S};
        if !self.summaries_ready {
            // A new sink's summaries begin a minute before it starts: far
            // enough back that events arriving while it starts up are
            // counted, without recomputing a long history.
            journal
                .with(|r| {
                    let conn = r.conn();
                    if crate::storage::cursor(conn, SUMMARY_CURSOR)? == 0 {
                        let now = jiff::Timestamp::now().as_second().max(0) as u64;
                        let from = now.saturating_sub(60);
                        crate::storage::set_cursor(
                            conn,
                            SUMMARY_CURSOR,
                            from / SUMMARY_EVERY_S * SUMMARY_EVERY_S,
                        )?;
                    }
                    Ok(())
                })
                .await
                .map_err(SinkError)?;
            self.summaries_ready = true;
        }
        let extra = self.tags.clone();
        let version = self.version;
        let body = journal
            .with(move |r| summaries::summaries(r, &extra, jiff::Timestamp::now(), version))
            .await
            .map_err(SinkError)?;
        let Some((body, upto)) = body else {
            return Ok(None);
        };
        // Split into points, so that a point InfluxDB refuses for good is
        // skipped like a bad event instead of holding every later summary back.
        let lines: Vec<String> = body.split_inclusive('\n').map(str::to_owned).collect();
        let refused = write(&self.writer, &lines).await?;
        journal
            .with(move |r| crate::storage::set_cursor(r.conn(), SUMMARY_CURSOR, upto))
            .await
            .map_err(SinkError)?;
        Ok(refused)
    }
}

//! Delivering journaled events to InfluxDB, losing none across outages.
//!
//! The writer reads the journal after its cursor, encodes a batch as line
//! protocol, gzips it and posts it; only when InfluxDB has accepted the batch
//! does the cursor move. While InfluxDB is down or refusing, the same events
//! are tried again with exponential backoff, so a restart of InfluxDB (or of
//! whosin) loses nothing: whatever was not confirmed is sent again, and the
//! point times are stable, so a resend overwrites instead of duplicating.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::schema::{Version, user_event};
use crate::config::InfluxConfig;
use crate::metrics::Metrics;
use crate::sessions::journal::SinkReader;

/// The sink's name in metrics and in the journal's cursors.
pub const SINK: &str = "influxdb";

/// Longest wait between two attempts while InfluxDB is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a write failed, and whether trying the same batch again can help.
#[derive(Debug)]
enum WriteError {
    /// Network trouble, 5xx, 429, 401/403/404 (a server or configuration that
    /// can recover): the batch is tried again.
    Retry(String),
    /// 400, 413, 422: InfluxDB will never take this request as it is; it is
    /// split to find the bad points, which are skipped (and counted). 401,
    /// 403 and 404 are retried instead: a wrong token or a missing database
    /// is fixed by the administrator, and dropping events meanwhile would
    /// lose them.
    Rejected(String),
}

/// Everything the writer needs, from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The `sinks.influxdb` section.
    pub influx: InfluxConfig,
    /// The configured tags.
    pub tags: Vec<(String, String)>,
}

/// Runs until `stop` is cancelled.
pub async fn run(
    settings: Settings,
    reader: SinkReader,
    metrics: Arc<Metrics>,
    status: Arc<crate::sinks::SinkStatus>,
    stop: CancellationToken,
) {
    let reader = Arc::new(Mutex::new(reader));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("influxdb: cannot create the HTTP client: {e}");
            return;
        }
    };
    let written = metrics.sink_written.with_label_values(&[SINK]);
    let errors = metrics.sink_errors.with_label_values(&[SINK]);
    let version = match settings.influx.version {
        2 => Version::V2,
        _ => Version::V1,
    };
    let tags: Vec<(&str, &str)> = settings
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // A new sink's summaries begin a minute before it starts: far enough back
    // that events arriving while it starts up are counted, without
    // recomputing a long history.
    let r = reader.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let r = r.lock().unwrap_or_else(|p| p.into_inner());
        let conn = r.conn();
        if crate::sessions::journal::cursor(conn, SUMMARY_CURSOR)? == 0 {
            let from = (jiff::Timestamp::now().as_second().max(0) as u64).saturating_sub(60);
            crate::sessions::journal::set_cursor(
                conn,
                SUMMARY_CURSOR,
                from / SUMMARY_EVERY_S * SUMMARY_EVERY_S,
            )?;
        }
        Ok::<(), rusqlite::Error>(())
    })
    .await;
    let mut backoff = Duration::from_millis(250);
    let mut failing = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let r = reader.clone();
        let limit = settings.influx.batch_size;
        let batch = tokio::task::spawn_blocking(move || {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_batch(limit)
        })
        .await;
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!("influxdb: cannot read the journal: {e}");
                crate::sinks::wait(&stop, Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        let Some(last) = batch.last().map(|e| e.seq) else {
            // Caught up with the events: the periodic summaries, then rest.
            let r = reader.clone();
            let extra = settings.tags.clone();
            let body = tokio::task::spawn_blocking(move || {
                let r = r.lock().unwrap_or_else(|p| p.into_inner());
                summaries(&r, &extra, jiff::Timestamp::now())
            })
            .await;
            if let Ok(Ok(Some((body, upto)))) = body {
                // Split into points, so that a point InfluxDB refuses for good
                // is skipped like a bad event instead of holding every later
                // summary back.
                let lines: Vec<String> = body.split_inclusive('\n').map(str::to_owned).collect();
                match deliver(&client, &settings.influx, &lines).await {
                    Ok(rejected) => {
                        errors.inc_by(rejected as u64);
                        let r = reader.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            let r = r.lock().unwrap_or_else(|p| p.into_inner());
                            crate::sessions::journal::set_cursor(r.conn(), SUMMARY_CURSOR, upto)
                        })
                        .await;
                    }
                    Err(msg) => {
                        errors.inc();
                        tracing::warn!("influxdb: summaries not written yet: {msg}");
                    }
                }
            }
            crate::sinks::wait(&stop, settings.influx.flush_interval.get()).await;
            continue;
        };
        let lines: Vec<String> = batch
            .iter()
            .map(|ev| {
                let mut l = String::with_capacity(300);
                user_event(&mut l, ev, version, &tags);
                l
            })
            .collect();
        let confirm = match deliver(&client, &settings.influx, &lines).await {
            Ok(rejected) => {
                status.ok();
                written.inc_by((lines.len() - rejected) as u64);
                errors.inc_by(rejected as u64);
                if failing {
                    tracing::info!("influxdb: writing again");
                    failing = false;
                }
                backoff = Duration::from_millis(250);
                true
            }
            Err(msg) => {
                status.failed(&msg);
                errors.inc();
                if !failing {
                    tracing::warn!(
                        "influxdb: write failed, retrying with backoff (nothing is lost): {msg}"
                    );
                    failing = true;
                }
                false
            }
        };
        if confirm {
            let r = reader.clone();
            let done = tokio::task::spawn_blocking(move || {
                r.lock().unwrap_or_else(|p| p.into_inner()).confirm(last)
            })
            .await;
            if let Ok(Err(e)) = done {
                tracing::warn!("influxdb: cannot record progress in the journal: {e}");
            }
        } else {
            crate::sinks::wait(&stop, crate::sinks::jitter(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The cursor of the periodic summaries: the end (Unix seconds) of the last
/// interval written.
const SUMMARY_CURSOR: &str = "influxdb:summaries";

/// Butler SOS writes its summaries every 10 seconds.
const SUMMARY_EVERY_S: u64 = 10;

/// Most intervals written in one request (an hour) when catching up.
const MAX_SUMMARY_INTERVALS: u64 = 360;

/// The `user_session_summary` and `event_count` points of every 10-second
/// boundary since the last one written, computed from the journal (so an
/// outage loses none of them either). `None` when no boundary is due.
fn summaries(
    r: &SinkReader,
    extra: &[(String, String)],
    now: jiff::Timestamp,
) -> rusqlite::Result<Option<(String, u64)>> {
    use crate::sessions::journal::{cursor, nanos, set_cursor};
    use crate::sessions::query::{Filter, sessions_at};
    let conn = r.conn();
    // Leave a second for the journal's commit window to close.
    let due = (now.as_second().max(1) as u64 - 1) / SUMMARY_EVERY_S * SUMMARY_EVERY_S;
    let mut last = cursor(conn, SUMMARY_CURSOR)?;
    if last == 0 || due <= last {
        return Ok(None);
    }
    let tags: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = String::new();
    let mut n = 0;
    while last < due && n < MAX_SUMMARY_INTERVALS {
        let end = last + SUMMARY_EVERY_S;
        let at = jiff::Timestamp::from_second(end as i64).unwrap_or(now);
        let t = nanos(at);
        let answer = sessions_at(conn, at, &Filter::default())?;
        let mut hosts: std::collections::BTreeMap<
            String,
            Vec<&crate::sessions::query::SessionView>,
        > = Default::default();
        for s in &answer.sessions {
            hosts.entry(s.host.clone()).or_default().push(s);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT format, stream, host, origin, count(*) FROM events
             WHERE time > ?1 AND time <= ?2 GROUP BY 1, 2, 3, 4",
        )?;
        let counts = stmt.query_map(
            rusqlite::params![t - (SUMMARY_EVERY_S as i64) * 1_000_000_000, t],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            },
        )?;
        for c in counts {
            let (format, stream, host, origin, count) = c?;
            let prefix = if format == "extended" {
                "whosin"
            } else {
                "qseow-proxy"
            };
            let source = format!("{prefix}-{stream}");
            super::schema::event_count(&mut body, &source, &host, &origin, count, t, &tags);
            // A host with events but nobody left still gets its zero summary.
            hosts.entry(host).or_default();
        }
        for (host, sessions) in &hosts {
            super::schema::session_summary(&mut body, host, sessions, t, &tags);
        }
        last = end;
        n += 1;
    }
    if body.is_empty() {
        // Nothing happened in those intervals: nothing to write, but done.
        set_cursor(conn, SUMMARY_CURSOR, last)?;
        return Ok(None);
    }
    Ok(Some((body, last)))
}

/// Posts `lines`; when InfluxDB refuses a request for good (400, 413, 422),
/// splits it in halves until the refused points stand alone, logs each with
/// InfluxDB's reason and skips it, so one bad point cannot stop the sink.
/// Returns how many points were skipped, or the error to retry the batch on
/// (the parts already written are written again then: point times are stable,
/// so that overwrites rather than duplicates).
async fn deliver(
    client: &reqwest::Client,
    c: &InfluxConfig,
    lines: &[String],
) -> Result<usize, String> {
    let mut rejected = 0;
    let mut todo = vec![(0, lines.len())];
    while let Some((from, to)) = todo.pop() {
        match post(client, c, lines[from..to].concat()).await {
            Ok(()) => {}
            Err(WriteError::Retry(msg)) => return Err(msg),
            Err(WriteError::Rejected(msg)) if to - from == 1 => {
                tracing::error!(
                    "influxdb refused a point for good, skipping it: {msg}: {}",
                    lines[from].trim_end()
                );
                rejected += 1;
            }
            Err(WriteError::Rejected(_)) => {
                let mid = from + (to - from) / 2;
                todo.push((mid, to));
                todo.push((from, mid));
            }
        }
    }
    Ok(rejected)
}

/// reqwest's error text names the URL, which may hold a password.
fn redact_error(e: &reqwest::Error) -> String {
    match e.url() {
        Some(u) => e
            .to_string()
            .replace(u.as_str(), &crate::config::redact_url(u.as_str())),
        None => e.to_string(),
    }
}

/// Gzips and posts one batch to the v1 or v2 write endpoint.
async fn post(client: &reqwest::Client, c: &InfluxConfig, body: String) -> Result<(), WriteError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes())
        .and_then(|()| gz.flush())
        .map_err(|e| WriteError::Retry(e.to_string()))?;
    let gzipped = gz.finish().map_err(|e| WriteError::Retry(e.to_string()))?;
    let base = c.url.trim_end_matches('/');
    // Messages name the server, never a password written into its URL.
    let shown = crate::config::redact_url(base);
    let (path, query): (&str, Vec<(&str, &str)>) = if c.version == 2 {
        (
            "api/v2/write",
            vec![
                ("org", c.org.as_deref().unwrap_or_default()),
                ("bucket", c.bucket.as_deref().unwrap_or_default()),
                ("precision", "ns"),
            ],
        )
    } else {
        let mut q = vec![
            ("db", c.database.as_deref().unwrap_or_default()),
            ("precision", "ns"),
        ];
        if let Some(rp) = c.retention_policy.as_deref() {
            q.push(("rp", rp));
        }
        ("write", q)
    };
    let mut url = reqwest::Url::parse(&format!("{base}/{path}"))
        .map_err(|e| WriteError::Retry(format!("{shown}: not a URL ({e})")))?;
    url.query_pairs_mut().extend_pairs(query);
    let mut req = client.post(url);
    if c.version == 2 {
        req = req.header(
            "Authorization",
            format!("Token {}", c.token.as_deref().unwrap_or_default()),
        );
    } else if let Some(user) = c.username.as_deref() {
        req = req.basic_auth(user, c.password.as_deref());
    }
    let resp = req
        .header("Content-Encoding", "gzip")
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(gzipped)
        .send()
        .await
        .map_err(|e| WriteError::Retry(format!("{shown}: {}", redact_error(&e))))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let msg = format!("{shown} answered {status}: {}", text.trim());
    if matches!(status.as_u16(), 400 | 413 | 422) {
        Err(WriteError::Rejected(msg))
    } else {
        Err(WriteError::Retry(msg))
    }
}

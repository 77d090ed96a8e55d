//! Keeping app names fresh: from the repository service at start, every
//! `qlik.app_names_interval`, and within seconds of the first event that
//! names an app id whose name is not known yet.
//!
//! New app ids are found by reading the journal after the last event looked
//! at (once a second), so nothing on the ingest path waits for or even knows
//! about the repository. A refresh that fails keeps the names already known,
//! is counted in `whosin_qrs_requests_total{result="failed"}` and retried at
//! the next occasion; events flow on regardless.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::qrs::Qrs;
use crate::apps::Apps;
use crate::config::QlikConfig;
use crate::metrics::Metrics;
use crate::storage;

/// How often the journal is looked at for new app ids.
const POLL: Duration = Duration::from_secs(1);

/// Shortest time between two refreshes asked for by new app ids (one new
/// app in a flood of events must not become a flood of requests).
const MIN_GAP: Duration = Duration::from_secs(3);

/// Runs until `stop`.
pub async fn run(
    config: QlikConfig,
    every: Duration,
    apps: Arc<Apps>,
    journal_path: PathBuf,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let qrs = match Qrs::new(&config) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("app names are off: {e}");
            return;
        }
    };
    tracing::info!(
        "app names from the {} every {}",
        qrs.describe(),
        humanize(every)
    );
    let reader = match storage::open_reader(&journal_path) {
        Ok(c) => Arc::new(std::sync::Mutex::new(c)),
        Err(e) => {
            tracing::error!("app names are off: cannot read the journal: {e}");
            return;
        }
    };
    // Events before now are covered by the first refresh.
    let mut last_seq = {
        let r = reader.clone();
        tokio::task::spawn_blocking(move || {
            storage::max_seq(&r.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(0)
        })
        .await
        .unwrap_or(0)
    };
    metrics.apps_known.set(apps.len() as i64);
    let mut next_full = tokio::time::Instant::now();
    let mut last_fetch: Option<tokio::time::Instant> = None;
    // Ids still unknown after a refresh: not asked for again until the next
    // periodic one (an app deleted from the site stays unnamed).
    let mut unanswered: HashSet<String> = HashSet::new();
    let mut wanted = false;
    let mut failing = false;
    loop {
        let now = tokio::time::Instant::now();
        let gap_over = last_fetch.is_none_or(|t| now >= t + MIN_GAP);
        let full = now >= next_full;
        if full || (wanted && gap_over) {
            if full {
                unanswered.clear();
                next_full = now + every;
            }
            last_fetch = Some(now);
            wanted = false;
            match qrs.apps().await {
                Ok(list) => {
                    metrics.qrs_requests.with_label_values(&["ok"]).inc();
                    let changed = apps.update(list.clone());
                    metrics.apps_known.set(apps.len() as i64);
                    if failing {
                        tracing::info!("app names: the {} answers again", qrs.describe());
                        failing = false;
                    }
                    if changed > 0 {
                        tracing::info!(
                            "app names: {} apps known ({changed} new or renamed)",
                            apps.len()
                        );
                        save(&journal_path, list).await;
                    }
                }
                Err(e) => {
                    metrics.qrs_requests.with_label_values(&["failed"]).inc();
                    if !failing {
                        tracing::warn!(
                            "app names not refreshed (the names already known stay): {e}"
                        );
                        failing = true;
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        // New app ids since the last look.
        let r = reader.clone();
        let from = last_seq;
        let found = tokio::task::spawn_blocking(move || {
            let conn = r.lock().unwrap_or_else(|p| p.into_inner());
            storage::apps_after(&conn, from)
        })
        .await;
        if let Ok(Ok((max, ids))) = found {
            last_seq = last_seq.max(max);
            for id in ids {
                let id = id.to_ascii_lowercase();
                if !id.is_empty() && !apps.knows(&id) && unanswered.insert(id) {
                    wanted = true;
                }
            }
        }
    }
}

async fn save(path: &std::path::Path, list: Vec<(String, crate::apps::AppInfo)>) {
    let path = path.to_owned();
    let done = tokio::task::spawn_blocking(move || {
        let mut conn = storage::open_reader(&path)?;
        crate::apps::save(&mut conn, &list)
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!("app names: cannot keep them in the journal: {e}");
    }
}

fn humanize(d: Duration) -> String {
    crate::duration::HumanDuration(d).to_string()
}

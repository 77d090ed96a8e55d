//! Every `qlik.reconcile_interval`, each proxy's own session list corrects
//! whosin's picture: UDP loses datagrams, and whosin may start after users
//! logged in, so a lost `Stop session` leaves a phantom and a lost `Start
//! session` hides a user. The proxy knows the truth.
//!
//! A proxy is corrected only when every one of its configured virtual proxies
//! answered: a session missing from a partial list is not a phantom. Sessions
//! on a virtual proxy that is not configured look like phantoms to this
//! comparison, so `virtual_proxies` must list them all (docs/configuration.md).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Qps, describe};
use crate::config::QlikConfig;
use crate::live::ProxyEntry;
use crate::metrics::Metrics;
use crate::sessions::{Input, Reconciliation};

/// The first comparison, soon after start: whosin may have missed logins
/// while it was down.
const FIRST_RUN: Duration = Duration::from_secs(2);

/// After a sequence gap, how long to gather more before comparing (a burst
/// of loss is one comparison, not one per lost datagram).
const GAP_DEBOUNCE: Duration = Duration::from_secs(2);

/// Runs until `stop`.
pub async fn run(
    config: QlikConfig,
    interval: Option<Duration>,
    core: std::sync::mpsc::SyncSender<Input>,
    metrics: Arc<Metrics>,
    mut gaps: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
    stop: CancellationToken,
) {
    let qps = match Qps::new(&config) {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("reconciliation with the Qlik proxies is off: {e}");
            return;
        }
    };
    let mut failing: std::collections::HashMap<String, bool> = Default::default();
    let mut proxies = config.proxies.clone();
    let mut discovery_failing = false;
    let far = Duration::from_secs(365 * 86_400);
    let mut next = tokio::time::Instant::now() + if interval.is_some() { FIRST_RUN } else { far };
    // Hosts with a sequence gap since the last comparison.
    let mut gap_hosts: std::collections::BTreeSet<String> = Default::default();
    loop {
        // Only the proxies of gap hosts, or (when due) every proxy.
        let full = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => true,
            host = async { gaps.as_mut().expect("guarded").recv().await }, if gaps.is_some() => {
                match host {
                    Some(h) => {
                        gap_hosts.insert(h);
                        // Gather the rest of the burst, then compare.
                        let until = tokio::time::Instant::now() + GAP_DEBOUNCE;
                        while let Ok(Some(h)) = tokio::time::timeout_at(
                            until,
                            gaps.as_mut().expect("guarded").recv(),
                        )
                        .await
                        {
                            gap_hosts.insert(h);
                        }
                        false
                    }
                    None => {
                        gaps = None;
                        continue;
                    }
                }
            }
        };
        if full {
            next = tokio::time::Instant::now() + interval.unwrap_or(far);
            gap_hosts.clear();
        }
        let only: Option<Vec<String>> =
            (!full).then(|| std::mem::take(&mut gap_hosts).into_iter().collect());
        if config.discover {
            // The site's proxies as the repository lists them now; when it
            // does not answer, the last list stays.
            match super::qrs::with_discovered(&config).await {
                Ok(c) => {
                    metrics.qrs_requests.with_label_values(&["ok"]).inc();
                    if c.proxies != proxies || discovery_failing {
                        tracing::info!(
                            "discovered {} Qlik prox{}: {}",
                            c.proxies.len(),
                            if c.proxies.len() == 1 { "y" } else { "ies" },
                            c.proxies
                                .iter()
                                .map(|p| format!("{} {:?}", p.host, p.virtual_proxies))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    discovery_failing = false;
                    proxies = c.proxies;
                }
                Err(e) => {
                    metrics.qrs_requests.with_label_values(&["failed"]).inc();
                    if !discovery_failing {
                        tracing::warn!("proxy discovery failed, the last list stays: {e}");
                        discovery_failing = true;
                    }
                }
            }
        }
        for proxy in &proxies {
            if let Some(hosts) = &only
                && !hosts.iter().any(|h| super::names(proxy, h))
            {
                continue;
            }
            let was_failing = failing.get(&proxy.host).copied().unwrap_or(false);
            let listed_at = jiff::Timestamp::now();
            let mut sessions = Vec::new();
            let mut error = None;
            for vp in &proxy.virtual_proxies {
                match qps.list(proxy, vp).await {
                    Ok(list) => sessions.extend(list.into_iter().map(|s| ProxyEntry {
                        user_directory: s.user_directory,
                        user_id: s.user_id,
                        session_id: s.session_id,
                        virtual_proxy: s.virtual_proxy,
                    })),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = error {
                metrics.reconcile_runs.with_label_values(&["failed"]).inc();
                if !was_failing {
                    tracing::warn!("reconciliation skipped (whosin's picture stays as it is): {e}");
                    failing.insert(proxy.host.clone(), true);
                }
                continue;
            }
            if was_failing {
                tracing::info!("reconciliation with {} works again", proxy.host);
                failing.insert(proxy.host.clone(), false);
            }
            let (reply, answer) = std::sync::mpsc::channel();
            let job = Input::Reconcile(Box::new(Reconciliation {
                proxy: proxy.clone(),
                sessions,
                listed_at,
                reply,
            }));
            // The core's queue is bounded: sending can wait under a flood,
            // so it happens off the async runtime, like the wait for the answer.
            let core = core.clone();
            let fixes = tokio::task::spawn_blocking(move || {
                core.send(job).ok()?;
                Some(answer.recv_timeout(Duration::from_secs(60)))
            })
            .await;
            let fixes = match fixes {
                Ok(Some(Ok(fixes))) => fixes,
                // The core has stopped: so does reconciliation.
                Ok(None) => return,
                _ => continue,
            };
            metrics.reconcile_runs.with_label_values(&["ok"]).inc();
            if fixes.ended + fixes.started > 0 {
                tracing::info!(
                    "reconciled with {}: ended {} session(s) the proxy no longer had, started {} it had and whosin had missed",
                    describe(proxy, "*"),
                    fixes.ended,
                    fixes.started
                );
            }
        }
    }
}

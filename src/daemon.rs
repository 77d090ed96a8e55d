//! `whosin run`: wires the pipeline together and runs it until a signal.
//!
//! ```text
//! UDP socket ─▶ receive thread (parse, count) ─▶ core thread (blacklist, state, gauges)
//!                                                     ▲
//! config file watcher ─────── Reload ─────────────────┘        │ journal
//!          └──────────── new config ──▶ sink supervisor ─▶ InfluxDB, MQTT tasks
//! HTTP server (tokio): /metrics, /healthz, /readyz, /api
//! ```
//!
//! Shutdown on SIGINT/SIGTERM: the receive thread stops reading and hands over
//! what it has, the core drains its channel, then the HTTP server closes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::blacklist::Blacklist;
use crate::config::{self, Config, HttpConfig};
use crate::http::{AppState, Health};
use crate::ingest::{self, IngestSettings};
use crate::metrics::Metrics;
use crate::sessions::{self, Core, CoreSettings, Input};
use crate::storage;

/// A failure that maps to exit code 2 (bad configuration), not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub String);

/// Builds the core's settings from a validated config.
pub fn core_settings(c: &Config) -> anyhow::Result<CoreSettings> {
    Ok(CoreSettings {
        blacklist: Blacklist::new(&c.blacklist).context("compiling the blacklist")?,
        idle_timeout: c.sessions.idle_timeout.get(),
        max_tracked: c.sessions.max_tracked,
        per_user_limit: c.sessions.per_user_limit,
    })
}

/// Runs the daemon with the configuration from `source` until SIGINT or SIGTERM.
pub fn run(source: &config::Source) -> anyhow::Result<()> {
    let config = source.load().map_err(|e| {
        BadConfig(format!(
            "{source} is not usable:\n  {}\nrun `whosin check-config -c {source}` after fixing it",
            e.lines().join("\n  "),
        ))
    })?;
    match source {
        config::Source::File(p) => tracing::info!("configuration from {}", p.display()),
        config::Source::Embedded => tracing::info!(
            "no {} here and no -c given: running with the built-in default configuration",
            config::DEFAULT_PATH
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("whosin-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(source, config))
}

async fn serve(source: &config::Source, config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {}: choose a writable folder in data_dir",
            config.data_dir.display()
        )
    })?;
    ingest::useragent::warm_up();

    let sink_names = config.sinks.enabled();
    let metrics = Metrics::new(&sink_names);
    let (sock, granted) = ingest::udp::bind(config.udp.listen).with_context(|| {
        format!(
            "cannot listen for UDP on {}: is another whosin or Butler SOS using the port? Change udp.listen",
            config.udp.listen
        )
    })?;
    let udp_addr = sock.local_addr()?;
    if granted < ingest::udp::RECV_BUFFER_BYTES {
        tracing::warn!(
            "the kernel granted a UDP receive buffer of {granted} bytes, not the {} asked for; bursts may be dropped (raise net.core.rmem_max, or run with CAP_NET_ADMIN)",
            ingest::udp::RECV_BUFFER_BYTES
        );
    } else {
        tracing::info!("UDP receive buffer: {granted} bytes");
    }
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {}: is the port in use? Change http.listen",
                config.http.listen
            )
        })?;
    let http_addr: SocketAddr = listener.local_addr()?;
    // Validation read the files already; they are read again to serve them
    // (they may have changed in between, and the error says which key).
    let tls = crate::http::tls::server_config(&config.http.tls)
        .map_err(|(key, why)| anyhow::anyhow!("http.tls.{key}: {why}"))?
        .map(crate::http::tls::Acceptor::new);
    if !config.http.listen.ip().is_loopback() && config.http.auth_token.is_none() && tls.is_none() {
        tracing::warn!(
            "http.listen {} is reachable from the network, with neither http.auth_token nor \
             http.tls set: anyone who can reach it sees who is logged in. Set http.auth_token \
             and http.tls (docs/security.md), or listen on 127.0.0.1",
            config.http.listen
        );
    }

    let journal_path = storage::path_in(&config.data_dir);
    let conn = storage::open(&journal_path)
        .with_context(|| format!("cannot open the journal {}", journal_path.display()))?;
    let recovered = storage::recover(&conn, config.sessions.idle_timeout.get())
        .with_context(|| format!("cannot read the journal {}", journal_path.display()))?;
    let open_sessions = recovered.sessions.len();
    if open_sessions > 0 {
        tracing::info!("journal: {open_sessions} sessions were open at the last stop and continue");
    }
    // App names the journal remembers, until the repository answers.
    let apps = Arc::new(crate::apps::Apps::default());
    match crate::apps::load(&conn) {
        Ok(known) => {
            apps.update(known);
            metrics.apps_known.set(apps.len() as i64);
        }
        Err(e) => tracing::warn!("journal: cannot read the app names it keeps: {e}"),
    }
    let encoder = storage::Encoder::load(&conn)
        .with_context(|| format!("cannot read the journal {}", journal_path.display()))?;
    let journal_health = Arc::new(storage::JournalHealth::default());
    let (jtx, jrx) = std::sync::mpsc::channel();
    let journal_thread = storage::spawn_writer(
        conn,
        storage::WriterSettings {
            window: config.journal.commit_window.get(),
            retention: config.retention.get(),
            max_uncommitted: config.journal.max_uncommitted,
        },
        jrx,
        journal_health.clone(),
        metrics.clone(),
    )?;

    let feed = Arc::new(sessions::feed::Feed::default());
    let statuses = Arc::new(crate::sinks::Statuses::default());
    let stop_sinks = tokio_util::sync::CancellationToken::new();
    let (sink_updates, sink_config) = tokio::sync::watch::channel(sink_settings(&config));
    let sinks_task = crate::sinks::supervise(
        &sink_settings(&config),
        sink_config,
        crate::sinks::Context {
            journal_path: journal_path.clone(),
            metrics: metrics.clone(),
            statuses: statuses.clone(),
            live: Some(feed.clone()),
            apps: apps.clone(),
        },
        stop_sinks.clone(),
    )?;

    let health = Arc::new(Health {
        udp_bound: AtomicBool::new(true),
        udp_listen: udp_addr.to_string(),
        data_dir: config.data_dir.clone(),
        journal: journal_health,
        sinks: statuses.clone(),
    });
    // Bounded, so that a flood the core cannot keep up with (it waits for the
    // journal, see JournalSender) backs up into the socket buffer, where the
    // kernel counts what it drops, instead of into memory.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Input>(sessions::INPUT_QUEUE);
    let mut core = Core::with_journal(
        Arc::new(core_settings(&config)?),
        metrics.clone(),
        recovered,
        storage::JournalSender::new(
            jtx,
            health.journal.clone(),
            config.journal.max_uncommitted,
            encoder,
        ),
    );
    core.set_feed(feed.clone());
    // Extended format: a sequence gap reconciles that host's proxies at once.
    let gaps = match &config.qlik {
        Some(q) if q.reconcile_on_gap => {
            let (gap_tx, gap_rx) = tokio::sync::mpsc::unbounded_channel();
            core.set_gap_alarm(gap_tx);
            Some(gap_rx)
        }
        _ => None,
    };
    let stop_http = tokio_util::sync::CancellationToken::new();
    let core_thread = sessions::spawn(core, rx)?;
    let reconciler = match &config.qlik {
        Some(q) if q.reconcile_interval.is_some() || gaps.is_some() => {
            let what = if q.discover {
                "the Qlik proxies the repository lists".to_owned()
            } else {
                format!(
                    "{} Qlik prox{}",
                    q.proxies.len(),
                    if q.proxies.len() == 1 { "y" } else { "ies" }
                )
            };
            match q.reconcile_interval {
                Some(every) => tracing::info!(
                    "reconciling with {what} every {every}{}",
                    if gaps.is_some() {
                        " and after lost datagrams"
                    } else {
                        ""
                    }
                ),
                None => tracing::info!("reconciling with {what} after lost datagrams"),
            }
            Some(tokio::spawn(crate::qlik::reconcile::run(
                q.clone(),
                q.reconcile_interval.map(|d| d.get()),
                tx.clone(),
                metrics.clone(),
                gaps,
                stop_sinks.clone(),
            )))
        }
        _ => None,
    };
    let app_names = config.qlik.as_ref().and_then(|q| {
        let every = q.app_names_interval?;
        Some(tokio::spawn(crate::qlik::apps::run(
            q.clone(),
            every.get(),
            apps.clone(),
            journal_path.clone(),
            metrics.clone(),
            stop_sinks.clone(),
        )))
    });
    let per_user_limit = Arc::new(std::sync::atomic::AtomicUsize::new(
        config.sessions.per_user_limit,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let ingest_thread = ingest::spawn(
        sock,
        IngestSettings {
            max_datagram_bytes: config.udp.max_datagram_bytes,
            allowed_sources: config.udp.allowed_sources.clone(),
            rate_limit_per_source: config.udp.rate_limit_per_source,
        },
        metrics.clone(),
        tx.clone(),
        stop.clone(),
    )?;

    let app = crate::http::router(
        AppState {
            metrics: metrics.clone(),
            health: health.clone(),
            prometheus_enabled: config.sinks.prometheus.enabled,
            core: tx.clone(),
            journal_path,
            auth_token: config.http.auth_token.as_deref().map(Arc::from),
            feed: feed.clone(),
            stop: stop_http.clone(),
            streams: Arc::new(tokio::sync::Semaphore::new(
                crate::http::stream::MAX_STREAMS,
            )),
            apps: apps.clone(),
            per_user_limit: per_user_limit.clone(),
        },
        crate::http::RequestLimits {
            timeout: config.http.request_timeout.get(),
            max_body_bytes: config.http.max_body_bytes,
        },
    );
    let _watch = match source {
        config::Source::File(path) => start_watch(
            path,
            config.clone(),
            tx.clone(),
            sink_updates,
            metrics.clone(),
            per_user_limit.clone(),
            tls.clone(),
        ),
        config::Source::Embedded => None,
    };
    drop(tx);

    // Tests and scripts read this line to learn the ports (0 in the config picks free ones).
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "whosin: listening for Qlik user events on udp {udp_addr}; page, API and /metrics on {scheme}://{http_addr}"
    );

    let ending = stop_http.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        // Open event streams end with the server, or it would wait for them.
        ending.cancel();
    });
    crate::http::server::serve(
        listener,
        app,
        crate::http::server::Limits::from_config(&config.http),
        tls,
        stop_http,
    )
    .await
    .context("HTTP server failed")?;

    tracing::info!("shutting down: finishing the events in hand");
    stop_sinks.cancel();
    let _ = sinks_task.await;
    if let Some(r) = reconciler {
        // It holds a sender of the core's channel: the core ends after it.
        let _ = r.await;
    }
    if let Some(a) = app_names {
        let _ = a.await;
    }
    stop.store(true, Ordering::Relaxed);
    health.udp_bound.store(false, Ordering::Relaxed);
    let _ = ingest_thread.join();
    drop(_watch);
    let _ = core_thread.join();
    // The core's end closes the journal's channel: the writer commits and stops.
    let _ = journal_thread.join();
    tracing::info!("stopped");
    Ok(())
}

/// What the sinks take from the config.
fn sink_settings(c: &Config) -> crate::sinks::SinkSettings {
    crate::sinks::SinkSettings {
        sinks: c.sinks.clone(),
        tags: c.tags.clone(),
    }
}

/// Watches the config file; applies what can change live and counts the result.
fn start_watch(
    path: &Path,
    initial: Config,
    tx: std::sync::mpsc::SyncSender<Input>,
    sinks: tokio::sync::watch::Sender<crate::sinks::SinkSettings>,
    metrics: Arc<Metrics>,
    per_user_limit: Arc<std::sync::atomic::AtomicUsize>,
    tls: Option<crate::http::tls::Acceptor>,
) -> Option<config::watch::Watch> {
    let current = std::sync::Mutex::new(initial);
    let shown = path.display().to_string();
    let tx = std::sync::Mutex::new(tx);
    let result = config::watch::watch(path, move |loaded| {
        let new = match loaded {
            Ok(c) => c,
            Err(e) => {
                metrics.config_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(
                    "config change in {shown} refused, the previous settings stay:\n  {}",
                    e.lines().join("\n  ")
                );
                return;
            }
        };
        // A certificate renewed in place is read again on every reload
        // (touching the config file is enough); the others need a restart.
        if let (Some(acceptor), true) = (&tls, new.http.tls.enabled()) {
            match acceptor.reload(&new.http.tls) {
                Ok(()) => tracing::info!("http.tls: certificate and key read again"),
                Err(e) => tracing::error!("{e}; the previous certificate stays"),
            }
        }
        let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
        if *current == new {
            return;
        }
        let http_changed = HttpConfig {
            tls: new.http.tls.clone(),
            ..current.http.clone()
        } != new.http
            || (tls.is_none() && new.http.tls.enabled());
        for (key, changed) in [
            ("udp", current.udp != new.udp),
            ("http", http_changed),
            ("data_dir", current.data_dir != new.data_dir),
            ("retention", current.retention != new.retention),
            ("qlik", current.qlik != new.qlik),
            ("journal", current.journal != new.journal),
            (
                "sinks.prometheus",
                current.sinks.prometheus != new.sinks.prometheus,
            ),
        ] {
            if changed {
                tracing::warn!("{key} changed in {shown}: restart whosin to apply it");
            }
        }
        match core_settings(&new) {
            Ok(settings) => {
                let _ = tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(Input::Reload(Arc::new(settings)));
                // The sink supervisor restarts the sinks whose settings changed.
                sinks.send_replace(sink_settings(&new));
                per_user_limit.store(new.sessions.per_user_limit, Ordering::Relaxed);
                metrics.config_reloads.with_label_values(&["applied"]).inc();
                tracing::info!("config reloaded from {shown}");
                *current = new;
            }
            Err(e) => {
                metrics.config_reloads.with_label_values(&["refused"]).inc();
                tracing::error!("config change in {shown} refused: {e:#}");
            }
        }
    });
    match result {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot watch {} for changes ({e}); restart whosin to apply edits",
                path.display()
            );
            None
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

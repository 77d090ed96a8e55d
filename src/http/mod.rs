//! The HTTP server: the JSON API, `/metrics`, `/healthz`, `/readyz`.

pub mod api;
pub mod inventory;
pub mod server;
pub mod stream;
pub mod tls;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::metrics::Metrics;

/// What readiness is made of.
pub struct Health {
    /// The UDP socket is bound and being read.
    pub udp_bound: AtomicBool,
    /// The UDP address, for the readiness body.
    pub udp_listen: String,
    /// Where the journal lives; ready only while it is writable.
    pub data_dir: PathBuf,
    /// The journal writer's last error, if its last commit failed.
    pub journal: Arc<crate::storage::JournalHealth>,
    /// Every sink and what it reports.
    pub sinks: Arc<crate::sinks::Statuses>,
}

impl Health {
    /// Checks that the journal commits and `data_dir` takes a write, returning why not.
    pub fn journal_writable(&self) -> Result<(), String> {
        if let Some(e) = self
            .journal
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Err(e);
        }
        let probe = self.data_dir.join(".whosin-ready-probe");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot write in {}: {e}", self.data_dir.display()))
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness parts.
    pub health: Arc<Health>,
    /// Whether `/metrics` is served (`sinks.prometheus.enabled`).
    pub prometheus_enabled: bool,
    /// The core's input, to ask for a journal commit before reading.
    pub core: std::sync::mpsc::SyncSender<crate::sessions::Input>,
    /// The journal file.
    pub journal_path: PathBuf,
    /// `http.auth_token`.
    pub auth_token: Option<Arc<str>>,
    /// Every host's live counts and users, for `/api/v1/stream`.
    pub feed: Arc<crate::sessions::feed::Feed>,
    /// Cancelled on shutdown, so that open streams end and the server can stop.
    pub stop: tokio_util::sync::CancellationToken,
    /// Limits open streams to [`stream::MAX_STREAMS`].
    pub streams: Arc<tokio::sync::Semaphore>,
    /// App names from the Qlik repository.
    pub apps: Arc<crate::apps::Apps>,
    /// `sessions.per_user_limit` (follows config reloads).
    pub per_user_limit: Arc<std::sync::atomic::AtomicUsize>,
}

/// Limits on a request (`http.request_timeout`, `http.max_body_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Longest time to answer; the event stream is exempt (it is meant to last).
    pub timeout: std::time::Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// The router with every route.
pub fn router(state: AppState, limits: RequestLimits) -> Router {
    let token = || axum::middleware::from_fn_with_state(state.clone(), api::require_token);
    let api = Router::new()
        .route("/api/v1/sessions", get(inventory::sessions_route))
        .route("/api/v1/apps", get(inventory::apps))
        .route("/api/v1/limits", get(inventory::limits))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/concurrency", get(api::concurrency))
        .route("/api/v1/timeline", get(views::timeline_route))
        .route("/api/v1/peaks", get(views::peaks_route))
        .route_layer(token());
    let timed = Router::new()
        .merge(api)
        .route("/", get(index))
        .route("/assets/page.js", get(page_js))
        .route("/assets/page.css", get(page_css))
        .route("/assets/views.js", get(views_js))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let timed = time_limited(timed, limits.timeout);
    let stream = Router::new()
        .route("/api/v1/stream", get(stream::stream))
        .route_layer(token());
    Router::new()
        .merge(timed)
        .merge(stream)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            limits.max_body_bytes,
        ))
        .with_state(state)
}

/// Answers 503 when a route takes longer than `timeout` to answer.
fn time_limited<S: Clone + Send + Sync + 'static>(
    r: Router<S>,
    timeout: std::time::Duration,
) -> Router<S> {
    r.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        timeout,
    ))
}

async fn metrics(State(s): State<AppState>) -> Response {
    if !s.prometheus_enabled {
        return (
            StatusCode::NOT_FOUND,
            "Prometheus metrics are switched off (sinks.prometheus.enabled: false)\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// The live page and its two assets, built into the binary: no CDN, no
/// external fonts, nothing fetched from anywhere but whosin.
const PAGE_HTML: &str = include_str!("../../assets/page/index.html");
const PAGE_JS: &str = include_str!("../../assets/page/page.js");
const PAGE_CSS: &str = include_str!("../../assets/page/page.css");
const VIEWS_JS: &str = include_str!("../../assets/page/views.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small, and they change with the binary: always ask.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page may only talk to whosin itself (its scripts, styles, the API and
/// the stream); inline styles are for the bars and cells it positions.
const PAGE_CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", PAGE_HTML);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(PAGE_CSP),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

async fn page_js() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

async fn views_js() -> Response {
    asset("text/javascript; charset=utf-8", VIEWS_JS)
}

async fn page_css() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let udp_ok = s.health.udp_bound.load(Ordering::Relaxed);
    let health = s.health.clone();
    let journal = tokio::task::spawn_blocking(move || health.journal_writable())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let ready = udp_ok && journal.is_ok();
    let part =
        |ok: bool, detail: String| json!({"state": if ok {"ok"} else {"failed"}, "detail": detail});
    let mut sinks = serde_json::Map::new();
    sinks.insert(
        "prometheus".into(),
        part(
            true,
            if s.prometheus_enabled {
                "served at /metrics".into()
            } else {
                "disabled".into()
            },
        ),
    );
    for r in s.health.sinks.reports() {
        let mut part = json!({"state": r.state, "detail": r.detail});
        if let Some(b) = r.backlog {
            part["backlog"] = b.into();
        }
        sinks.insert(r.id, part);
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "parts": {
            "udp": part(udp_ok, if udp_ok { format!("listening on {}", s.health.udp_listen) } else { "not bound".into() }),
            "journal": match &journal {
                Ok(()) => part(true, format!("{} is writable", s.health.data_dir.display())),
                Err(e) => part(false, e.clone()),
            },
            "sinks": sinks,
        },
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_slow_answer_is_cut_off_at_the_request_timeout() {
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        );
        let app = time_limited(slow, std::time::Duration::from_millis(50));
        let req = axum::http::Request::get("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), app.oneshot(req))
            .await
            .expect("answered long before the handler would")
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

//! The fake's HTTP side: the QPS and QRS routes, the Xrfkey check and the modes.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::Value;

use super::{FakeSession, Mode, Shared, lock};

/// How long a request waits in [`Mode::Hang`].
const HANG: Duration = Duration::from_secs(30);

pub(super) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/qps/session", get(list_default))
        .route("/qps/{prefix}/session", get(list))
        .route("/qps/session/{id}", delete(delete_session_default))
        .route("/qps/{prefix}/session/{id}", delete(delete_session))
        .route("/qps/user/{dir}/{id}", delete(delete_user_default))
        .route("/qps/{prefix}/user/{dir}/{id}", delete(delete_user))
        .route("/qrs/app/full", get(qrs_apps))
        .route("/qrs/proxyservice/full", get(qrs_proxies))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint in the fake QPS") })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Logs the request, applies the mode, and checks the Xrfkey.
async fn guard(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    let query_key = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("xrfkey"))
        .map(|(_, value)| value.to_string());
    let mode = {
        let mut inner = lock(&shared);
        inner.requests.push((
            req.method().to_string(),
            req.uri().path().to_string(),
            query_key.clone().unwrap_or_default(),
        ));
        inner.mode
    };
    match mode {
        Mode::Normal => {}
        Mode::Hang => tokio::time::sleep(HANG).await,
        Mode::Forbidden => return (StatusCode::FORBIDDEN, "Forbidden").into_response(),
        Mode::Garbage => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                "<html>not json</html>",
            )
                .into_response();
        }
    }
    let header_key = req
        .headers()
        .get("x-qlik-xrfkey")
        .and_then(|h| h.to_str().ok());
    let valid = query_key.as_deref().is_some_and(|k| {
        k.len() == 16 && k.bytes().all(|b| b.is_ascii_alphanumeric()) && header_key == Some(k)
    });
    if !valid {
        return (StatusCode::BAD_REQUEST, "Xrfkey mismatch").into_response();
    }
    next.run(req).await
}

/// The QRS's own check: the user the request acts for.
fn qrs_guard(shared: &Shared, req_user: Option<&str>) -> Option<Response> {
    let mut inner = lock(shared);
    inner
        .qrs_users
        .push(req_user.unwrap_or_default().to_owned());
    if inner.qrs_down {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response());
    }
    if req_user != Some("UserDirectory=INTERNAL; UserId=sa_repository") {
        return Some((StatusCode::FORBIDDEN, "Forbidden: no such user").into_response());
    }
    None
}

async fn qrs_apps(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let user = headers.get("x-qlik-user").and_then(|h| h.to_str().ok());
    if let Some(r) = qrs_guard(&shared, user) {
        return r;
    }
    axum::Json(Value::Array(lock(&shared).apps.clone())).into_response()
}

async fn qrs_proxies(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    let user = headers.get("x-qlik-user").and_then(|h| h.to_str().ok());
    if let Some(r) = qrs_guard(&shared, user) {
        return r;
    }
    axum::Json(Value::Array(lock(&shared).proxy_services.clone())).into_response()
}

fn no_proxy(prefix: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no virtual proxy with prefix {prefix:?}"),
    )
        .into_response()
}

async fn list_default(State(shared): State<Shared>) -> Response {
    list_sessions(&shared, "")
}

async fn list(State(shared): State<Shared>, UrlPath(prefix): UrlPath<String>) -> Response {
    list_sessions(&shared, &prefix)
}

fn list_sessions(shared: &Shared, prefix: &str) -> Response {
    match lock(shared).proxies.get(prefix) {
        Some(sessions) => axum::Json(Value::Array(
            sessions.iter().map(FakeSession::to_json).collect(),
        ))
        .into_response(),
        None => no_proxy(prefix),
    }
}

async fn delete_session_default(
    State(shared): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    remove_session(&shared, "", &id)
}

async fn delete_session(
    State(shared): State<Shared>,
    UrlPath((prefix, id)): UrlPath<(String, String)>,
) -> Response {
    remove_session(&shared, &prefix, &id)
}

fn remove_session(shared: &Shared, prefix: &str, id: &str) -> Response {
    let mut inner = lock(shared);
    let Some(sessions) = inner.proxies.get_mut(prefix) else {
        return no_proxy(prefix);
    };
    match sessions.iter().position(|s| s.session_id == id) {
        Some(i) => axum::Json(sessions.remove(i).to_json()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no session {id:?}")).into_response(),
    }
}

async fn delete_user_default(
    State(shared): State<Shared>,
    UrlPath((dir, id)): UrlPath<(String, String)>,
) -> Response {
    remove_user(&shared, "", &dir, &id)
}

async fn delete_user(
    State(shared): State<Shared>,
    UrlPath((prefix, dir, id)): UrlPath<(String, String, String)>,
) -> Response {
    remove_user(&shared, &prefix, &dir, &id)
}

fn remove_user(shared: &Shared, prefix: &str, dir: &str, id: &str) -> Response {
    let mut inner = lock(shared);
    let Some(sessions) = inner.proxies.get_mut(prefix) else {
        return no_proxy(prefix);
    };
    let (removed, kept): (Vec<_>, Vec<_>) = std::mem::take(sessions).into_iter().partition(|s| {
        s.user_directory.eq_ignore_ascii_case(dir) && s.user_id.eq_ignore_ascii_case(id)
    });
    *sessions = kept;
    axum::Json(Value::Array(
        removed.iter().map(FakeSession::to_json).collect(),
    ))
    .into_response()
}

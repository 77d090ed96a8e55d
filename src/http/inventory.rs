//! `/api/v1/apps` and `/api/v1/limits`, and the app names every answer
//! carries (looked up when the answer is made: a renamed app shows its new
//! name, also for past instants).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::api::{ApiError, Params, filter, known, read, time_param};
use crate::apps::Apps;
use crate::queries::inventory;
use crate::queries::{self, SessionsAnswer};
use crate::storage::StoredEvent;

/// Fills in the names and streams of the apps in `answer`.
pub fn name_sessions(answer: &mut SessionsAnswer, apps: &Apps) {
    for s in &mut answer.sessions {
        for a in &mut s.apps {
            if let Some(info) = apps.get(&a.id) {
                a.name = Some(info.name);
                a.stream = info.stream;
            }
        }
    }
}

/// Keeps the sessions with a connection to an app `query` names (its id or
/// name, in any case), and recounts the users.
pub fn keep_app(answer: &mut SessionsAnswer, apps: &Apps, query: &str) {
    answer
        .sessions
        .retain(|s| s.apps.iter().any(|a| apps.matches(&a.id, query)));
    let users: std::collections::HashSet<String> = answer
        .sessions
        .iter()
        .map(|s| s.user.to_lowercase())
        .collect();
    answer.users = users.len();
}

/// Fills in the app names of events.
pub fn name_events(events: &mut [StoredEvent], apps: &Apps) {
    for e in events {
        e.app_name = e.app_id.as_deref().and_then(|id| apps.name(id));
    }
}

/// The sessions answer for `at` (now when `None`), named.
async fn sessions(
    s: &AppState,
    at: Option<jiff::Timestamp>,
    f: queries::Filter,
) -> Result<SessionsAnswer, ApiError> {
    let mut answer = read(s, move |c| match at {
        Some(at) => queries::sessions_at(c, at, &f),
        None => queries::sessions_now(c, &f),
    })
    .await?;
    name_sessions(&mut answer, &s.apps);
    Ok(answer)
}

/// `GET /api/v1/apps[?at=&host=]`
pub async fn apps(State(s): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    known(&p, &["at", "host"])?;
    let at = time_param(&p, "at")?;
    let f = filter(&p)?;
    let answer = sessions(&s, at, f).await?;
    Ok(Json(json!({"at": answer.at, "apps": inventory::apps_in(&answer)})).into_response())
}

/// `GET /api/v1/limits[?at=]`
pub async fn limits(State(s): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    known(&p, &["at"])?;
    let at = time_param(&p, "at")?;
    let answer = sessions(&s, at, queries::Filter::default()).await?;
    let limit = s.per_user_limit.load(Ordering::Relaxed);
    Ok(Json(json!({
        "at": answer.at,
        "per_user_limit": limit,
        "users": inventory::at_limit(&answer, limit),
    }))
    .into_response())
}

/// `GET /api/v1/sessions[?at=&host=&user=&app=]`
pub async fn sessions_route(
    State(s): State<AppState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    known(&p, &["at", "host", "user", "app"])?;
    let at = time_param(&p, "at")?;
    let f = filter(&p)?;
    let mut answer = sessions(&s, at, f).await?;
    if let Some(app) = p.get("app") {
        keep_app(&mut answer, &s.apps, app);
    }
    Ok(Json(answer).into_response())
}

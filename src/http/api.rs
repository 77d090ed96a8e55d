//! `/api/v1/*`: sessions now or at an instant, events, the concurrency curve.
//!
//! Every answer comes from the journal after it committed what the core had,
//! so `?at=` includes events not yet committed by the regular window. Bad
//! parameters answer 400 with `{"error": "..."}` naming the parameter.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::json;

use super::AppState;
use crate::config::HumanDuration;
use crate::live::UserKey;
use crate::queries::{self, Filter, MAX_POINTS};
use crate::sessions::Input;
use crate::storage::{self, EventFilter};

/// Longest wait for the journal to commit before answering from what it has.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Default and largest `limit` of `/api/v1/events`.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 100_000;

/// An API error: a status and a message for `{"error": ...}`.
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub(super) fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }

    fn internal(msg: impl Into<String>) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// A 400 with `{"error": msg}`.
pub fn bad_request(msg: &str) -> Response {
    ApiError::bad(msg).into_response()
}

pub(super) type Params = Query<HashMap<String, String>>;

pub(super) fn time_param(
    p: &HashMap<String, String>,
    name: &str,
) -> Result<Option<Timestamp>, ApiError> {
    p.get(name)
        .map(|v| {
            v.parse::<Timestamp>().map_err(|_| {
                ApiError::bad(format!(
                    "{name}: {v:?} is not an RFC 3339 time like 2026-11-21T10:42:00Z"
                ))
            })
        })
        .transpose()
}

fn required_time(p: &HashMap<String, String>, name: &str) -> Result<Timestamp, ApiError> {
    time_param(p, name)?.ok_or_else(|| {
        ApiError::bad(format!(
            "{name}: required, an RFC 3339 time like 2026-11-21T10:42:00Z"
        ))
    })
}

/// `from` and `to`, both required, in order.
pub(super) fn range(p: &HashMap<String, String>) -> Result<(Timestamp, Timestamp), ApiError> {
    let from = required_time(p, "from")?;
    let to = required_time(p, "to")?;
    if to < from {
        return Err(ApiError::bad("to: is before from"));
    }
    Ok((from, to))
}

/// `step` (or `default`) as a duration and as written, giving at most
/// [`MAX_POINTS`] points over `[from, to]`.
pub(super) fn step_param(
    p: &HashMap<String, String>,
    from: Timestamp,
    to: Timestamp,
    default: Option<&str>,
) -> Result<(HumanDuration, String), ApiError> {
    let step_text = p
        .get("step")
        .map(String::as_str)
        .or(default)
        .ok_or_else(|| ApiError::bad("step: required, a duration like 5m"))?
        .to_owned();
    let step: HumanDuration = step_text
        .parse()
        .map_err(|e| ApiError::bad(format!("step: {e}")))?;
    if step.get().is_zero() {
        return Err(ApiError::bad("step: must be longer than 0s"));
    }
    let span = to.duration_since(from).as_secs_f64();
    let points = (span / step.get().as_secs_f64()).floor() + 2.0;
    if points > MAX_POINTS as f64 {
        return Err(ApiError::bad(format!(
            "step: {step_text} gives {points:.0} points over this range; at most {MAX_POINTS}"
        )));
    }
    Ok((step, step_text))
}

pub(super) fn filter(p: &HashMap<String, String>) -> Result<Filter, ApiError> {
    let user_key = match p.get("user") {
        None => None,
        Some(u) => {
            let Some((dir, id)) = u.split_once('\\') else {
                return Err(ApiError::bad(format!(
                    "user: {u:?} is not written as DIRECTORY\\userid"
                )));
            };
            Some(UserKey::new(dir, id).as_str().to_owned())
        }
    };
    Ok(Filter {
        host: p.get("host").cloned(),
        user_key,
    })
}

pub(super) fn known(p: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in p.keys() {
        if !allowed.contains(&k.as_str()) && k != "access_token" {
            return Err(ApiError::bad(format!(
                "{k}: unknown parameter (expected {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// Asks the core to have the journal commit, then runs `f` on a read connection.
pub(super) async fn read<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let core = s.core.clone();
    let path = s.journal_path.clone();
    tokio::task::spawn_blocking(move || {
        let (tx, rx) = mpsc::channel();
        core.send(Input::Flush(tx))
            .map_err(|_| ApiError::internal("whosin is shutting down"))?;
        // The writer answers once everything before this request is on disk;
        // after a large burst that can take seconds, and a forensic answer
        // must be complete rather than quick.
        let why = match rx.recv_timeout(FLUSH_TIMEOUT) {
            Ok(Ok(())) => None,
            // A journal that cannot commit still answers from what it has.
            Ok(Err(e)) => Some(e),
            Err(_) => Some("the journal commit timed out".to_owned()),
        };
        if let Some(why) = why {
            // Every request would say it again while the disk is full.
            static LOG: std::sync::Mutex<crate::ratelog::RateLog> =
                std::sync::Mutex::new(crate::ratelog::RateLog::new(Duration::from_secs(60)));
            let due = LOG.lock().unwrap_or_else(|p| p.into_inner()).due();
            if let Some(more) = due {
                tracing::warn!(
                    "answering from the journal as it is, without the newest events: {why}{}",
                    crate::ratelog::more(more)
                );
            }
        }
        let conn = storage::open_reader(&path)
            .map_err(|e| ApiError::internal(format!("cannot open the journal: {e}")))?;
        f(&conn).map_err(|e| ApiError::internal(format!("journal query failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// `GET /api/v1/events?from=&to=[&user=&host=&app=&limit=&after=]`
pub async fn events(State(s): State<AppState>, Query(p): Params) -> Result<Response, ApiError> {
    known(&p, &["from", "to", "user", "host", "app", "limit", "after"])?;
    let (from, to) = range(&p)?;
    let limit = match p.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(format!(
                    "limit: {v:?} is not a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };
    let after = match p.get("after") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad(format!("after: {v:?} is not a sequence number")))?,
        ),
    };
    let f = filter(&p)?;
    let ef = EventFilter {
        host: f.host,
        user_key: f.user_key,
        app_ids: p.get("app").map(|a| s.apps.ids_named(a)),
        after,
    };
    let mut events = read(&s, move |c| {
        storage::events_between(c, from, to, &ef, limit + 1)
    })
    .await?;
    let next = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| e.seq)
    } else {
        None
    };
    super::inventory::name_events(&mut events, &s.apps);
    Ok(Json(json!({"events": events, "next": next})).into_response())
}

/// `GET /api/v1/concurrency?from=&to=&step=[&host=&app=]`
pub async fn concurrency(
    State(s): State<AppState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    known(&p, &["from", "to", "step", "host", "app"])?;
    let (from, to) = range(&p)?;
    let (step, step_text) = step_param(&p, from, to, None)?;
    let f = filter(&p)?;
    if f.user_key.is_some() {
        return Err(ApiError::bad("user: not a filter of /api/v1/concurrency"));
    }
    let app_ids = p.get("app").map(|a| s.apps.ids_named(a));
    let answer = read(&s, move |c| match &app_ids {
        Some(ids) => crate::queries::inventory::app_concurrency(
            c,
            from,
            to,
            step.get(),
            step_text,
            f.host.as_deref(),
            ids,
        ),
        None => queries::concurrency(c, from, to, step.get(), step_text, &f),
    })
    .await?;
    Ok(Json(answer).into_response())
}

/// Compares without an early exit, so response time does not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Requires `Authorization: Bearer <token>` (or `?access_token=` for the
/// stream, which a browser's EventSource cannot give headers) when a token is set.
pub async fn require_token(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = s.auth_token.as_deref() else {
        return next.run(req).await;
    };
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .map(str::to_owned)
    });
    let ok = from_header.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        || (req.uri().path() == "/api/v1/stream"
            && from_query.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())));
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "authorization: send the token as \"Authorization: Bearer <token>\" (http.auth_token)"})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

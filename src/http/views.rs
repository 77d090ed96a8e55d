//! What the page's incident, user and peak-hour views ask:
//! `/api/v1/timeline` (the sessions and app connections in during a window,
//! with how each ended) and `/api/v1/peaks` (the most in at any instant of
//! each hour, or of each `step`).

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::api::{ApiError, Params, filter, known, range, read, step_param};
use crate::queries::{curve, timeline};

/// Longest window of one timeline: a user's history over a month is one
/// look; longer is a question for `/api/v1/events` or the journal's views.
const MAX_TIMELINE_DAYS: i64 = 35;

/// `GET /api/v1/timeline?from=&to=[&host=&user=&app=]`
pub async fn timeline_route(
    State(s): State<AppState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    known(&p, &["from", "to", "host", "user", "app"])?;
    let (from, to) = range(&p)?;
    if to.duration_since(from) > jiff::SignedDuration::from_hours(24 * MAX_TIMELINE_DAYS) {
        return Err(ApiError::bad(format!(
            "to: a timeline covers at most {MAX_TIMELINE_DAYS} days"
        )));
    }
    let f = filter(&p)?;
    let mut answer = read(&s, move |c| timeline::timeline(c, from, to, &f)).await?;
    if let Some(query) = p.get("app") {
        // The app's connections, and the sessions they were in.
        answer
            .connections
            .retain(|c| c.app.as_ref().is_some_and(|a| s.apps.matches(&a.id, query)));
        let kept: std::collections::HashSet<i64> = answer
            .connections
            .iter()
            .filter_map(|c| c.session)
            .collect();
        answer.sessions.retain(|x| kept.contains(&x.id));
    }
    for c in &mut answer.connections {
        if let Some(a) = &mut c.app
            && let Some(info) = s.apps.get(&a.id)
        {
            a.name = Some(info.name);
            a.stream = info.stream;
        }
    }
    Ok(Json(answer).into_response())
}

/// `GET /api/v1/peaks?from=&to=[&step=1h&host=]`
pub async fn peaks_route(
    State(s): State<AppState>,
    Query(p): Params,
) -> Result<Response, ApiError> {
    known(&p, &["from", "to", "step", "host"])?;
    let (from, to) = range(&p)?;
    let (step, step_text) = step_param(&p, from, to, Some("1h"))?;
    let f = filter(&p)?;
    let answer = read(&s, move |c| {
        curve::peaks(c, from, to, step.get(), step_text, &f)
    })
    .await?;
    Ok(Json(answer).into_response())
}

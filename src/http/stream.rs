//! `GET /api/v1/stream`: server-sent events for the live page and for anyone
//! who wants to follow whosin with `curl -N`.
//!
//! Two kinds of message:
//! - `event: state`, one per host on connect and whenever a host's counts or
//!   users change (the core refreshes them at most once a second): the host
//!   and its `sessions`, `connections`, `users` and `user_list`;
//! - `event: event`, every accepted event once committed to the journal, with
//!   the same JSON as an item of `/api/v1/events` and its `seq` as the SSE id.
//!
//! Events are read from the journal, not from a broadcast: a slow client is
//! never a reason to drop one, and a client that reconnects with
//! `Last-Event-ID` (browsers do this by themselves) continues after the last
//! event it saw, losing nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::AppState;
use crate::sessions::feed::HostSnapshot;
use crate::storage;

/// Most streams open at once; more are refused with 503.
pub const MAX_STREAMS: usize = 64;

/// Most past events `?recent=` replays.
const MAX_RECENT: u64 = 1000;

/// Where a stream begins.
enum Start {
    /// After this sequence number (`u64::MAX`: with what comes next).
    After(u64),
    /// With the last so many events.
    Recent(u64),
}

/// How often the journal is looked at for new events.
const POLL: Duration = Duration::from_millis(250);

/// Most events read from the journal at a time.
const CHUNK: usize = 1000;

/// Messages buffered per client before the reader waits for it.
const BUFFER: usize = 256;

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// `GET /api/v1/stream[?after=SEQ | ?recent=N]`; `Last-Event-ID` also sets
/// where to resume, before either.
pub async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(p.get("after").map(String::as_str))
        .map(|v| v.trim().parse::<u64>());
    let resume = match resume {
        Some(Err(_)) => {
            return super::api::bad_request(
                "after / Last-Event-ID: not a sequence number (the id of an event)",
            );
        }
        Some(Ok(seq)) => Start::After(seq),
        None => match p.get("recent").map(|v| v.trim().parse::<u64>()) {
            None => Start::After(u64::MAX),
            Some(Ok(n)) if n <= MAX_RECENT => Start::Recent(n),
            Some(_) => {
                return super::api::bad_request(&format!(
                    "recent: a number of events from 0 to {MAX_RECENT}"
                ));
            }
        },
    };
    let Ok(permit) = s.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": format!("too many open streams (at most {MAX_STREAMS})")})),
        )
            .into_response();
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        pump(s, tx, resume).await;
        drop(permit);
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn state_event(host: &str, snap: &HostSnapshot, at: jiff::Timestamp) -> Event {
    let body = serde_json::json!({
        "host": host,
        "at": at,
        "sessions": snap.sessions,
        "connections": snap.connections,
        "users": snap.users,
        "user_list": snap.user_list,
    });
    Event::default().event("state").data(body.to_string())
}

/// Feeds one client until it goes away or whosin stops.
async fn pump(s: AppState, tx: Tx, start: Start) {
    let path = s.journal_path.clone();
    let conn = tokio::task::spawn_blocking(move || storage::open_reader(&path)).await;
    let Ok(Ok(conn)) = conn else {
        let _ = tx
            .send(Ok(Event::default()
                .event("error")
                .data("cannot open the journal")))
            .await;
        return;
    };
    let conn = Arc::new(std::sync::Mutex::new(conn));
    let mut after = match start {
        Start::After(seq) if seq != u64::MAX => seq,
        Start::After(_) | Start::Recent(_) => {
            let c = conn.clone();
            let max = tokio::task::spawn_blocking(move || {
                storage::max_seq(&c.lock().unwrap_or_else(|p| p.into_inner()))
            })
            .await;
            let max = match max {
                Ok(Ok(m)) => m,
                _ => 0,
            };
            match start {
                Start::Recent(n) => max.saturating_sub(n),
                Start::After(_) => max,
            }
        }
    };
    let mut feed = s.feed.subscribe();
    let mut shown: HashMap<String, HostSnapshot> = HashMap::new();
    loop {
        // Hosts whose state differs from what this client was shown.
        for (host, snap, at) in s.feed.snapshot() {
            if shown.get(&host) != Some(&snap) {
                if tx.send(Ok(state_event(&host, &snap, at))).await.is_err() {
                    return;
                }
                shown.insert(host, snap);
            }
        }
        // New events, as many chunks as there are.
        loop {
            let c = conn.clone();
            let from = after;
            let batch = tokio::task::spawn_blocking(move || {
                storage::events_after(&c.lock().unwrap_or_else(|p| p.into_inner()), from, CHUNK)
            })
            .await;
            let Ok(Ok(mut batch)) = batch else { break };
            let full = batch.len() == CHUNK;
            super::inventory::name_events(&mut batch, &s.apps);
            for ev in batch {
                after = ev.seq;
                let data = serde_json::to_string(&ev).unwrap_or_default();
                let msg = Event::default()
                    .event("event")
                    .id(ev.seq.to_string())
                    .data(data);
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = s.stop.cancelled() => return,
            () = tx.closed() => return,
            _ = feed.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

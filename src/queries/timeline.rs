//! What happened around an instant, or to one user: the sessions and app
//! connections that were in during a window, with when and how each ended.
//! The incident and user views of the page draw these as a timeline.

use jiff::Timestamp;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::{AppView, CONNECTIONS, Filter, SESSIONS, overlapping};
use crate::change::{CloseReason, EndReason};
use crate::storage::{from_nanos, hour_of, join_name, nanos};

/// Most sessions (and, separately, connections) in one answer; the rest is
/// left off and `truncated` says so (narrow the window, or filter).
pub const MAX_INTERVALS: usize = 50_000;

/// A session that was in during the window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionSpan {
    /// The journal's id of the session (connections refer to it).
    pub id: i64,
    /// Qlik node.
    pub host: String,
    /// `DIRECTORY\userid`.
    pub user: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended; null while it is open.
    pub ended_at: Option<Timestamp>,
    /// `stopped`, `expired`, `reconciled` or `evicted`; null while open.
    pub end_reason: Option<&'static str>,
    /// e.g. `Chrome 131`.
    pub browser: Option<String>,
    /// e.g. `Windows 10`.
    pub os: Option<String>,
    /// The virtual proxy, once the proxy API told.
    pub virtual_proxy: Option<String>,
    /// whosin learned of it from the proxy API, not from a `Start session`.
    pub reconciled: bool,
}

/// A connection (an app or hub tab) that was open during the window.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConnectionSpan {
    /// The session it belongs to, when that session is in the answer: by
    /// proxy session id, else (the legacy format cannot tell) the user's
    /// latest session on the host that had started by the time it opened.
    pub session: Option<i64>,
    /// Qlik node.
    pub host: String,
    /// `DIRECTORY\userid`.
    pub user: String,
    /// The app; null for a hub or other non-app connection.
    pub app: Option<AppView>,
    /// When it opened.
    pub opened_at: Timestamp,
    /// When it closed; null while it is open.
    pub closed_at: Option<Timestamp>,
    /// `closed` or `session_ended`; null while open.
    pub close_reason: Option<&'static str>,
}

/// The body of `/api/v1/timeline`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimelineAnswer {
    /// Start of the window.
    pub from: Timestamp,
    /// End of the window.
    pub to: Timestamp,
    /// Sessions in at some instant of the window, by start.
    pub sessions: Vec<SessionSpan>,
    /// Connections open at some instant of the window, by opening.
    pub connections: Vec<ConnectionSpan>,
    /// More than [`MAX_INTERVALS`] of either matched; the latest are left off.
    pub truncated: bool,
}

/// The sessions and connections in during `[from, to]`.
pub fn timeline(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    f: &Filter,
) -> rusqlite::Result<TimelineAnswer> {
    let (lo, hi) = (nanos(from), nanos(to));
    let args = params![lo, hi, f.host, hour_of(lo), hour_of(hi), f.user_key];
    let mut stmt = conn.prepare_cached(&overlapping(
        SESSIONS,
        "x.id, x.host, x.user_key, x.user_directory, x.user_id, x.proxy_session_id,
         x.started_at, k.ended_at, k.end_reason, x.browser, x.browser_major, x.os,
         x.os_version, x.virtual_proxy, x.reconciled",
        "ORDER BY x.started_at, x.id",
    ))?;
    // (span, user key, proxy session id) for attaching the connections.
    let mut sessions: Vec<(SessionSpan, String, Option<String>)> = Vec::new();
    let mut truncated = false;
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        if sessions.len() == MAX_INTERVALS {
            truncated = true;
            break;
        }
        let dir: String = r.get(3)?;
        let id: String = r.get(4)?;
        let span = SessionSpan {
            id: r.get(0)?,
            host: r.get(1)?,
            user: format!("{dir}\\{id}"),
            started_at: from_nanos(r.get(6)?),
            ended_at: r.get::<_, Option<i64>>(7)?.map(from_nanos),
            end_reason: r
                .get::<_, Option<i64>>(8)?
                .and_then(EndReason::from_code)
                .map(EndReason::as_str),
            browser: join_name(r.get(9)?, r.get(10)?),
            os: join_name(r.get(11)?, r.get(12)?),
            virtual_proxy: r.get(13)?,
            reconciled: r.get(14)?,
        };
        sessions.push((span, r.get(2)?, r.get(5)?));
    }
    drop(rows);

    let mut stmt = conn.prepare_cached(&overlapping(
        CONNECTIONS,
        "x.host, x.user_key, x.app_id, x.proxy_session_id, x.opened_at, k.closed_at,
         k.close_reason",
        "ORDER BY x.opened_at, x.id",
    ))?;
    let mut connections = Vec::new();
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        if connections.len() == MAX_INTERVALS {
            truncated = true;
            break;
        }
        let host: String = r.get(0)?;
        let key: String = r.get(1)?;
        let psid: Option<String> = r.get(3)?;
        let opened: i64 = r.get(4)?;
        let opened_at = from_nanos(opened);
        let of_user = || {
            sessions
                .iter()
                .filter(|(s, k, _)| *k == key && s.host == host)
        };
        let session = psid
            .as_ref()
            .and_then(|p| of_user().find(|(_, _, sp)| sp.as_ref() == Some(p)))
            .or_else(|| of_user().rfind(|(s, _, _)| s.started_at <= opened_at))
            .or_else(|| of_user().next());
        let Some((owner, _, _)) = session else {
            // A user filter keeps only that user's sessions; a connection
            // without one in the window is still shown, unattached.
            connections.push(ConnectionSpan {
                session: None,
                user: key.clone(),
                host,
                app: app(r.get(2)?),
                opened_at,
                closed_at: r.get::<_, Option<i64>>(5)?.map(from_nanos),
                close_reason: reason(r.get(6)?),
            });
            continue;
        };
        connections.push(ConnectionSpan {
            session: Some(owner.id),
            user: owner.user.clone(),
            host,
            app: app(r.get(2)?),
            opened_at,
            closed_at: r.get::<_, Option<i64>>(5)?.map(from_nanos),
            close_reason: reason(r.get(6)?),
        });
    }
    Ok(TimelineAnswer {
        from,
        to,
        sessions: sessions.into_iter().map(|(s, _, _)| s).collect(),
        connections,
        truncated,
    })
}

fn app(id: Option<String>) -> Option<AppView> {
    id.map(|id| AppView {
        id,
        name: None,
        stream: None,
        connections: 1,
    })
}

fn reason(code: Option<i64>) -> Option<&'static str> {
    code.and_then(CloseReason::from_code)
        .map(CloseReason::as_str)
}

//! Forensic questions answered from the journal: who was in at an instant, and
//! how many were in over a range.
//!
//! A session is *in* at `T` when it started at or before `T` and had not ended
//! by `T` (`started_at <= T < ended_at`); the same rule holds for connections.
//! Both the live API (`at` = now) and the past use this one path, after the
//! journal committed everything the core had, so the two can never disagree.

use foldhash::HashMap;
use jiff::Timestamp;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::storage::{from_nanos, hour_of, join_name, nanos};

/// One app in a session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppView {
    /// App GUID.
    pub id: String,
    /// App name from the Qlik repository; null while unknown.
    pub name: Option<String>,
    /// Its stream; null while unknown or unpublished.
    #[serde(default)]
    pub stream: Option<String>,
    /// Open connections of the session to it (for `/api/v1/apps`).
    #[serde(skip)]
    pub connections: usize,
}

/// One session in an answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    /// Qlik node.
    pub host: String,
    /// Directory as first seen.
    pub user_directory: String,
    /// User id as first seen.
    pub user_id: String,
    /// `DIRECTORY\userid`.
    pub user: String,
    /// When it started.
    pub started_at: Timestamp,
    /// Open connections (app and hub tabs) of this session.
    pub connections: usize,
    /// Distinct apps open in those connections.
    pub apps: Vec<AppView>,
    /// e.g. `Chrome 131`.
    pub browser: Option<String>,
    /// e.g. `Windows 10`.
    pub os: Option<String>,
    /// The virtual proxy (`""` for the default one), once the Qlik proxy API
    /// has told (`qlik.reconcile_interval`); else null.
    pub virtual_proxy: Option<String>,
    /// whosin learned of it from the proxy API, not from a `Start session`.
    pub reconciled: bool,
}

/// The body of `/api/v1/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionsAnswer {
    /// The instant asked about.
    pub at: Timestamp,
    /// One entry per session.
    pub sessions: Vec<SessionView>,
    /// Distinct users among them.
    pub users: usize,
}

/// Filters shared by the queries.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this host.
    pub host: Option<String>,
    /// Only this user (lower-cased `dir\id`).
    pub user_key: Option<String>,
}

/// A journal table of intervals: its name, its hour table, and its start,
/// end and end reason columns.
pub(crate) struct Intervals {
    table: &'static str,
    hours: &'static str,
    start: &'static str,
    end: &'static str,
    reason: &'static str,
}

pub(crate) const SESSIONS: Intervals = Intervals {
    table: "sessions",
    hours: "session_hours",
    start: "started_at",
    end: "ended_at",
    reason: "end_reason",
};

pub(crate) const CONNECTIONS: Intervals = Intervals {
    table: "connections",
    hours: "connection_hours",
    start: "opened_at",
    end: "closed_at",
    reason: "close_reason",
};

/// The one query behind every forensic answer: the rows (as `x`, with the
/// end as `k.ended_at` and `k.end_reason`, or `k.closed_at` and
/// `k.close_reason`) of an interval table that overlap `[?1, ?2]`
/// (nanoseconds; `?4`, `?5` their Unix hours), optionally only on host `?3`
/// and of user `?6`. An instant is the range `[t, t]`: started at or before
/// it, not ended by it.
///
/// Candidates come from the hour lists of ended intervals (the rows of the
/// range's first hour, and the first-hour rows of the later ones: each
/// interval once), which carry the end, so those that ended before the
/// range are left out before anything is joined, and from the list of open
/// ones (see the journal's schema); the exact nanosecond columns decide.
pub(crate) fn overlapping(i: Intervals, columns: &str, order: &str) -> String {
    let Intervals {
        table,
        hours,
        start,
        end,
        reason,
    } = i;
    format!(
        "SELECT {columns}
         FROM (SELECT r.id AS id, r.{end} AS {end}, r.{reason} AS {reason} FROM {hours} r
                   WHERE r.hour = ?4 AND r.{end} > ?1
               UNION ALL
               SELECT r.id, r.{end}, r.{reason} FROM {hours} r
                   WHERE r.hour > ?4 AND r.hour <= ?5 AND r.first AND r.{end} > ?1
               UNION ALL
               SELECT o.id, NULL, NULL FROM open_{table} o) AS k
         CROSS JOIN {table}_x x ON x.id = k.id
         WHERE x.{start} <= ?2
           AND (?3 IS NULL OR x.host = ?3) AND (?6 IS NULL OR x.user_key = ?6)
         {order}"
    )
}

/// Who was in at `at`.
pub fn sessions_at(
    conn: &Connection,
    at: Timestamp,
    f: &Filter,
) -> rusqlite::Result<SessionsAnswer> {
    sessions_query(conn, at, nanos(at), f)
}

/// Who is in now: every open session, whatever its timestamps say. (A Qlik
/// node whose clock runs a little ahead writes start times just after "now";
/// the live picture, like the gauges, still counts those sessions.)
pub fn sessions_now(conn: &Connection, f: &Filter) -> rusqlite::Result<SessionsAnswer> {
    sessions_query(conn, Timestamp::now(), i64::MAX, f)
}

fn sessions_query(
    conn: &Connection,
    at: Timestamp,
    t: i64,
    f: &Filter,
) -> rusqlite::Result<SessionsAnswer> {
    let mut stmt = conn.prepare_cached(&overlapping(
        SESSIONS,
        "x.id, x.host, x.user_key, x.user_directory, x.user_id, x.proxy_session_id, x.started_at,
         x.browser, x.browser_major, x.os, x.os_version, x.virtual_proxy, x.reconciled",
        "ORDER BY x.host, x.user_key, x.started_at, x.id",
    ))?;
    struct Row {
        host: String,
        key: String,
        psid: Option<String>,
        view: SessionView,
        app_ids: Vec<(String, usize)>,
    }
    let mut rows: Vec<Row> = stmt
        .query_map(
            params![t, t, f.host, hour_of(t), hour_of(t), f.user_key],
            |r| {
                let dir: String = r.get(3)?;
                let id: String = r.get(4)?;
                Ok(Row {
                    host: r.get(1)?,
                    key: r.get(2)?,
                    psid: r.get(5)?,
                    view: SessionView {
                        host: r.get(1)?,
                        user: format!("{dir}\\{id}"),
                        user_directory: dir,
                        user_id: id,
                        started_at: from_nanos(r.get(6)?),
                        connections: 0,
                        apps: Vec::new(),
                        browser: join_name(r.get(7)?, r.get(8)?),
                        os: join_name(r.get(9)?, r.get(10)?),
                        virtual_proxy: r.get(11)?,
                        reconciled: r.get(12)?,
                    },
                    app_ids: Vec::new(),
                })
            },
        )?
        .collect::<rusqlite::Result<_>>()?;

    // Index sessions by (host, user) to attach connections.
    let mut by_user: HashMap<(String, String), Vec<usize>> = HashMap::default();
    for (i, r) in rows.iter().enumerate() {
        by_user
            .entry((r.host.clone(), r.key.clone()))
            .or_default()
            .push(i);
    }
    let mut stmt = conn.prepare_cached(&overlapping(
        CONNECTIONS,
        "x.host, x.user_key, x.app_id, x.proxy_session_id",
        "ORDER BY x.opened_at, x.id",
    ))?;
    let conns = stmt.query_map(
        params![t, t, f.host, hour_of(t), hour_of(t), f.user_key],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        },
    )?;
    for c in conns {
        let (host, key, app_id, psid) = c?;
        let Some(idx) = by_user.get(&(host, key)) else {
            continue;
        };
        // With a proxy session id the connection belongs to that session. The
        // legacy format cannot tell which of a user's sessions a tab is in, so
        // it is shown on the user's oldest session: the per-user total is right.
        let target = psid
            .as_ref()
            .and_then(|p| idx.iter().find(|&&i| rows[i].psid.as_ref() == Some(p)))
            .unwrap_or(&idx[0]);
        let row = &mut rows[*target];
        row.view.connections += 1;
        if let Some(a) = app_id {
            match row.app_ids.iter_mut().find(|(id, _)| *id == a) {
                Some((_, n)) => *n += 1,
                None => row.app_ids.push((a, 1)),
            }
        }
    }
    let users = by_user
        .keys()
        .map(|(_, k)| k.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let sessions = rows
        .into_iter()
        .map(|mut r| {
            r.view.apps = r
                .app_ids
                .into_iter()
                .map(|(id, connections)| AppView {
                    id,
                    name: None,
                    stream: None,
                    connections,
                })
                .collect();
            r.view
        })
        .collect();
    Ok(SessionsAnswer {
        at,
        sessions,
        users,
    })
}

pub mod curve;
pub use curve::{ConcurrencyAnswer, MAX_POINTS, Point, concurrency, instants};
pub mod inventory;
pub mod timeline;

#[cfg(test)]
mod tests;

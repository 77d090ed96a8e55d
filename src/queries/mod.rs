//! Forensic questions answered from the journal: who was in at an instant, and
//! how many were in over a range.
//!
//! A session is *in* at `T` when it started at or before `T` and had not ended
//! by `T` (`started_at <= T < ended_at`); the same rule holds for connections.
//! Both the live API (`at` = now) and the past use this one path, after the
//! journal committed everything the core had, so the two can never disagree.

use std::collections::BTreeMap;

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

/// A journal table of intervals: its name and its start and end columns.
struct Intervals {
    table: &'static str,
    hours: &'static str,
    start: &'static str,
    end: &'static str,
}

const SESSIONS: Intervals = Intervals {
    table: "sessions",
    hours: "session_hours",
    start: "started_at",
    end: "ended_at",
};

const CONNECTIONS: Intervals = Intervals {
    table: "connections",
    hours: "connection_hours",
    start: "opened_at",
    end: "closed_at",
};

/// The one query behind every forensic answer: the rows (as `x`) of an
/// interval table that overlap `[?1, ?2]` (nanoseconds; `?4`, `?5` their
/// Unix hours), optionally only on host `?3` and of user `?6`. An instant is
/// the range `[t, t]`: started at or before it, not ended by it.
///
/// Candidates come from the hour lists of ended intervals (the rows of the
/// range's first hour, and the first-hour rows of the later ones: each
/// interval once) and the list of open ones (see the journal's schema); the
/// exact nanosecond columns decide.
fn overlapping(i: Intervals, columns: &str, order: &str) -> String {
    let Intervals {
        table,
        hours,
        start,
        end,
    } = i;
    format!(
        "SELECT {columns}
         FROM (SELECT r.id FROM {hours} r WHERE r.hour = ?4
               UNION ALL
               SELECT r.id FROM {hours} r WHERE r.hour > ?4 AND r.hour <= ?5 AND r.first
               UNION ALL
               SELECT o.id FROM open_{table} o) AS k
         CROSS JOIN {table}_v x ON x.id = k.id
         WHERE x.{start} <= ?2 AND (x.{end} IS NULL OR x.{end} > ?1)
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

/// One point of the concurrency curve.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Point {
    /// The instant.
    pub t: Timestamp,
    /// Sessions in.
    pub sessions: u64,
    /// Distinct users in.
    pub users: u64,
    /// Connections open.
    pub connections: u64,
}

/// The body of `/api/v1/concurrency`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConcurrencyAnswer {
    /// Start of the range.
    pub from: Timestamp,
    /// End of the range.
    pub to: Timestamp,
    /// The step, as written (`5m`).
    pub step: String,
    /// The state at `from + k*step`, and last at `to`.
    pub points: Vec<Point>,
    /// The instant in the range with the most sessions (the earliest such).
    pub peak: Point,
}

/// Most points one concurrency answer may have.
pub const MAX_POINTS: usize = 10_000;

/// The sampled instants of a concurrency curve (nanoseconds): `lo`,
/// `lo + step`, ... below `hi`, and last `hi`.
pub fn instants(lo: i64, hi: i64, step: std::time::Duration) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    let step_ns = i64::try_from(step.as_nanos()).unwrap_or(i64::MAX).max(1);
    let mut t = lo;
    while t < hi && out.len() < MAX_POINTS {
        out.push(t);
        t = t.saturating_add(step_ns);
    }
    out.push(hi);
    out
}

/// The concurrency curve over `[from, to]`, computed by one sweep over the
/// intervals that overlap the range (not one query per point).
pub fn concurrency(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    step: std::time::Duration,
    step_text: String,
    f: &Filter,
) -> rusqlite::Result<ConcurrencyAnswer> {
    let (lo, hi) = (nanos(from), nanos(to));
    // (time, order, kind): at one instant ends (order 0) apply before starts
    // (order 1), matching started_at <= t < ended_at.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Kind {
        SessionEnd,
        ConnEnd,
        SessionStart,
        ConnStart,
    }
    let mut changes: Vec<(i64, Kind, u32)> = Vec::new();
    let mut user_ids: HashMap<i64, u32> = HashMap::default();
    let (lo_s, hi_s) = (hour_of(lo), hour_of(hi));
    let no_user: Option<String> = None;
    let mut stmt = conn.prepare_cached(&overlapping(
        SESSIONS,
        "x.user_ref, x.started_at, x.ended_at",
        "",
    ))?;
    let rows = stmt.query_map(params![lo, hi, f.host, lo_s, hi_s, no_user], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
        ))
    })?;
    for row in rows {
        let (key, start, end) = row?;
        let next = user_ids.len() as u32;
        let uid = *user_ids.entry(key).or_insert(next);
        changes.push((start, Kind::SessionStart, uid));
        if let Some(e) = end {
            changes.push((e, Kind::SessionEnd, uid));
        }
    }
    let mut stmt =
        conn.prepare_cached(&overlapping(CONNECTIONS, "x.opened_at, x.closed_at", ""))?;
    let rows = stmt.query_map(params![lo, hi, f.host, lo_s, hi_s, no_user], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
    })?;
    for row in rows {
        let (start, end) = row?;
        changes.push((start, Kind::ConnStart, 0));
        if let Some(e) = end {
            changes.push((e, Kind::ConnEnd, 0));
        }
    }
    changes.sort_unstable();

    let instants = instants(lo, hi, step);

    let mut sessions: i64 = 0;
    let mut conns: i64 = 0;
    let mut per_user: BTreeMap<u32, u32> = BTreeMap::new();
    let mut i = 0;
    let apply = |upto: i64,
                 sessions: &mut i64,
                 conns: &mut i64,
                 per_user: &mut BTreeMap<u32, u32>,
                 i: &mut usize| {
        while *i < changes.len() && changes[*i].0 <= upto {
            let (_, kind, uid) = changes[*i];
            match kind {
                Kind::SessionStart => {
                    *sessions += 1;
                    *per_user.entry(uid).or_insert(0) += 1;
                }
                Kind::SessionEnd => {
                    *sessions -= 1;
                    if let Some(n) = per_user.get_mut(&uid) {
                        *n -= 1;
                        if *n == 0 {
                            per_user.remove(&uid);
                        }
                    }
                }
                Kind::ConnStart => *conns += 1,
                Kind::ConnEnd => *conns -= 1,
            }
            *i += 1;
        }
    };
    let point = |t: i64, s: i64, c: i64, u: usize| Point {
        t: from_nanos(t),
        sessions: s.max(0) as u64,
        users: u as u64,
        connections: c.max(0) as u64,
    };

    // The state at `from`, then at each change inside the range, for the peak;
    // the sampled points are taken on the way.
    apply(lo, &mut sessions, &mut conns, &mut per_user, &mut i);
    let mut peak = point(lo, sessions, conns, per_user.len());
    let mut points = Vec::with_capacity(instants.len());
    let mut next_point = 0;
    while next_point < instants.len() && instants[next_point] <= lo {
        points.push(point(instants[next_point], sessions, conns, per_user.len()));
        next_point += 1;
    }
    while i < changes.len() && changes[i].0 <= hi {
        let at = changes[i].0;
        while next_point < instants.len() && instants[next_point] < at {
            points.push(point(instants[next_point], sessions, conns, per_user.len()));
            next_point += 1;
        }
        apply(at, &mut sessions, &mut conns, &mut per_user, &mut i);
        if sessions.max(0) as u64 > peak.sessions {
            peak = point(at, sessions, conns, per_user.len());
        }
    }
    while next_point < instants.len() {
        points.push(point(instants[next_point], sessions, conns, per_user.len()));
        next_point += 1;
    }
    Ok(ConcurrencyAnswer {
        from,
        to,
        step: step_text,
        points,
        peak,
    })
}

pub mod inventory;

#[cfg(test)]
mod tests;

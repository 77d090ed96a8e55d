//! What the journal remembers of the live state when whosin starts: the
//! sessions and connections that were open (their rows have no end yet).

use std::sync::Arc;
use std::time::Duration;

use foldhash::HashMap;
use rusqlite::Connection;

use super::from_nanos;
use crate::change::{Connection as OpenConnection, Session};
use crate::event::UserAgent;

/// A session that was open at the last stop.
pub struct RecoveredSession {
    /// Its host.
    pub host: String,
    /// Directory as first seen.
    pub user_directory: String,
    /// User id as first seen.
    pub user_id: String,
    /// The session.
    pub session: Session,
}

/// A connection that was open at the last stop.
pub struct RecoveredConnection {
    /// Its host.
    pub host: String,
    /// Its user's key.
    pub user_key: String,
    /// The connection.
    pub connection: OpenConnection,
}

/// The open state, for the live state to continue from.
pub struct Recovered {
    /// Open sessions, oldest first.
    pub sessions: Vec<RecoveredSession>,
    /// Open connections, oldest first.
    pub connections: Vec<RecoveredConnection>,
    /// The next event sequence number to give.
    pub next_seq: u64,
    /// The next session or connection id to give.
    pub next_id: u64,
}

/// Reads the open intervals. A session's last event (for its idle expiry) is
/// found among the events of the last idle timeout before the journal's
/// newest: a session with none there would have expired anyway.
pub fn recover(conn: &Connection, idle_timeout: Duration) -> rusqlite::Result<Recovered> {
    let next_seq: i64 =
        conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?;
    let next_id: i64 = conn.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM sessions), 0), coalesce((SELECT max(id) FROM connections), 0)) + 1",
        [],
        |r| r.get(0),
    )?;
    let newest = super::blocks::newest_time(conn)?;
    let idle = i64::try_from(idle_timeout.as_nanos()).unwrap_or(i64::MAX);
    let window = newest.unwrap_or(0).saturating_sub(idle);
    let mut last: HashMap<(String, String), i64> = HashMap::default();
    let mut stmt = conn.prepare(
        "SELECT h.name AS host, u.key AS user_key, max(e.time + coalesce(e.received, 0)) AS last
         FROM events e JOIN hosts h ON h.id = e.host JOIN users u ON u.id = e.user
         WHERE e.seq BETWEEN ?2 AND ?3 AND e.time >= ?1 GROUP BY h.name, u.key",
    )?;
    for (lo, hi) in super::blocks::ranges(conn, window, i64::MAX)? {
        let rows = stmt.query_map([window, lo, hi], |r| {
            Ok((
                r.get::<_, String>("host")?,
                r.get::<_, String>("user_key")?,
                r.get::<_, i64>("last")?,
            ))
        })?;
        for r in rows {
            let (h, k, t) = r?;
            let e = last.entry((h, k)).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let mut agents: HashMap<UserAgent, Arc<UserAgent>> = HashMap::default();
    let mut stmt = conn.prepare(
        "SELECT id, host, user_key, user_directory, user_id, proxy_session_id, started_at, implied,
                browser, browser_major, os, os_version, reconciled, virtual_proxy
         FROM sessions_v WHERE id IN (SELECT id FROM open_sessions) ORDER BY started_at, id",
    )?;
    let sessions = stmt
        .query_map([], |r| {
            let started: i64 = r.get("started_at")?;
            let host: String = r.get("host")?;
            let key: String = r.get("user_key")?;
            let last_event = last
                .get(&(host.clone(), key))
                .copied()
                .unwrap_or(started.max(window));
            let ua = UserAgent {
                browser: r.get("browser")?,
                browser_major: r.get("browser_major")?,
                os: r.get("os")?,
                os_version: r.get("os_version")?,
            };
            // Share one copy per distinct browser, as the live parser does.
            let ua = (ua != UserAgent::default()).then(|| {
                agents
                    .entry(ua.clone())
                    .or_insert_with(|| Arc::new(ua))
                    .clone()
            });
            Ok(RecoveredSession {
                host,
                user_directory: r.get("user_directory")?,
                user_id: r.get("user_id")?,
                session: Session {
                    id: r.get::<_, i64>("id")? as u64,
                    proxy_session_id: r.get("proxy_session_id")?,
                    started_at: from_nanos(started),
                    last_event: from_nanos(last_event.max(started)),
                    user_agent: ua,
                    implied: r.get("implied")?,
                    reconciled: r.get("reconciled")?,
                    virtual_proxy: r.get("virtual_proxy")?,
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut apps: HashMap<String, Arc<str>> = HashMap::default();
    let mut stmt = conn.prepare(
        "SELECT id, host, user_key, app_key, app_id, proxy_session_id, opened_at
         FROM connections_v WHERE id IN (SELECT id FROM open_connections) ORDER BY opened_at, id",
    )?;
    let connections = stmt
        .query_map([], |r| {
            let key: String = r.get("app_key")?;
            let app_key = apps
                .entry(key.clone())
                .or_insert_with(|| key.into())
                .clone();
            let app_id: Option<String> = r.get("app_id")?;
            Ok(RecoveredConnection {
                host: r.get("host")?,
                user_key: r.get("user_key")?,
                connection: OpenConnection {
                    id: r.get::<_, i64>("id")? as u64,
                    app_id: app_id.map(|a| {
                        if *a == *app_key {
                            app_key.clone()
                        } else {
                            a.into()
                        }
                    }),
                    app_key,
                    proxy_session_id: r.get("proxy_session_id")?,
                    opened_at: from_nanos(r.get("opened_at")?),
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Recovered {
        sessions,
        connections,
        next_seq: next_seq as u64,
        next_id: next_id as u64,
    })
}

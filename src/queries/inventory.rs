//! Questions about apps and the session limit, answered from the same
//! picture as `/api/v1/sessions`: who is in which app, which users are at
//! Qlik's limit of parallel sessions, and the concurrency of one app.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::queries::{ConcurrencyAnswer, Point, SessionsAnswer};
use crate::storage::{from_nanos, nanos};

/// One app in `/api/v1/apps`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AppUse {
    /// App GUID.
    pub id: String,
    /// Name from the Qlik repository; null while unknown.
    pub name: Option<String>,
    /// Its stream; null while unknown or unpublished.
    pub stream: Option<String>,
    /// Open connections to it.
    pub connections: usize,
    /// The users with a connection to it, `DIRECTORY\userid`, sorted.
    pub users: Vec<String>,
}

/// Who is in which app, most connections first, from a sessions answer
/// (whose apps carry names already, when known).
pub fn apps_in(answer: &SessionsAnswer) -> Vec<AppUse> {
    let mut by_id: BTreeMap<String, (AppUse, BTreeSet<String>)> = BTreeMap::new();
    for s in &answer.sessions {
        for a in &s.apps {
            let (entry, users) = by_id.entry(a.id.to_ascii_lowercase()).or_insert_with(|| {
                (
                    AppUse {
                        id: a.id.clone(),
                        name: a.name.clone(),
                        stream: a.stream.clone(),
                        connections: 0,
                        users: Vec::new(),
                    },
                    BTreeSet::new(),
                )
            });
            entry.connections += a.connections;
            users.insert(s.user.clone());
        }
    }
    let mut apps: Vec<AppUse> = by_id
        .into_values()
        .map(|(mut a, users)| {
            a.users = dedup_users(users);
            a
        })
        .collect();
    apps.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
    apps
}

/// Users compare case-insensitively; the first spelling is shown.
fn dedup_users(users: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in users {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&u)) {
            out.push(u);
        }
    }
    out.sort_by_key(|u| u.to_lowercase());
    out
}

/// One user in `/api/v1/limits`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AtLimit {
    /// `DIRECTORY\userid`.
    pub user: String,
    /// Their sessions across every host.
    pub sessions: usize,
    /// The hosts they are on, sorted.
    pub hosts: Vec<String>,
}

/// Users whose sessions across every host are at or over `limit`, most first.
pub fn at_limit(answer: &SessionsAnswer, limit: usize) -> Vec<AtLimit> {
    let mut per_user: BTreeMap<String, AtLimit> = BTreeMap::new();
    for s in &answer.sessions {
        let e = per_user
            .entry(s.user.to_lowercase())
            .or_insert_with(|| AtLimit {
                user: s.user.clone(),
                sessions: 0,
                hosts: Vec::new(),
            });
        e.sessions += 1;
        if !e.hosts.contains(&s.host) {
            e.hosts.push(s.host.clone());
        }
    }
    let mut users: Vec<AtLimit> = per_user
        .into_values()
        .filter(|u| u.sessions >= limit.max(1))
        .map(|mut u| {
            u.hosts.sort();
            u
        })
        .collect();
    users.sort_by(|a, b| {
        b.sessions
            .cmp(&a.sessions)
            .then_with(|| a.user.cmp(&b.user))
    });
    users
}

/// The concurrency of the apps `app_ids` over `[from, to]`: open connections
/// to them, the users with one, and the sessions (host and user) with one.
pub fn app_concurrency(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    step: std::time::Duration,
    step_text: String,
    host: Option<&str>,
    app_ids: &[String],
) -> rusqlite::Result<ConcurrencyAnswer> {
    let (lo, hi) = (nanos(from), nanos(to));
    let mut stmt = conn.prepare_cached(
        "SELECT host, user_key, opened_at, closed_at FROM connections_v
         WHERE opened_at <= ?2 AND (closed_at IS NULL OR closed_at > ?1)
           AND (?3 IS NULL OR host = ?3)
           AND lower(app_id) IN (SELECT value FROM json_each(?4))",
    )?;
    let ids = serde_json::to_string(app_ids).unwrap_or_else(|_| "[]".into());
    // (time, opens, user, pair): at one instant closes apply before opens.
    let mut changes: Vec<(i64, bool, u32, u32)> = Vec::new();
    let mut users: std::collections::HashMap<String, u32> = Default::default();
    let mut pairs: std::collections::HashMap<(String, String), u32> = Default::default();
    let rows = stmt.query_map(params![lo, hi, host, ids], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    for row in rows {
        let (h, key, open, close) = row?;
        let n = users.len() as u32;
        let uid = *users.entry(key.clone()).or_insert(n);
        let n = pairs.len() as u32;
        let pid = *pairs.entry((h, key)).or_insert(n);
        changes.push((open, true, uid, pid));
        if let Some(c) = close {
            changes.push((c, false, uid, pid));
        }
    }
    changes.sort_unstable();
    let instants = crate::queries::instants(lo, hi, step);
    let mut conns: i64 = 0;
    let mut per_user: BTreeMap<u32, u32> = BTreeMap::new();
    let mut per_pair: BTreeMap<u32, u32> = BTreeMap::new();
    let point = |t: i64, c: i64, u: usize, p: usize| Point {
        t: from_nanos(t),
        sessions: p as u64,
        users: u as u64,
        connections: c.max(0) as u64,
    };
    let bump = |m: &mut BTreeMap<u32, u32>, k: u32, up: bool| {
        if up {
            *m.entry(k).or_insert(0) += 1;
        } else if let Some(n) = m.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                m.remove(&k);
            }
        }
    };
    let mut i = 0;
    let mut points = Vec::with_capacity(instants.len());
    let mut peak: Option<Point> = None;
    for &at in &instants {
        // Every change up to this instant, with the peak on the way.
        while i < changes.len() && changes[i].0 <= at {
            let when = changes[i].0;
            while i < changes.len() && changes[i].0 == when {
                let (_, up, uid, pid) = changes[i];
                conns += if up { 1 } else { -1 };
                bump(&mut per_user, uid, up);
                bump(&mut per_pair, pid, up);
                i += 1;
            }
            if when >= lo {
                let p = point(when, conns, per_user.len(), per_pair.len());
                if peak.is_none_or(|pk| p.sessions > pk.sessions) {
                    peak = Some(p);
                }
            }
        }
        let p = point(at, conns, per_user.len(), per_pair.len());
        if peak.is_none_or(|pk| p.sessions > pk.sessions) {
            peak = Some(p);
        }
        points.push(p);
    }
    let peak = peak.unwrap_or_else(|| point(lo, 0, 0, 0));
    Ok(ConcurrencyAnswer {
        from,
        to,
        step: step_text,
        points,
        peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::{AppView, SessionView};

    fn session(host: &str, user: &str, apps: &[(&str, usize)]) -> SessionView {
        SessionView {
            host: host.into(),
            user_directory: "LAB".into(),
            user_id: user.into(),
            user: format!("LAB\\{user}"),
            started_at: "2026-11-21T09:00:00Z".parse().unwrap(),
            connections: apps.iter().map(|a| a.1).sum(),
            apps: apps
                .iter()
                .map(|(id, n)| AppView {
                    id: (*id).into(),
                    name: Some(format!("name of {id}")),
                    stream: None,
                    connections: *n,
                })
                .collect(),
            browser: None,
            os: None,
            virtual_proxy: None,
            reconciled: false,
        }
    }

    fn answer(sessions: Vec<SessionView>) -> SessionsAnswer {
        SessionsAnswer {
            at: "2026-11-21T10:00:00Z".parse().unwrap(),
            users: 0,
            sessions,
        }
    }

    #[test]
    fn apps_count_connections_and_users_most_first() {
        let a = answer(vec![
            session("n1", "anna", &[("a", 2), ("b", 1)]),
            session("n2", "anna", &[("a", 1)]),
            session("n1", "bob", &[("b", 1)]),
            session("n1", "carl", &[("b", 2)]),
        ]);
        let apps = apps_in(&a);
        assert_eq!(apps.len(), 2);
        assert_eq!((apps[0].id.as_str(), apps[0].connections), ("b", 4));
        assert_eq!(apps[0].users, ["LAB\\anna", "LAB\\bob", "LAB\\carl"]);
        assert_eq!((apps[1].id.as_str(), apps[1].connections), ("a", 3));
        assert_eq!(apps[1].users, ["LAB\\anna"], "one user on two hosts");
        assert_eq!(apps[1].name.as_deref(), Some("name of a"));
    }

    #[test]
    fn users_at_the_limit_count_sessions_across_hosts() {
        let mut s = vec![
            session("n1", "anna", &[]),
            session("n1", "anna", &[]),
            session("n2", "anna", &[]),
            session("n1", "bob", &[]),
        ];
        s[2].user = "lab\\ANNA".into();
        let users = at_limit(&answer(s), 3);
        assert_eq!(
            users,
            [AtLimit {
                user: "LAB\\anna".into(),
                sessions: 3,
                hosts: vec!["n1".into(), "n2".into()],
            }]
        );
    }
}

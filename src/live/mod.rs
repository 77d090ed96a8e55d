//! The live picture: who has how many sessions and connections on which host.
//!
//! Sessions and connections are *counted*, not set: two `Start session` datagrams
//! of one user on one host are two sessions until two stops (several browsers,
//! incognito windows). The legacy format has no session id, so a stop ends the
//! user's oldest session on that host and a close ends their oldest connection to
//! that app; when the extended format carries Qlik's proxy session id, the id
//! decides. A stop or close with nothing to end is reported as unmatched and
//! changes nothing, so no count ever goes below zero.
//!
//! UDP loses datagrams and Qlik may time a session out without a word, so a
//! session with no open connection and no event for the idle timeout ends as
//! *expired* ([`LiveState::expire`]).
//!
//! This type is deterministic: the same events and expiry calls give the same
//! state, which is what lets the journal rebuild it after a restart.

use compact_str::CompactString;
use foldhash::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use smallvec::SmallVec;

mod expire;
mod reconcile;

use crate::event::{Command, Event};

pub use crate::change::{Change, CloseReason, Connection, EndReason, Session, UserKey};

/// A session that just ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// The host it was on.
    pub host: CompactString,
    /// How it ended.
    pub reason: EndReason,
    /// How long it lasted.
    pub duration: Duration,
}

/// What one event (or one expiry pass) did to the state.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The event was a stop or close with nothing to end.
    pub unmatched: bool,
    /// The event's host had not been seen before.
    pub new_host: bool,
    /// Sessions that ended.
    pub ended: Vec<Ended>,
    /// Every change, in order.
    pub changes: Vec<Change>,
}

/// One session as the Qlik proxy API lists it, for [`LiveState::reconcile`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyEntry {
    /// User directory.
    pub user_directory: String,
    /// User id.
    pub user_id: String,
    /// The proxy's session id.
    pub session_id: String,
    /// The virtual proxy prefix (`""` for the default one).
    pub virtual_proxy: String,
}

/// What one reconciliation corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Corrections {
    /// Sessions whosin held that the proxy no longer had.
    pub ended: usize,
    /// Sessions the proxy had that whosin lacked.
    pub started: usize,
}

impl Outcome {
    /// Records that session `s` on `host` ended at `at` (never before it started).
    fn end_session(&mut self, host: CompactString, s: &Session, at: Timestamp, reason: EndReason) {
        let at = at.max(s.started_at);
        self.ended.push(Ended {
            host,
            reason,
            duration: elapsed(s.started_at, at),
        });
        self.changes.push(Change::SessionEnded {
            id: s.id,
            started_at: s.started_at,
            at,
            reason,
        });
    }
}

/// One user on one host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserState {
    /// The directory as first seen.
    pub user_directory: CompactString,
    /// The user id as first seen.
    pub user_id: CompactString,
    /// Open sessions, oldest first (one, nearly always: kept inline).
    pub sessions: SmallVec<[Session; 1]>,
    /// Open connections, oldest first.
    pub connections: SmallVec<[Connection; 1]>,
}

/// One host's users and counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    /// Users with at least one session, by lower-cased `dir\id`.
    pub users: HashMap<CompactString, Box<UserState>>,
    /// Open sessions on this host.
    pub sessions: usize,
    /// Open connections on this host.
    pub connections: usize,
}

/// Counts for one host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Open sessions.
    pub sessions: usize,
    /// Open connections.
    pub connections: usize,
    /// Distinct users with a session.
    pub users: usize,
}

/// Every host's live sessions.
#[derive(Clone, Debug)]
pub struct LiveState {
    hosts: HashMap<CompactString, HostState>,
    idle_timeout: Duration,
    next_id: u64,
    apps: HashSet<Arc<str>>,
}

/// Most distinct app keys shared; beyond this (junk contexts) each
/// connection keeps its own copy, so the interner cannot grow without bound.
const MAX_INTERNED_APPS: usize = 100_000;

/// The app a connection is to: its GUID, else the context without its query.
fn app_key(ev: &Event) -> std::borrow::Cow<'_, str> {
    match &ev.app_id {
        Some(id) => std::borrow::Cow::Borrowed(id),
        None => {
            let c = ev.context.split(['?', '#']).next().unwrap_or("");
            std::borrow::Cow::Owned(c.trim_start_matches('/').to_lowercase())
        }
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    let d = to.duration_since(from);
    d.try_into().unwrap_or(Duration::ZERO)
}

impl LiveState {
    /// An empty state whose sessions expire after `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            hosts: HashMap::default(),
            idle_timeout,
            next_id: 1,
            apps: HashSet::default(),
        }
    }

    /// The shared copy of an app key.
    pub fn intern_app(&mut self, key: &str) -> Arc<str> {
        if let Some(a) = self.apps.get(key) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(key);
        if self.apps.len() < MAX_INTERNED_APPS {
            self.apps.insert(a.clone());
        }
        a
    }

    /// Changes the idle timeout (config reload).
    pub fn set_idle_timeout(&mut self, idle_timeout: Duration) {
        self.idle_timeout = idle_timeout;
    }

    /// The counts of one host (zero when unknown).
    pub fn counts(&self, host: &str) -> Counts {
        self.hosts
            .get(host)
            .map_or_else(Counts::default, |h| Counts {
                sessions: h.sessions,
                connections: h.connections,
                users: h.users.len(),
            })
    }

    /// One host's state, if it was seen.
    pub fn host(&self, host: &str) -> Option<&HostState> {
        self.hosts.get(host)
    }

    /// Users whose sessions across every host are `limit` or more.
    pub fn users_at_limit(&self, limit: usize) -> usize {
        let mut per_user: foldhash::HashMap<&str, usize> = Default::default();
        for (_, h) in self.hosts() {
            for (key, u) in &h.users {
                *per_user.entry(key.as_str()).or_default() += u.sessions.len();
            }
        }
        per_user.values().filter(|n| **n >= limit.max(1)).count()
    }

    /// Every host seen so far, with its state.
    pub fn hosts(&self) -> impl Iterator<Item = (&CompactString, &HostState)> {
        self.hosts.iter()
    }

    /// The next id to give; ids are never reused, also across restarts.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Puts back a session that was open when whosin stopped (recovery).
    pub fn restore_session(
        &mut self,
        host: &str,
        user_directory: &str,
        user_id: &str,
        session: Session,
    ) {
        self.next_id = self.next_id.max(session.id + 1);
        let h = self.hosts.entry(host.into()).or_default();
        let key = UserKey::new(user_directory, user_id);
        let user = h.users.entry(key.as_str().into()).or_insert_with(|| {
            Box::new(UserState {
                user_directory: user_directory.into(),
                user_id: user_id.into(),
                ..Default::default()
            })
        });
        user.sessions.push(session);
        user.sessions.sort_by_key(|s| (s.started_at, s.id));
        h.sessions += 1;
    }

    /// Puts back an open connection (recovery); its user's session must be restored first.
    pub fn restore_connection(
        &mut self,
        host: &str,
        user_key: &str,
        connection: Connection,
    ) -> bool {
        self.next_id = self.next_id.max(connection.id + 1);
        let Some(h) = self.hosts.get_mut(host) else {
            return false;
        };
        let Some(user) = h.users.get_mut(user_key) else {
            return false;
        };
        user.connections.push(connection);
        user.connections.sort_by_key(|c| (c.opened_at, c.id));
        h.connections += 1;
        true
    }

    /// The state the journal recovered (its open sessions and connections).
    pub fn restored(r: &crate::storage::Recovered, idle_timeout: Duration) -> Self {
        let mut state = LiveState::new(idle_timeout);
        state.reserve_ids(r.next_id);
        for s in &r.sessions {
            state.restore_session(&s.host, &s.user_directory, &s.user_id, s.session.clone());
        }
        for c in &r.connections {
            if !state.restore_connection(&c.host, &c.user_key, c.connection.clone()) {
                tracing::warn!(
                    "journal: an open connection of {} on {} has no open session; ignored",
                    c.user_key,
                    c.host
                );
            }
        }
        crate::storage::release_memory();
        state
    }

    /// Makes sure no id below `next` is given again (recovery).
    pub fn reserve_ids(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Applies one accepted, non-blacklisted event.
    pub fn apply(&mut self, ev: &Event) -> Outcome {
        self.apply_keyed(ev, &UserKey::new(&ev.user_directory, &ev.user_id))
    }

    /// [`LiveState::apply`] with the user's key already computed.
    pub fn apply_keyed(&mut self, ev: &Event, key: &UserKey) -> Outcome {
        let mut out = Outcome::default();
        if !self.hosts.contains_key(ev.host.as_str()) {
            out.new_host = true;
            self.hosts.insert(ev.host.clone(), HostState::default());
        }
        let key = key.as_str();
        let sid = ev.proxy_session_id.as_deref();
        let app: Option<Arc<str>> = match ev.command {
            Command::ConnectionOpen | Command::ConnectionClose => {
                Some(self.intern_app(&app_key(ev)))
            }
            _ => None,
        };
        // Ids are taken up front so that the host's entry can stay borrowed.
        let new_session_id = self.next_id;
        let new_connection_id = self.next_id + 1;
        let mut used = 0u64;
        let host = self
            .hosts
            .get_mut(ev.host.as_str())
            .expect("inserted above");

        match ev.command {
            Command::SessionStart => {
                let user = user_entry(&mut host.users, key, ev);
                // A proxy session id names one session: a repeated start of the
                // same id is the same session, not a second one.
                let existing = sid.and_then(|s| {
                    user.sessions
                        .iter()
                        .position(|x| x.proxy_session_id.as_deref() == Some(s))
                });
                if existing.is_none() {
                    let session = new_session(new_session_id, ev, false);
                    used = 1;
                    out.changes.push(started(ev, key, &session));
                    user.sessions.push(session);
                    host.sessions += 1;
                }
                touch(user, ev);
            }
            Command::SessionStop => {
                let Some(user) = host.users.get_mut(key) else {
                    out.unmatched = true;
                    return out;
                };
                // With an id, that session; failing that, the oldest session
                // that never learned an id (its start came without one).
                let pos = match sid {
                    Some(s) => user
                        .sessions
                        .iter()
                        .position(|x| x.proxy_session_id.as_deref() == Some(s))
                        .or_else(|| {
                            user.sessions
                                .iter()
                                .position(|x| x.proxy_session_id.is_none())
                        }),
                    None => (!user.sessions.is_empty()).then_some(0),
                };
                let Some(pos) = pos else {
                    out.unmatched = true;
                    touch(user, ev);
                    return out;
                };
                let s = user.sessions.remove(pos);
                host.sessions -= 1;
                let at = ev.time();
                out.end_session(ev.host.clone(), &s, at, EndReason::Stopped);
                host.connections -= close_with_session(user, sid, at, &mut out.changes);
                if user.sessions.is_empty() {
                    host.users.remove(key);
                }
            }
            Command::ConnectionOpen => {
                let user = user_entry(&mut host.users, key, ev);
                let has_session = match sid {
                    Some(s) => {
                        user.sessions
                            .iter()
                            .any(|x| x.proxy_session_id.as_deref() == Some(s))
                            || bind(user, s, &mut out.changes)
                    }
                    None => !user.sessions.is_empty(),
                };
                let mut conn_id = new_session_id;
                used = 1;
                if !has_session {
                    // A connection needs a session: the start was lost or
                    // happened before whosin was listening.
                    let session = new_session(new_session_id, ev, true);
                    out.changes.push(started(ev, key, &session));
                    user.sessions.push(session);
                    host.sessions += 1;
                    conn_id = new_connection_id;
                    used = 2;
                }
                let app = app.expect("set for connection commands");
                let connection = Connection {
                    id: conn_id,
                    app_id: ev.app_id.as_ref().map(|_| app.clone()),
                    app_key: app,
                    proxy_session_id: ev.proxy_session_id.clone(),
                    opened_at: ev.time(),
                };
                out.changes.push(Change::ConnectionOpened {
                    host: ev.host.clone(),
                    user_key: key.into(),
                    connection: connection.clone(),
                });
                user.connections.push(connection);
                host.connections += 1;
                touch(user, ev);
            }
            Command::ConnectionClose => {
                let Some(user) = host.users.get_mut(key) else {
                    out.unmatched = true;
                    return out;
                };
                let app = app.expect("set for connection commands");
                let pos = user
                    .connections
                    .iter()
                    .position(|c| {
                        c.app_key == app && (sid.is_none() || c.proxy_session_id.as_deref() == sid)
                    })
                    .or_else(|| {
                        // A connection opened without an id can be closed with one.
                        sid.and_then(|_| {
                            user.connections
                                .iter()
                                .position(|c| c.app_key == app && c.proxy_session_id.is_none())
                        })
                    });
                match pos {
                    Some(pos) => {
                        let c = user.connections.remove(pos);
                        host.connections -= 1;
                        out.changes.push(Change::ConnectionClosed {
                            id: c.id,
                            opened_at: c.opened_at,
                            at: ev.time(),
                            reason: CloseReason::Closed,
                        });
                    }
                    None => out.unmatched = true,
                }
                touch(user, ev);
            }
        }
        self.next_id += used;
        out
    }
}

fn user_entry<'a>(
    users: &'a mut HashMap<CompactString, Box<UserState>>,
    key: &str,
    ev: &Event,
) -> &'a mut UserState {
    // A key of a usual length is kept inline: no allocation to look it up.
    users.entry(CompactString::new(key)).or_insert_with(|| {
        Box::new(UserState {
            user_directory: ev.user_directory.clone(),
            user_id: ev.user_id.clone(),
            ..Default::default()
        })
    })
}

/// Gives proxy session id `sid` to the user's oldest session that has none;
/// false when every session already has an id.
fn bind(user: &mut UserState, sid: &str, changes: &mut Vec<Change>) -> bool {
    let Some(s) = user
        .sessions
        .iter_mut()
        .find(|x| x.proxy_session_id.is_none())
    else {
        return false;
    };
    s.proxy_session_id = Some(sid.to_owned());
    changes.push(Change::SessionBound {
        id: s.id,
        proxy_session_id: sid.to_owned(),
    });
    true
}

/// Closes the tabs that end with a session of `user` (already removed): all
/// of them when it was the user's last session on the host, else those of
/// its proxy session id `sid`. Returns how many closed.
fn close_with_session(
    user: &mut UserState,
    sid: Option<&str>,
    at: Timestamp,
    changes: &mut Vec<Change>,
) -> usize {
    let closing: SmallVec<[Connection; 1]> = if user.sessions.is_empty() {
        std::mem::take(&mut user.connections)
    } else if let Some(s) = sid {
        let (gone, kept) = std::mem::take(&mut user.connections)
            .into_iter()
            .partition(|c| c.proxy_session_id.as_deref() == Some(s));
        user.connections = kept;
        gone
    } else {
        SmallVec::new()
    };
    let n = closing.len();
    changes.extend(closing.into_iter().map(|c| Change::ConnectionClosed {
        id: c.id,
        opened_at: c.opened_at,
        at,
        reason: CloseReason::SessionEnded,
    }));
    n
}

fn new_session(id: u64, ev: &Event, implied: bool) -> Session {
    Session {
        id,
        proxy_session_id: ev.proxy_session_id.clone(),
        started_at: ev.time(),
        last_event: ev.received_at,
        user_agent: ev.user_agent.clone(),
        implied,
        reconciled: false,
        virtual_proxy: None,
    }
}

/// The journal's record of a new session, with the user written as in the
/// event that began it (two sessions of `LAB\Anna` and `lab\anna` show as sent).
fn started(ev: &Event, key: &str, session: &Session) -> Change {
    Change::SessionStarted {
        host: ev.host.clone(),
        user_key: key.into(),
        session: session.clone(),
        user_directory: ev.user_directory.clone(),
        user_id: ev.user_id.clone(),
    }
}

/// Records activity on the sessions an event belongs to.
fn touch(user: &mut UserState, ev: &Event) {
    let sid = ev.proxy_session_id.as_deref();
    for s in user.sessions.iter_mut() {
        if sid.is_none() || s.proxy_session_id.as_deref() == sid {
            s.last_event = s.last_event.max(ev.received_at);
            if s.user_agent.is_none() {
                s.user_agent = ev.user_agent.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests;

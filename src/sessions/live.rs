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

use foldhash::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use smallvec::SmallVec;

use crate::event::{Command, Event, UserAgent};

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A `Stop session` ended it.
    Stopped,
    /// No connection and no event for the idle timeout.
    Expired,
    /// The Qlik proxy no longer had it (a lost `Stop session`).
    Reconciled,
    /// whosin tracked `sessions.max_tracked` sessions and connections and
    /// ended this one, idle the longest, to make room.
    Evicted,
}

impl EndReason {
    /// The name stored in the journal and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::Expired => "expired",
            EndReason::Reconciled => "reconciled",
            EndReason::Evicted => "evicted",
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A `Close connection` ended it.
    Closed,
    /// The session it belonged to ended (the user's last session on the host,
    /// or the session with its proxy session id).
    SessionEnded,
}

impl CloseReason {
    /// The name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::SessionEnded => "session_ended",
        }
    }
}

/// A session that just ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// The host it was on.
    pub host: String,
    /// How it ended.
    pub reason: EndReason,
    /// How long it lasted.
    pub duration: Duration,
}

/// One change to the state, in order: what the journal records so that the
/// state at any instant can be answered later, and rebuilt after a restart.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A session began (by a start, or implied by a connection).
    SessionStarted {
        /// The host.
        host: String,
        /// The user's key.
        user_key: String,
        /// The session as it now is.
        session: Session,
        /// Directory as sent.
        user_directory: String,
        /// User id as sent.
        user_id: String,
    },
    /// A session without a proxy session id learned its id from a connection
    /// (Qlik gives the id on connection events, not always on the start).
    SessionBound {
        /// The session's id.
        id: u64,
        /// Qlik's proxy session id.
        proxy_session_id: String,
    },
    /// The proxy API told which virtual proxy a session belongs to.
    SessionVirtualProxy {
        /// The session's id.
        id: u64,
        /// The virtual proxy prefix (`""` for the default one).
        virtual_proxy: String,
    },
    /// A session ended.
    SessionEnded {
        /// The session's id.
        id: u64,
        /// When it started (so the journal need not look it up).
        started_at: Timestamp,
        /// When.
        at: Timestamp,
        /// Why.
        reason: EndReason,
    },
    /// A connection opened.
    ConnectionOpened {
        /// The host.
        host: String,
        /// The user's key.
        user_key: String,
        /// The connection as it now is.
        connection: Connection,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The connection's id.
        id: u64,
        /// When it opened (so the journal need not look it up).
        opened_at: Timestamp,
        /// When.
        at: Timestamp,
        /// Why.
        reason: CloseReason,
    },
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
    fn end_session(&mut self, host: String, s: &Session, at: Timestamp, reason: EndReason) {
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

/// One open proxy session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// whosin's id for it (unique across restarts; the journal's key).
    pub id: u64,
    /// Qlik's proxy session id, when the extended format carried one.
    pub proxy_session_id: Option<String>,
    /// When it started (event time), or when whosin first saw it.
    pub started_at: Timestamp,
    /// When whosin last received an event of this session.
    pub last_event: Timestamp,
    /// Browser and OS, from the first event that had a user agent.
    pub user_agent: Option<Arc<UserAgent>>,
    /// It was not started by a `Start session` but implied by a connection.
    pub implied: bool,
    /// It was started by reconciliation: the proxy had it, whosin had not
    /// heard of it (a lost `Start session`, or one from before whosin ran).
    pub reconciled: bool,
    /// The virtual proxy it belongs to, once the proxy API has told.
    pub virtual_proxy: Option<String>,
}

/// One open connection (an app or hub tab).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// whosin's id for it.
    pub id: u64,
    /// The app GUID, or the context without its query when there is none
    /// (shared: a site has few apps and many tabs on them).
    pub app_key: Arc<str>,
    /// The app GUID, when the context had one (the same allocation as `app_key`).
    pub app_id: Option<Arc<str>>,
    /// Qlik's proxy session id, when the extended format carried one.
    pub proxy_session_id: Option<String>,
    /// When it opened (event time).
    pub opened_at: Timestamp,
}

/// One user on one host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserState {
    /// The directory as first seen.
    pub user_directory: String,
    /// The user id as first seen.
    pub user_id: String,
    /// Open sessions, oldest first (one, nearly always: kept inline).
    pub sessions: SmallVec<[Session; 1]>,
    /// Open connections, oldest first.
    pub connections: SmallVec<[Connection; 1]>,
}

/// One host's users and counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    /// Users with at least one session, by lower-cased `dir\id`.
    pub users: HashMap<String, Box<UserState>>,
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
    hosts: HashMap<String, HostState>,
    idle_timeout: Duration,
    next_id: u64,
    apps: HashSet<Arc<str>>,
}

/// Most distinct app keys shared; beyond this (junk contexts) each
/// connection keeps its own copy, so the interner cannot grow without bound.
const MAX_INTERNED_APPS: usize = 100_000;

/// The key a user is tracked under: `dir\id`, lower-cased, computed once per
/// event and shared by the blacklist and the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKey {
    key: String,
    dir_len: usize,
}

impl UserKey {
    /// The key of `dir\id`.
    pub fn new(dir: &str, id: &str) -> Self {
        let mut key = String::with_capacity(dir.len() + id.len() + 1);
        push_lower(&mut key, dir);
        let dir_len = key.len();
        key.push('\\');
        push_lower(&mut key, id);
        Self { key, dir_len }
    }

    /// The whole key, `dir\id`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The lower-cased directory.
    pub fn dir(&self) -> &str {
        &self.key[..self.dir_len]
    }

    /// The lower-cased user id.
    pub fn id(&self) -> &str {
        &self.key[self.dir_len + 1..]
    }
}

fn push_lower(out: &mut String, s: &str) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| b.to_ascii_lowercase() as char));
    } else {
        out.push_str(&s.to_lowercase());
    }
}

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
    pub fn hosts(&self) -> impl Iterator<Item = (&String, &HostState)> {
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
        let h = self.hosts.entry(host.to_owned()).or_default();
        let key = UserKey::new(user_directory, user_id);
        let user = h.users.entry(key.as_str().to_owned()).or_insert_with(|| {
            Box::new(UserState {
                user_directory: user_directory.to_owned(),
                user_id: user_id.to_owned(),
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
        if !self.hosts.contains_key(&ev.host) {
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
        let host = self.hosts.get_mut(&ev.host).expect("inserted above");

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
                    user_key: key.to_owned(),
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

    /// Corrects the sessions of one Qlik proxy against its own list, taken
    /// at `listed_at`: on `hosts` (the live hosts that belong to the proxy), a
    /// session the proxy no longer has ends as reconciled (its `Stop session`
    /// was lost), and a session the proxy has that whosin lacks starts as
    /// reconciled, on the user's host or else on `default_host` (its `Start
    /// session` was lost, or came before whosin listened). Sessions with an
    /// event after `listed_at` are left alone: they are newer than the list.
    /// Sessions the proxy confirms learn their virtual proxy, and count as
    /// active (so idle expiry does not end what the proxy still holds).
    pub fn reconcile(
        &mut self,
        hosts: &[String],
        default_host: &str,
        listed: &[ProxyEntry],
        listed_at: Timestamp,
    ) -> (Outcome, Corrections) {
        let mut out = Outcome::default();
        let mut fixes = Corrections::default();
        let mut by_user: HashMap<String, Vec<&ProxyEntry>> = HashMap::default();
        for e in listed {
            by_user
                .entry(
                    UserKey::new(&e.user_directory, &e.user_id)
                        .as_str()
                        .to_owned(),
                )
                .or_default()
                .push(e);
        }
        // 1. What whosin holds: confirm, or end.
        for host in hosts {
            let Some(h) = self.hosts.get_mut(host) else {
                continue;
            };
            let keys: Vec<String> = h.users.keys().cloned().collect();
            for key in keys {
                let theirs = by_user.get(&key).map_or(&[][..], Vec::as_slice);
                let user = h.users.get_mut(&key).expect("listed above");
                let only_vp = match theirs.first() {
                    Some(first)
                        if theirs
                            .iter()
                            .all(|e| e.virtual_proxy == first.virtual_proxy) =>
                    {
                        Some(first.virtual_proxy.clone())
                    }
                    _ => None,
                };
                let mut ending = Vec::new();
                for (i, s) in user.sessions.iter_mut().enumerate() {
                    if s.started_at > listed_at || s.last_event > listed_at {
                        continue;
                    }
                    let vp = match &s.proxy_session_id {
                        Some(id) => match theirs.iter().find(|e| &e.session_id == id) {
                            Some(e) => Some(e.virtual_proxy.clone()),
                            None => {
                                ending.push(i);
                                continue;
                            }
                        },
                        None if theirs.is_empty() => {
                            ending.push(i);
                            continue;
                        }
                        None => only_vp.clone(),
                    };
                    s.last_event = s.last_event.max(listed_at);
                    if let Some(vp) = vp
                        && s.virtual_proxy.as_ref() != Some(&vp)
                    {
                        s.virtual_proxy = Some(vp.clone());
                        out.changes.push(Change::SessionVirtualProxy {
                            id: s.id,
                            virtual_proxy: vp,
                        });
                    }
                }
                for i in ending.into_iter().rev() {
                    let s = user.sessions.remove(i);
                    h.sessions -= 1;
                    fixes.ended += 1;
                    out.end_session(
                        host.clone(),
                        &s,
                        listed_at.max(s.started_at),
                        EndReason::Reconciled,
                    );
                    h.connections -= close_with_session(
                        user,
                        s.proxy_session_id.as_deref(),
                        listed_at,
                        &mut out.changes,
                    );
                }
                if user.sessions.is_empty() {
                    h.users.remove(&key);
                }
            }
        }
        // 2. What the proxy holds and whosin lacks: start.
        for (key, theirs) in &by_user {
            let mut ids: HashSet<&str> = HashSet::default();
            let mut without_id = 0;
            let mut home: Option<&String> = None;
            for host in hosts {
                if let Some(u) = self.hosts.get(host).and_then(|h| h.users.get(key)) {
                    home.get_or_insert(host);
                    for s in &u.sessions {
                        match &s.proxy_session_id {
                            Some(id) => {
                                ids.insert(id.as_str());
                            }
                            None => without_id += 1,
                        }
                    }
                }
            }
            // Sessions without an id may be any of the proxy's; only what
            // they cannot account for is missing.
            let missing: Vec<&ProxyEntry> = theirs
                .iter()
                .filter(|e| !ids.contains(e.session_id.as_str()))
                .skip(without_id)
                .copied()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let host = home.cloned().unwrap_or_else(|| default_host.to_owned());
            for e in missing {
                let session = Session {
                    id: self.next_id,
                    proxy_session_id: Some(e.session_id.clone()),
                    started_at: listed_at,
                    last_event: listed_at,
                    user_agent: None,
                    implied: false,
                    reconciled: true,
                    virtual_proxy: Some(e.virtual_proxy.clone()),
                };
                self.next_id += 1;
                fixes.started += 1;
                out.changes.push(Change::SessionStarted {
                    host: host.clone(),
                    user_key: key.clone(),
                    session: session.clone(),
                    user_directory: e.user_directory.clone(),
                    user_id: e.user_id.clone(),
                });
                let h = self.hosts.entry(host.clone()).or_default();
                let user = h.users.entry(key.clone()).or_insert_with(|| {
                    Box::new(UserState {
                        user_directory: e.user_directory.clone(),
                        user_id: e.user_id.clone(),
                        ..Default::default()
                    })
                });
                user.sessions.push(session);
                h.sessions += 1;
            }
        }
        (out, fixes)
    }

    /// How many sessions and connections are tracked, on every host.
    pub fn tracked(&self) -> usize {
        self.hosts
            .values()
            .map(|h| h.sessions + h.connections)
            .sum()
    }

    /// Ends sessions (with their tabs), the longest idle first, until at most
    /// `max` sessions and connections are tracked. A hundredth of `max` more
    /// is freed than needed, so the scan over every session this takes runs
    /// once per that many new entries, not once per event.
    pub fn evict(&mut self, max: usize, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let mut total = self.tracked();
        if total <= max {
            return out;
        }
        let target = max - max / 100;
        let mut idle: Vec<(Timestamp, u64, &String, &String)> = Vec::new();
        for (host, h) in &self.hosts {
            for (key, user) in &h.users {
                idle.extend(
                    user.sessions
                        .iter()
                        .map(|s| (s.last_event, s.id, host, key)),
                );
            }
        }
        idle.sort_unstable_by_key(|&(last, id, ..)| (last, id));
        let idle: Vec<(u64, String, String)> = idle
            .into_iter()
            .map(|(_, id, host, key)| (id, host.clone(), key.clone()))
            .collect();
        for (id, host, key) in idle {
            if total <= target {
                break;
            }
            let h = self.hosts.get_mut(&host).expect("listed above");
            let user = h.users.get_mut(&key).expect("listed above");
            let Some(i) = user.sessions.iter().position(|s| s.id == id) else {
                continue;
            };
            let s = user.sessions.remove(i);
            h.sessions -= 1;
            out.end_session(host.clone(), &s, now, EndReason::Evicted);
            let closed =
                close_with_session(user, s.proxy_session_id.as_deref(), now, &mut out.changes);
            h.connections -= closed;
            total -= 1 + closed;
            if user.sessions.is_empty() {
                h.users.remove(&key);
            }
        }
        out
    }

    /// Ends, as expired, every session with no open connection and no event
    /// for the idle timeout as of `now`.
    pub fn expire(&mut self, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let timeout = self.idle_timeout;
        for (name, host) in self.hosts.iter_mut() {
            let mut dropped_connections = 0;
            let mut expired_sessions = 0;
            host.users.retain(|_, user| {
                let conns = &user.connections;
                let mut ended_at: Option<Timestamp> = None;
                user.sessions.retain(|s| {
                    let busy = conns.iter().any(|c| match &s.proxy_session_id {
                        Some(id) => c.proxy_session_id.as_ref() == Some(id),
                        None => c.proxy_session_id.is_none(),
                    });
                    if busy || elapsed(s.last_event, now) < timeout {
                        return true;
                    }
                    // Qlik timed it out one idle timeout after its last event;
                    // that is when it ended, even if whosin notices later
                    // (after a restart, say).
                    let at = s
                        .last_event
                        .checked_add(timeout)
                        .map_or(now, |t| t.min(now))
                        .max(s.started_at);
                    out.end_session(name.clone(), s, at, EndReason::Expired);
                    ended_at = ended_at.max(Some(at));
                    expired_sessions += 1;
                    false
                });
                if user.sessions.is_empty() {
                    dropped_connections += user.connections.len();
                    let at = ended_at.unwrap_or(now);
                    out.changes.extend(user.connections.drain(..).map(|c| {
                        Change::ConnectionClosed {
                            id: c.id,
                            opened_at: c.opened_at,
                            at,
                            reason: CloseReason::SessionEnded,
                        }
                    }));
                    return false;
                }
                true
            });
            host.sessions -= expired_sessions;
            host.connections -= dropped_connections;
        }
        out
    }
}

fn user_entry<'a>(
    users: &'a mut HashMap<String, Box<UserState>>,
    key: &str,
    ev: &Event,
) -> &'a mut UserState {
    users.entry(key.to_owned()).or_insert_with(|| {
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
        user_key: key.to_owned(),
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
mod tests {
    use super::*;
    use crate::event::{Format, Stream};

    fn ev(cmd: Command, host: &str, user: &str, ctx: &str, secs: i64) -> Event {
        let (dir, id) = user.split_once('\\').unwrap();
        let at = Timestamp::from_second(1_800_000_000 + secs).unwrap();
        Event {
            received_at: at,
            source_time: None,
            source_seq: None,
            format: Format::Legacy,
            stream: Stream::Session,
            host: host.into(),
            command: cmd,
            user_directory: dir.into(),
            user_id: id.into(),
            origin: String::new(),
            context: ctx.into(),
            proxy_session_id: None,
            message: String::new(),
            app_id: crate::ingest::parse::app_id_of(ctx),
            user_agent: None,
        }
    }

    fn with_sid(mut e: Event, sid: &str) -> Event {
        e.proxy_session_id = Some(sid.into());
        e.format = Format::Extended;
        e
    }

    const APP: &str = "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
    use Command::*;

    fn counts(s: &LiveState, h: &str) -> (usize, usize, usize) {
        let c = s.counts(h);
        (c.sessions, c.connections, c.users)
    }

    fn listed(user: &str, sid: &str, vp: &str) -> ProxyEntry {
        let (dir, id) = user.split_once('\\').unwrap();
        ProxyEntry {
            user_directory: dir.into(),
            user_id: id.into(),
            session_id: sid.into(),
            virtual_proxy: vp.into(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn reconciliation_ends_a_phantom_and_its_connections() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
        s.apply(&ev(SessionStart, "n1", "LAB\\bob", "", 2));
        // The proxy has bob, not anna: anna's stop was lost.
        let (out, fixes) = s.reconcile(
            &["n1".into()],
            "n1",
            &[listed("lab\\BOB", "s-b", "")],
            at(60),
        );
        assert_eq!(
            fixes,
            Corrections {
                ended: 1,
                started: 0
            }
        );
        assert_eq!(counts(&s, "n1"), (1, 0, 1));
        assert_eq!(out.ended[0].reason, EndReason::Reconciled);
        assert!(out.changes.iter().any(|c| matches!(
            c,
            Change::ConnectionClosed {
                reason: CloseReason::SessionEnded,
                ..
            }
        )));
        // Bob's session learned its virtual proxy.
        assert!(out.changes.iter().any(|c| matches!(c, Change::SessionVirtualProxy { virtual_proxy, .. } if virtual_proxy.is_empty())));
    }

    #[test]
    fn reconciliation_starts_a_missed_session_once() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        let list = [listed("CORP\\carl", "s-c", "finance")];
        // whosin never saw the node: the session goes on the default host.
        let (out, fixes) = s.reconcile(&[], "sense-node1", &list, at(60));
        assert_eq!(
            fixes,
            Corrections {
                ended: 0,
                started: 1
            }
        );
        assert_eq!(counts(&s, "sense-node1"), (1, 0, 1));
        let u = &s.host("sense-node1").unwrap().users["corp\\carl"];
        assert!(u.sessions[0].reconciled);
        assert_eq!(u.sessions[0].virtual_proxy.as_deref(), Some("finance"));
        assert_eq!(u.sessions[0].proxy_session_id.as_deref(), Some("s-c"));
        assert!(matches!(out.changes[0], Change::SessionStarted { .. }));
        // The next run finds it: nothing more to do.
        let (_, fixes) = s.reconcile(&["sense-node1".into()], "sense-node1", &list, at(120));
        assert_eq!(fixes, Corrections::default());
        assert_eq!(counts(&s, "sense-node1"), (1, 0, 1));
    }

    #[test]
    fn reconciliation_leaves_a_correct_picture_and_newer_sessions_alone() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
        s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\bob", "", 1), "s-b"));
        // Dora logs in after the proxy was asked: not a phantom.
        s.apply(&ev(SessionStart, "n1", "LAB\\dora", "", 100));
        let before = s.clone();
        let list = [
            listed("LAB\\anna", "s-a", "sales"),
            listed("LAB\\bob", "s-b", "sales"),
        ];
        let (out, fixes) = s.reconcile(&["n1".into()], "n1", &list, at(60));
        assert_eq!(fixes, Corrections::default());
        assert_eq!(s.counts("n1"), before.counts("n1"));
        assert!(out.ended.is_empty());
        assert!(
            out.changes
                .iter()
                .all(|c| matches!(c, Change::SessionVirtualProxy { .. }))
        );
        let users = &s.host("n1").unwrap().users;
        assert_eq!(
            users["lab\\anna"].sessions[0].virtual_proxy.as_deref(),
            Some("sales")
        );
        assert_eq!(users["lab\\dora"].sessions[0].virtual_proxy, None);
    }

    #[test]
    fn sessions_are_counted_not_set_and_users_fold_case() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        assert!(
            s.apply(&ev(SessionStart, "n1", "LAB\\Anna", "", 0))
                .new_host
        );
        assert!(
            !s.apply(&ev(SessionStart, "n1", "lab\\anna", "", 1))
                .new_host
        );
        assert_eq!(counts(&s, "n1"), (2, 0, 1));
        s.apply(&ev(SessionStop, "n1", "LAB\\ANNA", "", 2));
        assert_eq!(counts(&s, "n1"), (1, 0, 1));
        s.apply(&ev(SessionStop, "n1", "lab\\anna", "", 3));
        assert_eq!(counts(&s, "n1"), (0, 0, 0));
    }

    #[test]
    fn stop_without_start_is_counted_not_negative() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        let o = s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 0));
        assert!(o.unmatched);
        assert!(o.new_host);
        let o = s.apply(&ev(ConnectionClose, "n1", "LAB\\anna", APP, 0));
        assert!(o.unmatched);
        assert_eq!(counts(&s, "n1"), (0, 0, 0));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 1));
        assert!(
            s.apply(&ev(ConnectionClose, "n1", "LAB\\anna", APP, 2))
                .unmatched
        );
        assert_eq!(counts(&s, "n1"), (1, 0, 1));
    }

    #[test]
    fn legacy_stop_ends_the_oldest_session_and_reports_its_duration() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 100));
        let o = s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 160));
        assert_eq!(o.ended[0].duration, Duration::from_secs(160));
        assert_eq!(o.ended[0].reason, EndReason::Stopped);
    }

    #[test]
    fn connections_count_per_app_and_close_the_oldest() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "/hub/", 0));
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
        s.apply(&ev(
            ConnectionOpen,
            "n1",
            "LAB\\anna",
            &format!("{APP}?reloaduri=x"),
            2,
        ));
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", "/hub/", 3));
        assert_eq!(counts(&s, "n1"), (1, 3, 1));
        s.apply(&ev(
            ConnectionClose,
            "n1",
            "LAB\\anna",
            &format!("{APP}?reloaduri=y"),
            4,
        ));
        assert_eq!(counts(&s, "n1"), (1, 2, 1));
        let u = &s.hosts["n1"].users["lab\\anna"];
        assert_eq!(
            u.connections[0].opened_at,
            Timestamp::from_second(1_800_000_002).unwrap()
        );
    }

    #[test]
    fn open_without_session_implies_one_and_last_stop_closes_connections() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 0));
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
        assert!(s.hosts["n1"].users["lab\\anna"].sessions[0].implied);
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
        assert_eq!(counts(&s, "n1"), (1, 2, 1));
        s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 2));
        assert_eq!(counts(&s, "n1"), (0, 0, 0));
    }

    #[test]
    fn hosts_are_separate() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
        s.apply(&ev(SessionStart, "n2", "LAB\\anna", "", 0));
        assert!(
            s.apply(&ev(SessionStop, "n3", "LAB\\anna", "", 0))
                .unmatched
        );
        assert_eq!(counts(&s, "n1"), (1, 0, 1));
        assert_eq!(counts(&s, "n2"), (1, 0, 1));
        assert_eq!(counts(&s, "n3"), (0, 0, 0));
    }

    #[test]
    fn proxy_session_id_decides() {
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 0), "a"));
        s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 1), "b"));
        s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 2), "b"));
        assert_eq!(counts(&s, "n1"), (2, 0, 1));
        s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\anna", APP, 3),
            "a",
        ));
        s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\anna", APP, 4),
            "b",
        ));
        assert_eq!(counts(&s, "n1"), (2, 2, 1));
        // Stopping b ends b (not the older a) and b's connection.
        let o = s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\anna", "", 5), "b"));
        assert_eq!(o.ended[0].duration, Duration::from_secs(4));
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
        assert_eq!(
            s.hosts["n1"].users["lab\\anna"].sessions[0]
                .proxy_session_id
                .as_deref(),
            Some("a")
        );
        assert!(
            s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\anna", "", 6), "zz"))
                .unmatched
        );
        assert!(
            s.apply(&with_sid(
                ev(ConnectionClose, "n1", "LAB\\anna", APP, 7),
                "b"
            ))
            .unmatched
        );
        // An open with an unknown id implies that session.
        s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\anna", APP, 8),
            "c",
        ));
        assert_eq!(counts(&s, "n1"), (2, 2, 1));
    }

    #[test]
    fn a_start_without_id_is_bound_by_its_first_connection() {
        // Qlik gives the proxy session id on connection events; the start may lack it.
        let mut s = LiveState::new(Duration::from_secs(1800));
        s.apply(&ev(SessionStart, "n1", "LAB\\karin", "", 0));
        let o = s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\karin", APP, 1),
            "x1",
        ));
        assert!(matches!(o.changes[0], Change::SessionBound { .. }));
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
        s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\karin", APP, 2),
            "x1",
        ));
        assert_eq!(counts(&s, "n1"), (1, 2, 1));
        // A second id with no unbound session left implies a second session.
        s.apply(&with_sid(
            ev(ConnectionOpen, "n1", "LAB\\karin", APP, 3),
            "x2",
        ));
        assert_eq!(counts(&s, "n1"), (2, 3, 1));
        assert!(
            !s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\karin", "", 4), "x1"))
                .unmatched
        );
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
        // A stop with an unknown id ends the oldest session that never had an id.
        s.apply(&ev(SessionStart, "n1", "LAB\\karin", "", 5));
        assert!(
            !s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\karin", "", 6), "zz"))
                .unmatched
        );
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
    }

    #[test]
    fn over_the_cap_the_longest_idle_sessions_are_evicted_with_their_tabs() {
        let mut s = LiveState::new(Duration::from_secs(3600));
        // 200 users, each with a session and one tab: 400 tracked.
        for i in 0..200 {
            let u = format!("LAB\\u{i}");
            s.apply(&ev(Command::SessionStart, "n1", &u, "", i));
            s.apply(&ev(Command::ConnectionOpen, "n1", &u, "/app/x", i));
        }
        assert_eq!(s.tracked(), 400);
        assert!(s.evict(400, at(500)).changes.is_empty());
        // u0 becomes the most recently active.
        s.apply(&ev(Command::ConnectionOpen, "n1", "LAB\\u0", "/app/y", 300));
        let out = s.evict(400, at(500));
        // 401 > 400: freed down to 396 (a hundredth ahead), two entries per
        // user, the longest idle first: u1, u2 and u3 go; u0 is busy again.
        assert_eq!(s.tracked(), 395);
        assert_eq!(out.ended.len(), 3);
        assert!(out.ended.iter().all(|e| e.reason == EndReason::Evicted));
        let users = &s.host("n1").unwrap().users;
        for gone in ["lab\\u1", "lab\\u2", "lab\\u3"] {
            assert!(!users.contains_key(gone), "{gone} not evicted");
        }
        assert!(users.contains_key("lab\\u0") && users.contains_key("lab\\u4"));
        let closed = out
            .changes
            .iter()
            .filter(|c| matches!(c, Change::ConnectionClosed { .. }))
            .count();
        assert_eq!(closed, 3);
        assert_eq!(counts(&s, "n1"), (197, 198, 197));
    }

    #[test]
    fn idle_sessions_expire_but_not_while_a_connection_is_open() {
        let mut s = LiveState::new(Duration::from_secs(60));
        s.apply(&ev(SessionStart, "n1", "LAB\\idle", "", 0));
        s.apply(&ev(SessionStart, "n1", "LAB\\busy", "", 0));
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\busy", APP, 1));
        s.apply(&ev(SessionStart, "n1", "LAB\\late", "", 50));
        let at = |secs: i64| Timestamp::from_second(1_800_000_000 + secs).unwrap();
        assert!(s.expire(at(59)).ended.is_empty());
        let ended = s.expire(at(61)).ended;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].reason, EndReason::Expired);
        // It ended one idle timeout after its last event, not when noticed.
        assert_eq!(ended[0].duration, Duration::from_secs(60));
        assert_eq!(counts(&s, "n1"), (2, 1, 2));
        // Activity resets the clock.
        s.apply(&ev(ConnectionOpen, "n1", "LAB\\late", APP, 100));
        s.apply(&ev(ConnectionClose, "n1", "LAB\\late", APP, 101));
        assert!(s.expire(at(150)).ended.is_empty());
        assert_eq!(s.expire(at(162)).ended.len(), 1);
        assert_eq!(counts(&s, "n1"), (1, 1, 1));
    }

    /// The counts a host reports, recomputed from its users.
    fn recount(s: &LiveState, h: &str) -> (usize, usize, usize) {
        s.host(h).map_or((0, 0, 0), |hs| {
            (
                hs.users.values().map(|u| u.sessions.len()).sum(),
                hs.users.values().map(|u| u.connections.len()).sum(),
                hs.users.values().filter(|u| !u.sessions.is_empty()).count(),
            )
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

        /// Any sequence of events, expiries and evictions keeps every host's
        /// counts equal to what its users hold, keeps users only while they
        /// have a session, and keeps the state within the cap.
        #[test]
        fn counts_always_match_the_users_and_the_cap_holds(
            steps in proptest::collection::vec(
                (0u8..6, 0usize..2, 0usize..5, 0usize..3, 0i64..4000),
                1..200,
            ),
            cap in 100usize..140,
        ) {
            let mut s = LiveState::new(Duration::from_secs(600));
            let cmds = [
                Command::SessionStart,
                Command::SessionStop,
                Command::ConnectionOpen,
                Command::ConnectionClose,
            ];
            let mut t = 0;
            for (op, host, user, app, dt) in steps {
                t += dt;
                let host = ["n1", "n2"][host];
                let user = format!("LAB\\u{user}");
                match op {
                    0..=3 => {
                        let ctx = format!("/app/{app}");
                        s.apply(&ev(cmds[op as usize], host, &user, &ctx, t));
                    }
                    4 => {
                        s.expire(at(t));
                    }
                    _ => {
                        s.evict(cap, at(t));
                        proptest::prop_assert!(s.tracked() <= cap);
                    }
                }
                for h in ["n1", "n2"] {
                    proptest::prop_assert_eq!(counts(&s, h), recount(&s, h));
                }
            }
        }
    }
}

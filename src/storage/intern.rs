//! The write side of the compact journal: events and changes become rows of
//! small integers, and each distinct string becomes a dictionary row once.
//!
//! The [`Encoder`] runs on the core thread, so what waits in memory for the
//! disk is already compact (about 100 bytes an event, where the event itself
//! holds a dozen strings). It remembers which strings it gave ids to; the
//! writer only appends. Its memory is bounded: a dictionary that fills up
//! starts over with new ids (values may then be stored twice, which readers
//! do not mind), and the texts (contexts, messages, proxy session ids, most of
//! them short-lived) start over in numbered generations, which is also what
//! lets retention drop old texts without scanning the events.

use compact_str::CompactString;
use foldhash::HashMap;
use rusqlite::{Connection, OptionalExtension};

use super::template::{USER_MARK, take_user_out};
use crate::change::{Change, UserKey};
use crate::event::{Event, Format, Stream, UserAgent};

/// Which dictionary table a new value goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dict {
    /// `hosts(name)`.
    Host,
    /// `users(directory, user_id, key)`.
    User,
    /// `agents(browser, browser_major, os, os_version)`.
    Agent,
    /// `targets(key, app_id)`.
    Target,
    /// `texts(text)`.
    Text,
}

/// One row for the writer to append or apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// A new dictionary value. Never dropped (rows after it refer to it).
    Value(Dict, u32, Box<[Option<Box<str>>]>),
    /// The texts start over at `first_id` with the event `first_seq`.
    Generation { first_id: u32, first_seq: u64 },
    /// An event.
    Event(EventRow),
    /// A session began.
    SessionStarted(SessionRow),
    /// A session learned its proxy session id.
    SessionBound { id: u64, proxy_session_id: Box<str> },
    /// A session learned its virtual proxy.
    SessionVirtualProxy { id: u64, virtual_proxy: Box<str> },
    /// A session ended (`started_at` for its R*Tree entry).
    SessionEnded {
        id: u64,
        started_at: i64,
        at: i64,
        reason: u8,
    },
    /// A connection opened.
    ConnectionOpened(ConnectionRow),
    /// A connection closed.
    ConnectionClosed {
        id: u64,
        opened_at: i64,
        at: i64,
        reason: u8,
    },
}

impl Row {
    /// Rows the writer may drop when the disk refuses writes for long.
    pub fn droppable(&self) -> bool {
        !matches!(self, Row::Value(..) | Row::Generation { .. })
    }
}

/// One event as the journal stores it (ids refer to the dictionaries; 0 is none).
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub seq: u64,
    pub time: i64,
    pub received: Option<i64>,
    pub source_seq: Option<u64>,
    pub kind: u8,
    pub host: u32,
    pub user: u32,
    pub origin: u32,
    pub context: u32,
    pub message: u32,
    pub app: u32,
    pub session: u32,
    pub agent: u32,
}

/// A session as the journal stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRow {
    pub id: u64,
    pub host: u32,
    pub user: u32,
    pub agent: u32,
    pub proxy_session_id: Option<Box<str>>,
    pub virtual_proxy: Option<Box<str>>,
    pub started_at: i64,
    pub flags: u8,
}

/// A connection as the journal stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionRow {
    pub id: u64,
    pub host: u32,
    pub user: u32,
    pub target: u32,
    pub proxy_session_id: Option<Box<str>>,
    pub opened_at: i64,
}

/// `kind` bits (see the schema).
pub mod kind {
    /// The connection stream.
    pub const CONNECTION: u8 = 1 << 2;
    /// The extended format.
    pub const EXTENDED: u8 = 1 << 3;
    /// The message is stored with the user's name replaced by [`USER_MARK`].
    pub const TEMPLATED: u8 = 1 << 4;
}

/// How many values a dictionary holds before it starts over.
const MAX_HOSTS: usize = 10_000;
const MAX_USERS: usize = 1_000_000;
const MAX_AGENTS: usize = 100_000;
const MAX_TARGETS: usize = 200_000;
/// Texts per generation (about 30 MiB of memory at most).
const MAX_TEXTS: usize = 250_000;
/// Most texts one event has (origin, context, message, proxy session id).
const TEXTS_PER_EVENT: usize = 4;

/// A value → id map that starts over when full.
struct Table<K> {
    ids: HashMap<K, u32>,
    next: u32,
    max: usize,
}

impl<K: std::hash::Hash + Eq> Table<K> {
    fn new(next: u32, max: usize) -> Self {
        Self {
            ids: HashMap::default(),
            next: next.max(1),
            max,
        }
    }

    /// The id of `key`, and whether it is new.
    fn id<Q>(&mut self, key: &Q, own: impl FnOnce() -> K) -> (u32, bool)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(&id) = self.ids.get(key) {
            return (id, false);
        }
        if self.ids.len() >= self.max {
            self.ids.clear();
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.ids.insert(own(), id);
        (id, true)
    }
}

/// Turns events and changes into rows, giving new strings their ids.
///
/// Keys of up to 24 bytes (nearly every host, user and app key) are kept
/// inside the table's own slots: a lookup that had to follow a pointer to
/// compare its key missed the cache a second time, and the users' table
/// alone was a sixth of the core thread.
pub struct Encoder {
    hosts: Table<CompactString>,
    /// By `directory U+0001 user_id`, as sent.
    users: Table<CompactString>,
    agents: Table<UserAgent>,
    targets: Table<CompactString>,
    texts: Table<CompactString>,
    /// The texts' generation needs its first row before the next text.
    generation_written: bool,
    out: Vec<Row>,
    scratch: String,
    /// Its message with the user's name taken out.
    template: String,
}

fn max_id(conn: &Connection, table: &str) -> rusqlite::Result<u32> {
    let v: Option<i64> = conn
        .query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(u32::try_from(v.unwrap_or(0) + 1).unwrap_or(1))
}

fn text(s: &str) -> Option<Box<str>> {
    Some(s.into())
}

impl Encoder {
    /// An encoder continuing the journal behind `conn`: ids after the ones it
    /// has, the small dictionaries loaded (so a restart adds no duplicates),
    /// and a new generation of texts.
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut e = Self {
            hosts: Table::new(max_id(conn, "hosts")?, MAX_HOSTS),
            users: Table::new(max_id(conn, "users")?, MAX_USERS),
            agents: Table::new(max_id(conn, "agents")?, MAX_AGENTS),
            targets: Table::new(max_id(conn, "targets")?, MAX_TARGETS),
            texts: Table::new(max_id(conn, "texts")?, MAX_TEXTS),
            generation_written: false,
            out: Vec::new(),
            scratch: String::new(),
            template: String::new(),
        };
        let mut stmt = conn.prepare("SELECT id, name FROM hosts ORDER BY id")?;
        for r in stmt.query_map([], |r| {
            Ok((r.get::<_, u32>("id")?, r.get::<_, String>("name")?))
        })? {
            let (id, name) = r?;
            e.hosts.ids.insert(name.into(), id);
        }
        let mut stmt = conn.prepare("SELECT id, directory, user_id FROM users ORDER BY id")?;
        for r in stmt.query_map([], |r| {
            Ok((
                r.get::<_, u32>("id")?,
                r.get::<_, String>("directory")?,
                r.get::<_, String>("user_id")?,
            ))
        })? {
            let (id, dir, uid) = r?;
            e.users
                .ids
                .insert(compact_str::format_compact!("{dir}\u{1}{uid}"), id);
        }
        let mut stmt = conn
            .prepare("SELECT id, browser, browser_major, os, os_version FROM agents ORDER BY id")?;
        for r in stmt.query_map([], |r| {
            Ok((
                r.get::<_, u32>("id")?,
                UserAgent {
                    browser: r.get("browser")?,
                    browser_major: r.get("browser_major")?,
                    os: r.get("os")?,
                    os_version: r.get("os_version")?,
                },
            ))
        })? {
            let (id, ua) = r?;
            e.agents.ids.insert(ua, id);
        }
        let mut stmt = conn.prepare("SELECT id, key FROM targets ORDER BY id")?;
        for r in stmt.query_map([], |r| {
            Ok((r.get::<_, u32>("id")?, r.get::<_, String>("key")?))
        })? {
            let (id, key) = r?;
            e.targets.ids.insert(key.into(), id);
        }
        Ok(e)
    }

    /// The rows made so far, handed over.
    pub fn take(&mut self) -> Vec<Row> {
        std::mem::take(&mut self.out)
    }

    /// How many rows wait in [`Encoder::take`].
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    fn host(&mut self, name: &str) -> u32 {
        let (id, new) = self.hosts.id(name, || name.into());
        if new {
            self.out
                .push(Row::Value(Dict::Host, id, Box::new([text(name)])));
        }
        id
    }

    fn user(&mut self, dir: &str, uid: &str) -> u32 {
        self.scratch.clear();
        self.scratch.push_str(dir);
        self.scratch.push(USER_MARK);
        self.scratch.push_str(uid);
        let key = self.scratch.as_str();
        let (id, new) = self.users.id(key, || key.into());
        if new {
            let k = UserKey::new(dir, uid);
            self.out.push(Row::Value(
                Dict::User,
                id,
                Box::new([text(dir), text(uid), text(k.as_str())]),
            ));
        }
        id
    }

    fn agent(&mut self, ua: Option<&UserAgent>) -> u32 {
        let Some(ua) = ua.filter(|u| **u != UserAgent::default()) else {
            return 0;
        };
        let (id, new) = self.agents.id(ua, || ua.clone());
        if new {
            let f = |s: &Option<String>| s.as_deref().map(Into::into);
            self.out.push(Row::Value(
                Dict::Agent,
                id,
                Box::new([
                    f(&ua.browser),
                    f(&ua.browser_major),
                    f(&ua.os),
                    f(&ua.os_version),
                ]),
            ));
        }
        id
    }

    fn target(&mut self, key: &str, app_id: Option<&str>) -> u32 {
        let (id, new) = self.targets.id(key, || key.into());
        if new {
            self.out.push(Row::Value(
                Dict::Target,
                id,
                Box::new([text(key), app_id.map(Into::into)]),
            ));
        }
        id
    }

    /// Starts a new generation of texts when an event's texts might not fit
    /// in this one: all texts of an event are of one generation.
    fn begin_texts(&mut self, seq: u64) {
        if !self.generation_written || self.texts.ids.len() + TEXTS_PER_EVENT > self.texts.max {
            self.texts.ids.clear();
            self.generation_written = true;
            self.out.push(Row::Generation {
                first_id: self.texts.next,
                first_seq: seq,
            });
        }
    }

    fn text(&mut self, s: &str) -> u32 {
        let (id, new) = self.texts.id(s, || s.into());
        if new {
            self.out
                .push(Row::Value(Dict::Text, id, Box::new([text(s)])));
        }
        id
    }

    /// Encodes event `seq`.
    pub fn event(&mut self, seq: u64, ev: &Event) {
        self.begin_texts(seq);
        let mut kind = ev.command.index() as u8;
        if ev.stream == Stream::Connection {
            kind |= kind::CONNECTION;
        }
        if ev.format == Format::Extended {
            kind |= kind::EXTENDED;
        }
        // The template is made in a buffer the encoder keeps: no allocation
        // per event (a new text is copied once, into the dictionary).
        let mut t = std::mem::take(&mut self.template);
        let message = if take_user_out(&ev.message, &ev.user_directory, &ev.user_id, &mut t) {
            kind |= kind::TEMPLATED;
            self.text(&t)
        } else {
            self.text(&ev.message)
        };
        self.template = t;
        let time = super::nanos(ev.time());
        let row = EventRow {
            seq,
            time,
            received: ev.source_time.map(|_| super::nanos(ev.received_at) - time),
            source_seq: ev.source_seq,
            kind,
            host: self.host(&ev.host),
            user: self.user(&ev.user_directory, &ev.user_id),
            origin: self.text(&ev.origin),
            context: self.text(&ev.context),
            message,
            app: match ev.app_id.as_deref() {
                Some(a) => self.target(a, Some(a)),
                None => 0,
            },
            session: match ev.proxy_session_id.as_deref() {
                Some(p) => self.text(p),
                None => 0,
            },
            agent: self.agent(ev.user_agent.as_deref()),
        };
        self.out.push(Row::Event(row));
    }

    /// Encodes a change of the live state.
    pub fn change(&mut self, c: Change) {
        let row = match c {
            Change::SessionStarted {
                host,
                session: s,
                user_directory,
                user_id,
                ..
            } => Row::SessionStarted(SessionRow {
                id: s.id,
                host: self.host(&host),
                user: self.user(&user_directory, &user_id),
                agent: self.agent(s.user_agent.as_deref()),
                proxy_session_id: s.proxy_session_id.map(Into::into),
                virtual_proxy: s.virtual_proxy.map(Into::into),
                started_at: super::nanos(s.started_at),
                flags: u8::from(s.implied) | (u8::from(s.reconciled) << 1),
            }),
            Change::SessionBound {
                id,
                proxy_session_id,
            } => Row::SessionBound {
                id,
                proxy_session_id: proxy_session_id.into(),
            },
            Change::SessionVirtualProxy { id, virtual_proxy } => Row::SessionVirtualProxy {
                id,
                virtual_proxy: virtual_proxy.into(),
            },
            Change::SessionEnded {
                id,
                started_at,
                at,
                reason,
            } => Row::SessionEnded {
                id,
                started_at: super::nanos(started_at),
                at: super::nanos(at),
                reason: reason.code(),
            },
            Change::ConnectionOpened {
                host,
                user_key,
                connection: c,
            } => {
                let host = self.host(&host);
                let user = self.user_by_key(&user_key);
                Row::ConnectionOpened(ConnectionRow {
                    id: c.id,
                    host,
                    user,
                    target: self.target(&c.app_key, c.app_id.as_deref()),
                    proxy_session_id: c.proxy_session_id.map(Into::into),
                    opened_at: super::nanos(c.opened_at),
                })
            }
            Change::ConnectionClosed {
                id,
                opened_at,
                at,
                reason,
            } => Row::ConnectionClosed {
                id,
                opened_at: super::nanos(opened_at),
                at: super::nanos(at),
                reason: reason.code(),
            },
        };
        self.out.push(row);
    }

    /// A connection change names its user by key only: `dir\id` lower-cased,
    /// split at the first backslash (a directory has none).
    fn user_by_key(&mut self, key: &str) -> u32 {
        let (dir, uid) = key.split_once('\\').unwrap_or((key, ""));
        self.user(dir, uid)
    }

    /// Encodes a session as the first schema stored it (the migration).
    pub(super) fn session_row(&mut self, s: SessionRow0) -> SessionRow {
        SessionRow {
            id: s.id,
            host: self.host(&s.host),
            user: self.user(&s.user_directory, &s.user_id),
            agent: self.agent(s.agent.as_ref()),
            proxy_session_id: s.proxy_session_id.map(Into::into),
            virtual_proxy: s.virtual_proxy.map(Into::into),
            started_at: s.started_at,
            flags: u8::from(s.implied) | (u8::from(s.reconciled) << 1),
        }
    }

    /// Encodes a connection as the first schema stored it (the migration).
    pub(super) fn connection_row(&mut self, c: ConnectionRow0) -> ConnectionRow {
        let host = self.host(&c.host);
        let user = self.user_by_key(&c.user_key);
        ConnectionRow {
            id: c.id,
            host,
            user,
            target: self.target(&c.app_key, c.app_id.as_deref()),
            proxy_session_id: c.proxy_session_id.map(Into::into),
            opened_at: c.opened_at,
        }
    }
}

/// A session row of the first schema (what the migration reads).
pub(super) struct SessionRow0 {
    pub id: u64,
    pub host: String,
    pub user_directory: String,
    pub user_id: String,
    pub agent: Option<UserAgent>,
    pub proxy_session_id: Option<String>,
    pub virtual_proxy: Option<String>,
    pub started_at: i64,
    pub implied: bool,
    pub reconciled: bool,
}

/// A connection row of the first schema.
pub(super) struct ConnectionRow0 {
    pub id: u64,
    pub host: String,
    pub user_key: String,
    pub app_key: String,
    pub app_id: Option<String>,
    pub proxy_session_id: Option<String>,
    pub opened_at: i64,
}

//! The read model: events back out of the journal, as typed as they went in.
//!
//! Rows are read by column name from the `events_v` view, which joins the
//! dictionaries by primary key; the message gets its user's name back.

use jiff::Timestamp;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::intern::kind;
use super::template::put_user_back;
use super::{from_nanos, nanos};
use crate::event::{Command, Format, Stream};

/// One journaled event, as the API and the sinks see it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StoredEvent {
    /// The journal's sequence number.
    pub seq: u64,
    /// The event time (source time, else receive time).
    pub time: Timestamp,
    /// When whosin received it.
    pub received_at: Timestamp,
    /// The Qlik node.
    pub host: String,
    /// What happened (`session_start`, ... in JSON).
    #[serde(serialize_with = "command_label")]
    pub event: Command,
    /// `DIRECTORY\userid` as sent.
    pub user: String,
    /// Directory as sent.
    pub user_directory: String,
    /// User id as sent.
    pub user_id: String,
    /// Origin.
    pub origin: String,
    /// Context.
    pub context: String,
    /// App GUID, when the context had one.
    pub app_id: Option<String>,
    /// The app's name from the Qlik repository, filled in when an answer is
    /// made (the journal keeps ids; names live in the app catalogue).
    pub app_name: Option<String>,
    /// Browser and major version, e.g. `Chrome 131`.
    pub browser: Option<String>,
    /// OS and version, e.g. `Windows 10`.
    pub os: Option<String>,
    /// The message.
    pub message: String,
    /// Details the sinks need (not part of the API's JSON).
    #[serde(skip)]
    pub detail: EventDetail,
}

fn command_label<S: serde::Serializer>(c: &Command, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.label())
}

/// What a sink needs beyond the API's view of an event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDetail {
    /// The source time (extended format).
    pub source_time: Option<Timestamp>,
    /// The appender's counter (extended format).
    pub source_seq: Option<u64>,
    /// The wire format.
    pub format: Format,
    /// The appender.
    pub stream: Stream,
    /// Browser family alone.
    pub browser_name: Option<String>,
    /// Browser major version alone.
    pub browser_major: Option<String>,
    /// OS family alone.
    pub os_name: Option<String>,
    /// OS version alone.
    pub os_version: Option<String>,
    /// Qlik's proxy session id.
    pub proxy_session_id: Option<String>,
}

impl Default for EventDetail {
    fn default() -> Self {
        Self {
            source_time: None,
            source_seq: None,
            format: Format::Legacy,
            stream: Stream::Session,
            browser_name: None,
            browser_major: None,
            os_name: None,
            os_version: None,
            proxy_session_id: None,
        }
    }
}

impl EventDetail {
    /// `qseow-proxy-session`, ... (Butler SOS's `source`).
    pub fn message_type(&self) -> &'static str {
        crate::event::source_name(self.format, self.stream)
    }

    /// Browser and OS as Butler SOS writes them (Bowser's names).
    pub fn bowser(&self) -> crate::ingest::bowser::Names<'_> {
        crate::ingest::bowser::names(
            self.browser_name.as_deref(),
            self.browser_major.as_deref(),
            self.os_name.as_deref(),
            self.os_version.as_deref(),
        )
    }
}

/// `Chrome` + `131` → `Chrome 131`.
pub fn join_name(name: Option<String>, version: Option<String>) -> Option<String> {
    match (name, version) {
        (Some(n), Some(v)) if !v.is_empty() => Some(format!("{n} {v}")),
        (n, _) => n,
    }
}

const EVENT_COLUMNS: &str = "seq, time, received, source_seq, kind, host, user_directory, user_id,
    origin, context, message, app_id, proxy_session_id, browser, browser_major, os, os_version";

/// The kind bits of a stored event, decoded.
pub fn decode_kind(k: i64) -> (Command, Stream, Format) {
    let k = k as u8;
    let command = Command::from_index(usize::from(k & 3)).unwrap_or(Command::SessionStart);
    let stream = if k & kind::CONNECTION != 0 {
        Stream::Connection
    } else {
        Stream::Session
    };
    let format = if k & kind::EXTENDED != 0 {
        Format::Extended
    } else {
        Format::Legacy
    };
    (command, stream, format)
}

/// The positions of [`EVENT_COLUMNS`] in a statement, looked up by name
/// once per query (rusqlite's lookup by name is a scan of the names for
/// every value, which was a tenth of a sink's time).
struct Cols {
    seq: usize,
    time: usize,
    received: usize,
    source_seq: usize,
    kind: usize,
    host: usize,
    user_directory: usize,
    user_id: usize,
    origin: usize,
    context: usize,
    message: usize,
    app_id: usize,
    proxy_session_id: usize,
    browser: usize,
    browser_major: usize,
    os: usize,
    os_version: usize,
}

impl Cols {
    fn of(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: stmt.column_index("seq")?,
            time: stmt.column_index("time")?,
            received: stmt.column_index("received")?,
            source_seq: stmt.column_index("source_seq")?,
            kind: stmt.column_index("kind")?,
            host: stmt.column_index("host")?,
            user_directory: stmt.column_index("user_directory")?,
            user_id: stmt.column_index("user_id")?,
            origin: stmt.column_index("origin")?,
            context: stmt.column_index("context")?,
            message: stmt.column_index("message")?,
            app_id: stmt.column_index("app_id")?,
            proxy_session_id: stmt.column_index("proxy_session_id")?,
            browser: stmt.column_index("browser")?,
            browser_major: stmt.column_index("browser_major")?,
            os: stmt.column_index("os")?,
            os_version: stmt.column_index("os_version")?,
        })
    }
}

fn stored_event(r: &rusqlite::Row<'_>, c: &Cols) -> rusqlite::Result<StoredEvent> {
    let dir: String = r.get(c.user_directory)?;
    let id: String = r.get(c.user_id)?;
    let k: i64 = r.get(c.kind)?;
    let (event, stream, format) = decode_kind(k);
    let user = format!("{dir}\\{id}");
    let mut message: String = r.get(c.message)?;
    if k as u8 & kind::TEMPLATED != 0 {
        message = put_user_back(&message, &user);
    }
    let time: i64 = r.get(c.time)?;
    let received: Option<i64> = r.get(c.received)?;
    let browser: Option<String> = r.get(c.browser)?;
    let browser_major: Option<String> = r.get(c.browser_major)?;
    let os: Option<String> = r.get(c.os)?;
    let os_version: Option<String> = r.get(c.os_version)?;
    Ok(StoredEvent {
        seq: r.get::<_, i64>(c.seq)? as u64,
        time: from_nanos(time),
        received_at: from_nanos(time.saturating_add(received.unwrap_or(0))),
        host: r.get(c.host)?,
        event,
        user,
        user_directory: dir,
        user_id: id,
        origin: r.get(c.origin)?,
        context: r.get(c.context)?,
        app_id: r.get(c.app_id)?,
        app_name: None,
        message,
        browser: join_name(browser.clone(), browser_major.clone()),
        os: join_name(os.clone(), os_version.clone()),
        detail: EventDetail {
            source_time: received.map(|_| from_nanos(time)),
            source_seq: r.get::<_, Option<i64>>(c.source_seq)?.map(|s| s as u64),
            format,
            stream,
            browser_name: browser,
            browser_major,
            os_name: os,
            os_version,
            proxy_session_id: r.get(c.proxy_session_id)?,
        },
    })
}

/// Events with a sequence number above `after`, oldest first, at most `limit`.
pub fn events_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events_v WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let cols = Cols::of(&stmt)?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        stored_event(r, &cols)
    })?;
    rows.collect()
}

/// A filter for [`events_between`].
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only this host.
    pub host: Option<String>,
    /// Only this user (a lower-cased `dir\id` key).
    pub user_key: Option<String>,
    /// Only events naming one of these apps (lower-cased ids).
    pub app_ids: Option<Vec<String>>,
    /// Only events after this sequence number (paging).
    pub after: Option<u64>,
}

/// Events whose time is in `[from, to]`, in journal order, at most `limit`.
/// The filters are resolved to dictionary ids first (a handful), so the scan
/// of the blocks that hold the range compares integers.
pub fn events_between(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    filter: &EventFilter,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events_v
         WHERE seq IN (
           SELECT e.seq FROM events e
           WHERE e.seq BETWEEN ?8 AND ?9
             AND e.time >= ?1 AND e.time <= ?2
             AND (?3 IS NULL OR e.host IN (SELECT id FROM hosts WHERE name = ?3))
             AND (?4 IS NULL OR e.user IN (SELECT id FROM users WHERE key = ?4))
             AND e.seq > ?5
             AND (?7 IS NULL OR e.app IN (SELECT id FROM targets
                                          WHERE lower(app_id) IN (SELECT value FROM json_each(?7))))
           ORDER BY e.seq LIMIT ?6)
         ORDER BY seq"
    ))?;
    let apps = filter
        .app_ids
        .as_ref()
        .map(|ids| serde_json::to_string(ids).unwrap_or_default());
    let after = filter.after.unwrap_or(0) as i64;
    let mut out = Vec::new();
    let cols = Cols::of(&stmt)?;
    for (lo, hi) in super::blocks::ranges(conn, nanos(from), nanos(to))? {
        if hi <= after {
            continue;
        }
        let rows = stmt.query_map(
            params![
                nanos(from),
                nanos(to),
                filter.host,
                filter.user_key,
                after,
                (limit - out.len()) as i64,
                apps,
                lo,
                hi,
            ],
            |r| stored_event(r, &cols),
        )?;
        for r in rows {
            out.push(r?);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The sequence number of the newest committed event (0 when none).
pub fn max_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
}

/// The distinct app ids of the events after `after`, and the newest sequence
/// number (the app-name refresher's question: which apps appeared).
pub fn apps_after(conn: &Connection, after: u64) -> rusqlite::Result<(u64, Vec<String>)> {
    let max = max_seq(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT t.app_id FROM targets t
         WHERE t.id IN (SELECT DISTINCT app FROM events WHERE seq > ?1 AND app IS NOT NULL)
           AND t.app_id IS NOT NULL",
    )?;
    let ids = stmt
        .query_map(params![after as i64], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((max, ids))
}

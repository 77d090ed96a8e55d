//! The durable journal: every accepted event and every session and connection
//! interval, in SQLite (WAL) under `data_dir`.
//!
//! One writer thread owns the write connection and commits in batches: an
//! accepted event is committed within the commit window (100 ms), so a crash
//! loses at most that window and never corrupts the file (WAL with
//! `synchronous=NORMAL` survives a killed process). Readers (the API, the sinks)
//! use connections of their own; WAL lets them read while the writer writes.
//!
//! Intervals are what make "who was in at 10:42?" a query: a session row has
//! its start and, once known, its end and how it ended; an open row has no end.
//! At start the open rows are the live state, so a restart changes no answer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::live::{Change, Connection as LiveConnection, LiveState, Session};
use crate::event::{Event, Format, Stream};

/// The journal's file name inside `data_dir`.
pub const FILE_NAME: &str = "whosin.sqlite";

/// Most rows written in one transaction.
const MAX_BATCH: usize = 20_000;

/// How often old rows are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Schema migrations, applied in order; `PRAGMA user_version` is how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: events, sessions, connections, sink cursors.
    "
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        source_time INTEGER,
        source_seq INTEGER,
        format TEXT NOT NULL,
        stream TEXT NOT NULL,
        host TEXT NOT NULL,
        command TEXT NOT NULL,
        user_directory TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_key TEXT NOT NULL,
        origin TEXT NOT NULL,
        context TEXT NOT NULL,
        app_id TEXT,
        proxy_session_id TEXT,
        message TEXT NOT NULL,
        browser TEXT,
        browser_major TEXT,
        os TEXT,
        os_version TEXT
    );
    CREATE INDEX events_time ON events(time);
    CREATE INDEX events_user ON events(user_key, time);
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        user_key TEXT NOT NULL,
        user_directory TEXT NOT NULL,
        user_id TEXT NOT NULL,
        proxy_session_id TEXT,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        end_reason TEXT,
        implied INTEGER NOT NULL,
        browser TEXT,
        browser_major TEXT,
        os TEXT,
        os_version TEXT
    );
    CREATE INDEX sessions_start ON sessions(started_at);
    CREATE INDEX sessions_end ON sessions(ended_at);
    CREATE INDEX sessions_user ON sessions(user_key, started_at);
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        user_key TEXT NOT NULL,
        app_key TEXT NOT NULL,
        app_id TEXT,
        proxy_session_id TEXT,
        opened_at INTEGER NOT NULL,
        closed_at INTEGER,
        close_reason TEXT
    );
    CREATE INDEX connections_open ON connections(opened_at);
    CREATE INDEX connections_close ON connections(closed_at);
    -- Which intervals contain an instant is a stabbing query that a B-tree
    -- answers only by scanning; an R*Tree over [start, end] answers it in
    -- O(log n + answer). Only ended intervals go in (an open one would be a box
    -- reaching to the end of time, which slows every search and insert); open
    -- ones are few and found by their NULL end. Coordinates are seconds
    -- (SQLite stores them as 32-bit floats, rounded outward), so the R*Tree
    -- narrows and the exact nanosecond columns decide.
    CREATE VIRTUAL TABLE sessions_span USING rtree(id, start_s, end_s);
    CREATE VIRTUAL TABLE connections_span USING rtree(id, start_s, end_s);
    CREATE TABLE sink_cursors (
        sink TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );
    ",
    // 2: what reconciliation with the Qlik proxy API learns and does.
    "
    ALTER TABLE sessions ADD COLUMN reconciled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN virtual_proxy TEXT;
    ",
    // 3: app names and streams from the Qlik repository (src/apps.rs).
    "
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        stream TEXT,
        updated_at INTEGER NOT NULL
    );
    ",
];

/// Seconds since the epoch, the R*Tree's coordinate.
pub fn span_secs(t: Timestamp) -> f64 {
    t.as_second() as f64 + f64::from(t.subsec_nanosecond()) / 1e9
}

/// Nanoseconds since the Unix epoch, the journal's time unit.
pub fn nanos(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// The inverse of [`nanos`].
pub fn from_nanos(n: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(n)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Opens (creating and migrating) the journal at `path`.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // An 8 MiB page cache (SQLite's default is 2) keeps the indexes' hot pages
    // in memory without letting a large journal grow the daemon (RSS with
    // 100,000 open sessions stays under 100 MB); fewer checkpoints mean fewer
    // fsyncs under a burst (the WAL grows a little more).
    conn.pragma_update(None, "cache_size", -8_192)?;
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(conn)
}

/// Opens a read connection (the API, the sinks).
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// What the journal remembers of the state when whosin starts.
pub struct Recovered {
    /// The live state as it was (open sessions and connections).
    pub state: LiveState,
    /// The next event sequence number to give.
    pub next_seq: u64,
}

/// Rebuilds the live state from the open intervals.
pub fn recover(conn: &Connection, idle_timeout: Duration) -> rusqlite::Result<Recovered> {
    let mut state = LiveState::new(idle_timeout);
    let next_seq: i64 =
        conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?;
    let next_id: i64 = conn.query_row(
        "SELECT max(coalesce((SELECT max(id) FROM sessions), 0), coalesce((SELECT max(id) FROM connections), 0)) + 1",
        [],
        |r| r.get(0),
    )?;
    state.reserve_ids(next_id as u64);
    let mut agents: foldhash::HashMap<crate::event::UserAgent, Arc<crate::event::UserAgent>> =
        foldhash::HashMap::default();
    let mut stmt = conn.prepare(
        "SELECT s.id, s.host, s.user_directory, s.user_id, s.proxy_session_id, s.started_at, s.implied,
                s.browser, s.browser_major, s.os, s.os_version,
                (SELECT e.received_at FROM events e WHERE e.user_key = s.user_key AND e.host = s.host
                 ORDER BY e.time DESC LIMIT 1),
                s.reconciled, s.virtual_proxy
         FROM sessions s WHERE s.ended_at IS NULL ORDER BY s.started_at, s.id",
    )?;
    let rows = stmt.query_map([], |r| {
        let started_at = from_nanos(r.get(5)?);
        let last: Option<i64> = r.get(11)?;
        let ua = crate::event::UserAgent {
            browser: r.get(7)?,
            browser_major: r.get(8)?,
            os: r.get(9)?,
            os_version: r.get(10)?,
        };
        // Share one copy per distinct browser, as the live parser does.
        let ua = (ua != Default::default()).then(|| {
            agents
                .entry(ua.clone())
                .or_insert_with(|| Arc::new(ua))
                .clone()
        });
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            Session {
                id: r.get::<_, i64>(0)? as u64,
                proxy_session_id: r.get(4)?,
                started_at,
                last_event: last.map_or(started_at, from_nanos),
                user_agent: ua,
                implied: r.get(6)?,
                reconciled: r.get(12)?,
                virtual_proxy: r.get(13)?,
            },
        ))
    })?;
    for row in rows {
        let (host, dir, id, session) = row?;
        state.restore_session(&host, &dir, &id, session);
    }
    let mut stmt = conn.prepare(
        "SELECT id, host, user_key, app_key, app_id, proxy_session_id, opened_at
         FROM connections WHERE closed_at IS NULL ORDER BY opened_at, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            LiveConnection {
                id: r.get::<_, i64>(0)? as u64,
                app_key: r.get(3)?,
                app_id: r.get(4)?,
                proxy_session_id: r.get(5)?,
                opened_at: from_nanos(r.get(6)?),
            },
        ))
    })?;
    for row in rows {
        let (host, key, c) = row?;
        if !state.restore_connection(&host, &key, c) {
            tracing::warn!(
                "journal: an open connection of {key} on {host} has no open session; ignored"
            );
        }
    }
    drop(stmt);
    release_memory();
    Ok(Recovered {
        state,
        next_seq: next_seq as u64,
    })
}

/// What the writer thread receives.
pub enum Write {
    /// An accepted, non-blacklisted event with its sequence number.
    Event(u64, Box<Event>),
    /// A change to the live state.
    Change(Change),
    /// Commit now, then answer (the API asks before it reads).
    Flush(Sender<Result<(), String>>),
    /// Several of the above at once: the core sends one message per batch of
    /// datagrams rather than one per row.
    Many(Vec<Write>),
}

/// The writer's health, for `/readyz`, and what it has in hand.
#[derive(Default)]
pub struct JournalHealth {
    /// The last commit failed with this error (cleared by the next success).
    pub error: Mutex<Option<String>>,
    /// The same, cheap to read on the core's path.
    pub failing: AtomicBool,
    /// Rows handed to the writer and not yet committed (or dropped).
    pub in_flight: AtomicUsize,
}

impl JournalHealth {
    /// `n` rows left the writer's hands (committed or dropped). Saturating:
    /// rows sent around [`JournalSender`] (tools, tests) never make it wrap.
    fn done(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// The core's end of the writer's channel. While the disk takes writes but
/// more than `max_uncommitted` rows wait (a flood faster than the disk),
/// [`JournalSender::send`] waits for room: the core, then the receive
/// thread, then the kernel's socket buffer fill up, and what the kernel
/// drops is counted (`whosin_datagrams_dropped_total`) instead of memory
/// growing without bound. While the disk refuses writes it never waits: the
/// writer keeps the newest rows and drops the oldest, counted.
pub struct JournalSender {
    tx: Sender<Write>,
    health: Arc<JournalHealth>,
    max_uncommitted: usize,
}

impl JournalSender {
    /// A sender to the writer reading `tx`'s other end.
    pub fn new(tx: Sender<Write>, health: Arc<JournalHealth>, max_uncommitted: usize) -> Self {
        Self {
            tx,
            health,
            max_uncommitted,
        }
    }

    /// Hands `rows` (events and changes, not `Many` or `Flush`) to the writer.
    pub fn send(&self, rows: Vec<Write>) {
        let n = rows.len();
        while !self.health.failing.load(Ordering::Relaxed) {
            let waiting = self.health.in_flight.load(Ordering::Relaxed);
            if waiting == 0 || waiting + n <= self.max_uncommitted {
                break;
            }
            // Backpressure, not synchronisation: the writer commits a batch
            // in milliseconds, and this only happens under a flood.
            std::thread::sleep(Duration::from_millis(1));
        }
        self.health.in_flight.fetch_add(n, Ordering::Relaxed);
        let _ = self.tx.send(Write::Many(rows));
    }

    /// Asks the writer to commit and answer on `reply`.
    pub fn flush(&self, reply: Sender<Result<(), String>>) {
        let _ = self.tx.send(Write::Flush(reply));
    }
}

/// How the writer commits (from `journal` and `retention`).
pub struct WriterSettings {
    /// Rows are committed at most this long after they arrive.
    pub window: Duration,
    /// How long events and ended sessions are kept.
    pub retention: Duration,
    /// Most rows kept in memory while the disk refuses writes; beyond this
    /// the oldest are dropped (and counted), so a full disk cannot exhaust
    /// memory. (While the disk works, [`JournalSender`] keeps the rows in
    /// flight within the same bound by waiting.)
    pub max_uncommitted: usize,
}

/// Runs the writer on its own thread until every sender is gone (it then
/// commits what it has and stops).
pub fn spawn_writer(
    conn: Connection,
    settings: WriterSettings,
    rx: Receiver<Write>,
    health: Arc<JournalHealth>,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    let WriterSettings {
        window,
        retention,
        max_uncommitted,
    } = settings;
    std::thread::Builder::new()
        .name("whosin-journal".into())
        .spawn(move || {
            let mut w = Writer {
                conn,
                pending: VecDeque::new(),
                health,
                metrics,
                max_uncommitted,
                dropped: 0,
                committed_since_trim: 0,
            };
            let mut first_pending: Option<Instant> = None;
            let mut next_retention = Instant::now();
            loop {
                let msg = match first_pending {
                    None => rx.recv_timeout(Duration::from_secs(1)),
                    Some(t) => {
                        rx.recv_timeout((t + window).saturating_duration_since(Instant::now()))
                    }
                };
                let mut flushers = Vec::new();
                match msg {
                    Ok(Write::Flush(reply)) => flushers.push(reply),
                    Ok(other) => {
                        w.push(other);
                        first_pending.get_or_insert_with(Instant::now);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = w.commit();
                        return;
                    }
                }
                // Take whatever else is already waiting, up to one batch.
                while w.pending.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Write::Flush(reply)) => flushers.push(reply),
                        Ok(other) => {
                            w.push(other);
                            first_pending.get_or_insert_with(Instant::now);
                        }
                        Err(_) => break,
                    }
                }
                // A full batch is written at once, and so is half of
                // max_uncommitted (the core may be waiting for room, see
                // JournalSender); but while the disk refuses, only once per
                // window, or every arriving batch would retry it.
                let full = w.pending.len() >= MAX_BATCH.min(w.max_uncommitted / 2)
                    && !w.health.failing.load(Ordering::Relaxed);
                let due = first_pending.is_some_and(|t| t.elapsed() >= window)
                    || full
                    || !flushers.is_empty();
                if due {
                    let rows = w.pending.len();
                    let result = w.commit();
                    if w.pending.is_empty() {
                        first_pending = None;
                        w.committed_since_trim += rows;
                        // A batch smaller than the most means the channel ran
                        // empty: the burst is over.
                        if w.committed_since_trim >= TRIM_AFTER_ROWS && rows < MAX_BATCH {
                            release_memory();
                            w.committed_since_trim = 0;
                        }
                    } else {
                        // The disk refused: try again in a moment.
                        first_pending = Some(Instant::now());
                    }
                    for f in flushers {
                        let _ = f.send(result.clone());
                    }
                }
                if Instant::now() >= next_retention {
                    w.retain(retention);
                    next_retention = Instant::now() + RETENTION_EVERY;
                }
            }
        })
}

struct Writer {
    conn: Connection,
    pending: VecDeque<Write>,
    health: Arc<JournalHealth>,
    metrics: Arc<crate::metrics::Metrics>,
    max_uncommitted: usize,
    dropped: u64,
    committed_since_trim: usize,
}

/// After this many rows have gone through memory, an idle writer hands the
/// freed memory back to the system.
const TRIM_AFTER_ROWS: usize = 50_000;

/// A burst leaves its events' memory free but still held by the allocator's
/// per-thread arenas (glibc keeps freed pages of non-main arenas); giving it
/// back keeps the daemon's RSS at what its state needs.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Writer {
    fn push(&mut self, w: Write) {
        if let Write::Many(all) = w {
            for w in all {
                self.push(w);
            }
            return;
        }
        if self.pending.len() >= self.max_uncommitted {
            self.pending.pop_front();
            self.dropped += 1;
            self.health.done(1);
            self.metrics.journal_dropped.inc();
            if self.dropped.is_power_of_two() {
                tracing::error!(
                    "journal: {} rows dropped because the journal cannot be written \
                     and journal.max_uncommitted ({}) rows already wait in memory",
                    self.dropped,
                    self.max_uncommitted
                );
            }
        }
        self.pending.push_back(w);
    }

    fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = write_batch(&mut self.conn, self.pending.make_contiguous());
        self.health
            .failing
            .store(result.is_err(), Ordering::Relaxed);
        if result.is_ok() {
            self.health.done(self.pending.len());
            self.pending.clear();
        }
        let waiting = self.health.in_flight.load(Ordering::Relaxed);
        self.metrics
            .journal_uncommitted
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        match result {
            Ok(()) => {
                let mut e = self.health.error.lock().unwrap_or_else(|p| p.into_inner());
                if e.take().is_some() {
                    tracing::info!("journal: writing again");
                }
                Ok(())
            }
            Err(err) => {
                let msg = format!(
                    "cannot write the journal: {err}; {} rows wait in memory (at most {}, \
                     journal.max_uncommitted) and are retried",
                    self.pending.len(),
                    self.max_uncommitted
                );
                let mut e = self.health.error.lock().unwrap_or_else(|p| p.into_inner());
                if e.is_none() {
                    tracing::error!("{msg}");
                }
                *e = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Deletes events and ended intervals older than `retention`. The newest
    /// event always stays: its sequence number is where numbering continues,
    /// and sinks' cursors depend on numbers never being given twice.
    fn retain(&mut self, retention: Duration) {
        let cutoff =
            nanos(Timestamp::now()) - i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let result = self.conn.transaction().and_then(|tx| {
            tx.execute_batch(&format!(
                "DELETE FROM events WHERE time < {cutoff} AND seq < (SELECT max(seq) FROM events);
                 DELETE FROM sessions_span WHERE id IN (SELECT id FROM sessions WHERE ended_at < {cutoff});
                 DELETE FROM sessions WHERE ended_at < {cutoff};
                 DELETE FROM connections_span WHERE id IN (SELECT id FROM connections WHERE closed_at < {cutoff});
                 DELETE FROM connections WHERE closed_at < {cutoff};"
            ))?;
            tx.commit()
        });
        if let Err(e) = result {
            tracing::warn!("journal: retention cleanup failed: {e}");
        }
    }
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Session => "session",
        Stream::Connection => "connection",
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Legacy => "legacy",
        Format::Extended => "extended",
    }
}

/// Writes one batch in one transaction (the writer thread does this; tools and
/// benchmarks may too).
pub fn write_batch(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins_event = tx.prepare_cached(
            "INSERT OR IGNORE INTO events (seq, time, received_at, source_time, source_seq, format, stream, host, command,
               user_directory, user_id, user_key, origin, context, app_id, proxy_session_id, message,
               browser, browser_major, os, os_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?;
        let mut ins_session = tx.prepare_cached(
            "INSERT OR IGNORE INTO sessions (id, host, user_key, user_directory, user_id, proxy_session_id, started_at,
               implied, browser, browser_major, os, os_version, reconciled, virtual_proxy)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        // An interval enters the R*Tree when it ends.
        let mut end_session_span = tx.prepare_cached(
            "INSERT OR REPLACE INTO sessions_span (id, start_s, end_s) VALUES (?1, ?2, max(?2, ?3))",
        )?;
        let mut close_conn_span = tx.prepare_cached(
            "INSERT OR REPLACE INTO connections_span (id, start_s, end_s) VALUES (?1, ?2, max(?2, ?3))",
        )?;
        let mut bind_session =
            tx.prepare_cached("UPDATE sessions SET proxy_session_id = ?2 WHERE id = ?1")?;
        let mut set_virtual_proxy =
            tx.prepare_cached("UPDATE sessions SET virtual_proxy = ?2 WHERE id = ?1")?;
        let mut end_session = tx.prepare_cached(
            "UPDATE sessions SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL",
        )?;
        let mut ins_conn = tx.prepare_cached(
            "INSERT OR IGNORE INTO connections (id, host, user_key, app_key, app_id, proxy_session_id, opened_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut close_conn = tx.prepare_cached(
            "UPDATE connections SET closed_at = ?2, close_reason = ?3 WHERE id = ?1 AND closed_at IS NULL",
        )?;
        for w in batch {
            match w {
                Write::Event(seq, ev) => {
                    let ua = ev.user_agent.as_deref();
                    let key = super::live::UserKey::new(&ev.user_directory, &ev.user_id);
                    ins_event.execute(params![
                        *seq as i64,
                        nanos(ev.time()),
                        nanos(ev.received_at),
                        ev.source_time.map(nanos),
                        ev.source_seq.map(|s| s as i64),
                        format_name(ev.format),
                        stream_name(ev.stream),
                        ev.host,
                        ev.command.label(),
                        ev.user_directory,
                        ev.user_id,
                        key.as_str(),
                        ev.origin,
                        ev.context,
                        ev.app_id,
                        ev.proxy_session_id,
                        ev.message,
                        ua.and_then(|u| u.browser.as_deref()),
                        ua.and_then(|u| u.browser_major.as_deref()),
                        ua.and_then(|u| u.os.as_deref()),
                        ua.and_then(|u| u.os_version.as_deref()),
                    ])?;
                }
                Write::Change(Change::SessionStarted {
                    host,
                    user_key,
                    session: s,
                    user_directory,
                    user_id,
                }) => {
                    let ua = s.user_agent.as_deref();
                    ins_session.execute(params![
                        s.id as i64,
                        host,
                        user_key,
                        user_directory,
                        user_id,
                        s.proxy_session_id,
                        nanos(s.started_at),
                        s.implied,
                        ua.and_then(|u| u.browser.as_deref()),
                        ua.and_then(|u| u.browser_major.as_deref()),
                        ua.and_then(|u| u.os.as_deref()),
                        ua.and_then(|u| u.os_version.as_deref()),
                        s.reconciled,
                        s.virtual_proxy,
                    ])?;
                }
                Write::Change(Change::SessionVirtualProxy { id, virtual_proxy }) => {
                    set_virtual_proxy.execute(params![*id as i64, virtual_proxy])?;
                }
                Write::Change(Change::SessionBound {
                    id,
                    proxy_session_id,
                }) => {
                    bind_session.execute(params![*id as i64, proxy_session_id])?;
                }
                Write::Change(Change::SessionEnded {
                    id,
                    started_at,
                    at,
                    reason,
                }) => {
                    end_session.execute(params![*id as i64, nanos(*at), reason.as_str()])?;
                    end_session_span.execute(params![
                        *id as i64,
                        span_secs(*started_at),
                        span_secs(*at)
                    ])?;
                }
                Write::Change(Change::ConnectionOpened {
                    host,
                    user_key,
                    connection: c,
                }) => {
                    ins_conn.execute(params![
                        c.id as i64,
                        host,
                        user_key,
                        c.app_key,
                        c.app_id,
                        c.proxy_session_id,
                        nanos(c.opened_at),
                    ])?;
                }
                Write::Change(Change::ConnectionClosed {
                    id,
                    opened_at,
                    at,
                    reason,
                }) => {
                    close_conn.execute(params![*id as i64, nanos(*at), reason.as_str()])?;
                    close_conn_span.execute(params![
                        *id as i64,
                        span_secs(*opened_at),
                        span_secs(*at)
                    ])?;
                }
                Write::Flush(_) | Write::Many(_) => {}
            }
        }
    }
    tx.commit()
}

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
    /// `session_start`, `session_stop`, `connection_open`, `connection_close`.
    pub event: String,
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

/// What a sink needs beyond the API's view of an event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventDetail {
    /// The source time (extended format).
    pub source_time: Option<Timestamp>,
    /// `qseow-proxy-session`, ... (Butler SOS's `source`).
    pub message_type: String,
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

impl EventDetail {
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

const EVENT_COLUMNS: &str = "seq, time, received_at, host, command, user_directory, user_id, origin, context,
    app_id, message, browser, browser_major, os, os_version, source_time, format, stream, proxy_session_id";

fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let dir: String = r.get(5)?;
    let id: String = r.get(6)?;
    let browser: Option<String> = r.get(11)?;
    let browser_major: Option<String> = r.get(12)?;
    let os: Option<String> = r.get(13)?;
    let os_version: Option<String> = r.get(14)?;
    let format: String = r.get(16)?;
    let stream: String = r.get(17)?;
    let prefix = if format == "extended" {
        "whosin"
    } else {
        "qseow-proxy"
    };
    Ok(StoredEvent {
        seq: r.get::<_, i64>(0)? as u64,
        time: from_nanos(r.get(1)?),
        received_at: from_nanos(r.get(2)?),
        host: r.get(3)?,
        event: r.get(4)?,
        user: format!("{dir}\\{id}"),
        user_directory: dir,
        user_id: id,
        origin: r.get(7)?,
        context: r.get(8)?,
        app_id: r.get(9)?,
        app_name: None,
        message: r.get(10)?,
        browser: join_name(browser.clone(), browser_major.clone()),
        os: join_name(os.clone(), os_version.clone()),
        detail: EventDetail {
            source_time: r.get::<_, Option<i64>>(15)?.map(from_nanos),
            message_type: format!("{prefix}-{stream}"),
            browser_name: browser,
            browser_major,
            os_name: os,
            os_version,
            proxy_session_id: r.get(18)?,
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
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after as i64, limit as i64], stored_event)?;
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
pub fn events_between(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    filter: &EventFilter,
    limit: usize,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events
         WHERE time >= ?1 AND time <= ?2
           AND (?3 IS NULL OR host = ?3)
           AND (?4 IS NULL OR user_key = ?4)
           AND seq > ?5
           AND (?7 IS NULL OR lower(app_id) IN (SELECT value FROM json_each(?7)))
         ORDER BY seq LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![
            nanos(from),
            nanos(to),
            filter.host,
            filter.user_key,
            filter.after.unwrap_or(0) as i64,
            limit as i64,
            filter
                .app_ids
                .as_ref()
                .map(|ids| serde_json::to_string(ids).unwrap_or_default()),
        ],
        stored_event,
    )?;
    rows.collect()
}

/// The sequence number of the newest committed event (0 when none).
pub fn max_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
}

/// How far a sink has delivered (0 when it never has).
pub fn cursor(conn: &Connection, sink: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT seq FROM sink_cursors WHERE sink = ?1",
        [sink],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0) as u64)
}

/// Records that a sink's destination confirmed everything up to `seq`.
pub fn set_cursor(conn: &Connection, sink: &str, seq: u64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sink_cursors (sink, seq) VALUES (?1, ?2)
         ON CONFLICT(sink) DO UPDATE SET seq = max(seq, excluded.seq)",
        params![sink, seq as i64],
    )?;
    Ok(())
}

/// Where the journal file of a data folder is.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// What a sink uses to read the journal: the events after its cursor, and the
/// cursor itself, which it advances only once its destination has confirmed.
pub struct SinkReader {
    name: String,
    conn: Connection,
}

impl SinkReader {
    /// A reader for the sink `name` (its cursor's key) on the journal at `path`.
    pub fn open(path: &Path, name: &str) -> rusqlite::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            conn: open_reader(path)?,
        })
    }

    /// The read connection, for queries of the sink's own (summaries).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The sink's cursor: everything up to it was delivered.
    pub fn cursor(&self) -> rusqlite::Result<u64> {
        cursor(&self.conn, &self.name)
    }

    /// The next events to deliver (after the cursor), at most `limit`.
    pub fn next_batch(&self, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
        events_after(&self.conn, self.cursor()?, limit)
    }

    /// The destination confirmed everything up to `seq`.
    pub fn confirm(&self, seq: u64) -> rusqlite::Result<()> {
        set_cursor(&self.conn, &self.name, seq)
    }

    /// The events after `after` (not the cursor: a sink that pipelines reads
    /// ahead of what its destination confirmed), at most `limit`.
    pub fn batch_after(&self, after: u64, limit: usize) -> rusqlite::Result<Vec<StoredEvent>> {
        events_after(&self.conn, after, limit)
    }

    /// Committed events not yet delivered. Sequence numbers are given without
    /// gaps and retention removes only the oldest, so this is the distance
    /// from the cursor to the newest event: two index lookups, where a
    /// count(*) would walk a backlog of millions on every batch.
    pub fn backlog(&self) -> rusqlite::Result<u64> {
        let cursor = self.cursor()? as i64;
        let (min, max): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(match (min, max) {
            (Some(min), Some(max)) => (max - cursor.max(min - 1)).max(0) as u64,
            _ => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse::Parser;
    use crate::sessions::live::LiveState;

    fn write_events(conn: &mut Connection, lines: &[&str]) -> LiveState {
        let mut state = LiveState::new(Duration::from_secs(1800));
        let mut parser = Parser::new();
        let mut batch = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let ev = parser.parse(l.as_bytes(), Timestamp::now()).unwrap();
            let out = state.apply(&ev);
            batch.push(Write::Event(i as u64 + 1, Box::new(ev)));
            batch.extend(out.changes.into_iter().map(Write::Change));
        }
        write_batch(conn, &batch).unwrap();
        state
    }

    fn rows(n: usize) -> Vec<Write> {
        let ev = Parser::new()
            .parse(LINES[0].as_bytes(), Timestamp::now())
            .unwrap();
        (0..n)
            .map(|i| Write::Event(i as u64, Box::new(ev.clone())))
            .collect()
    }

    #[test]
    fn the_sender_waits_for_room_unless_the_disk_refuses() {
        let (tx, rx) = std::sync::mpsc::channel();
        let health = Arc::new(JournalHealth::default());
        let sender = JournalSender::new(tx, health.clone(), 10);
        sender.send(rows(8));
        assert_eq!(health.in_flight.load(Ordering::Relaxed), 8);
        assert!(rx.try_recv().is_ok());
        // 8 + 5 > 10: the next batch waits for the writer.
        let waiting = std::thread::spawn(move || {
            sender.send(rows(5));
            sender
        });
        // Nothing may arrive while there is no room; a quarter second of
        // nothing is the evidence (a wrong sender sends at once).
        assert!(rx.recv_timeout(Duration::from_millis(250)).is_err());
        health.done(8); // the writer committed them
        assert!(rx.recv_timeout(Duration::from_secs(20)).is_ok());
        let sender = waiting.join().unwrap();
        assert_eq!(health.in_flight.load(Ordering::Relaxed), 5);
        // While the disk refuses, waiting would stall everything for nothing:
        // the writer drops the oldest instead.
        health.failing.store(true, Ordering::Relaxed);
        sender.send(rows(9));
        assert!(rx.try_recv().is_ok());
        assert_eq!(health.in_flight.load(Ordering::Relaxed), 14);
        // Never below zero, whatever is reported done.
        health.done(100);
        assert_eq!(health.in_flight.load(Ordering::Relaxed), 0);
    }

    const LINES: [&str; 4] = [
        "/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start UserAgent: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0'",
        "/qseow-proxy-connection/;n1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;open",
        "/qseow-proxy-session/;n2;Start session;LAB;bob;AppAccess;/hub/;Start",
        "/qseow-proxy-session/;n2;Stop session;LAB;bob;AppAccess;/hub/;Stop",
    ];

    #[test]
    fn recovery_rebuilds_the_open_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut conn = open(&path).unwrap();
        let before = write_events(&mut conn, &LINES);
        drop(conn);
        let conn = open(&path).unwrap();
        let r = recover(&conn, Duration::from_secs(1800)).unwrap();
        assert_eq!(r.next_seq, 5);
        assert_eq!(r.state.counts("n1"), before.counts("n1"));
        assert_eq!(r.state.counts("n2"), before.counts("n2"));
        assert_eq!(r.state.counts("n1").connections, 1);
        assert!(r.state.next_id() >= before.next_id());
        let (_, h) = r.state.hosts().find(|(h, _)| *h == "n1").unwrap();
        let anna = &h.users["lab\\anna"].sessions[0];
        assert_eq!(
            anna.user_agent.as_ref().unwrap().browser.as_deref(),
            Some("Firefox")
        );
    }

    #[test]
    fn migrations_are_versioned_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let conn = open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        drop(conn);
        open(&path).unwrap();
    }

    #[test]
    fn a_journal_of_the_previous_release_opens_with_nothing_lost() {
        // The previous release's schema: the first two migrations.
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
                conn.execute_batch(sql).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
        }
        let mut conn = Connection::open(&path).unwrap();
        let before = write_events(&mut conn, &LINES);
        set_cursor(&conn, "influxdb", 2).unwrap();
        drop(conn);
        // This release migrates it at open: events, sessions, cursors stay.
        let conn = open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        assert_eq!(events_after(&conn, 0, 10).unwrap().len(), LINES.len());
        assert_eq!(cursor(&conn, "influxdb").unwrap(), 2);
        let r = recover(&conn, Duration::from_secs(1800)).unwrap();
        assert_eq!(r.state.counts("n1"), before.counts("n1"));
        // And the new table works.
        let mut conn = conn;
        let apps = [(
            "a".to_owned(),
            crate::apps::AppInfo {
                name: "Sales".into(),
                stream: None,
            },
        )];
        crate::apps::save(&mut conn, &apps).unwrap();
        assert_eq!(crate::apps::load(&conn).unwrap(), apps);
    }

    #[test]
    fn a_sink_reads_after_its_cursor_and_its_backlog_is_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut conn = open(&path).unwrap();
        write_events(&mut conn, &LINES);
        let sink = SinkReader::open(&path, "test").unwrap();
        let gauge = || sink.backlog().unwrap();
        assert_eq!(gauge(), 4);
        let batch = sink.next_batch(3).unwrap();
        assert_eq!(
            batch.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(batch[0].browser.as_deref(), Some("Firefox 133"));
        assert_eq!(batch[0].detail.message_type, "qseow-proxy-session");
        // Not confirmed: the same events come again (nothing is lost).
        assert_eq!(sink.next_batch(3).unwrap()[0].seq, 1);
        sink.confirm(3).unwrap();
        assert_eq!(gauge(), 1);
        assert_eq!(
            sink.next_batch(10)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![4]
        );
        // A cursor never moves back, and survives a reopen.
        sink.confirm(2).unwrap();
        drop(sink);
        let sink = SinkReader::open(&path, "test").unwrap();
        assert_eq!(sink.cursor().unwrap(), 3);
        sink.confirm(4).unwrap();
        assert_eq!(sink.backlog().unwrap(), 0);
        assert!(sink.next_batch(10).unwrap().is_empty());
    }

    #[test]
    fn retention_deletes_only_what_is_old_and_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        let mut conn = open(&path).unwrap();
        write_events(&mut conn, &LINES);
        let mut w = Writer {
            conn,
            pending: VecDeque::new(),
            health: Arc::default(),
            metrics: crate::metrics::Metrics::new(&[]),
            max_uncommitted: 1000,
            dropped: 0,
            committed_since_trim: 0,
        };
        w.retain(Duration::from_secs(3600));
        assert_eq!(max_seq(&w.conn).unwrap(), 4);
        // Everything is older than a zero retention, but open sessions stay,
        // and so does the newest event, so numbering never restarts.
        w.retain(Duration::ZERO);
        assert_eq!(max_seq(&w.conn).unwrap(), 4);
        let events: i64 = w
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 1);
        let open_sessions: i64 = w
            .conn
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            open_sessions, 1,
            "anna's open session stays; bob's ended one goes"
        );
    }
}

//! The journal's tables, and the migrations that made them.
//!
//! `PRAGMA user_version` is how many migrations ran. Migrations 1-3 are the
//! first release's schema (one wide row per event, its text stored again each
//! time); migration 4 is the compact journal: every string that repeats is
//! stored once in a dictionary table and rows hold small integers. Migration
//! 4 renames the old tables (`v3_*`); [`super::migrate`] then copies their rows
//! into the new ones and drops them, resumably, before the journal is used.
//! Migration 5 moves the intervals' ends into their hour rows.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Schema migrations, applied in order.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 4: the compact journal. The old tables keep their rows under new names
    // until `migrate` has copied them (session and connection ids stay).
    "
    ALTER TABLE events RENAME TO v3_events;
    ALTER TABLE sessions RENAME TO v3_sessions;
    ALTER TABLE connections RENAME TO v3_connections;
    DROP INDEX events_user;
    DROP INDEX sessions_user;
    DROP TABLE sessions_span;
    DROP TABLE connections_span;
    -- Dictionaries: each distinct value once. Nothing here is unique or
    -- indexed by value (the writer keeps the lookup in memory), so a new
    -- value is an append; a value may appear twice (after a restart, or when
    -- the writer's memory of them starts over), which readers do not mind.
    CREATE TABLE hosts (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        directory TEXT NOT NULL,
        user_id TEXT NOT NULL,
        key TEXT NOT NULL
    );
    CREATE INDEX users_by_key ON users(key);
    CREATE TABLE agents (
        id INTEGER PRIMARY KEY,
        browser TEXT,
        browser_major TEXT,
        os TEXT,
        os_version TEXT
    );
    -- What a connection is to: the app id, or the context's path without one.
    CREATE TABLE targets (id INTEGER PRIMARY KEY, key TEXT NOT NULL, app_id TEXT);
    -- Origins, contexts, messages (the user's name replaced by U+0001) and
    -- proxy session ids. Numbered in generations: rows of one generation
    -- refer only to its texts, so retention drops whole generations.
    CREATE TABLE texts (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
    CREATE TABLE text_generations (
        first_id INTEGER PRIMARY KEY,
        first_seq INTEGER NOT NULL
    );
    -- kind: bits 0-1 the command (Command::index), bit 2 the connection
    -- stream, bit 3 the extended format, bit 4 a message with the user's
    -- name taken out. received: receive time minus event time (extended
    -- format, which has a source time), NULL when they are the same.
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        received INTEGER,
        source_seq INTEGER,
        kind INTEGER NOT NULL,
        host INTEGER NOT NULL,
        user INTEGER NOT NULL,
        origin INTEGER NOT NULL,
        context INTEGER NOT NULL,
        message INTEGER NOT NULL,
        app INTEGER,
        session INTEGER,
        agent INTEGER
    );
    -- Events by time, without an index on it (which cost a fifth of the
    -- journal's size and a B-tree insert an event): the events of block b
    -- are the sequence numbers b*1024 to b*1024+1023, and this table keeps
    -- the earliest and latest event time of each block, so the events of a
    -- time range are those of the blocks that overlap it, whatever the
    -- order their times came in. Per-user questions go through the sessions.
    CREATE TABLE event_blocks (
        block INTEGER PRIMARY KEY,
        min_time INTEGER NOT NULL,
        max_time INTEGER NOT NULL
    );
    -- A session's row is written once. Its end is a row of its own (an
    -- append, where updating the row in place cost half the writer's time),
    -- and the open ones are listed apart, so they are found without a scan.
    -- flags: bit 0 implied by a connection, bit 1 started by reconciliation.
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        host INTEGER NOT NULL,
        user INTEGER NOT NULL,
        agent INTEGER,
        proxy_session_id TEXT,
        virtual_proxy TEXT,
        started_at INTEGER NOT NULL,
        flags INTEGER NOT NULL
    );
    CREATE TABLE session_ends (
        id INTEGER PRIMARY KEY,
        ended_at INTEGER NOT NULL,
        end_reason INTEGER NOT NULL
    );
    CREATE TABLE open_sessions (id INTEGER PRIMARY KEY);
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY,
        host INTEGER NOT NULL,
        user INTEGER NOT NULL,
        target INTEGER NOT NULL,
        proxy_session_id TEXT,
        opened_at INTEGER NOT NULL
    );
    CREATE TABLE connection_closes (
        id INTEGER PRIMARY KEY,
        closed_at INTEGER NOT NULL,
        close_reason INTEGER NOT NULL
    );
    CREATE TABLE open_connections (id INTEGER PRIMARY KEY);
    -- Which intervals contain an instant: an ended interval is listed under
    -- every hour (Unix hours) it covers, so the candidates for an instant
    -- are the rows of one hour, and an hour's rows are written when its
    -- intervals end, near the end of the table (an R*Tree took random
    -- inserts and a third of the writer's time). The exact nanosecond
    -- columns decide. `first` marks an interval's first hour, so a range of
    -- hours lists each interval once: the rows of its first hour, and the
    -- first rows of the later ones.
    CREATE TABLE session_hours (
        hour INTEGER NOT NULL,
        id INTEGER NOT NULL,
        first INTEGER NOT NULL,
        PRIMARY KEY (hour, id)
    ) WITHOUT ROWID;
    CREATE TABLE connection_hours (
        hour INTEGER NOT NULL,
        id INTEGER NOT NULL,
        first INTEGER NOT NULL,
        PRIMARY KEY (hour, id)
    ) WITHOUT ROWID;
    -- The rows with their values, for queries (joins by primary key).
    CREATE VIEW sessions_v AS
        SELECT s.id, s.user AS user_ref, h.name AS host, u.key AS user_key,
               u.directory AS user_directory, u.user_id AS user_id, s.proxy_session_id,
               s.virtual_proxy, s.started_at, e.ended_at, e.end_reason,
               (s.flags & 1) != 0 AS implied, (s.flags & 2) != 0 AS reconciled,
               a.browser, a.browser_major, a.os, a.os_version
        FROM sessions s JOIN hosts h ON h.id = s.host JOIN users u ON u.id = s.user
             LEFT JOIN session_ends e ON e.id = s.id LEFT JOIN agents a ON a.id = s.agent;
    CREATE VIEW connections_v AS
        SELECT c.id, h.name AS host, u.key AS user_key, t.key AS app_key, t.app_id,
               c.proxy_session_id, c.opened_at, e.closed_at, e.close_reason
        FROM connections c JOIN hosts h ON h.id = c.host JOIN users u ON u.id = c.user
             JOIN targets t ON t.id = c.target LEFT JOIN connection_closes e ON e.id = c.id;
    CREATE VIEW events_v AS
        SELECT e.seq, e.time, e.received, e.source_seq, e.kind, h.name AS host,
               u.directory AS user_directory, u.user_id AS user_id, u.key AS user_key,
               o.text AS origin, c.text AS context, m.text AS message, t.app_id,
               p.text AS proxy_session_id,
               a.browser, a.browser_major, a.os, a.os_version
        FROM events e JOIN hosts h ON h.id = e.host JOIN users u ON u.id = e.user
             JOIN texts o ON o.id = e.origin JOIN texts c ON c.id = e.context
             JOIN texts m ON m.id = e.message LEFT JOIN targets t ON t.id = e.app
             LEFT JOIN texts p ON p.id = e.session LEFT JOIN agents a ON a.id = e.agent;
    ",
    // 5: an interval's end is kept in its hour rows, which are written when
    // it ends anyway, instead of in a table of its own (session_ends,
    // connection_closes). Those were keyed by the interval's id, and
    // intervals end in another order than they began, so every commit
    // rewrote pages all over them: half of the write-ahead log's bytes and a
    // fifth of the writer's time (docs/performance.md). The forensic queries
    // read the end from the hour rows they start from; the views find it in
    // the row of the first hour, (hour of the start, id).
    "
    ALTER TABLE session_hours ADD COLUMN ended_at INTEGER;
    ALTER TABLE session_hours ADD COLUMN end_reason INTEGER;
    ALTER TABLE connection_hours ADD COLUMN closed_at INTEGER;
    ALTER TABLE connection_hours ADD COLUMN close_reason INTEGER;
    UPDATE session_hours SET ended_at = e.ended_at, end_reason = e.end_reason
        FROM session_ends e WHERE e.id = session_hours.id;
    UPDATE connection_hours SET closed_at = e.closed_at, close_reason = e.close_reason
        FROM connection_closes e WHERE e.id = connection_hours.id;
    -- Retention of migration 4 dropped the hour rows before its cutoff, first
    -- ones included, of intervals that ended after it: those get theirs back.
    INSERT OR IGNORE INTO session_hours (hour, id, first, ended_at, end_reason)
        SELECT (s.started_at - (s.started_at < 0) * 3599999999999) / 3600000000000,
               e.id, 1, e.ended_at, e.end_reason
        FROM session_ends e JOIN sessions s ON s.id = e.id;
    INSERT OR IGNORE INTO connection_hours (hour, id, first, closed_at, close_reason)
        SELECT (c.opened_at - (c.opened_at < 0) * 3599999999999) / 3600000000000,
               e.id, 1, e.closed_at, e.close_reason
        FROM connection_closes e JOIN connections c ON c.id = e.id;
    DROP VIEW sessions_v;
    DROP VIEW connections_v;
    DROP TABLE session_ends;
    DROP TABLE connection_closes;
    -- The rows with their values and without their ends (the queries that
    -- have the end from an hour row).
    CREATE VIEW sessions_x AS
        SELECT s.id, s.user AS user_ref, h.name AS host, u.key AS user_key,
               u.directory AS user_directory, u.user_id AS user_id, s.proxy_session_id,
               s.virtual_proxy, s.started_at,
               (s.flags & 1) != 0 AS implied, (s.flags & 2) != 0 AS reconciled,
               a.browser, a.browser_major, a.os, a.os_version
        FROM sessions s JOIN hosts h ON h.id = s.host JOIN users u ON u.id = s.user
             LEFT JOIN agents a ON a.id = s.agent;
    CREATE VIEW connections_x AS
        SELECT c.id, h.name AS host, u.key AS user_key, t.key AS app_key, t.app_id,
               c.proxy_session_id, c.opened_at
        FROM connections c JOIN hosts h ON h.id = c.host JOIN users u ON u.id = c.user
             JOIN targets t ON t.id = c.target;
    -- And with them (the columns in the order of schema 4).
    CREATE VIEW sessions_v AS
        SELECT x.id, x.user_ref, x.host, x.user_key, x.user_directory, x.user_id,
               x.proxy_session_id, x.virtual_proxy, x.started_at, e.ended_at, e.end_reason,
               x.implied, x.reconciled, x.browser, x.browser_major, x.os, x.os_version
        FROM sessions_x x LEFT JOIN session_hours e
             ON e.hour = (x.started_at - (x.started_at < 0) * 3599999999999) / 3600000000000
            AND e.id = x.id;
    CREATE VIEW connections_v AS
        SELECT x.*, e.closed_at, e.close_reason
        FROM connections_x x LEFT JOIN connection_hours e
             ON e.hour = (x.opened_at - (x.opened_at < 0) * 3599999999999) / 3600000000000
            AND e.id = x.id;
    ",
];

/// Opens (creating and migrating) the journal at `path`.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // An 8 MiB page cache (SQLite's default is 2) keeps the indexes' hot pages
    // in memory without letting a large journal grow the daemon; fewer
    // checkpoints mean fewer fsyncs under a burst (the WAL grows a little more).
    conn.pragma_update(None, "cache_size", -8_192)?;
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    // The writer's statements (inserts of 1, 4, 16, 64 and 256 rows for each
    // table) all stay prepared.
    conn.set_prepared_statement_cache_capacity(128);
    migrate_to(&conn, MIGRATIONS.len())?;
    Ok(conn)
}

/// Runs the schema migrations up to `version` (tests build older journals).
pub(super) fn migrate_to(conn: &Connection, version: usize) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().take(version).skip(current) {
        // A new journal runs them all at once, in no time; an existing one
        // says what it is doing, since a large one takes a moment.
        let started = std::time::Instant::now();
        if current > 0 {
            tracing::info!("journal: updating its schema to version {}", i + 1);
        }
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        if current > 0 {
            tracing::info!(
                "journal: schema version {} in {:.1} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Opens a read connection (the API, the sinks).
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

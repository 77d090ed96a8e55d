//! How far each sink has delivered: one cursor (a sequence number) per sink,
//! advanced only once its destination has confirmed.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::read::{StoredEvent, events_after};

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

/// What a sink uses to read the journal: the events after its cursor, and the
/// cursor itself, which it advances only once its destination has confirmed.
pub struct SinkReader {
    name: String,
    conn: Connection,
}

impl SinkReader {
    /// A reader for the sink `name` (its cursor's key) on the journal at `path`.
    pub fn open(path: &Path, name: &str) -> rusqlite::Result<Self> {
        let conn = super::open_reader(path)?;
        // Sinks read long runs of consecutive rows and their dictionary
        // entries: a larger cache than a reader's default keeps those pages.
        conn.pragma_update(None, "cache_size", -8_192)?;
        // A confirmed cursor is a small write after every batch; in WAL mode
        // `NORMAL` commits it without an fsync. A power cut may then lose the
        // last few confirmations, and those batches are sent again (points
        // and messages are idempotent by their time and sequence number).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Self {
            name: name.to_owned(),
            conn,
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

//! The durable journal: every accepted event and every session and connection
//! interval, in SQLite (WAL) under `data_dir`.
//!
//! The journal is the forensic record, the sinks' source and the state a
//! restart continues from. It is compact: each string that repeats (hosts,
//! users, user agents, origins, contexts, Qlik's message texts) is stored
//! once in a dictionary and rows are small integers, so an event costs tens
//! of bytes and the writer appends at hundreds of thousands of rows a second.
//! No index takes random inserts: event times grow with the sequence, and
//! per-user questions are answered through the sessions.
//!
//! - [`schema`]: the tables and their migrations; [`migrate`]: the upgrade of
//!   a journal written by the first release.
//! - [`intern`]: events and changes into compact rows (on the core thread).
//! - [`writer`]: the thread that commits them, and retention;
//!   [`checkpoint`]: the thread that copies the WAL into the file meanwhile.
//! - [`read`]: events back out, typed; [`cursors`]: how far each sink got.
//! - [`recover`]: the open sessions and connections at a restart.
//!
//! Intervals are what make "who was in at 10:42?" a query: a session row has
//! its start and, once known, its end and how it ended; an open row has no end.

pub mod blocks;
pub mod checkpoint;
pub mod cursors;
pub mod intern;
pub mod migrate;
pub mod read;
pub mod recover;
pub mod rows;
pub mod schema;
pub mod template;
pub mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use jiff::Timestamp;

pub use cursors::{SinkReader, cursor, set_cursor};
pub use intern::Encoder;
pub use migrate::OpenError;
pub use read::{
    EventDetail, EventFilter, StoredEvent, apps_after, events_after, events_between, join_name,
    max_seq,
};
pub use recover::{Recovered, recover};
pub use schema::open_reader;
pub use writer::{
    JournalHealth, JournalSender, Msg, Write, WriterSettings, spawn_writer, write_batch,
};

/// The journal's file name inside `data_dir`.
pub const FILE_NAME: &str = "whosin.sqlite";

/// Where the journal file of a data folder is.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Opens the journal at `path`, creating it, or migrating one of an earlier
/// release (which may take a while for a large one: progress is logged).
pub fn open(path: &Path) -> Result<rusqlite::Connection, OpenError> {
    let mut conn = schema::open(path)?;
    if migrate::pending(&conn)? {
        migrate::finish(&mut conn, path)?;
    }
    Ok(conn)
}

/// Nanoseconds in an hour: the bucket of `session_hours` and `connection_hours`.
pub const HOUR_NS: i64 = 3_600_000_000_000;

/// The Unix hour of a time in nanoseconds (the hour tables' key).
pub fn hour_of(nanos: i64) -> i64 {
    nanos.div_euclid(HOUR_NS)
}

/// Most hour rows one interval gets (about 14 months): an interval that
/// lasted longer is found by questions about its first 14 months only.
pub const MAX_HOURS: i64 = 10_000;

/// The hours an interval `[start, end]` is listed under.
pub fn hours(start: i64, end: i64) -> std::ops::RangeInclusive<i64> {
    let (a, b) = (hour_of(start), hour_of(end.max(start)));
    a..=b.min(a + MAX_HOURS)
}

/// The hour rows of interval `id`: (hour, id, whether it is its first hour).
pub fn hour_rows(start: i64, end: i64, id: u64) -> impl Iterator<Item = (i64, i64, bool)> {
    let first = hour_of(start);
    hours(start, end).map(move |h| (h, id as i64, h == first))
}

/// Nanoseconds since the Unix epoch, the journal's time unit.
pub fn nanos(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// The inverse of [`nanos`].
pub fn from_nanos(n: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(n)).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A burst leaves its rows' memory free but still held by the allocator's
/// per-thread arenas (glibc keeps freed pages of non-main arenas); giving it
/// back keeps the daemon's RSS at what its state needs.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

//! Events by time without an index on time: the sequence is cut in blocks of
//! [`BLOCK`] events, and `event_blocks` keeps the earliest and latest event
//! time of each. A time range is the union of the sequence ranges of the
//! blocks that overlap it; the exact time column decides within them.
//! Event times nearly follow the sequence, so a range touches few blocks
//! beyond its own; an event far out of order only widens its block's range.

use foldhash::HashMap;
use rusqlite::{Connection, Transaction, params};

use super::intern::EventRow;

/// Events per block.
pub const BLOCK: i64 = 1024;

/// Widens the blocks of `events` to their times.
pub(super) fn note(tx: &Transaction<'_>, events: &[&EventRow]) -> rusqlite::Result<()> {
    let mut spans: HashMap<i64, (i64, i64)> = HashMap::default();
    for e in events {
        let s = spans
            .entry(e.seq as i64 / BLOCK)
            .or_insert((e.time, e.time));
        s.0 = s.0.min(e.time);
        s.1 = s.1.max(e.time);
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO event_blocks (block, min_time, max_time) VALUES (?1, ?2, ?3)
         ON CONFLICT(block) DO UPDATE SET min_time = min(min_time, excluded.min_time),
                                          max_time = max(max_time, excluded.max_time)",
    )?;
    for (block, (lo, hi)) in spans {
        stmt.execute(params![block, lo, hi])?;
    }
    Ok(())
}

/// The sequence ranges (inclusive, oldest first, adjacent blocks merged)
/// holding every event whose time is in `[from, to]`.
pub fn ranges(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT block FROM event_blocks WHERE max_time >= ?1 AND min_time <= ?2 ORDER BY block",
    )?;
    let mut out: Vec<(i64, i64)> = Vec::new();
    for b in stmt.query_map(params![from, to], |r| r.get::<_, i64>(0))? {
        let b = b?;
        let (lo, hi) = (b * BLOCK, b * BLOCK + BLOCK - 1);
        match out.last_mut() {
            Some(last) if last.1 + 1 == lo => last.1 = hi,
            _ => out.push((lo, hi)),
        }
    }
    Ok(out)
}

/// The newest event time (None for an empty journal).
pub fn newest_time(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT max(max_time) FROM event_blocks", [], |r| r.get(0))
}

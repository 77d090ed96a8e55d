//! Rows into tables: one transaction per batch, with as few statements as
//! the rows allow.
//!
//! Entering and leaving SQLite's virtual machine costs more than the B-tree
//! work of a small row, so inserts go in multi-row statements, and a session
//! or connection that starts and ends in one batch is inserted whole instead
//! of inserted and then updated. Inserts come first and updates after, in
//! their order, so an update always finds the row it changes.

use foldhash::{HashMap, HashSet};
use rusqlite::{CachedStatement, Connection, ToSql, Transaction, params};

use super::intern::{ConnectionRow, Dict, EventRow, Row, SessionRow};

/// Rows per multi-row statement, largest first: a batch goes out in as few
/// statements as these sizes allow (13 columns × 256 stays far below
/// SQLite's 32,766 parameters). 256 rather than 64 made the writer 16%
/// faster (examples/journal_speed); 1024 gained nothing more.
const STATEMENT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// `items` cut into runs of the sizes in [`STATEMENT_ROWS`], greedily: for
/// each size, the items it takes (a multiple of it), so that one statement
/// of that size is prepared once and run over them.
fn runs<T>(items: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    let mut rest = items;
    STATEMENT_ROWS.into_iter().filter_map(move |n| {
        let (run, tail) = rest.split_at(rest.len() / n * n);
        rest = tail;
        (!run.is_empty()).then_some((n, run))
    })
}

/// Writes rows in one transaction.
pub fn write_rows(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    write_rows_in(&tx, rows)?;
    tx.commit()
}

/// A session to insert, with what the batch learned of it later.
struct NewSession<'a> {
    row: &'a SessionRow,
    proxy_session_id: Option<&'a str>,
    virtual_proxy: Option<&'a str>,
    /// It also ended in this batch.
    ended: bool,
}

/// A connection to insert, and whether it also closed in this batch.
struct NewConnection<'a> {
    row: &'a ConnectionRow,
    closed: bool,
}

/// Writes rows in the transaction `tx` (which the caller commits).
pub(super) fn write_rows_in(tx: &Transaction<'_>, rows: &[Row]) -> rusqlite::Result<()> {
    let mut events: Vec<&EventRow> = Vec::new();
    let mut sessions: Vec<NewSession<'_>> = Vec::new();
    let mut session_at: HashMap<u64, usize> = HashMap::default();
    let mut connections: Vec<NewConnection<'_>> = Vec::new();
    let mut connection_at: HashMap<u64, usize> = HashMap::default();
    let mut updates: Vec<&Row> = Vec::new();
    // Intervals of earlier batches that ended in this one.
    let mut ended_before: HashSet<u64> = HashSet::default();
    let mut closed_before: HashSet<u64> = HashSet::default();
    let mut session_hours: Vec<HourRow> = Vec::new();
    let mut connection_hours: Vec<HourRow> = Vec::new();
    for row in rows {
        match row {
            Row::Event(e) => events.push(e),
            Row::Value(dict, id, v) => insert_value(tx, *dict, *id, v)?,
            Row::Generation {
                first_id,
                first_seq,
            } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO text_generations (first_id, first_seq) VALUES (?1, ?2)",
                )?
                .execute(params![first_id, *first_seq as i64])?;
            }
            Row::SessionStarted(s) => {
                session_at.entry(s.id).or_insert(sessions.len());
                sessions.push(NewSession {
                    row: s,
                    proxy_session_id: s.proxy_session_id.as_deref(),
                    virtual_proxy: s.virtual_proxy.as_deref(),
                    ended: false,
                });
            }
            Row::SessionBound {
                id,
                proxy_session_id,
            } => match session_at.get(id) {
                Some(&i) => sessions[i].proxy_session_id = Some(proxy_session_id),
                None => updates.push(row),
            },
            Row::SessionVirtualProxy { id, virtual_proxy } => match session_at.get(id) {
                Some(&i) => sessions[i].virtual_proxy = Some(virtual_proxy),
                None => updates.push(row),
            },
            Row::SessionEnded {
                id,
                started_at,
                at,
                reason,
            } => {
                let in_batch = session_at.get(id).map(|&i| &mut sessions[i].ended);
                if first_end(in_batch, &mut ended_before, *id, row, &mut updates) {
                    session_hours.extend(hour_rows(*started_at, *at, *reason, *id));
                }
            }
            Row::ConnectionOpened(c) => {
                connection_at.entry(c.id).or_insert(connections.len());
                connections.push(NewConnection {
                    row: c,
                    closed: false,
                });
            }
            Row::ConnectionClosed {
                id,
                opened_at,
                at,
                reason,
            } => {
                let in_batch = connection_at.get(id).map(|&i| &mut connections[i].closed);
                if first_end(in_batch, &mut closed_before, *id, row, &mut updates) {
                    connection_hours.extend(hour_rows(*opened_at, *at, *reason, *id));
                }
            }
        }
    }
    let opt = |id: u32| (id != 0).then_some(i64::from(id));
    super::blocks::note(tx, &events)?;
    insert_many(
        tx,
        "events (seq, time, received, source_seq, kind, host, user, origin, context, message,
                 app, session, agent)",
        13,
        &events,
        |e, b| {
            b.v(e.seq as i64)?;
            b.v(e.time)?;
            b.v(e.received)?;
            b.v(e.source_seq.map(|s| s as i64))?;
            b.v(e.kind)?;
            b.v(e.host)?;
            b.v(e.user)?;
            b.v(e.origin)?;
            b.v(e.context)?;
            b.v(e.message)?;
            b.v(opt(e.app))?;
            b.v(opt(e.session))?;
            b.v(opt(e.agent))
        },
    )?;
    insert_many(
        tx,
        "sessions (id, host, user, agent, proxy_session_id, virtual_proxy, started_at, flags)",
        8,
        &sessions,
        |s, b| {
            b.v(s.row.id as i64)?;
            b.v(s.row.host)?;
            b.v(s.row.user)?;
            b.v(opt(s.row.agent))?;
            b.v(s.proxy_session_id)?;
            b.v(s.virtual_proxy)?;
            b.v(s.row.started_at)?;
            b.v(s.row.flags)
        },
    )?;
    insert_many(
        tx,
        "connections (id, host, user, target, proxy_session_id, opened_at)",
        6,
        &connections,
        |c, b| {
            b.v(c.row.id as i64)?;
            b.v(c.row.host)?;
            b.v(c.row.user)?;
            b.v(c.row.target)?;
            b.v(c.row.proxy_session_id.as_deref())?;
            b.v(c.row.opened_at)
        },
    )?;
    // Open intervals are listed apart; an end (its row of the hours below)
    // takes the interval off that list when it began in an earlier batch.
    let mut opened: Vec<i64> = Vec::new();
    let mut connected: Vec<i64> = Vec::new();
    let mut ended: Vec<i64> = Vec::new();
    let mut closed: Vec<i64> = Vec::new();
    for s in &sessions {
        if !s.ended {
            opened.push(s.row.id as i64);
        }
    }
    for c in &connections {
        if !c.closed {
            connected.push(c.row.id as i64);
        }
    }
    for row in updates {
        match row {
            Row::SessionEnded { id, .. } => ended.push(*id as i64),
            Row::ConnectionClosed { id, .. } => closed.push(*id as i64),
            other => update(tx, other)?,
        }
    }
    let id = |i: &i64, b: &mut Binder<'_, '_>| b.v(i);
    // In key order, each insert lands next to the one before in pages that
    // are already in hand, where in arrival order (intervals end in a
    // different order than they started) each one is a new descent and the
    // splits scatter.
    ended.sort_unstable();
    closed.sort_unstable();
    session_hours.sort_by_key(|h| (h.hour, h.id));
    connection_hours.sort_by_key(|h| (h.hour, h.id));
    insert_many(tx, "open_sessions (id)", 1, &opened, id)?;
    insert_many(tx, "open_connections (id)", 1, &connected, id)?;
    delete_many(tx, "open_sessions", &ended)?;
    delete_many(tx, "open_connections", &closed)?;
    let hour = |h: &HourRow, b: &mut Binder<'_, '_>| {
        b.v(h.hour)?;
        b.v(h.id)?;
        b.v(h.first)?;
        b.v(h.end)?;
        b.v(h.reason)
    };
    insert_many(
        tx,
        "session_hours (hour, id, first, ended_at, end_reason)",
        5,
        &session_hours,
        hour,
    )?;
    insert_many(
        tx,
        "connection_hours (hour, id, first, closed_at, close_reason)",
        5,
        &connection_hours,
        hour,
    )?;
    Ok(())
}

/// Whether an end (`row`, of interval `id`) is the interval's first in this
/// batch, the one that counts: a second would list it under hours the first
/// did not. `in_batch` is the interval's flag when it began in this batch;
/// an end of an earlier batch's interval goes to `updates`.
fn first_end<'a>(
    in_batch: Option<&mut bool>,
    ended_before: &mut HashSet<u64>,
    id: u64,
    row: &'a Row,
    updates: &mut Vec<&'a Row>,
) -> bool {
    match in_batch {
        Some(ended) => !std::mem::replace(ended, true),
        None => {
            let first = ended_before.insert(id);
            if first {
                updates.push(row);
            }
            first
        }
    }
}

/// One row of an hour table: an ended interval listed under an hour it
/// covers, with its end (the queries start from these rows).
struct HourRow {
    hour: i64,
    id: i64,
    first: bool,
    end: i64,
    reason: u8,
}

/// The hour rows of interval `id`, which ran from `start` to `end`.
fn hour_rows(start: i64, end: i64, reason: u8, id: u64) -> impl Iterator<Item = HourRow> {
    super::hour_rows(start, end, id).map(move |(hour, id, first)| HourRow {
        hour,
        id,
        first,
        end,
        reason,
    })
}

/// Binds a statement's parameters in order, each value with its own type:
/// a batch binds millions of values, and a call through `dyn ToSql` for
/// each cost more than the binding.
struct Binder<'s, 'c> {
    stmt: &'s mut CachedStatement<'c>,
    next: usize,
}

impl Binder<'_, '_> {
    /// Binds the next parameter.
    #[inline]
    fn v<V: ToSql>(&mut self, v: V) -> rusqlite::Result<()> {
        self.stmt.raw_bind_parameter(self.next, v)?;
        self.next += 1;
        Ok(())
    }
}

/// `INSERT OR IGNORE INTO {table} VALUES (...), (...)`, in runs of
/// [`STATEMENT_ROWS`] rows; `bind` gives one item's values in column order.
fn insert_many<T>(
    tx: &Transaction<'_>,
    table: &str,
    columns: usize,
    items: &[T],
    bind: impl Fn(&T, &mut Binder<'_, '_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let sql = |n: usize| {
        let one = format!("({})", vec!["?"; columns].join(", "));
        format!(
            "INSERT OR IGNORE INTO {table} VALUES {}",
            vec![one; n].join(", ")
        )
    };
    let run = |stmt: &mut CachedStatement<'_>, chunk: &[T]| {
        let mut b = Binder { stmt, next: 1 };
        for item in chunk {
            bind(item, &mut b)?;
        }
        b.stmt.raw_execute().map(|_| ())
    };
    for (n, run_items) in runs(items) {
        let mut stmt = tx.prepare_cached(&sql(n))?;
        for chunk in run_items.chunks_exact(n) {
            run(&mut stmt, chunk)?;
        }
    }
    Ok(())
}

/// `DELETE FROM {table} WHERE id IN (...)`, in runs of [`STATEMENT_ROWS`] ids.
fn delete_many(tx: &Transaction<'_>, table: &str, ids: &[i64]) -> rusqlite::Result<()> {
    let sql = |n: usize| {
        format!(
            "DELETE FROM {table} WHERE id IN ({})",
            vec!["?"; n].join(", ")
        )
    };
    for (n, list) in runs(ids) {
        let mut stmt = tx.prepare_cached(&sql(n))?;
        for chunk in list.chunks_exact(n) {
            for (i, id) in chunk.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, id)?;
            }
            stmt.raw_execute()?;
        }
    }
    Ok(())
}

fn insert_value(
    tx: &Transaction<'_>,
    dict: Dict,
    id: u32,
    v: &[Option<Box<str>>],
) -> rusqlite::Result<()> {
    let v = |i: usize| v.get(i).and_then(|s| s.as_deref());
    let (sql, n) = match dict {
        Dict::Host => ("INSERT OR REPLACE INTO hosts (id, name) VALUES (?1, ?2)", 1),
        Dict::User => (
            "INSERT OR REPLACE INTO users (id, directory, user_id, key) VALUES (?1, ?2, ?3, ?4)",
            3,
        ),
        Dict::Agent => (
            "INSERT OR REPLACE INTO agents (id, browser, browser_major, os, os_version)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            4,
        ),
        Dict::Target => (
            "INSERT OR REPLACE INTO targets (id, key, app_id) VALUES (?1, ?2, ?3)",
            2,
        ),
        Dict::Text => ("INSERT OR REPLACE INTO texts (id, text) VALUES (?1, ?2)", 1),
    };
    let mut stmt = tx.prepare_cached(sql)?;
    stmt.raw_bind_parameter(1, id)?;
    for i in 0..n {
        stmt.raw_bind_parameter(i + 2, v(i))?;
    }
    stmt.raw_execute().map(|_| ())
}

/// A change to a row written in an earlier batch.
fn update(tx: &Transaction<'_>, row: &Row) -> rusqlite::Result<()> {
    match row {
        Row::SessionBound {
            id,
            proxy_session_id,
        } => tx
            .prepare_cached("UPDATE sessions SET proxy_session_id = ?2 WHERE id = ?1")?
            .execute(params![*id as i64, &**proxy_session_id])?,
        Row::SessionVirtualProxy { id, virtual_proxy } => tx
            .prepare_cached("UPDATE sessions SET virtual_proxy = ?2 WHERE id = ?1")?
            .execute(params![*id as i64, &**virtual_proxy])?,
        _ => 0,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_cover_every_item_once_in_the_largest_statements() {
        for len in [0usize, 1, 3, 4, 5, 63, 64, 255, 256, 257, 600, 1029] {
            let items: Vec<usize> = (0..len).collect();
            let got: Vec<(usize, usize)> = runs(&items).map(|(n, r)| (n, r.len())).collect();
            let back: Vec<usize> = runs(&items).flat_map(|(_, r)| r.iter().copied()).collect();
            assert_eq!(back, items, "{len}: every item once, in order");
            for (n, l) in &got {
                assert_eq!(l % n, 0, "{len}: {got:?}");
            }
            // Greedy: fewer than 4 statements of each smaller size.
            for w in got.windows(2) {
                assert!(w[1].1 < w[0].0, "{len}: {got:?}");
            }
        }
        let sizes: Vec<(usize, usize)> = runs(&[0; 600]).map(|(n, r)| (n, r.len())).collect();
        assert_eq!(sizes, vec![(256, 512), (64, 64), (16, 16), (4, 8)]);
    }
}

//! The upgrade from the first release's wide rows to the compact journal.
//!
//! Schema migration 4 renamed the old tables to `v3_events`, `v3_sessions`
//! and `v3_connections`; this copies their rows, in chunks of one transaction
//! each, through the same encoder the daemon writes with, then drops them. A
//! copy that is interrupted (a kill, a full disk) continues where it stopped
//! at the next start, because each chunk resumes after the newest row already
//! copied. Progress goes to the log; a disk without room for the copy is
//! named before anything is written.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::intern::{ConnectionRow0, Encoder, Row, SessionRow0};
use super::rows::write_rows_in;
use crate::change::{CloseReason, EndReason};
use crate::event::{Command, Event, Format, Stream, UserAgent};

/// Rows copied per transaction.
const CHUNK: i64 = 50_000;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The upgrade needs more room than the disk has.
    #[error(
        "the journal must be upgraded to the compact format, which needs about {needed_mb} MB \
         free next to it in {dir}, but only {available_mb} MB are free; free some space (or move \
         data_dir to a larger disk) and start whosin again: nothing was changed, the journal is \
         as it was"
    )]
    NoRoom {
        /// The journal's folder.
        dir: String,
        /// About how much the copy needs.
        needed_mb: u64,
        /// What the disk has.
        available_mb: u64,
    },
    /// The disk filled during the upgrade.
    #[error(
        "the disk filled while the journal was being upgraded to the compact format ({0}); \
         free some space and start whosin again: the upgrade continues where it stopped and \
         nothing is lost"
    )]
    Full(rusqlite::Error),
}

/// Whether an upgrade is waiting (the old tables are still there).
pub(super) fn pending(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'v3_events'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Bytes free on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Copies the old rows into the compact tables and drops the old ones.
pub(super) fn finish(conn: &mut Connection, path: &Path) -> Result<(), OpenError> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM v3_events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let done: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
    let total = hi.zip(lo).map_or(0, |(h, l)| h - l + 1);
    if total > 0 {
        // The compact copy is about a fifth of the wide rows; a third, and
        // room for the write-ahead log, is a safe estimate.
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let remaining = if done == 0 {
            1.0
        } else {
            (hi.unwrap_or(0) - done).max(0) as f64 / total as f64
        };
        let needed = (size as f64 * remaining / 3.0) as u64 + 64 * 1024 * 1024;
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(free) = free_bytes(dir)
            && free < needed
        {
            return Err(OpenError::NoRoom {
                dir: dir.display().to_string(),
                needed_mb: needed / 1_000_000,
                available_mb: free / 1_000_000,
            });
        }
        tracing::info!(
            "journal: upgrading {} events to the compact format (once; the daemon starts when it is done)",
            total
        );
    }
    let full = |e: rusqlite::Error| {
        if is_full(&e) {
            OpenError::Full(e)
        } else {
            OpenError::Sqlite(e)
        }
    };
    let mut enc = Encoder::load(conn)?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut after = done;
    loop {
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, received_at, source_time, source_seq, format, stream, host, command,
                        user_directory, user_id, origin, context, app_id, proxy_session_id, message,
                        browser, browser_major, os, os_version
                 FROM v3_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after, CHUNK])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get("seq")?;
                enc.event(seq as u64, &old_event(r)?);
                after = seq;
                n += 1;
            }
        }
        write_rows_in(&tx, &enc.take()).map_err(full)?;
        tx.commit().map_err(full)?;
        if n == 0 {
            break;
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            let copied = after - lo.unwrap_or(0) + 1;
            tracing::info!(
                "journal: upgrading: {copied} of {total} events ({:.0}%)",
                100.0 * copied as f64 / total.max(1) as f64
            );
            last_log = Instant::now();
        }
    }
    copy_sessions(conn, &mut enc).map_err(full)?;
    copy_connections(conn, &mut enc).map_err(full)?;
    let tx = conn.transaction()?;
    tx.execute_batch("DROP TABLE v3_events; DROP TABLE v3_sessions; DROP TABLE v3_connections;")?;
    tx.commit()?;
    if total > 0 {
        tracing::info!(
            "journal: upgraded {total} events in {:.1} s; the space the old rows took is reused \
             by new ones (the file does not shrink)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub(super) fn old_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let format: String = r.get("format")?;
    let stream: String = r.get("stream")?;
    let command: String = r.get("command")?;
    let ua = UserAgent {
        browser: r.get("browser")?,
        browser_major: r.get("browser_major")?,
        os: r.get("os")?,
        os_version: r.get("os_version")?,
    };
    Ok(Event {
        received_at: super::from_nanos(r.get("received_at")?),
        source_time: r
            .get::<_, Option<i64>>("source_time")?
            .map(super::from_nanos),
        source_seq: r.get::<_, Option<i64>>("source_seq")?.map(|s| s as u64),
        format: if format == Format::Extended.name() {
            Format::Extended
        } else {
            Format::Legacy
        },
        stream: if stream == Stream::Connection.name() {
            Stream::Connection
        } else {
            Stream::Session
        },
        host: r.get::<_, String>("host")?.into(),
        command: Command::ALL
            .into_iter()
            .find(|c| c.label() == command)
            .unwrap_or(Command::SessionStart),
        user_directory: r.get::<_, String>("user_directory")?.into(),
        user_id: r.get::<_, String>("user_id")?.into(),
        origin: r.get::<_, String>("origin")?.into(),
        context: r.get("context")?,
        proxy_session_id: r.get("proxy_session_id")?,
        message: r.get("message")?,
        app_id: r.get("app_id")?,
        user_agent: (ua != UserAgent::default()).then(|| Arc::new(ua)),
    })
}

/// Copies the rows of an old interval table after the newest one already
/// copied, a chunk a transaction, as the rows the writer writes (`convert`
/// turns one old row into its id and its new rows: a start, and an end when
/// it has one), so the copy lands in the same tables the same way.
fn copy_intervals(
    conn: &mut Connection,
    enc: &mut Encoder,
    table: &str,
    select: &str,
    mut convert: impl FnMut(&rusqlite::Row<'_>, &mut Encoder) -> rusqlite::Result<(i64, Vec<Row>)>,
) -> rusqlite::Result<()> {
    let mut after: i64 = conn.query_row(
        &format!("SELECT coalesce(max(id), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )?;
    loop {
        let tx = conn.transaction()?;
        let mut rows = Vec::new();
        {
            let mut stmt = tx.prepare_cached(select)?;
            let mut q = stmt.query(params![after, CHUNK])?;
            while let Some(r) = q.next()? {
                let (id, new) = convert(r, enc)?;
                after = id;
                rows.extend(new);
            }
        }
        if rows.is_empty() {
            break;
        }
        let mut all = enc.take();
        all.extend(rows);
        write_rows_in(&tx, &all)?;
        tx.commit()?;
    }
    Ok(())
}

fn copy_sessions(conn: &mut Connection, enc: &mut Encoder) -> rusqlite::Result<()> {
    let select = "SELECT id, host, user_directory, user_id, proxy_session_id, started_at, ended_at,
                         end_reason, implied, browser, browser_major, os, os_version, reconciled,
                         virtual_proxy
                  FROM v3_sessions WHERE id > ?1 ORDER BY id LIMIT ?2";
    copy_intervals(conn, enc, "sessions", select, |r, enc| {
        let ua = UserAgent {
            browser: r.get("browser")?,
            browser_major: r.get("browser_major")?,
            os: r.get("os")?,
            os_version: r.get("os_version")?,
        };
        let row = enc.session_row(SessionRow0 {
            id: r.get::<_, i64>("id")? as u64,
            host: r.get("host")?,
            user_directory: r.get("user_directory")?,
            user_id: r.get("user_id")?,
            agent: Some(ua),
            proxy_session_id: r.get("proxy_session_id")?,
            virtual_proxy: r.get("virtual_proxy")?,
            started_at: r.get("started_at")?,
            implied: r.get("implied")?,
            reconciled: r.get("reconciled")?,
        });
        let (id, started_at) = (row.id, row.started_at);
        let mut out = vec![Row::SessionStarted(row)];
        if let Some(at) = r.get::<_, Option<i64>>("ended_at")? {
            let reason: Option<String> = r.get("end_reason")?;
            out.push(Row::SessionEnded {
                id,
                started_at,
                at,
                reason: reason
                    .and_then(|r| EndReason::from_name(&r))
                    .map_or(0, EndReason::code),
            });
        }
        Ok((id as i64, out))
    })
}

fn copy_connections(conn: &mut Connection, enc: &mut Encoder) -> rusqlite::Result<()> {
    let select =
        "SELECT id, host, user_key, app_key, app_id, proxy_session_id, opened_at, closed_at,
                         close_reason
                  FROM v3_connections WHERE id > ?1 ORDER BY id LIMIT ?2";
    copy_intervals(conn, enc, "connections", select, |r, enc| {
        let row = enc.connection_row(ConnectionRow0 {
            id: r.get::<_, i64>("id")? as u64,
            host: r.get("host")?,
            user_key: r.get("user_key")?,
            app_key: r.get("app_key")?,
            app_id: r.get("app_id")?,
            proxy_session_id: r.get("proxy_session_id")?,
            opened_at: r.get("opened_at")?,
        });
        let (id, opened_at) = (row.id, row.opened_at);
        let mut out = vec![Row::ConnectionOpened(row)];
        if let Some(at) = r.get::<_, Option<i64>>("closed_at")? {
            let reason: Option<String> = r.get("close_reason")?;
            out.push(Row::ConnectionClosed {
                id,
                opened_at,
                at,
                reason: reason
                    .and_then(|r| CloseReason::from_name(&r))
                    .map_or(0, CloseReason::code),
            });
        }
        Ok((id as i64, out))
    })
}

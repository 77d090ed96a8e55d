//! Checkpoints off the writer's thread.
//!
//! In WAL mode a commit appends pages to the `-wal` file, and a checkpoint
//! copies them into the database file and syncs it. SQLite runs that
//! checkpoint inside the commit that crosses `wal_autocheckpoint` pages, so
//! the writer stopped for the copy and the fsync: a fifth of its time in a
//! flood (`examples/journal_speed`: 388,000 events/s with them, 497,000
//! without). Here the writer's WAL hook, which SQLite calls after every
//! commit with the WAL's length, wakes a thread of its own once the WAL holds
//! [`Thresholds::thread`] pages, and that thread runs a passive checkpoint on
//! its own connection: it never blocks the writer, which keeps appending
//! meanwhile, and it leaves the pages a reader still needs for the next one.
//!
//! The WAL starts over from its beginning at the first commit after a
//! checkpoint has copied all of it. Should checkpoints fall behind (a reader
//! holding an old snapshot for long, a very slow disk), the WAL would only
//! grow: past [`Thresholds::writer`] pages the writer's commit runs the
//! checkpoint itself, as SQLite's own would have.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// When checkpoints run, in pages of the WAL after a commit.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// The checkpoint thread is woken (SQLite's own default, about 4 MiB of
    /// 4 KiB pages): small enough to copy between two commits.
    pub thread: i32,
    /// The writer checkpoints in its commit (about 100 MiB). In a flood the
    /// writer commits back to back, the thread's checkpoint never ends
    /// between two commits, and the WAL cannot start over until one does.
    pub writer: i32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            thread: 1_000,
            writer: 25_000,
        }
    }
}

/// What the checkpoint thread did (tests and diagnostics).
#[derive(Default, Debug)]
pub struct CheckpointStats {
    /// Checkpoints the thread ran.
    pub by_thread: AtomicU64,
    /// Checkpoints the writer ran itself because the WAL had outgrown them.
    pub by_writer: AtomicU64,
}

/// Starts the checkpoint thread on a connection of its own to `path`, and
/// hands `writer`'s checkpoints to it. The thread ends when `writer` is
/// closed.
pub fn spawn(
    path: &Path,
    writer: &mut Connection,
    at: Thresholds,
) -> rusqlite::Result<(Arc<CheckpointStats>, JoinHandle<()>)> {
    let conn = super::schema::open_reader(path)?;
    // A pending wake-up is enough: the thread copies whatever is there.
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let stats = Arc::new(CheckpointStats::default());
    let shared = stats.clone();
    let thread = std::thread::Builder::new()
        .name("whosin-checkpoint".into())
        .spawn(move || run(&conn, &rx, &shared))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let counted = stats.clone();
    // Replaces SQLite's own autocheckpoint (which is a WAL hook too).
    writer.wal_hook(Some(move |wal: &mut Wal, pages: i32| {
        if pages >= at.writer {
            counted.by_writer.fetch_add(1, Ordering::Relaxed);
            // As SQLite's own hook does, a failed checkpoint does not fail
            // the commit (which has happened: the writer would retry it).
            if let Err(e) = wal.checkpoint() {
                tracing::debug!("journal: checkpoint in the commit: {e}");
            }
        } else if pages >= at.thread {
            let _ = tx.try_send(());
        }
        Ok(())
    }))?;
    Ok((stats, thread))
}

fn run(conn: &Connection, rx: &Receiver<()>, stats: &CheckpointStats) {
    // Every wake-up is a commit that left at least `Thresholds::thread` pages;
    // when they were already copied (a reader kept the WAL from starting
    // over), the passive checkpoint finds nothing to do and syncs nothing.
    while rx.recv().is_ok() {
        match conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            Ok(()) => {
                stats.by_thread.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("journal: checkpoint: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::{Thresholds, spawn};

    /// Commits `n` transactions of about 40 pages each.
    fn commit(conn: &rusqlite::Connection, n: usize) {
        for _ in 0..n {
            conn.execute_batch(
                "BEGIN;
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40)
                 INSERT INTO t SELECT randomblob(4000) FROM s;
                 COMMIT;",
            )
            .unwrap();
        }
    }

    /// (pages in the WAL, pages of it copied), from a checkpoint that copies
    /// nothing new (a reader's connection asks).
    fn wal_of(path: &std::path::Path) -> (i64, i64) {
        let c = super::super::schema::open_reader(path).unwrap();
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    fn journal() -> (tempfile::TempDir, std::path::PathBuf, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        let conn = super::super::schema::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        (dir, path, conn)
    }

    #[test]
    fn the_thread_copies_the_wal_into_the_file_while_the_writer_goes_on() {
        let (_dir, path, mut conn) = journal();
        let at = Thresholds {
            thread: 100,
            writer: i32::MAX,
        };
        let (stats, thread) = spawn(&path, &mut conn, at).unwrap();
        let file = || std::fs::metadata(&path).unwrap().len();
        let empty = file();
        // Three commits: the WAL passes 100 pages, the thread is woken.
        commit(&conn, 3);
        let deadline = Instant::now() + Duration::from_secs(30);
        while stats.by_thread.load(Ordering::Relaxed) == 0 || file() < empty + 400_000 {
            assert!(Instant::now() < deadline, "no checkpoint: {stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(stats.by_writer.load(Ordering::Relaxed), 0);
        // With the WAL copied, the next commit starts it over from the
        // beginning instead of growing it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (log, copied) = wal_of(&path);
            if log == copied {
                break;
            }
            assert!(Instant::now() < deadline, "WAL not copied: {log} {copied}");
            std::thread::sleep(Duration::from_millis(10));
        }
        commit(&conn, 1);
        let (log, _) = wal_of(&path);
        assert!(log < 100, "the WAL started over: {log} pages");
        // The writer's connection closing ends the thread.
        drop(conn);
        thread.join().unwrap();
    }

    #[test]
    fn the_writer_checkpoints_itself_when_the_wal_outgrows_the_thread() {
        let (_dir, path, mut conn) = journal();
        // The thread is never woken; the writer steps in past 100 pages.
        let at = Thresholds {
            thread: i32::MAX,
            writer: 100,
        };
        let (stats, _thread) = spawn(&path, &mut conn, at).unwrap();
        commit(&conn, 10);
        assert!(stats.by_writer.load(Ordering::Relaxed) >= 2, "{stats:?}");
        assert_eq!(stats.by_thread.load(Ordering::Relaxed), 0);
        let (log, _) = wal_of(&path);
        assert!(log < 200, "the WAL stays bounded: {log} pages");
    }
}

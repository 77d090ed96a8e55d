//! The writer: one thread owns the write connection and commits the rows the
//! core hands it in batches.
//!
//! An accepted event is committed within the commit window (100 ms), so a
//! crash loses at most that window and never corrupts the file (WAL with
//! `synchronous=NORMAL` survives a killed process). Rows arrive already
//! compact ([`super::intern`]); the writer only appends and applies them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::intern::{Encoder, Row};
pub use super::rows::write_rows;
use crate::change::Change;
use crate::event::Event;

/// Most rows written in one transaction.
const MAX_BATCH: usize = 50_000;

/// How often old rows are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// What tools and tests hand to [`write_batch`]: events and changes as the
/// core has them.
pub enum Write {
    /// An accepted, non-blacklisted event with its sequence number.
    Event(u64, Box<Event>),
    /// A change to the live state.
    Change(Change),
}

/// What the writer thread receives.
pub enum Msg {
    /// Rows to write, in order.
    Rows(Vec<Row>),
    /// Commit now, then answer (the API asks before it reads).
    Flush(Sender<Result<(), String>>),
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
    /// `n` rows left the writer's hands (committed or dropped). Saturating.
    pub(super) fn done(&self, n: usize) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// The core's end of the writer's channel: it encodes events and changes into
/// compact rows and hands them over. While the disk takes writes but more
/// than `max_uncommitted` rows wait (a flood faster than the disk),
/// [`JournalSender::send`] waits for room: the core, then the receive
/// thread, then the kernel's socket buffer fill up, and what the kernel
/// drops is counted (`whosin_datagrams_dropped_total`) instead of memory
/// growing without bound. While the disk refuses writes it never waits: the
/// writer keeps the newest rows and drops the oldest, counted.
pub struct JournalSender {
    tx: Sender<Msg>,
    health: Arc<JournalHealth>,
    max_uncommitted: usize,
    encoder: Encoder,
}

impl JournalSender {
    /// A sender to the writer reading `tx`'s other end; `encoder` continues
    /// the journal's dictionaries ([`Encoder::load`]).
    pub fn new(
        tx: Sender<Msg>,
        health: Arc<JournalHealth>,
        max_uncommitted: usize,
        encoder: Encoder,
    ) -> Self {
        Self {
            tx,
            health,
            max_uncommitted,
            encoder,
        }
    }

    /// Encodes event `seq` (sent with the next [`JournalSender::send`]).
    pub fn event(&mut self, seq: u64, ev: &Event) {
        self.encoder.event(seq, ev);
    }

    /// Encodes a change of the live state.
    pub fn change(&mut self, c: Change) {
        self.encoder.change(c);
    }

    /// Rows encoded and not yet sent.
    pub fn pending(&self) -> usize {
        self.encoder.len()
    }

    /// Hands what was encoded to the writer, waiting for room under a flood.
    pub fn send(&mut self) {
        if self.encoder.is_empty() {
            return;
        }
        let rows = self.encoder.take();
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
        let _ = self.tx.send(Msg::Rows(rows));
    }

    /// Sends what was encoded, then asks the writer to commit and answer on `reply`.
    pub fn flush(&mut self, reply: Sender<Result<(), String>>) {
        self.send();
        let _ = self.tx.send(Msg::Flush(reply));
    }
}

/// How the writer commits (from `journal` and `retention`).
pub struct WriterSettings {
    /// Rows are committed at most this long after they arrive.
    pub window: Duration,
    /// How long events and ended sessions are kept.
    pub retention: Duration,
    /// Most rows kept in memory while the disk refuses writes; beyond this
    /// the oldest events and changes are dropped (and counted), so a full
    /// disk cannot exhaust memory. (While the disk works, [`JournalSender`]
    /// keeps the rows in flight within the same bound by waiting.)
    pub max_uncommitted: usize,
}

/// Runs the writer on its own thread until every sender is gone (it then
/// commits what it has and stops).
pub fn spawn_writer(
    mut conn: Connection,
    settings: WriterSettings,
    rx: Receiver<Msg>,
    health: Arc<JournalHealth>,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    let WriterSettings {
        window,
        retention,
        max_uncommitted,
    } = settings;
    // Checkpoints run beside the writer (a journal in memory has none).
    if let Some(path) = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
    {
        super::checkpoint::spawn(&path, &mut conn, super::checkpoint::Thresholds::default())
            .map_err(std::io::Error::other)?;
    }
    std::thread::Builder::new()
        .name("whosin-journal".into())
        .spawn(move || {
            let mut w = Writer::new(conn, health, metrics, max_uncommitted);
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
                    Ok(Msg::Flush(reply)) => flushers.push(reply),
                    Ok(Msg::Rows(rows)) => {
                        w.push(rows);
                        first_pending.get_or_insert_with(Instant::now);
                    }
                    // A second without rows after many: the flood is over.
                    Err(RecvTimeoutError::Timeout)
                        if first_pending.is_none() && w.committed_since_trim >= TRIM_AFTER_ROWS =>
                    {
                        super::release_memory();
                        w.committed_since_trim = 0;
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
                        Ok(Msg::Flush(reply)) => flushers.push(reply),
                        Ok(Msg::Rows(rows)) => {
                            w.push(rows);
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
                        // A window that gathered few rows means the burst is
                        // over. (Any batch short of the most, as before,
                        // trimmed three times a second under a steady
                        // 70,000 events/s, and every thread then faulted its
                        // memory back in: 5% of the writer alone.)
                        let quiet = rows < QUIET_ROWS && flushers.is_empty();
                        if w.committed_since_trim >= TRIM_AFTER_ROWS && quiet {
                            super::release_memory();
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

pub(super) struct Writer {
    pub(super) conn: Connection,
    pending: VecDeque<Row>,
    health: Arc<JournalHealth>,
    metrics: Arc<crate::metrics::Metrics>,
    max_uncommitted: usize,
    dropped: u64,
    committed_since_trim: usize,
}

/// After this many rows have gone through memory, an idle writer hands the
/// freed memory back to the system.
const TRIM_AFTER_ROWS: usize = 50_000;

/// A commit window with fewer rows than this is a quiet one (at the default
/// window, under 10,000 rows a second).
const QUIET_ROWS: usize = 1_000;

impl Writer {
    pub(super) fn new(
        conn: Connection,
        health: Arc<JournalHealth>,
        metrics: Arc<crate::metrics::Metrics>,
        max_uncommitted: usize,
    ) -> Self {
        Self {
            conn,
            pending: VecDeque::new(),
            health,
            metrics,
            max_uncommitted,
            dropped: 0,
            committed_since_trim: 0,
        }
    }

    fn push(&mut self, rows: Vec<Row>) {
        for row in rows {
            if self.pending.len() >= self.max_uncommitted {
                self.drop_oldest();
            }
            self.pending.push_back(row);
        }
    }

    /// Drops the oldest event or change (never a dictionary value: later
    /// rows refer to it).
    fn drop_oldest(&mut self) {
        let Some(i) = self.pending.iter().position(Row::droppable) else {
            return;
        };
        self.pending.remove(i);
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

    fn commit(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = write_rows(&mut self.conn, self.pending.make_contiguous());
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

    /// Deletes events and ended intervals older than `retention`, and the
    /// generations of texts no remaining event refers to. The newest event
    /// always stays: its sequence number is where numbering continues, and
    /// sinks' cursors depend on numbers never being given twice.
    pub(super) fn retain(&mut self, retention: Duration) {
        let cutoff = super::nanos(jiff::Timestamp::now())
            - i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        let hour = super::hour_of(cutoff);
        let block = super::blocks::BLOCK;
        let result = self.conn.transaction().and_then(|tx| {
            for (lo, hi) in super::blocks::ranges(&tx, i64::MIN, cutoff - 1)? {
                tx.execute(
                    "DELETE FROM events WHERE seq BETWEEN ?1 AND ?2 AND time < ?3
                       AND seq < (SELECT max(seq) FROM events)",
                    rusqlite::params![lo, hi, cutoff],
                )?;
            }
            // Intervals that ended before the cutoff, found by the row of
            // their first hour (which holds the end). The hour rows before
            // the cutoff's hour go, except the first ones of intervals that
            // stay: the journal keeps their ends there.
            tx.execute_batch("CREATE TEMP TABLE IF NOT EXISTS gone (id INTEGER PRIMARY KEY)")?;
            for (table, end, hours) in [
                ("sessions", "ended_at", "session_hours"),
                ("connections", "closed_at", "connection_hours"),
            ] {
                tx.execute_batch(&format!(
                    "DELETE FROM gone;
                     INSERT OR IGNORE INTO gone SELECT id FROM {hours}
                         WHERE hour <= {hour} AND first AND {end} < {cutoff};
                     DELETE FROM {table} WHERE id IN (SELECT id FROM gone);
                     DELETE FROM {hours} WHERE hour < {hour}
                         AND (NOT first OR id IN (SELECT id FROM gone));"
                ))?;
            }
            tx.execute_batch(&format!(
                "DELETE FROM event_blocks WHERE max_time < {cutoff}
                   AND block < (SELECT coalesce(max(seq), 0) FROM events) / {block};
                 CREATE TEMP TABLE IF NOT EXISTS text_floor (id INTEGER);
                 DELETE FROM text_floor;
                 INSERT INTO text_floor SELECT coalesce(max(first_id), 0) FROM text_generations
                     WHERE first_seq <= (SELECT coalesce(min(seq), 0) FROM events);
                 DELETE FROM texts WHERE id < (SELECT id FROM text_floor);
                 DELETE FROM text_generations WHERE first_id < (SELECT id FROM text_floor);"
            ))?;
            tx.commit()
        });
        if let Err(e) = result {
            tracing::warn!("journal: retention cleanup failed: {e}");
        }
    }
}

/// Encodes `batch` with the journal's dictionaries and writes it in one
/// transaction (tools, tests and benchmarks; the daemon encodes on its core
/// thread and its writer calls [`write_rows`]).
pub fn write_batch(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let mut enc = Encoder::load(conn)?;
    for w in batch {
        match w {
            Write::Event(seq, ev) => enc.event(*seq, ev),
            Write::Change(c) => enc.change(c.clone()),
        }
    }
    write_rows(conn, &enc.take())
}

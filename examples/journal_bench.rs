//! Builds a journal of N events spread over 90 days, then measures what the
//! forensic API costs on it: `?at=` (who was in) at random instants, a
//! one-day concurrency curve, and the file's size per million events.
//!
//! `cargo run --release --example journal_bench -- 10000000 /tmp/bench-journal 3000`
//! (events, folder, users; about half the users are logged in at any instant)
use std::time::{Duration, Instant};

use jiff::Timestamp;
use whosin::ingest::parse::Parser;
use whosin::live::LiveState;
use whosin::queries::{self, Filter};
use whosin::simulate::{Generator, WireFormat};
use whosin::storage;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::path::PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/whosin-journal-bench".into()),
    );
    let users: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3000);
    let path = storage::path_in(&dir);
    let start = Timestamp::from_second(1_790_000_000).unwrap();
    let span_ns: i128 = 90 * 86_400 * 1_000_000_000;
    if std::env::var_os("MEASURE_ONLY").is_none() {
        build(n, &dir, users, start, span_ns);
    }
    measure(&path, start, span_ns);
}

fn build(n: u64, dir: &std::path::Path, users: usize, start: Timestamp, span_ns: i128) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let path = storage::path_in(dir);
    let mut conn = storage::open(&path).unwrap();
    // Checkpoints beside the writer, as the daemon's writer thread has them.
    let _checkpoints = storage::checkpoint::spawn(&path, &mut conn, Default::default()).unwrap();
    let mut enc = storage::Encoder::load(&conn).unwrap();

    let mut g = Generator::new(users, 4, WireFormat::Legacy, 7);
    let mut parser = Parser::new();
    let mut state = LiveState::new(Duration::from_secs(30 * 60));
    let mut lines = Vec::new();
    let mut seq = 0u64;
    let mut next_expire = start;
    let t0 = Instant::now();
    // The writer's own time: rows are made a million events at a time (the
    // core's work in the daemon), then written in 50,000-row transactions
    // as the writer thread does, and only the writing is timed.
    let mut write_secs = 0.0;
    let mut segments = Vec::new();
    while seq < n {
        let segment_end = (seq + SEGMENT).min(n);
        let first = seq;
        while seq < segment_end {
            lines.clear();
            g.step(&mut lines);
            for l in &lines {
                seq += 1;
                let at = Timestamp::from_nanosecond(
                    start.as_nanosecond() + span_ns * seq as i128 / n as i128,
                )
                .unwrap();
                if at >= next_expire {
                    for c in state.expire(at).changes {
                        enc.change(c);
                    }
                    next_expire = at + Duration::from_secs(60);
                }
                let ev = parser.parse(l.as_bytes(), at).unwrap();
                let out = state.apply(&ev);
                enc.event(seq, &ev);
                for c in out.changes {
                    enc.change(c);
                }
            }
        }
        let rows = enc.take();
        let w = Instant::now();
        for chunk in rows.chunks(50_000) {
            storage::writer::write_rows(&mut conn, chunk).unwrap();
        }
        let secs = w.elapsed().as_secs_f64();
        write_secs += secs;
        segments.push((first, seq, rows.len(), secs));
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let build = t0.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let sessions: i64 = conn
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    let connections: i64 = conn
        .query_row("SELECT count(*) FROM connections", [], |r| r.get(0))
        .unwrap();
    println!(
        "journal: {n} events, {sessions} sessions, {connections} connections, built in {build:.0} s; \
         the writer's share {write_secs:.1} s ({:.0} events/s on average)",
        n as f64 / write_secs
    );
    for (i, (first, last, rows, secs)) in segments.iter().enumerate() {
        if i == 0 || i + 1 == segments.len() || std::env::var_os("ALL_SEGMENTS").is_some() {
            println!(
                "  events {}-{last}: {rows} rows written in {secs:.2} s = {:.0} events/s ({:.0} rows/s)",
                first + 1,
                (last - first) as f64 / secs,
                *rows as f64 / secs
            );
        }
    }
    println!(
        "size: {:.1} MB = {:.0} bytes per event (events, sessions, connections, dictionaries, indexes)",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
}

/// Events made and written at a time.
const SEGMENT: u64 = 1_000_000;

fn measure(path: &std::path::Path, start: Timestamp, span_ns: i128) {
    // Fresh reader, as the API uses.
    let reader = storage::open_reader(path).unwrap();
    let mut times = Vec::new();
    let mut found = Vec::new();
    let mut x: u64 = 88172645463325252;
    for _ in 0..50 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = Timestamp::from_nanosecond(start.as_nanosecond() + (x % (span_ns as u64)) as i128)
            .unwrap();
        let q = Instant::now();
        let a = queries::sessions_at(&reader, t, &Filter::default()).unwrap();
        let json = serde_json::to_string(&a).unwrap();
        times.push(q.elapsed().as_secs_f64() * 1000.0);
        found.push((a.sessions.len(), json.len()));
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let avg_sessions = found.iter().map(|f| f.0).sum::<usize>() / found.len();
    println!(
        "?at= over 50 random instants: median {:.1} ms, p90 {:.1} ms, max {:.1} ms (about {avg_sessions} sessions in each answer, JSON included)",
        times[25], times[45], times[49]
    );
    let day = Timestamp::from_nanosecond(start.as_nanosecond() + span_ns / 2).unwrap();
    let q = Instant::now();
    let c = queries::concurrency(
        &reader,
        day,
        day + Duration::from_secs(86_400),
        Duration::from_secs(300),
        "5m".into(),
        &Filter::default(),
    )
    .unwrap();
    println!(
        "concurrency over one day at 5m steps: {:.1} ms, {} points, peak {} sessions",
        q.elapsed().as_secs_f64() * 1000.0,
        c.points.len(),
        c.peak.sessions
    );
}

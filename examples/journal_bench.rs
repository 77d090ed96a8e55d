//! Builds a journal of N events spread over 90 days, then measures what the
//! forensic API costs on it: `?at=` (who was in) at random instants, a
//! one-day concurrency curve, and the file's size per million events.
//!
//! `cargo run --release --example journal_bench -- 10000000 /tmp/bench-journal 3000`
//! (events, folder, users; about half the users are logged in at any instant)
use std::time::{Duration, Instant};

use jiff::Timestamp;
use whosin::ingest::parse::Parser;
use whosin::sessions::journal::{self, Write};
use whosin::sessions::live::LiveState;
use whosin::sessions::query::{self, Filter};
use whosin::simulate::{Generator, WireFormat};

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
    let path = journal::path_in(&dir);
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
    let path = journal::path_in(dir);
    let mut conn = journal::open(&path).unwrap();

    let mut g = Generator::new(users, 4, WireFormat::Legacy, 7);
    let mut parser = Parser::new();
    let mut state = LiveState::new(Duration::from_secs(30 * 60));
    let mut lines = Vec::new();
    let mut batch = Vec::new();
    let mut seq = 0u64;
    let mut next_expire = start;
    let t0 = Instant::now();
    while seq < n {
        lines.clear();
        g.step(&mut lines);
        for l in &lines {
            seq += 1;
            let at = Timestamp::from_nanosecond(
                start.as_nanosecond() + span_ns * seq as i128 / n as i128,
            )
            .unwrap();
            if at >= next_expire {
                let out = state.expire(at);
                batch.extend(out.changes.into_iter().map(Write::Change));
                next_expire = at + Duration::from_secs(60);
            }
            let ev = parser.parse(l.as_bytes(), at).unwrap();
            let out = state.apply(&ev);
            batch.push(Write::Event(seq, Box::new(ev)));
            batch.extend(out.changes.into_iter().map(Write::Change));
        }
        if batch.len() >= 50_000 {
            journal::write_batch(&mut conn, &batch).unwrap();
            batch.clear();
        }
    }
    journal::write_batch(&mut conn, &batch).unwrap();
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
        "journal: {n} events, {sessions} sessions, {connections} connections, built in {build:.0} s ({:.0} events/s)",
        n as f64 / build
    );
    println!(
        "size: {:.1} MB = {:.0} MB per million events",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / (n as f64 / 1e6)
    );
}

fn measure(path: &std::path::Path, start: Timestamp, span_ns: i128) {
    // Fresh reader, as the API uses.
    let reader = journal::open_reader(path).unwrap();
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
        let a = query::sessions_at(&reader, t, &Filter::default()).unwrap();
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
    let c = query::concurrency(
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

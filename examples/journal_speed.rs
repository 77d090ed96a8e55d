//! How fast the journal writer commits events (rows per second), in isolation:
//! the rows are made first (as the core thread makes them), then handed to a
//! writer thread in the core's message sizes, and timed until committed.
//! `cargo run --release --example journal_speed [EVENTS] [RATE]` (default
//! 2,000,000 events, all at once). With RATE, the messages are handed over
//! at RATE events per second, as the daemon's core hands them over, so each
//! commit window holds what arrived in it: the writer's cost at that rate.
//! Also printed: what the writer thread wrote (`wchar`), mostly the
//! write-ahead log, so the bytes per event show how local its writes are.
use std::time::{Duration, Instant};
use whosin::ingest::parse::Parser;
use whosin::live::LiveState;
use whosin::simulate::{Generator, WireFormat};
use whosin::storage;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = storage::path_in(dir.path());
    let conn = storage::open(&path).unwrap();
    let mut enc = storage::Encoder::load(&conn).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let health = std::sync::Arc::new(storage::JournalHealth::default());
    let writer = storage::spawn_writer(
        conn,
        storage::WriterSettings {
            window: Duration::from_millis(100),
            retention: Duration::from_secs(86400),
            max_uncommitted: 500_000,
        },
        rx,
        health,
        whosin::metrics::Metrics::new(&[]),
    )
    .unwrap();
    let mut g = Generator::new(5000, 2, WireFormat::Legacy, 1);
    let mut parser = Parser::new();
    let mut state = LiveState::new(Duration::from_secs(3600));
    let mut lines = Vec::new();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let rate: Option<f64> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    let mut seq = 0;
    let mut rows = 0;
    let mut msgs = Vec::new();
    let encoding = Instant::now();
    while seq < n {
        lines.clear();
        g.step(&mut lines);
        for l in &lines {
            let ev = parser.parse(l.as_bytes(), jiff::Timestamp::now()).unwrap();
            let out = state.apply(&ev);
            seq += 1;
            rows += 1 + out.changes.len();
            enc.event(seq, &ev);
            for c in out.changes {
                enc.change(c);
            }
        }
        // The core sends one message per batch of datagrams.
        if enc.len() >= 128 {
            msgs.push(storage::Msg::Rows(enc.take()));
        }
    }
    msgs.push(storage::Msg::Rows(enc.take()));
    let encoded = encoding.elapsed().as_secs_f64();
    let start = Instant::now();
    let per_event = msgs.len() as f64 / seq as f64;
    for (i, m) in msgs.into_iter().enumerate() {
        tx.send(m).unwrap();
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / per_event / rate);
            while Instant::now() < due {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    let (ftx, frx) = std::sync::mpsc::channel();
    tx.send(storage::Msg::Flush(ftx)).unwrap();
    frx.recv().unwrap().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{seq} events ({rows} rows) committed in {secs:.2} s: {:.0} events/s, {:.0} rows/s",
        seq as f64 / secs,
        rows as f64 / secs
    );
    // CPU time is steadier than wall time on a shared VM.
    if let Some(cpu) = thread_cpu("whosin-journal") {
        println!(
            "writer thread CPU {cpu:.2} s: {:.0} events per CPU second",
            seq as f64 / cpu
        );
    }
    if let Some(w) = thread_io("whosin-journal", "wchar") {
        println!(
            "writer thread wrote {:.1} MB: {:.0} bytes per event",
            w / 1e6,
            w / seq as f64
        );
    }
    println!(
        "(parsing, the live state and encoding took {encoded:.2} s before, on this thread: \
         the core's work in the daemon)"
    );
    drop(tx);
    writer.join().unwrap();
}

/// The counter `key` of `/proc/self/task/*/io` for the thread named `name`.
fn thread_io(name: &str, key: &str) -> Option<f64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        if std::fs::read_to_string(dir.join("comm")).ok()?.trim() != name {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).ok()?;
        let line = io.lines().find(|l| l.starts_with(&format!("{key}:")))?;
        return line.split_whitespace().nth(1)?.parse().ok();
    }
    None
}

/// utime + stime of this process's thread named `name`, in seconds (Linux).
fn thread_cpu(name: &str) -> Option<f64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        return Some(ticks / 100.0);
    }
    None
}

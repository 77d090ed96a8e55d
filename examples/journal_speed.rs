//! How fast the journal writer commits events (rows per second), in isolation.
//! `cargo run --release --example journal_speed`
use std::time::{Duration, Instant};
use whosin::ingest::parse::Parser;
use whosin::sessions::journal;
use whosin::sessions::live::LiveState;
use whosin::simulate::{Generator, WireFormat};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal::path_in(dir.path());
    let conn = journal::open(&path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let health = std::sync::Arc::new(journal::JournalHealth::default());
    let writer = journal::spawn_writer(
        conn,
        journal::WriterSettings {
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
        .unwrap_or(200_000);
    let mut seq = 0;
    let mut rows = 0;
    let mut msgs = Vec::new();
    while seq < n {
        lines.clear();
        g.step(&mut lines);
        for l in &lines {
            let ev = parser.parse(l.as_bytes(), jiff::Timestamp::now()).unwrap();
            let out = state.apply(&ev);
            seq += 1;
            rows += 1 + out.changes.len();
            msgs.push(journal::Write::Event(seq, Box::new(ev)));
            msgs.extend(out.changes.into_iter().map(journal::Write::Change));
        }
    }
    let start = Instant::now();
    for m in msgs {
        tx.send(m).unwrap();
    }
    let (ftx, frx) = std::sync::mpsc::channel();
    tx.send(journal::Write::Flush(ftx)).unwrap();
    frx.recv().unwrap().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{seq} events ({rows} rows) committed in {secs:.2} s: {:.0} events/s, {:.0} rows/s",
        seq as f64 / secs,
        rows as f64 / secs
    );
    drop(tx);
    writer.join().unwrap();
}

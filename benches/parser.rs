//! Parser throughput: datagrams per second on one core, user-agent memo included.
//!
//! Run: `cargo bench --bench parser`. Results go in docs/performance.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use whosin::ingest::parse::Parser;

const LINES: [&str; 6] = [
    "/qseow-proxy-session/;sense-node1;Start session;LAB;anna.berg;AppAccess;/hub/;Start session for user 'LAB\\anna.berg' UserAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'",
    "/qseow-proxy-connection/;sense-node1;Open connection;LAB;anna.berg;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c?reloaduri=https%3A%2F%2Fsense.example.com%2Fsense%2Fapp%2F3f2a1c9e;connection Opened for session UserAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15'",
    "/qseow-proxy-connection/;sense-node1;Close connection;LAB;anna.berg;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c?reloaduri=x;connection Closed for session",
    "/qseow-proxy-session/;sense-node1;Stop session;LAB;anna.berg;AppAccess;/hub/;Stop session for user 'LAB\\anna.berg'",
    "/whosin-connection/;2026-11-21T09:00:02.007Z;17;sense-node1;Open connection;LAB;Karin.Lund;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;7d1e0f2a9c;connection Opened for session",
    "GET / HTTP/1.1",
];

fn bench(c: &mut Criterion) {
    let now = jiff::Timestamp::now();
    let mut parser = Parser::new();
    // Warm the user-agent rules and memo, as a running daemon has them.
    for l in LINES {
        let _ = parser.parse(l.as_bytes(), now);
    }
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(LINES.len() as u64));
    g.bench_function("mixed_6_datagrams", |b| {
        b.iter(|| {
            for l in LINES {
                let _ = black_box(parser.parse(black_box(l.as_bytes()), now));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("session_start_with_user_agent", |b| {
        b.iter(|| black_box(parser.parse(black_box(LINES[0].as_bytes()), now)))
    });
    g.bench_function("user_agent_first_sight", |b| {
        // A new string every time: the uncached cost, paid once per distinct agent.
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let ua = format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{i}.0.0.0 Safari/537.36");
            black_box(whosin::ingest::useragent::resolve(&ua))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

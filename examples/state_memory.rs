//! Memory of the live state alone: N users with one session and one connection.
//! `cargo run --release --example state_memory -- 100000`
use std::time::Duration;
use whosin::ingest::parse::Parser;
use whosin::live::LiveState;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    sizes();
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut parser = Parser::new();
    let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    // Warm the user-agent rules first so they are not counted.
    let _ = parser.parse(
        format!("/qseow-proxy-session/;h;Start session;LAB;x;;;UserAgent: '{ua}'").as_bytes(),
        jiff::Timestamp::now(),
    );
    let before = rss_kb();
    let mut state = LiveState::new(Duration::from_secs(1800));
    for i in 0..n {
        let node = format!("sense-node{}", i % 4 + 1);
        let s = format!(
            "/qseow-proxy-session/;{node};Start session;LAB;user{i:06};AppAccess;/hub/;Start session for user 'LAB\\user{i:06}' UserAgent: '{ua}'"
        );
        let c = format!(
            "/qseow-proxy-connection/;{node};Open connection;LAB;user{i:06};AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-{:012};connection Opened for session UserAgent: '{ua}'",
            i % 1000
        );
        for l in [s, c] {
            let ev = parser.parse(l.as_bytes(), jiff::Timestamp::now()).unwrap();
            state.apply(&ev);
        }
    }
    let after = rss_kb();
    println!(
        "{n} users with a session and a connection: {} MB, {} bytes each",
        (after - before) / 1024,
        (after - before) * 1024 / n as u64
    );
}

fn sizes() {
    use whosin::live::*;
    println!(
        "Session {} Connection {} UserState {} HostState {} Timestamp {}",
        std::mem::size_of::<Session>(),
        std::mem::size_of::<Connection>(),
        std::mem::size_of::<UserState>(),
        std::mem::size_of::<HostState>(),
        std::mem::size_of::<jiff::Timestamp>()
    );
}

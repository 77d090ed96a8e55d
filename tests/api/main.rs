//! The journal through the real daemon: the JSON API now and in the past,
//! restarts (clean and SIGKILL) that change no answer, and the token.
//!
//! `queries` asks the API and `whosin who`, `restarts` restarts the daemon,
//! `http` holds the token and the HTTP limits, and `stream` the event stream.

#[path = "../common/mod.rs"]
mod common;
mod http;
mod queries;
mod restarts;
mod stream;

use common::Daemon;

const APP: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";

fn start(host: &str, user: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!(
        "/qseow-proxy-session/;{host};Start session;{dir};{id};AppAccess;/hub/;Start session for user '{user}' UserAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'"
    )
}

fn stop(host: &str, user: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!(
        "/qseow-proxy-session/;{host};Stop session;{dir};{id};AppAccess;/hub/;Stop session for user '{user}'"
    )
}

fn open(host: &str, user: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!(
        "/qseow-proxy-connection/;{host};Open connection;{dir};{id};AppAccess;/app/{APP}?reloaduri=x;connection Opened for session"
    )
}

fn users_of(v: &serde_json::Value) -> Vec<String> {
    let mut u: Vec<String> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}@{}",
                s["user"].as_str().unwrap(),
                s["host"].as_str().unwrap()
            )
        })
        .collect();
    u.sort();
    u
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Waits until the daemon has applied `n` events (blacklisted or not).
fn applied(d: &Daemon, n: f64) {
    d.wait_metric("whosin_datagrams_received_total", n);
}

//! Faults, with real processes: SIGKILL in the middle of a stream, a config
//! file edited badly while the daemon runs, and a flood of junk datagrams.
//!
//! The three groups are the modules `sigkill`, `config_edits` and
//! `junk_flood`; the helpers they share are here.

#[path = "../common/mod.rs"]
mod common;
mod config_edits;
mod junk_flood;
mod sigkill;

use common::{Daemon, Metrics};
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// A small deterministic generator (xorshift64*): the tests need varied data,
/// not cryptographic randomness, and a failure must be reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The sum of every sample of metric `name` (all label sets).
fn sum(m: &Metrics, name: &str) -> f64 {
    m.0.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A daemon whose config is `extra` and whose log goes to `logs/whosin.log`
/// (a subfolder: whosin watches the config's own folder).
fn start_logged(extra: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), extra);
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    Daemon::start_logged(dir, config, &logs.join("whosin.log"))
}

fn log_text(d: &Daemon) -> String {
    String::from_utf8_lossy(&d.log_bytes()).into_owned()
}

fn session(host: &str, cmd: &str, user: &str, message: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!("/qseow-proxy-session/;{host};{cmd};{dir};{id};AppAccess;/hub/;{message}")
}

fn connection(host: &str, cmd: &str, user: &str, app: &str, message: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!("/qseow-proxy-connection/;{host};{cmd};{dir};{id};AppAccess;/app/{app};{message}")
}

const APPS: [&str; 2] = [
    "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c",
    "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f",
];

/// Every journaled event, oldest first, following `next`.
fn all_events(d: &Daemon) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = d.json(&format!(
            "/api/v1/events?from=2000-01-01T00:00:00Z&to=2200-01-01T00:00:00Z&limit=100000{after}"
        ));
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

fn assert_alive(d: &mut Daemon) {
    assert!(d.running(), "whosin stopped: {}", log_text(d));
    assert_eq!(d.get("/readyz").0, 200);
}

//! `whosin simulate`: realistic Qlik proxy traffic, for trying whosin out and
//! for measuring it.
//!
//! Users log in to one node each, open and close apps, and log out; a few
//! service accounts (which a sensible blacklist drops) log in and out all the
//! time, as the scheduler and repository services do. Every datagram is what the
//! proxy's log appender would send, in the legacy or the extended format.
//!
//! The simulator keeps its own model of who is logged in, so a run can end with
//! the exact counts whosin should show ([`Report`]); the integration tests and
//! the performance run compare the two.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::Command;

/// Wire format to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    /// Butler SOS's pattern (no time, counter or session id).
    Legacy,
    /// whosin's pattern with source time, counter and proxy session id.
    Extended,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to send.
    pub target: SocketAddr,
    /// Distinct human users.
    pub users: usize,
    /// Qlik nodes.
    pub hosts: usize,
    /// Datagrams per second.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Wire format.
    pub format: WireFormat,
    /// PRNG seed, for repeatable traffic.
    pub seed: u64,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Per-host counts whosin should show after the run, with service accounts left out.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HostCounts {
    /// Open sessions.
    pub sessions: u64,
    /// Open connections.
    pub connections: u64,
    /// Users with a session.
    pub users: u64,
}

/// What a run sent and what whosin should now show.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams of service accounts (blacklisted by `INTERNAL` in the default tour).
    pub service_account_events: u64,
    /// Events of human users per host and event label.
    pub events: BTreeMap<String, BTreeMap<String, u64>>,
    /// Expected live counts per host (human users only).
    pub expected: BTreeMap<String, HostCounts>,
    /// Seconds the run took.
    pub seconds: f64,
}

/// A small, fast, seeded PRNG (xorshift64*); the traffic need not be
/// cryptographic, only varied and repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
];

const SERVICE_ACCOUNTS: [&str; 3] = ["sa_scheduler", "sa_repository", "sa_engine"];

struct User {
    dir: &'static str,
    id: String,
    host: usize,
    ua: usize,
    service: bool,
    session: Option<String>,
    apps: Vec<usize>,
}

/// The traffic model and the datagram writer.
pub struct Generator {
    rng: Rng,
    format: WireFormat,
    hosts: Vec<String>,
    apps: Vec<String>,
    users: Vec<User>,
    counters: BTreeMap<(usize, bool), u64>,
    next_session: u64,
    report: Report,
}

impl Generator {
    /// A generator for `users` people on `hosts` nodes.
    pub fn new(users: usize, hosts: usize, format: WireFormat, seed: u64) -> Self {
        let mut rng = Rng(seed.max(1));
        let hosts: Vec<String> = (1..=hosts.max(1))
            .map(|i| format!("sense-node{i}"))
            .collect();
        let apps = (0..20)
            .map(|_| {
                let a = rng.next();
                let b = rng.next();
                format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                )
            })
            .collect();
        let mut people: Vec<User> = (0..users)
            .map(|i| User {
                dir: "LAB",
                id: format!("user{i:05}"),
                host: rng.below(hosts.len()),
                ua: rng.below(USER_AGENTS.len()),
                service: false,
                session: None,
                apps: Vec::new(),
            })
            .collect();
        for (i, sa) in SERVICE_ACCOUNTS.iter().enumerate() {
            people.push(User {
                dir: "INTERNAL",
                id: (*sa).to_owned(),
                host: i % hosts.len(),
                ua: 0,
                service: true,
                session: None,
                apps: Vec::new(),
            });
        }
        Generator {
            rng,
            format,
            hosts,
            apps,
            users: people,
            counters: BTreeMap::new(),
            next_session: 1,
            report: Report::default(),
        }
    }

    /// Appends the next user action's datagrams (one or a few) to `out`.
    pub fn step(&mut self, out: &mut Vec<String>) {
        // Service accounts make about 3% of the traffic.
        let humans = self.users.len() - SERVICE_ACCOUNTS.len();
        let idx = if humans == 0 || self.rng.chance(3) {
            humans + self.rng.below(SERVICE_ACCOUNTS.len())
        } else {
            self.rng.below(humans)
        };
        let u = &self.users[idx];
        let cmds: Vec<(Command, Option<usize>)> = match (&u.session, u.apps.len()) {
            (None, _) => vec![(Command::SessionStart, None)],
            (Some(_), n) => {
                let roll = self.rng.below(100);
                if n < 3 && roll < 50 {
                    vec![(
                        Command::ConnectionOpen,
                        Some(self.rng.below(self.apps.len())),
                    )]
                } else if n > 0 && roll < 85 {
                    let which = self.rng.below(n);
                    vec![(Command::ConnectionClose, Some(which))]
                } else {
                    // Logout: the tabs close, then the session stops.
                    let mut v: Vec<_> = (0..n)
                        .map(|_| (Command::ConnectionClose, Some(0)))
                        .collect();
                    v.push((Command::SessionStop, None));
                    v
                }
            }
        };
        for (cmd, arg) in cmds {
            let line = self.emit(idx, cmd, arg);
            out.push(line);
        }
    }

    fn emit(&mut self, idx: usize, cmd: Command, arg: Option<usize>) -> String {
        let app = match (cmd, arg) {
            (Command::ConnectionOpen, Some(a)) => {
                self.users[idx].apps.push(a);
                Some(a)
            }
            (Command::ConnectionClose, Some(i)) => Some(self.users[idx].apps.remove(i)),
            _ => None,
        };
        if cmd == Command::SessionStart {
            self.users[idx].session = Some(format!("{:010x}", self.next_session * 2_654_435_761));
            self.next_session += 1;
        }
        let u = &self.users[idx];
        let host = &self.hosts[u.host];
        let user_full = format!("{}\\{}", u.dir, u.id);
        let ua = USER_AGENTS[u.ua];
        let is_conn = matches!(cmd, Command::ConnectionOpen | Command::ConnectionClose);
        let context = match app {
            Some(a) => format!(
                "/app/{0}?reloaduri=https%3A%2F%2F{host}%2Fsense%2Fapp%2F{0}",
                self.apps[a]
            ),
            None => "/hub/".to_owned(),
        };
        let message = match cmd {
            Command::SessionStart => {
                format!("Start session for user '{user_full}' UserAgent: '{ua}'")
            }
            Command::SessionStop => format!("Stop session for user '{user_full}'"),
            Command::ConnectionOpen => format!("connection Opened for session UserAgent: '{ua}'"),
            Command::ConnectionClose => "connection Closed for session".to_owned(),
        };
        let session_id = u.session.clone().unwrap_or_default();
        let line = match self.format {
            WireFormat::Legacy => format!(
                "/qseow-proxy-{};{host};{};{};{};AppAccess;{context};{message}",
                if is_conn { "connection" } else { "session" },
                cmd.qlik_name(),
                u.dir,
                u.id
            ),
            WireFormat::Extended => {
                let counter = self.counters.entry((u.host, is_conn)).or_insert(0);
                *counter += 1;
                let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
                format!(
                    "/whosin-{};{now};{counter};{host};{};{};{};AppAccess;{context};{session_id};{message}",
                    if is_conn { "connection" } else { "session" },
                    cmd.qlik_name(),
                    u.dir,
                    u.id
                )
            }
        };
        let service = u.service;
        let host = host.clone();
        if cmd == Command::SessionStop {
            self.users[idx].session = None;
        }
        self.report.sent += 1;
        if service {
            self.report.service_account_events += 1;
        } else {
            *self
                .report
                .events
                .entry(host)
                .or_default()
                .entry(cmd.label().to_owned())
                .or_default() += 1;
        }
        line
    }

    /// What was sent, and the counts whosin should show now.
    pub fn report(&self) -> Report {
        let mut r = self.report.clone();
        for host in &self.hosts {
            r.expected.insert(host.clone(), HostCounts::default());
        }
        for u in self
            .users
            .iter()
            .filter(|u| !u.service && u.session.is_some())
        {
            let c = r.expected.entry(self.hosts[u.host].clone()).or_default();
            c.sessions += 1;
            c.users += 1;
            c.connections += u.apps.len() as u64;
        }
        r
    }
}

/// Sends traffic as configured and returns the report.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    use anyhow::Context;
    let bind: SocketAddr = if opts.target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("opening a UDP socket to send from")?;
    let mut generator = Generator::new(opts.users, opts.hosts, opts.format, opts.seed);
    let total = opts
        .rate
        .saturating_mul(opts.duration.as_secs_f64().ceil() as u64);
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} datagrams ({per_sec})",
            )
            .expect("the template is valid"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut lines = Vec::with_capacity(8);
    let mut sent: u64 = 0;
    let mut send_errors = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= opts.duration {
            break;
        }
        // Send what the rate allows by now, then wait for the next millisecond.
        let due = (opts.rate as f64 * elapsed.as_secs_f64()) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        while sent < due {
            lines.clear();
            generator.step(&mut lines);
            for l in &lines {
                if sock.send_to(l.as_bytes(), opts.target).is_err() {
                    send_errors += 1;
                }
                sent += 1;
            }
        }
        bar.set_position(sent);
    }
    bar.finish_and_clear();
    let mut report = generator.report();
    report.seconds = start.elapsed().as_secs_f64();
    if send_errors > 0 {
        tracing::warn!("{send_errors} datagrams could not be sent (is the target reachable?)");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse::Parser;
    use crate::sessions::live::LiveState;

    #[test]
    fn every_datagram_parses_and_the_model_matches_whosins_state() {
        for format in [WireFormat::Legacy, WireFormat::Extended] {
            let mut g = Generator::new(50, 2, format, 7);
            let mut parser = Parser::new();
            let mut state = LiveState::new(Duration::from_secs(3600));
            let mut lines = Vec::new();
            for _ in 0..5000 {
                lines.clear();
                g.step(&mut lines);
                for l in &lines {
                    let ev = parser.parse(l.as_bytes(), jiff::Timestamp::now()).unwrap();
                    if ev.user_directory != "INTERNAL" {
                        let o = state.apply(&ev);
                        assert!(!o.unmatched, "{l}");
                    }
                }
            }
            let r = g.report();
            assert!(r.service_account_events > 0);
            for (host, want) in &r.expected {
                let c = state.counts(host);
                let got = HostCounts {
                    sessions: c.sessions as u64,
                    connections: c.connections as u64,
                    users: c.users as u64,
                };
                assert_eq!(&got, want, "{host} {format:?}");
            }
            assert!(r.expected.values().any(|c| c.connections > 0));
        }
    }
}

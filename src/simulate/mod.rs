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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::Command;

mod oracle;
mod send;

pub use oracle::Oracle;
use send::{BATCH, Batch, Sender};

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
    /// The share of datagrams not sent (0 to 1), chosen by the seed: a
    /// network that loses datagrams, for measuring how close whosin stays to
    /// the truth.
    pub loss: f64,
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
    /// Datagrams made but not sent (`--loss`).
    pub dropped: u64,
    /// Datagrams of service accounts (blacklisted by `INTERNAL` in the default tour).
    pub service_account_events: u64,
    /// Events of human users per host and event label.
    pub events: BTreeMap<String, BTreeMap<String, u64>>,
    /// What whosin must show per host (human users only): the datagrams
    /// actually sent, replayed through the rules of "What an event means"
    /// (whosin's own state machine); with no loss it equals `truth`.
    pub expected: BTreeMap<String, HostCounts>,
    /// Who is really logged in per host (the simulated proxies' own view,
    /// what the proxy API lists), lost datagrams or not.
    pub truth: BTreeMap<String, HostCounts>,
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
    /// Per host, the session and the connection appender's counters.
    counters: Vec<[u64; 2]>,
    next_session: u64,
    report: Report,
    /// Human users' events per host and [`Command::index`], made into
    /// [`Report::events`] when asked: a map entry with owned keys for every
    /// datagram cost more than writing the datagram.
    events: Vec<[u64; 4]>,
    /// Sessions started and stopped since [`Generator::take_changes`].
    changes: Vec<TruthChange>,
    /// The datagram being written, kept to write the next one in.
    line: String,
}

/// A change to who is really logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruthChange {
    /// A session began (the proxy lists it from now on).
    Started(TruthSession),
    /// The session with this id ended.
    Stopped(String),
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
            apps,
            users: people,
            counters: vec![[0; 2]; hosts.len()],
            next_session: 1,
            report: Report::default(),
            events: vec![[0; 4]; hosts.len()],
            changes: Vec::new(),
            line: String::new(),
            hosts,
        }
    }

    /// Appends the next user action's datagrams (one or a few) to `out`.
    pub fn step(&mut self, out: &mut Vec<String>) {
        self.step_with(|l| out.push(l.to_owned()));
    }

    /// Makes the next user action's datagrams (one or a few) and hands each
    /// to `sink`, in order, in a buffer the generator keeps: nothing is
    /// allocated per datagram.
    pub fn step_with(&mut self, mut sink: impl FnMut(&str)) {
        // Service accounts make about 3% of the traffic.
        let humans = self.users.len() - SERVICE_ACCOUNTS.len();
        let idx = if humans == 0 || self.rng.chance(3) {
            humans + self.rng.below(SERVICE_ACCOUNTS.len())
        } else {
            self.rng.below(humans)
        };
        let u = &self.users[idx];
        match (&u.session, u.apps.len()) {
            (None, _) => {
                self.emit(idx, Command::SessionStart, None);
                sink(&self.line);
            }
            (Some(_), n) => {
                let roll = self.rng.below(100);
                if n < 3 && roll < 50 {
                    let app = self.rng.below(self.apps.len());
                    self.emit(idx, Command::ConnectionOpen, Some(app));
                    sink(&self.line);
                } else if n > 0 && roll < 85 {
                    let which = self.rng.below(n);
                    self.emit(idx, Command::ConnectionClose, Some(which));
                    sink(&self.line);
                } else {
                    // Logout: the tabs close, then the session stops.
                    for _ in 0..n {
                        self.emit(idx, Command::ConnectionClose, Some(0));
                        sink(&self.line);
                    }
                    self.emit(idx, Command::SessionStop, None);
                    sink(&self.line);
                }
            }
        }
    }

    /// Writes one datagram into `self.line`.
    fn emit(&mut self, idx: usize, cmd: Command, arg: Option<usize>) {
        use std::fmt::Write;
        let app = match (cmd, arg) {
            (Command::ConnectionOpen, Some(a)) => {
                self.users[idx].apps.push(a);
                Some(a)
            }
            (Command::ConnectionClose, Some(i)) => Some(self.users[idx].apps.remove(i)),
            _ => None,
        };
        if cmd == Command::SessionStart {
            let sid = format!("{:010x}", self.next_session * 2_654_435_761);
            self.users[idx].session = Some(sid.clone());
            self.next_session += 1;
            let u = &self.users[idx];
            if !u.service {
                self.changes.push(TruthChange::Started(TruthSession {
                    host: self.hosts[u.host].clone(),
                    user_directory: u.dir.to_owned(),
                    user_id: u.id.clone(),
                    session_id: sid,
                }));
            }
        }
        let u = &self.users[idx];
        let host = &self.hosts[u.host];
        let ua = USER_AGENTS[u.ua];
        let is_conn = matches!(cmd, Command::ConnectionOpen | Command::ConnectionClose);
        let kind = if is_conn { "connection" } else { "session" };
        let (dir, id, what) = (u.dir, &u.id, cmd.qlik_name());
        let line = &mut self.line;
        line.clear();
        // Writing to a String cannot fail.
        _ = match self.format {
            WireFormat::Legacy => {
                write!(
                    line,
                    "/qseow-proxy-{kind};{host};{what};{dir};{id};AppAccess;"
                )
            }
            WireFormat::Extended => {
                let counter = &mut self.counters[u.host][usize::from(is_conn)];
                *counter += 1;
                let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
                write!(
                    line,
                    "/whosin-{kind};{now};{counter};{host};{what};{dir};{id};AppAccess;"
                )
            }
        };
        _ = match app {
            Some(a) => write!(
                line,
                "/app/{0}?reloaduri=https%3A%2F%2F{host}%2Fsense%2Fapp%2F{0};",
                self.apps[a]
            ),
            None => line.write_str("/hub/;"),
        };
        if self.format == WireFormat::Extended {
            line.push_str(u.session.as_deref().unwrap_or_default());
            line.push(';');
        }
        _ = match cmd {
            Command::SessionStart => {
                write!(
                    line,
                    "Start session for user '{dir}\\{id}' UserAgent: '{ua}'"
                )
            }
            Command::SessionStop => write!(line, "Stop session for user '{dir}\\{id}'"),
            Command::ConnectionOpen => {
                write!(line, "connection Opened for session UserAgent: '{ua}'")
            }
            Command::ConnectionClose => line.write_str("connection Closed for session"),
        };
        let (service, host) = (u.service, u.host);
        if cmd == Command::SessionStop
            && let Some(sid) = self.users[idx].session.take()
            && !service
        {
            self.changes.push(TruthChange::Stopped(sid));
        }
        if service {
            self.report.service_account_events += 1;
        } else {
            self.events[host][cmd.index()] += 1;
        }
    }

    /// What was made, and who is really logged in (`truth`).
    pub fn report(&self) -> Report {
        let mut r = self.report.clone();
        for (host, counts) in self.hosts.iter().zip(&self.events) {
            for (cmd, &n) in Command::ALL.iter().zip(counts) {
                if n > 0 {
                    r.events
                        .entry(host.clone())
                        .or_default()
                        .insert(cmd.label().to_owned(), n);
                }
            }
        }
        for host in &self.hosts {
            r.truth.insert(host.clone(), HostCounts::default());
        }
        for u in self
            .users
            .iter()
            .filter(|u| !u.service && u.session.is_some())
        {
            let c = r.truth.entry(self.hosts[u.host].clone()).or_default();
            c.sessions += 1;
            c.users += 1;
            c.connections += u.apps.len() as u64;
        }
        r
    }

    /// Every open session of a human user, as the proxy service would list
    /// it (for a stand-in proxy API that knows the truth).
    pub fn truth_sessions(&self) -> Vec<TruthSession> {
        self.users
            .iter()
            .filter(|u| !u.service)
            .filter_map(|u| {
                Some(TruthSession {
                    host: self.hosts[u.host].clone(),
                    user_directory: u.dir.to_owned(),
                    user_id: u.id.clone(),
                    session_id: u.session.clone()?,
                })
            })
            .collect()
    }
}

/// One session the simulated proxies hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TruthSession {
    /// The node.
    pub host: String,
    /// User directory.
    pub user_directory: String,
    /// User id.
    pub user_id: String,
    /// The proxy session id (also in the extended format's datagrams).
    pub session_id: String,
}

impl Generator {
    /// The sessions started and stopped since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<TruthChange> {
        std::mem::take(&mut self.changes)
    }

    /// The nodes' names.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

/// Whether a datagram is lost, chosen by a generator of its own so that the
/// traffic is the same whatever the loss.
pub struct Loss {
    rng: Rng,
    fraction: f64,
}

impl Loss {
    /// Loses `fraction` (0 to 1) of the datagrams, seeded by `seed`.
    pub fn new(fraction: f64, seed: u64) -> Self {
        Self {
            rng: Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1)),
            fraction: fraction.clamp(0.0, 1.0),
        }
    }

    /// Whether the next datagram is lost.
    pub fn lose(&mut self) -> bool {
        self.fraction > 0.0 && (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64 <= self.fraction
    }
}

/// Sends traffic as configured and returns the report.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let mut sender = Sender::connect(opts.target)?;
    let mut generator = Generator::new(opts.users, opts.hosts, opts.format, opts.seed);
    let mut oracle = Oracle::new(generator.hosts());
    // The oracle parses user agents as whosin does: compiling the rules took
    // the first datagram most of a second (several, in a debug build on a
    // busy machine), which must not come out of the time to send.
    crate::ingest::useragent::load_now();
    let mut loss = Loss::new(opts.loss, opts.seed);
    let mut dropped = 0u64;
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
    let mut batch = Batch::default();
    let mut made: u64 = 0;
    let mut send_errors = 0u64;
    let mut first_error: Option<std::io::Error> = None;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= opts.duration {
            break;
        }
        // Send what the rate allows by now, then wait for the next tick.
        let due = (opts.rate as f64 * elapsed.as_secs_f64()) as u64;
        if made >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // One batch at a time, then the clock again: a rate above what this
        // machine can send must still stop at the duration.
        batch.clear();
        while made < due && batch.len() < BATCH {
            generator.step_with(|l| {
                made += 1;
                if loss.lose() {
                    dropped += 1;
                } else {
                    batch.push(l);
                }
            });
        }
        sender.send(&batch, |i, result| match result {
            Ok(()) => oracle.feed(batch.get(i)),
            // Not on the wire, so not in what whosin must show.
            Err(e) => {
                send_errors += 1;
                first_error.get_or_insert(e);
            }
        });
        bar.set_position(made);
    }
    bar.finish_and_clear();
    let mut report = generator.report();
    report.seconds = start.elapsed().as_secs_f64();
    report.sent = made - dropped - send_errors;
    report.dropped = dropped;
    report.expected = oracle.counts();
    if let Some(e) = first_error {
        tracing::warn!(
            "{send_errors} datagrams could not be sent (the first: {e}; is the target reachable?)"
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::parse::Parser;
    use crate::live::LiveState;

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
            for (host, want) in &r.truth {
                let c = state.counts(host);
                let got = HostCounts {
                    sessions: c.sessions as u64,
                    connections: c.connections as u64,
                    users: c.users as u64,
                };
                assert_eq!(&got, want, "{host} {format:?}");
            }
            assert!(r.truth.values().any(|c| c.connections > 0));
        }
    }
}

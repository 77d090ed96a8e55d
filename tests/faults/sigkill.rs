//! SIGKILL in the middle of a stream loses only the journal's commit window.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Daemon, poll};

use super::{APPS, Rng, all_events, connection, log_text, session, start_logged};

const HOSTS: [&str; 2] = ["kill-n1", "kill-n2"];
const USERS: [&str; 5] = [
    "LAB\\anna",
    "LAB\\Per",
    "CORP\\karin",
    "CORP\\Ole",
    "LAB\\mia",
];

/// One event of the stream, as sent.
#[derive(Clone, Debug)]
struct Sent {
    host: &'static str,
    event: &'static str,
    user: &'static str,
    app: Option<&'static str>,
    /// `r{round}:{index}`, sent as the message: names the event in the journal.
    tag: String,
}

impl Sent {
    fn datagram(&self) -> String {
        let cmd = match self.event {
            "session_start" => "Start session",
            "session_stop" => "Stop session",
            "connection_open" => "Open connection",
            _ => "Close connection",
        };
        match self.app {
            None => session(self.host, cmd, self.user, &self.tag),
            Some(app) => connection(self.host, cmd, self.user, app, &self.tag),
        }
    }
}

/// A round's stream: any order of starts, stops, opens and closes (the model
/// below handles every sequence, so a prefix cut anywhere stays meaningful).
fn stream(round: usize, len: usize) -> Vec<Sent> {
    let mut rng = Rng::new(0x5eed_0000 + round as u64);
    (0..len)
        .map(|i| {
            let (event, app) = match rng.below(10) {
                0..=2 => ("session_start", None),
                3..=4 => ("session_stop", None),
                5..=7 => ("connection_open", Some(APPS[rng.below(2)])),
                _ => ("connection_close", Some(APPS[rng.below(2)])),
            };
            Sent {
                host: HOSTS[rng.below(HOSTS.len())],
                event,
                user: USERS[rng.below(USERS.len())],
                app,
                tag: format!("r{round}:{i}"),
            }
        })
        .collect()
}

/// Who has how many sessions and connections (per app), by host and
/// lower-cased user: the documented legacy-format rules, replayed.
#[derive(Default, Debug, PartialEq)]
struct UserModel {
    sessions: usize,
    connections: BTreeMap<String, usize>,
}

type Model = BTreeMap<(String, String), UserModel>;

fn replay(model: &mut Model, host: &str, event: &str, user: &str, app: Option<&str>) {
    let key = (host.to_owned(), user.to_lowercase());
    match event {
        "session_start" => model.entry(key).or_default().sessions += 1,
        "session_stop" => {
            // The oldest session ends; with the last one, its tabs close too.
            if let Some(u) = model.get_mut(&key) {
                u.sessions -= 1;
                if u.sessions == 0 {
                    model.remove(&key);
                }
            }
        }
        "connection_open" => {
            // A connection without a session implies one.
            let u = model.entry(key).or_default();
            u.sessions = u.sessions.max(1);
            *u.connections
                .entry(app.unwrap().to_lowercase())
                .or_default() += 1;
        }
        "connection_close" => {
            if let Some(u) = model.get_mut(&key) {
                let app = app.unwrap().to_lowercase();
                if let Some(n) = u.connections.get_mut(&app) {
                    *n -= 1;
                    if *n == 0 {
                        u.connections.remove(&app);
                    }
                }
            }
        }
        other => panic!("unexpected event {other}"),
    }
}

/// Sends `lines` at a steady pace from its own thread until told to stop.
struct Streamer {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Streamer {
    fn start(to: SocketAddr, lines: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            for (i, l) in lines.iter().enumerate() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                // After the kill the port is closed: errors are expected.
                let _ = sock.send_to(l.as_bytes(), to);
                n.store(i + 1, Ordering::Relaxed);
                // Pacing, not synchronisation: a few thousand events a second
                // keeps the socket buffer far from full, so no datagram is
                // dropped by the kernel and what arrives is a prefix.
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Self { stop, sent, thread }
    }

    /// Stops the thread; returns how many datagrams it sent.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// The journal's commit window in this test, and the margin on top of it
/// after which an event the daemon had counted must have survived a kill.
/// The margin is generous: on a loaded 2-core machine the core and writer
/// threads can be scheduled late.
const WINDOW: Duration = Duration::from_millis(50);
const MARGIN: Duration = Duration::from_millis(500);

/// Checks the journal after a restart against what was sent, and the live
/// state against a replay of the journal. Returns per round how many events
/// are stored. `kept[r]` is what an earlier check found for round `r`.
fn check_journal(d: &Daemon, rounds: &[Vec<Sent>], sent: &[usize], kept: &[usize]) -> Vec<usize> {
    let events = all_events(d);
    // Sequence numbers: 1, 2, 3, ... with no gap and no repeat.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq not gap-free at position {i}: {e}"
        );
    }
    // Each round's stored events are exactly the first k it sent, in order,
    // and the rounds follow each other.
    let mut stored = vec![0usize; rounds.len()];
    let mut last_round = 0;
    let mut model = Model::new();
    for e in &events {
        let tag = e["message"].as_str().unwrap();
        let (r, i) = tag
            .strip_prefix('r')
            .and_then(|t| t.split_once(':'))
            .and_then(|(r, i)| Some((r.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("an event that was never sent: {e}"));
        assert!(
            r >= last_round && r < rounds.len(),
            "round {r} stored after round {last_round}: {e}"
        );
        last_round = r;
        assert_eq!(i, stored[r], "round {r}: not the next event sent: {e}");
        assert!(i < sent[r], "round {r}: event {i} was never sent: {e}");
        let s = &rounds[r][i];
        let (dir, id) = s.user.split_once('\\').unwrap();
        assert_eq!(e["host"], s.host, "{e}");
        assert_eq!(e["event"], s.event, "{e}");
        assert_eq!(e["user"], s.user, "{e}");
        assert_eq!(e["user_directory"], dir, "{e}");
        assert_eq!(e["user_id"], id, "{e}");
        assert_eq!(e["origin"], "AppAccess", "{e}");
        let context = s
            .app
            .map_or_else(|| "/hub/".to_owned(), |a| format!("/app/{a}"));
        assert_eq!(e["context"], context.as_str(), "{e}");
        assert_eq!(e["app_id"].as_str(), s.app, "{e}");
        stored[r] += 1;
        replay(&mut model, s.host, s.event, s.user, s.app);
    }
    for (r, &k) in kept.iter().enumerate() {
        assert_eq!(stored[r], k, "round {r}: events stored earlier changed");
    }

    // The API (from the journal's intervals) says what the replay says.
    let answer = d.json("/api/v1/sessions");
    let mut api = Model::new();
    for s in answer["sessions"].as_array().unwrap() {
        let key = (
            s["host"].as_str().unwrap().to_owned(),
            s["user"].as_str().unwrap().to_lowercase(),
        );
        let u = api.entry(key).or_default();
        u.sessions += 1;
        // How tabs spread over one user's sessions is the daemon's choice;
        // per user the total and the apps must match.
        let n = s["connections"].as_u64().unwrap() as usize;
        if n > 0 {
            *u.connections.entry("*".into()).or_default() += n;
        }
        for a in s["apps"].as_array().unwrap() {
            u.connections
                .entry(a["id"].as_str().unwrap().to_lowercase())
                .or_default();
        }
    }
    let summary: Model = model
        .iter()
        .map(|(k, u)| {
            let mut c: BTreeMap<String, usize> =
                u.connections.keys().map(|a| (a.clone(), 0)).collect();
            let total: usize = u.connections.values().sum();
            if total > 0 {
                c.insert("*".into(), total);
            }
            (
                k.clone(),
                UserModel {
                    sessions: u.sessions,
                    connections: c,
                },
            )
        })
        .collect();
    assert_eq!(api, summary, "/api/v1/sessions vs the replayed journal");
    let users: BTreeSet<&String> = model.keys().map(|(_, u)| u).collect();
    assert_eq!(answer["users"].as_u64(), Some(users.len() as u64));

    // The gauges (the recovered live state) say it too.
    let m = d.metrics();
    for host in HOSTS {
        let on_host = model.iter().filter(|((h, _), _)| h == host);
        let sessions: usize = on_host.clone().map(|(_, u)| u.sessions).sum();
        let connections: usize = on_host
            .clone()
            .map(|(_, u)| u.connections.values().sum::<usize>())
            .sum();
        let users = on_host.count();
        for (gauge, want) in [
            ("qliksense_sessions_active", sessions),
            ("qliksense_connections_active", connections),
            ("qliksense_users_active", users),
        ] {
            let got = m.get(&format!("{gauge}{{host=\"{host}\"}}"));
            assert_eq!(
                got.unwrap_or(0.0),
                want as f64,
                "{gauge} on {host} after recovery"
            );
        }
    }
    stored
}

#[test]
fn sigkill_at_any_moment_loses_only_the_commit_window() {
    // The kill points, after the stream starts: right away, and later. A bit
    // of clock noise varies them from run to run; the delay before a kill is
    // deliberate (it picks the moment), never a wait for the daemon.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64
        % 97;
    let delays: Vec<Duration> = [700u64, 0, 1500, 250, 1100]
        .iter()
        .map(|ms| Duration::from_millis(ms + jitter))
        .collect();
    let rounds: Vec<Vec<Sent>> = (0..delays.len()).map(|r| stream(r, 20_000)).collect();
    let mut sent = vec![0usize; rounds.len()];
    let mut kept: Vec<usize> = Vec::new();
    let mut durable_checked = 0;

    let mut d = start_logged(&format!(
        "journal:\n  commit_window: \"{}ms\"\n",
        WINDOW.as_millis()
    ));
    for (round, delay) in delays.iter().enumerate() {
        let lines: Vec<String> = rounds[round].iter().map(Sent::datagram).collect();
        let streamer = Streamer::start(d.udp, lines);
        let kill_at = Instant::now() + *delay;
        // (time the count was read, datagrams counted, dropped by the kernel)
        let mut samples: Vec<(Instant, f64, f64)> = Vec::new();
        while Instant::now() < kill_at {
            let m = d.metrics();
            samples.push((
                Instant::now(),
                m.must("whosin_datagrams_received_total"),
                m.must("whosin_datagrams_dropped_total"),
            ));
            // Deliberate: spaces the samples until the chosen kill point.
            std::thread::sleep(
                kill_at
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(25)),
            );
        }
        let killed = Instant::now();
        let (dir, config) = d.kill9();
        sent[round] = streamer.finish();
        for &(_, _, dropped) in &samples {
            assert_eq!(dropped, 0.0, "the kernel dropped datagrams: pace slower");
        }
        // What the daemon had counted long enough before the kill is durable.
        let durable = samples
            .iter()
            .rev()
            .find(|(t, _, _)| *t + WINDOW + MARGIN <= killed)
            .map_or(0, |&(_, n, _)| n as usize);
        if durable > 0 {
            durable_checked += 1;
        }

        let log = dir.path().join("logs/whosin.log");
        d = Daemon::start_logged(dir, config, &log);
        poll("/readyz 200 after the restart", || {
            (d.get("/readyz").0 == 200).then_some(())
        });
        let stored = check_journal(&d, &rounds[..=round], &sent[..=round], &kept);
        assert!(
            stored[round] >= durable,
            "round {round} (kill after {delay:?}): {durable} events were counted {:?} before the kill, only {} stored",
            WINDOW + MARGIN,
            stored[round]
        );
        eprintln!(
            "DIAG round {round} delay {delay:?} sent {} durable {durable} stored {:?} samples {}",
            sent[round],
            stored,
            samples.len()
        );
        kept = stored;
    }
    assert!(
        durable_checked >= 2,
        "too few rounds ran long enough to check durability"
    );
    assert!(
        kept.iter().sum::<usize>() > 1000,
        "the stream hardly ran: {kept:?}"
    );
    let log = log_text(&d);
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(d.terminate().code(), Some(0));
}

//! Faults, with real processes: SIGKILL in the middle of a stream, a config
//! file edited badly while the daemon runs, and a flood of junk datagrams.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, Metrics, poll};
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

// ------------------------------------------------------ 1. SIGKILL anywhere

const APPS: [&str; 2] = [
    "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c",
    "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f",
];
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

// --------------------------------------------------- 2. config edits live

const PROBE_HOST: &str = "probe";

/// Sends one session start of `user` and answers whether the daemon dropped
/// it as blacklisted (else it counted it as an event).
fn blacklisted(d: &Daemon, user: &str) -> bool {
    let events =
        format!("qliksense_user_events_total{{event=\"session_start\",host=\"{PROBE_HOST}\"}}");
    let m = d.metrics();
    let dropped = m.must("whosin_events_blacklisted_total");
    let counted = m.get(&events).unwrap_or(0.0);
    d.send(session(PROBE_HOST, "Start session", user, "probe").as_bytes());
    poll(&format!("the probe of {user} to be counted"), || {
        let m = d.metrics();
        if m.must("whosin_events_blacklisted_total") == dropped + 1.0 {
            Some(true)
        } else if m.get(&events).unwrap_or(0.0) == counted + 1.0 {
            Some(false)
        } else {
            None
        }
    })
}

/// `(applied, refused)` reloads so far.
fn reloads(d: &Daemon) -> (f64, f64) {
    let m = d.metrics();
    (
        m.must("whosin_config_reloads_total{result=\"applied\"}"),
        m.must("whosin_config_reloads_total{result=\"refused\"}"),
    )
}

fn wait_reloads(d: &Daemon, what: &str, ok: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    poll(what, || {
        let (a, r) = reloads(d);
        ok(a, r).then_some((a, r))
    })
}

fn blacklist(dirs: &[&str]) -> String {
    let mut s = "blacklist:\n".to_owned();
    for d in dirs {
        s.push_str(&format!("  - directory: {d}\n"));
    }
    s
}

/// A daemon blacklisting directory OLD, and its config file's text without
/// the blacklist (listen addresses and data_dir).
fn config_daemon() -> (Daemon, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}{}", blacklist(&["OLD"]))).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let d = Daemon::start_logged(dir, config, &logs.join("whosin.log"));
    assert!(blacklisted(&d, "OLD\\a"));
    assert!(!blacklisted(&d, "NEW\\a"));
    (d, base)
}

/// Saves `text` as editors do: a temporary file in the same folder, renamed
/// over the config.
fn save_by_rename(path: &PathBuf, text: &str) {
    let tmp = path.with_file_name(".whosin.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn assert_alive(d: &mut Daemon) {
    assert!(d.running(), "whosin stopped: {}", log_text(d));
    assert_eq!(d.get("/readyz").0, 200);
}

#[test]
fn config_saved_by_rename_is_applied() {
    let (mut d, base) = config_daemon();
    save_by_rename(&d.config, &format!("{base}{}", blacklist(&["NEW"])));
    // One save, one reload; nothing refused.
    assert_eq!(
        wait_reloads(&d, "the rename to apply", |a, _| a >= 1.0),
        (1.0, 0.0)
    );
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert_eq!(reloads(&d), (1.0, 0.0));
    assert_alive(&mut d);
}

#[test]
fn config_truncated_mid_write_keeps_the_last_good_settings() {
    use std::io::Write;
    let (mut d, base) = config_daemon();
    let full = format!("{base}{}  - regex: '^CORP\\\\svc_'\n", blacklist(&["NEW"]));
    // The cut falls inside the quoted regex, so the first half is not YAML
    // and is refused for certain (a cut that left valid YAML would be applied
    // as it stands, then replaced by the whole file).
    let cut = full.find("^CORP").unwrap();
    let (first, rest) = full.split_at(cut);

    // Saving in place: the file is truncated to nothing first. The daemon
    // must not take an empty file for "all defaults" (no blacklist).
    let mut f = std::fs::File::create(&d.config).unwrap();
    let (applied, refused) = wait_reloads(&d, "a reaction to the empty file", |a, r| a + r >= 1.0);
    assert_eq!(applied, 0.0, "the empty file was applied as all defaults");
    assert!(
        log_text(&d).contains("is empty; keeping the running settings — probably saved halfway"),
        "{}",
        log_text(&d)
    );
    assert!(blacklisted(&d, "OLD\\a"), "the last good blacklist stays");
    assert!(!blacklisted(&d, "NEW\\a"));
    assert_eq!(reloads(&d).0, 0.0, "nothing applied");

    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    wait_reloads(&d, "the half file to be refused", |_, r| r > refused);
    assert!(log_text(&d).contains("not valid YAML"), "{}", log_text(&d));
    assert!(blacklisted(&d, "OLD\\a"), "the last good blacklist stays");
    assert_eq!(reloads(&d).0, 0.0, "nothing applied");

    f.write_all(rest.as_bytes()).unwrap();
    f.flush().unwrap();
    drop(f);
    wait_reloads(&d, "the whole file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(blacklisted(&d, "CORP\\svc_x"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert!(!blacklisted(&d, "CORP\\anna"));
    assert_eq!(reloads(&d).0, 1.0);
    assert_alive(&mut d);
}

#[test]
fn config_briefly_missing_keeps_the_settings_until_it_returns() {
    let (mut d, base) = config_daemon();
    std::fs::remove_file(&d.config).unwrap();
    wait_reloads(&d, "the missing file to be refused", |_, r| r >= 1.0);
    assert!(log_text(&d).contains("cannot read"), "{}", log_text(&d));
    assert!(!d.config.exists());
    assert!(
        blacklisted(&d, "OLD\\a"),
        "the blacklist stays while the file is gone"
    );
    assert!(!blacklisted(&d, "NEW\\a"));
    assert_eq!(reloads(&d).0, 0.0);
    assert_alive(&mut d);

    // Recreated in place (the daemon may see it still empty: refused, not applied).
    std::fs::write(&d.config, format!("{base}{}", blacklist(&["NEW"]))).unwrap();
    wait_reloads(&d, "the recreated file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert_eq!(reloads(&d).0, 1.0);
    assert_alive(&mut d);
}

#[test]
fn a_broken_config_after_a_good_one_leaves_the_good_one_in_force() {
    let (mut d, base) = config_daemon();
    save_by_rename(&d.config, &format!("{base}{}", blacklist(&["NEW"])));
    wait_reloads(&d, "the good file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));

    // An unknown key: refused as a whole, so OTHER is not blacklisted either.
    std::fs::write(
        &d.config,
        format!("{base}{}nope: 1\n", blacklist(&["NEW", "OTHER"])),
    )
    .unwrap();
    let (_, refused) = wait_reloads(&d, "the unknown key to be refused", |_, r| r >= 1.0);
    assert!(
        log_text(&d).contains("nope: unknown key"),
        "{}",
        log_text(&d)
    );
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OTHER\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));

    // A regex that does not compile, saved by rename this time.
    save_by_rename(
        &d.config,
        &format!("{base}{}  - regex: '(unclosed'\n", blacklist(&["OTHER"])),
    );
    wait_reloads(&d, "the bad regex to be refused", |_, r| r > refused);
    assert!(log_text(&d).contains("unclosed group"), "{}", log_text(&d));
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OTHER\\a"));
    assert_eq!(reloads(&d).0, 1.0, "only the good file was applied");
    assert_alive(&mut d);
}

// --------------------------------------------------------- 3. junk flood

const MAX_DATAGRAM: usize = 4096;

/// What the daemon must make of a datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Event,
    Blacklisted,
    Reject(&'static str),
}

/// Junk that cannot be taken for a user event: random bytes after a first
/// byte that is neither blank nor `/` (so never `empty`, never a known type).
fn junk(rng: &mut Rng, len: usize) -> (Vec<u8>, Verdict) {
    let mut b = rng.bytes(len);
    b[0] = [0x00, 0x1b, 0x7f, 0xff, 0xc3, b'x', 0x07][rng.below(7)];
    let verdict = if len > MAX_DATAGRAM {
        Verdict::Reject("too_large")
    } else {
        Verdict::Reject("unknown_type")
    };
    (b, verdict)
}

fn flood(rng: &mut Rng) -> Vec<(Vec<u8>, Verdict)> {
    let mut out = Vec::new();
    // Every small size, then sizes across the whole range, the edges of
    // max_datagram_bytes and the largest an IPv4 datagram can be.
    for len in 1..=600 {
        out.push(junk(rng, len));
    }
    for _ in 0..3000 {
        let len = 1 + rng.below(64);
        out.push(junk(rng, len));
    }
    for _ in 0..1500 {
        let len = 1 + rng.below(65_507);
        out.push(junk(rng, len));
    }
    for len in [
        MAX_DATAGRAM - 1,
        MAX_DATAGRAM,
        MAX_DATAGRAM + 1,
        65_506,
        65_507,
        65_507,
        65_507,
        65_507,
        65_507,
    ] {
        out.push(junk(rng, len));
    }
    let bytes = |s: &[u8], v| (s.to_vec(), v);
    let unknown = Verdict::Reject("unknown_type");
    for (d, v) in [
        bytes(b"\xff\xfe\xfd\xfc", unknown),
        bytes(b"\xc0\xaf\xed\xa0\x80 overlong and surrogate", unknown),
        bytes(b"\0", unknown),
        bytes(&[0u8; 512], unknown),
        bytes(b"\x1b[2J", unknown),
        bytes(b"\x1b]0;title\x07", unknown),
        bytes(b"\x1b[31mred\x1b[0m;\x1b[1A", unknown),
        bytes(b"\x9b2J C1 CSI", unknown),
        bytes(b"", Verdict::Reject("empty")),
        bytes(b" \t\r\n ", Verdict::Reject("empty")),
        bytes(
            b"/qseow-proxy-session/;\x1b[2J;Start session",
            Verdict::Reject("too_few_fields"),
        ),
        bytes(
            b"/qseow-proxy-session/;h;Start session;\x1b[2J;;AppAccess;/hub/;x",
            Verdict::Reject("empty_user"),
        ),
        bytes(
            // The OSC's own ';' shifts the fields: the command is "]0".
            b"/qseow-proxy-session/;h;\x1b]0;x\x07;LAB;u;AppAccess;/hub/;x",
            Verdict::Reject("unknown_command"),
        ),
    ] {
        out.push((d, v));
    }
    // Valid events, some with control characters in their fields (stripped,
    // still events), some of a blacklisted directory.
    for i in 0..300 {
        let (user, verdict) = if i % 5 == 0 {
            (format!("INTERNAL\\svc{i}"), Verdict::Blacklisted)
        } else {
            (format!("CORP\\user{i}"), Verdict::Event)
        };
        let message = if i % 3 == 0 {
            "\x1b[2J\x1b]0;title\x07\0 evil"
        } else {
            "ok"
        };
        let line = if i % 2 == 0 {
            session("flood\x1b[1m", "Start session", &user, message)
        } else {
            connection("flood", "Open connection", &user, APPS[0], message)
        };
        out.push((line.into_bytes(), verdict));
    }
    // Shuffle, so valid events sit between junk of every kind.
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    // The first reject is the one the log shows: make it the nastiest.
    out.insert(0, (b"\x1b[2J\x1b]0;pwned\x07junk\0\r\n".to_vec(), unknown));
    out
}

#[test]
fn a_junk_flood_is_counted_logged_safely_and_leaves_memory_bounded() {
    let mut d = start_logged(&format!(
        "udp:\n  listen: \"127.0.0.1:0\"\n  max_datagram_bytes: {MAX_DATAGRAM}\nblacklist:\n  - directory: INTERNAL\n"
    ));
    let rss_before = d.rss_kib();
    let datagrams = flood(&mut Rng::new(0xf100d));
    let started = Instant::now();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0usize;
    let mut in_batch = 0usize;
    for (i, (data, _)) in datagrams.iter().enumerate() {
        sock.send_to(data, d.udp).unwrap();
        sent += 1;
        in_batch += data.len();
        // Flow control: after a batch, wait until the daemon counted all of
        // it, so the kernel never drops one (each must be counted exactly).
        if in_batch > 512 * 1024 || sent.is_multiple_of(200) || i + 1 == datagrams.len() {
            poll(&format!("{sent} datagrams to be received"), || {
                let m = d.metrics();
                assert_eq!(m.must("whosin_datagrams_dropped_total"), 0.0);
                (m.must("whosin_datagrams_received_total") == sent as f64).then_some(())
            });
            in_batch = 0;
            let (code, body) = d.get("/readyz");
            assert_eq!(code, 200, "readiness during the flood: {body}");
        }
    }
    let flood_time = started.elapsed();

    let count = |v: Verdict| datagrams.iter().filter(|(_, x)| *x == v).count() as f64;
    let events = count(Verdict::Event);
    let blacklisted = count(Verdict::Blacklisted);
    // The core counts events just after the receive thread: wait for it.
    d.wait_metric("whosin_events_blacklisted_total", blacklisted);
    let m = poll("every valid event to be counted", || {
        let m = d.metrics();
        (sum(&m, "qliksense_user_events_total") == events).then_some(m)
    });
    let received = m.must("whosin_datagrams_received_total");
    assert_eq!(received, datagrams.len() as f64);
    assert_eq!(
        received,
        sum(&m, "qliksense_user_events_total")
            + m.must("whosin_events_blacklisted_total")
            + sum(&m, "whosin_datagrams_rejected_total"),
        "received = events + blacklisted + rejected"
    );
    let mut reasons: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, v) in &datagrams {
        if let Verdict::Reject(r) = v {
            *reasons.entry(r).or_default() += 1.0;
        }
    }
    assert!(reasons["too_large"] >= 10.0, "{reasons:?}");
    for (reason, n) in &reasons {
        assert_eq!(
            m.must(&format!(
                "whosin_datagrams_rejected_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "reason {reason}"
        );
    }
    assert_eq!(
        sum(&m, "whosin_datagrams_rejected_total"),
        reasons.values().sum::<f64>()
    );

    // The stored events carry no control characters either.
    let stored = all_events(&d);
    assert_eq!(stored.len() as f64, events);
    for e in &stored {
        for (k, v) in e.as_object().unwrap() {
            if let Some(s) = v.as_str() {
                assert!(!s.chars().any(char::is_control), "{k} of {e}");
            }
        }
    }

    // Memory: a debug build starts at ~25 MiB and measured ~40 MiB after
    // this flood (the same with three times as much junk: nothing is kept per
    // datagram). The ~1,500 large datagrams carry ~50 MB, so a daemon that
    // kept them would grow by more than the 48 MiB allowed here, three times
    // the growth measured; 200 MiB caps the total whatever the build.
    let rss_after = d.rss_kib();
    assert!(
        rss_after < 200 * 1024 && rss_after < rss_before + 48 * 1024,
        "RSS {rss_before} KiB before the flood, {rss_after} KiB after"
    );

    // The log: no raw control bytes from the wire (nor colour codes), and the
    // reject warnings rate-limited to one per 10 s.
    assert_alive(&mut d);
    let log = d.log_bytes();
    if let Some(pos) = log
        .iter()
        .position(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
    {
        panic!(
            "raw control byte {:#04x} in the log at {pos}: {:?}",
            log[pos],
            String::from_utf8_lossy(&log[pos.saturating_sub(200)..(pos + 50).min(log.len())])
        );
    }
    let text = String::from_utf8(log).expect("the log is UTF-8");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rejected datagram"))
        .collect();
    let allowed = 2 + (flood_time.as_secs() / 10) as usize;
    assert!(
        !warnings.is_empty() && warnings.len() <= allowed,
        "{} reject warnings for {} rejects in {flood_time:?}:\n{}",
        warnings.len(),
        reasons.values().sum::<f64>(),
        warnings.join("\n")
    );
    assert!(
        warnings[0].contains(r#"(unknown_type): "\u{1b}[2J\u{1b}]0;pwned\u{7}junk\0\r\n""#),
        "the first reject, escaped: {}",
        warnings[0]
    );
    assert_eq!(d.terminate().code(), Some(0));
}

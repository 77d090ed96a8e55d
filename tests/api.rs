//! The journal through the real daemon: the JSON API now and in the past,
//! restarts (clean and SIGKILL) that change no answer, and the token.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, http_get_with};

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

#[test]
fn who_was_in_now_and_at_a_past_instant() {
    let d = Daemon::start("blacklist:\n  - directory: INTERNAL\n");
    d.send_all(&[
        &start("n1", "LAB\\Anna"),
        &open("n1", "lab\\anna"),
        &start("n2", "LAB\\bob"),
        &start("n1", "INTERNAL\\sa_scheduler"),
    ]);
    applied(&d, 4.0);
    // The API answers with what the core has, committed or not.
    let v = d.json("/api/v1/sessions");
    assert_eq!(users_of(&v), vec!["LAB\\Anna@n1", "LAB\\bob@n2"]);
    assert_eq!(v["users"], 2);
    let anna = &v["sessions"][0];
    assert_eq!(anna["connections"], 1);
    assert_eq!(anna["apps"][0]["id"], APP);
    assert_eq!(anna["apps"][0]["name"], serde_json::Value::Null);
    assert_eq!(anna["browser"], "Chrome 131");
    assert_eq!(anna["os"], "Windows 10");
    assert_eq!(anna["user_directory"], "LAB");
    assert!(anna["started_at"].as_str().unwrap().ends_with('Z'));

    std::thread::sleep(Duration::from_millis(5));
    let t1 = now();
    std::thread::sleep(Duration::from_millis(5));
    d.send_all(&[&stop("n1", "LAB\\anna"), &start("n1", "CORP\\carl")]);
    applied(&d, 6.0);

    assert_eq!(
        users_of(&d.json("/api/v1/sessions")),
        vec!["CORP\\carl@n1", "LAB\\bob@n2"]
    );
    let past = d.json(&format!("/api/v1/sessions?at={t1}"));
    assert_eq!(users_of(&past), vec!["LAB\\Anna@n1", "LAB\\bob@n2"]);
    assert_eq!(past["at"], t1.as_str());
    // Filters: host, and user in any case.
    assert_eq!(
        users_of(&d.json(&format!("/api/v1/sessions?at={t1}&host=n2"))),
        vec!["LAB\\bob@n2"]
    );
    assert_eq!(
        users_of(&d.json(&format!("/api/v1/sessions?at={t1}&user=lab%5CANNA"))),
        vec!["LAB\\Anna@n1"]
    );
    // Before anything happened: nobody.
    assert_eq!(
        d.json("/api/v1/sessions?at=2020-01-01T00:00:00Z")["sessions"],
        serde_json::json!([])
    );

    // Events: oldest first, blacklisted ones absent, paging with next/after.
    let ev = d.json("/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(ev["next"], serde_json::Value::Null);
    assert_eq!(events[0]["event"], "session_start");
    assert_eq!(events[0]["user"], "LAB\\Anna");
    assert_eq!(events[1]["app_id"], APP);
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    let page = d.json("/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=2");
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_u64().unwrap();
    let rest = d.json(&format!(
        "/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&after={next}"
    ));
    assert_eq!(rest["events"].as_array().unwrap().len(), 3);
    let anna_only =
        d.json("/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&user=LAB%5Canna");
    assert_eq!(anna_only["events"].as_array().unwrap().len(), 3);

    // Concurrency: the curve and its peak (3 sessions: anna, bob, then carl after anna left).
    let c = d.json(&format!(
        "/api/v1/concurrency?from=2020-01-01T00:00:00Z&to={}&step=3650d",
        now()
    ));
    let points = c["points"].as_array().unwrap();
    assert_eq!(points[0]["sessions"], 0);
    let last = points.last().unwrap();
    assert_eq!(
        (
            last["sessions"].as_u64(),
            last["users"].as_u64(),
            last["connections"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    assert_eq!(c["peak"]["sessions"], 2);
    assert_eq!(
        c["peak"]["connections"], 1,
        "the peak is when anna had her app open"
    );

    // The timeline of the whole day: anna stopped (her app closed with her
    // session), bob and carl still in; by start.
    let day = format!(
        "from={}&to={}",
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24),
        now()
    );
    let tl = d.json(&format!("/api/v1/timeline?{day}"));
    let sessions: Vec<(String, String)> = tl["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["user"].as_str().unwrap().to_owned(),
                s["end_reason"].as_str().unwrap_or("open").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sessions,
        [
            ("LAB\\Anna", "stopped"),
            ("LAB\\bob", "open"),
            ("CORP\\carl", "open")
        ]
        .map(|(u, r)| (u.to_owned(), r.to_owned()))
    );
    let conns = tl["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0]["session"], tl["sessions"][0]["id"]);
    assert_eq!(conns[0]["app"]["id"], APP);
    assert_eq!(conns[0]["close_reason"], "session_ended");
    assert_eq!(tl["truncated"], false);
    // Only the app: anna's session and her connection.
    let app = d.json(&format!("/api/v1/timeline?{day}&app={APP}"));
    assert_eq!(app["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(app["sessions"][0]["user"], "LAB\\Anna");
    // Peaks: one bucket for the whole range, with the most at once.
    let p = d.json(&format!("/api/v1/peaks?{day}&step=2d"));
    assert_eq!(p["buckets"][0]["sessions"], 2);
    assert_eq!(p["buckets"][0]["connections"], 1);
    assert_eq!(p["step"], "2d");
}

#[test]
fn bad_parameters_are_named() {
    let d = Daemon::start("");
    for (path, param) in [
        ("/api/v1/sessions?at=yesterday", "at:"),
        ("/api/v1/sessions?user=anna", "user:"),
        ("/api/v1/sessions?colour=red", "colour:"),
        ("/api/v1/events?to=2026-01-01T00:00:00Z", "from:"),
        (
            "/api/v1/events?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&limit=0",
            "limit:",
        ),
        (
            "/api/v1/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "to:",
        ),
        (
            "/api/v1/concurrency?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
            "step:",
        ),
        (
            "/api/v1/concurrency?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&step=1s",
            "step:",
        ),
        ("/api/v1/timeline?from=2026-01-01T00:00:00Z", "to:"),
        (
            "/api/v1/timeline?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            "to:",
        ),
        (
            "/api/v1/timeline?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&user=anna",
            "user:",
        ),
        (
            "/api/v1/peaks?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&step=1s",
            "step:",
        ),
        (
            "/api/v1/peaks?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&app=x",
            "app:",
        ),
    ] {
        let (code, body) = d.get(path);
        assert_eq!(code, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().starts_with(param),
            "{path}: {body}"
        );
    }
}

#[test]
fn a_restart_changes_no_answer_and_sigkill_keeps_committed_events() {
    let mut d = Daemon::start("");
    d.send_all(&[
        &start("n1", "LAB\\anna"),
        &open("n1", "LAB\\anna"),
        &start("n1", "LAB\\bob"),
    ]);
    applied(&d, 3.0);
    let t1 = now();
    d.send(stop("n1", "LAB\\bob").as_bytes());
    applied(&d, 4.0);
    let now_before = d.json("/api/v1/sessions");
    let past_before = d.json(&format!("/api/v1/sessions?at={t1}"));
    assert_eq!(users_of(&past_before).len(), 2);

    // A clean stop, then a start on the same journal.
    let (dir, config) = (
        std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()),
        d.config.clone(),
    );
    assert_eq!(d.terminate().code(), Some(0));
    let d = Daemon::start_with(dir, config);
    let m = d.metrics();
    assert_eq!(m.must("qliksense_sessions_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_connections_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_users_active{host=\"n1\"}"), 1.0);
    let mut now_after = d.json("/api/v1/sessions");
    now_after["at"] = now_before["at"].clone();
    assert_eq!(now_after, now_before);
    assert_eq!(d.json(&format!("/api/v1/sessions?at={t1}")), past_before);

    // New events continue the numbering; the restored session can be stopped.
    d.send(stop("n1", "LAB\\anna").as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 0.0);
    let ev = d.json("/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
    let seqs: Vec<u64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    // SIGKILL once the journal committed on its own (no API call forcing it):
    // nothing committed is lost.
    let mut d = d;
    let (dir, config) = (
        std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()),
        d.config.clone(),
    );
    d.send(start("n1", "LAB\\carl").as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1.0);
    let journal = whosin::storage::path_in(&dir.path().join("data"));
    let until = std::time::Instant::now() + common::DEADLINE;
    loop {
        let conn = whosin::storage::open_reader(&journal).unwrap();
        if whosin::storage::max_seq(&conn).unwrap() == 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the journal never committed event 6"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        Command::new("kill")
            .arg("-KILL")
            .arg(d.child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let _ = d.child.wait();
    let d = Daemon::start_with(dir, config);
    assert_eq!(users_of(&d.json("/api/v1/sessions")), vec!["LAB\\carl@n1"]);
    assert_eq!(
        d.metrics().must("qliksense_sessions_active{host=\"n1\"}"),
        1.0
    );
}

#[test]
fn the_api_needs_the_token_when_one_is_set() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"s3cret-token\"\n");
    let (code, body) = d.get("/api/v1/sessions");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"));
    let (code, _) = http_get_with(
        d.http,
        "/api/v1/sessions",
        "Authorization: Bearer wrong\r\n",
    );
    assert_eq!(code, 401);
    let (code, _) = http_get_with(d.http, "/api/v1/sessions?access_token=s3cret-token", "");
    assert_eq!(code, 401, "only the stream takes the token in the query");
    let (code, body) = http_get_with(
        d.http,
        "/api/v1/sessions",
        "Authorization: Bearer s3cret-token\r\n",
    );
    assert_eq!(code, 200, "{body}");
    // Metrics and health stay open for Prometheus and load balancers.
    assert_eq!(d.get("/metrics").0, 200);
    assert_eq!(d.get("/readyz").0, 200);
}

#[test]
fn who_prints_the_api_body_or_a_table() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"t0ken\"\n");
    d.send_all(&[
        &start("n1", "LAB\\anna"),
        &open("n1", "LAB\\anna"),
        &start("n2", "CORP\\bob"),
    ]);
    applied(&d, 3.0);
    let at = now();
    let server = format!("http://{}", d.http);
    let who = |args: &[&str]| {
        Command::new(common::bin())
            .arg("who")
            .args(["--server", &server, "--token", "t0ken"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = who(&["--format", "json", "--at", &at]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = http_get_with(
        d.http,
        &format!("/api/v1/sessions?at={at}"),
        "Authorization: Bearer t0ken\r\n",
    );
    assert_eq!(code, 200);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        body,
        "exactly the API's body"
    );

    let out = who(&["--host", "n1"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("HOST"), "{table}");
    assert!(
        table.contains("LAB\\anna") && !table.contains("bob"),
        "{table}"
    );
    assert!(table.contains("Chrome 131"), "{table}");
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with("1 session, 1 user at "),
        "{table}"
    );

    let out = who(&["--at", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at:"));

    let out = Command::new(common::bin())
        .args(["who", "--server", &server])
        .env_remove("WHOSIN_TOKEN")
        .current_dir(d.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));

    let out = Command::new(common::bin())
        .args(["who", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach whosin"));
}

/// A client of `/api/v1/stream`, reading server-sent events as they come
/// (HTTP/1.0, so the body is not chunked).
struct Stream {
    reader: std::io::BufReader<std::net::TcpStream>,
    status: u16,
    skipped: Vec<Message>,
}

#[derive(Debug)]
struct Message {
    event: String,
    id: Option<String>,
    data: String,
}

impl Stream {
    fn open(d: &Daemon, path: &str, headers: &str) -> Stream {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(d.http).unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut reader = std::io::BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        // The headers.
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Stream {
            reader,
            status,
            skipped: Vec::new(),
        }
    }

    /// The next message (skipping keep-alive comments); fails after the deadline.
    fn next(&mut self) -> Message {
        use std::io::BufRead;
        let mut m = Message {
            event: "message".into(),
            id: None,
            data: String::new(),
        };
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).expect("a message in time");
            assert!(n > 0, "the stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !m.data.is_empty() {
                    return m;
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("event:") {
                m.event = v.trim().into();
            } else if let Some(v) = l.strip_prefix("id:") {
                m.id = Some(v.trim().into());
            } else if let Some(v) = l.strip_prefix("data:") {
                m.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }

    /// The first message of `kind` that satisfies `pred`, whether it came
    /// already (messages skipped by earlier calls are kept, in order) or
    /// comes before the deadline.
    fn until(
        &mut self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (Message, serde_json::Value) {
        let matches =
            |m: &Message| m.event == kind && pred(&serde_json::from_str(&m.data).unwrap());
        if let Some(i) = self.skipped.iter().position(&matches) {
            let m = self.skipped.remove(i);
            let v = serde_json::from_str(&m.data).unwrap();
            return (m, v);
        }
        let until = std::time::Instant::now() + common::DEADLINE;
        loop {
            // Keep-alive comments keep reads short, so this deadline is checked.
            assert!(
                std::time::Instant::now() < until,
                "no {kind} message as wanted; skipped: {:?}",
                self.skipped
            );
            let m = self.next();
            if matches(&m) {
                let v = serde_json::from_str(&m.data).unwrap();
                return (m, v);
            }
            self.skipped.push(m);
        }
    }
}

#[test]
fn the_stream_carries_events_and_state_and_resumes_after_the_last_id() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"t0k\"\n");
    // The token is needed; a browser's EventSource gives it in the query.
    assert_eq!(Stream::open(&d, "/api/v1/stream", "").status, 401);
    let mut s = Stream::open(&d, "/api/v1/stream?access_token=t0k", "");
    assert_eq!(s.status, 200);

    d.send(start("n1", "LAB\\anna").as_bytes());
    let (m, ev) = s.until("event", |v| v["user"] == "LAB\\anna");
    assert_eq!(ev["event"], "session_start");
    assert_eq!(ev["host"], "n1");
    assert_eq!(ev["browser"], "Chrome 131");
    let first = ev["seq"].as_u64().unwrap();
    assert_eq!(m.id, Some(first.to_string()));
    let (_, state) = s.until("state", |v| v["host"] == "n1" && v["sessions"] == 1);
    assert_eq!(state["user_list"], serde_json::json!(["LAB\\anna"]));
    assert_eq!(state["users"], 1);
    drop(s);

    // Events while nobody listens are not lost to a client that resumes.
    d.send(start("n1", "LAB\\bob").as_bytes());
    d.send(stop("n1", "LAB\\anna").as_bytes());
    let mut s = Stream::open(
        &d,
        "/api/v1/stream",
        &format!("Authorization: Bearer t0k\r\nLast-Event-ID: {first}\r\n"),
    );
    assert_eq!(s.status, 200);
    let (_, bob) = s.until("event", |_| true);
    assert_eq!(bob["user"], "LAB\\bob");
    assert_eq!(bob["seq"].as_u64(), Some(first + 1));
    let (_, anna) = s.until("event", |_| true);
    assert_eq!(anna["event"], "session_stop");
    // On connect, every host's state: bob is in, anna left.
    let (_, state) = s.until("state", |v| {
        v["host"] == "n1" && v["user_list"] == serde_json::json!(["LAB\\bob"])
    });
    assert_eq!(state["sessions"], 1);

    // `?recent=N` begins with the last N events.
    let mut s = Stream::open(&d, "/api/v1/stream?recent=2&access_token=t0k", "");
    let (_, e1) = s.until("event", |_| true);
    let (_, e2) = s.until("event", |_| true);
    assert_eq!(
        (e1["seq"].as_u64(), e2["seq"].as_u64()),
        (Some(first + 1), Some(first + 2))
    );
    assert_eq!(
        Stream::open(&d, "/api/v1/stream?recent=5000&access_token=t0k", "").status,
        400
    );

    // A bad resume point is refused; an open stream does not hold up shutdown.
    assert_eq!(
        Stream::open(&d, "/api/v1/stream?after=x&access_token=t0k", "").status,
        400
    );
    assert!(d.terminate().success());
}

/// Reads what the server sends until it closes the connection (or the deadline).
fn read_until_closed(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn http_limits_refuse_what_is_too_much_and_keep_serving() {
    use std::io::Write;
    use std::net::TcpStream;
    let d = Daemon::start(
        "http:\n  listen: \"127.0.0.1:0\"\n  max_connections: 3\n  header_timeout: \"3s\"\n  \
         request_timeout: \"1s\"\n  max_header_bytes: 8192\n  max_body_bytes: 1024\n",
    );
    let get = |path: &str, headers: &str| http_get_with(d.http, path, headers);

    // A head larger than max_header_bytes: 431, and the next request is served.
    let big = format!("X-Junk: {}\r\n", "a".repeat(10_000));
    assert_eq!(get("/healthz", &big).0, 431);
    // A body over max_body_bytes is refused before it is read.
    assert_eq!(get("/healthz", "Content-Length: 100000\r\n").0, 413);
    assert_eq!(get("/healthz", "").0, 200);

    // A client that never finishes its head (slowloris) is cut off after
    // header_timeout, and so is an idle keep-alive connection. (3 s: the
    // permits must still be taken when the fourth connects, also on a
    // loaded CI machine.)
    // The connections of the requests above give their permits back when
    // the server has closed them; until then the third of these may be the
    // one refused, so the three are opened again until the third is not.
    let (t0, mut slow, mut idle, mut third) =
        common::poll("three connections hold the permits", || {
            let t0 = std::time::Instant::now();
            let mut slow = TcpStream::connect(d.http).unwrap();
            write!(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            let mut idle = TcpStream::connect(d.http).unwrap();
            write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut third = TcpStream::connect(d.http).unwrap();
            third
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut first = [0u8; 12];
            let refused = matches!(std::io::Read::read(&mut third, &mut first), Ok(n) if n > 0);
            third.set_read_timeout(None).unwrap();
            (!refused).then_some((t0, slow, idle, third))
        });

    // Every permit is taken: the next connection is told so at once.
    let mut refused = TcpStream::connect(d.http).unwrap();
    write!(refused, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut refused);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("http.max_connections"),
        "{answer}"
    );

    // The cut-off ones are closed by the server, not left hanging.
    let slow_answer = read_until_closed(&mut slow);
    assert!(!slow_answer.contains("200 OK"), "{slow_answer}");
    let idle_answer = read_until_closed(&mut idle);
    assert!(idle_answer.starts_with("HTTP/1.1 200"), "{idle_answer}");
    assert_eq!(read_until_closed(&mut third), "");
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "closed before header_timeout"
    );
    // Their permits are back.
    assert_eq!(get("/readyz", "").0, 200);
}

#[test]
fn the_stream_outlives_the_request_timeout() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  request_timeout: \"1s\"\n");
    let mut s = Stream::open(&d, "/api/v1/stream", "");
    assert_eq!(s.status, 200);
    // Waiting past the timeout is the point of this test, not synchronisation.
    std::thread::sleep(Duration::from_millis(1500));
    d.send(start("n1", "LAB\\late").as_bytes());
    let (_, ev) = s.until("event", |v| v["user"] == "LAB\\late");
    assert_eq!(ev["event"], "session_start");
}

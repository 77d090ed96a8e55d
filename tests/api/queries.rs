//! The JSON API now and at a past instant, its refusals, and `whosin who` printing it.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, Daemon, http_get_with};

use super::{APP, applied, now, open, start, stop, users_of};

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

//! End-to-end: the real binary, real UDP datagrams, exact numbers from /metrics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon, bin};

const BLACKLIST: &str = r#"
blacklist:
  - directory: INTERNAL
  - directory: LAB
    user_id: svc_reload
  - regex: '^LAB\\test_'
"#;

const APP: &str = "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";

fn session(host: &str, cmd: &str, user: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!("/qseow-proxy-session/;{host};{cmd};{dir};{id};AppAccess;/hub/;{cmd} for user '{user}'")
}

fn connection(host: &str, cmd: &str, user: &str, ctx: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!("/qseow-proxy-connection/;{host};{cmd};{dir};{id};AppAccess;{ctx};connection")
}

#[test]
fn exact_counters_and_gauges_for_a_mixed_stream() {
    let d = Daemon::start(BLACKLIST);
    // Before any event: known label values at 0, no host series yet.
    let m = d.metrics();
    assert_eq!(m.must("whosin_datagrams_received_total"), 0.0);
    assert_eq!(
        m.must("whosin_datagrams_rejected_total{reason=\"empty_user\"}"),
        0.0
    );
    assert_eq!(
        m.must("whosin_events_unmatched_total{event=\"session_stop\"}"),
        0.0
    );
    assert!(m.get("qliksense_sessions_active{host=\"n1\"}").is_none());

    let lines = [
        // Anna, in three spellings, opens two sessions and one app on n1.
        session("n1", "Start session", "LAB\\Anna"),
        session("n1", "Start session", "lab\\anna"),
        connection("n1", "Open connection", "LAB\\ANNA", APP),
        connection(
            "n1",
            "Open connection",
            "LAB\\anna",
            &format!("{APP}?reloaduri=x"),
        ),
        connection("n1", "Close connection", "lab\\Anna", APP),
        // Per on n2: in and out.
        session("n2", "Start session", "CORP\\per"),
        session("n2", "Stop session", "CORP\\Per"),
        // A stop without its start, on n2.
        session("n2", "Stop session", "CORP\\ghost"),
        // Blacklisted, one of each kind, in odd case.
        session("n1", "Start session", "internal\\sa_scheduler"),
        session("n1", "Start session", "Lab\\SVC_reload"),
        session("n1", "Start session", "LAB\\Test_bot"),
        // Not blacklisted lookalikes.
        session("n1", "Start session", "LAB\\svc_reload2"),
        // Junk.
        "GET / HTTP/1.1".to_owned(),
        "/qseow-proxy-session/;n1;Start session".to_owned(),
        "/qseow-proxy-session/;n1;Start session;;bob;;;".to_owned(),
        "/qseow-proxy-session/;n1;Dance;LAB;bob;;;".to_owned(),
        "   ".to_owned(),
    ];
    for l in &lines {
        d.send(l.as_bytes());
    }
    d.send(b"\xff\xfe\x00\x1b[2J binary junk");
    let total = lines.len() as f64 + 1.0;

    let m = d.wait_metric("whosin_datagrams_received_total", total);
    let m = if m.get("whosin_events_blacklisted_total") == Some(3.0) {
        m
    } else {
        d.wait_metric("whosin_events_blacklisted_total", 3.0)
    };
    // The core applies events just after the receive thread counts them, in
    // order, and sets the gauges before it counts an event: once the last
    // accepted event (svc_reload2's start on n1) is counted, all is applied.
    let last = "qliksense_user_events_total{event=\"session_start\",host=\"n1\"}";
    let m = if m.get(last) == Some(3.0) {
        m
    } else {
        d.wait_metric(last, 3.0)
    };

    let r = |reason: &str| {
        m.must(&format!(
            "whosin_datagrams_rejected_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(r("unknown_type"), 2.0, "GET and the binary junk");
    assert_eq!(r("too_few_fields"), 1.0);
    assert_eq!(r("empty_user"), 1.0);
    assert_eq!(r("unknown_command"), 1.0);
    assert_eq!(r("empty"), 1.0);

    assert_eq!(
        m.must("qliksense_sessions_active{host=\"n1\"}"),
        3.0,
        "anna x2 + svc_reload2"
    );
    assert_eq!(m.must("qliksense_users_active{host=\"n1\"}"), 2.0);
    assert_eq!(m.must("qliksense_connections_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_sessions_active{host=\"n2\"}"), 0.0);
    assert_eq!(m.must("qliksense_users_active{host=\"n2\"}"), 0.0);
    assert_eq!(m.must("qliksense_connections_active{host=\"n2\"}"), 0.0);

    let ev = |host: &str, e: &str| {
        m.must(&format!(
            "qliksense_user_events_total{{event=\"{e}\",host=\"{host}\"}}"
        ))
    };
    assert_eq!(ev("n1", "session_start"), 3.0);
    assert_eq!(ev("n1", "connection_open"), 2.0);
    assert_eq!(ev("n1", "connection_close"), 1.0);
    assert_eq!(ev("n1", "session_stop"), 0.0);
    assert_eq!(ev("n2", "session_start"), 1.0);
    assert_eq!(ev("n2", "session_stop"), 2.0);
    assert_eq!(
        m.must("whosin_events_unmatched_total{event=\"session_stop\"}"),
        1.0
    );
    assert_eq!(
        m.must("whosin_events_unmatched_total{event=\"connection_close\"}"),
        0.0
    );
    assert_eq!(
        m.must("qliksense_session_duration_seconds_count{host=\"n2\"}"),
        1.0
    );
    assert_eq!(m.must("whosin_events_blacklisted_total"), 3.0);
    assert_eq!(m.must("whosin_datagrams_dropped_total"), 0.0);

    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
}

#[test]
fn sources_outside_allowed_sources_are_rejected() {
    let d = Daemon::start("udp:\n  listen: \"127.0.0.1:0\"\n  allowed_sources: [\"10.9.9.9\"]\n");
    d.send(session("n1", "Start session", "LAB\\anna").as_bytes());
    let m = d.wait_metric("whosin_datagrams_received_total", 1.0);
    let m = if m.get("whosin_datagrams_rejected_total{reason=\"source_not_allowed\"}") == Some(1.0)
    {
        m
    } else {
        d.wait_metric(
            "whosin_datagrams_rejected_total{reason=\"source_not_allowed\"}",
            1.0,
        )
    };
    assert!(m.get("qliksense_sessions_active{host=\"n1\"}").is_none());
}

#[test]
fn a_chatty_source_is_rate_limited_and_made_up_users_are_capped() {
    let d = Daemon::start(
        "udp:\n  listen: \"127.0.0.1:0\"\n  rate_limit_per_source: 300\nsessions:\n  max_tracked: 100\n",
    );
    let n = 1000;
    for i in 0..n {
        d.send(session("n1", "Start session", &format!("LAB\\made_up_{i}")).as_bytes());
    }
    d.wait_metric("whosin_datagrams_received_total", n as f64);
    // The core counts what the receiver handed over a moment later.
    let until = std::time::Instant::now() + common::DEADLINE;
    let (m, accepted) = loop {
        let m = d.metrics();
        let limited = m.must("whosin_datagrams_rejected_total{reason=\"rate_limited\"}");
        let accepted = m
            .get("qliksense_user_events_total{event=\"session_start\",host=\"n1\"}")
            .unwrap_or(0.0);
        if limited + accepted == n as f64 {
            break (m, accepted);
        }
        assert!(
            std::time::Instant::now() < until,
            "{limited} + {accepted} != {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // One second's budget, or two if the burst straddled a second.
    assert!((300.0..=600.0).contains(&accepted), "{accepted} accepted");

    // Every accepted start is a session, but at most 100 are tracked: the
    // longest idle were evicted, counted, and ended in the journal.
    let active = m.must("qliksense_sessions_active{host=\"n1\"}");
    assert!((90.0..=100.0).contains(&active), "{active} active");
    assert_eq!(m.must("whosin_sessions_evicted_total"), accepted - active);
    let v = d.json("/api/v1/sessions");
    let listed = v["sessions"].as_array().unwrap();
    assert_eq!(listed.len() as f64, active);
    assert!(listed.iter().all(|s| s["user"] != "LAB\\made_up_0"));
    assert_eq!(d.get("/readyz").0, 200);
}

#[test]
fn oversized_datagrams_are_rejected_and_the_next_one_counts() {
    let d = Daemon::start("udp:\n  listen: \"127.0.0.1:0\"\n  max_datagram_bytes: 200\n");
    let big = format!(
        "{}{}",
        session("n1", "Start session", "LAB\\big"),
        "x".repeat(500)
    );
    d.send(big.as_bytes());
    d.send(session("n1", "Start session", "LAB\\small").as_bytes());
    d.wait_metric("whosin_datagrams_rejected_total{reason=\"too_large\"}", 1.0);
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1.0);
}

#[test]
fn readiness_names_each_part() {
    let d = Daemon::start("");
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["parts"]["udp"]["state"], "ok");
    assert_eq!(v["parts"]["journal"]["state"], "ok");
    assert!(v["parts"]["sinks"].is_object());
    let (code, _) = d.get("/healthz");
    assert_eq!(code, 200);
    // The page and its assets come from the binary itself.
    let (code, body) = d.get("/");
    assert_eq!(code, 200);
    assert!(body.contains("who is logged in") && body.contains("/assets/page.js"));
    let (code, js) = d.get("/assets/page.js");
    assert_eq!(code, 200);
    assert!(js.contains("/api/v1/stream"));
    assert_eq!(d.get("/assets/page.css").0, 200);
}

#[test]
fn readiness_fails_when_the_data_dir_is_not_writable() {
    let d = Daemon::start("");
    let data = d.dir.path().join("data");
    // Root ignores permissions, so take the folder away instead.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::write(&data, b"not a folder").unwrap();
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["parts"]["journal"]["state"], "failed");
    assert!(
        v["parts"]["journal"]["detail"]
            .as_str()
            .unwrap()
            .contains("cannot write")
    );
    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    assert_eq!(d.get("/readyz").0, 200);
}

#[test]
fn metrics_pass_promtool_lint() {
    let Some(promtool) = common::tool("promtool", "prometheus") else {
        return;
    };
    let d = Daemon::start(BLACKLIST);
    d.send(session("n1", "Start session", "LAB\\anna").as_bytes());
    d.send(session("n1", "Stop session", "LAB\\anna").as_bytes());
    d.send(b"junk");
    d.wait_metric("qliksense_session_duration_seconds_count{host=\"n1\"}", 1.0);
    let text = d.metrics().0;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
}

#[test]
fn config_reload_applies_the_blacklist_and_refuses_a_bad_file() {
    let d = Daemon::start("");
    d.send(session("n1", "Start session", "LAB\\svc").as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1.0);

    // Save by rename, as editors do.
    let text = std::fs::read_to_string(&d.config).unwrap();
    let tmp = d.config.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{text}blacklist:\n  - directory: lab\n    user_id: SVC\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &d.config).unwrap();
    d.wait_metric("whosin_config_reloads_total{result=\"applied\"}", 1.0);

    // The reload reaches the core before later datagrams: poll by sending.
    let until = Instant::now() + DEADLINE;
    let mut sent = 0.0;
    loop {
        d.send(session("n1", "Start session", "LAB\\svc").as_bytes());
        sent += 1.0;
        let m = d.wait_metric("whosin_datagrams_received_total", 1.0 + sent);
        if m.get("whosin_events_blacklisted_total").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(Instant::now() < until, "blacklist never applied");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A broken file is refused and the blacklist stays.
    std::fs::write(
        &d.config,
        format!("{text}blacklist:\n  - regex: '(unclosed'\n"),
    )
    .unwrap();
    d.wait_metric("whosin_config_reloads_total{result=\"refused\"}", 1.0);
    let before = d.metrics().must("whosin_events_blacklisted_total");
    d.send(session("n1", "Start session", "LAB\\svc").as_bytes());
    d.wait_metric("whosin_events_blacklisted_total", before + 1.0);
}

#[test]
fn check_config_names_every_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "udp:\n  listen: \"x\"\nhttp:\n  lisen: 1\nsessions:\n  idle_timeout: 30\nnope: 1\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "udp.listen: \"x\" is not an address like 0.0.0.0:9997",
        "http.lisen: unknown field",
        "sessions.idle_timeout: 30 has no unit",
        "nope: unknown key",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }

    let regex = dir.path().join("regex.yaml");
    std::fs::write(&regex, "blacklist:\n  - regex: '^LAB\\\\(test'\n").unwrap();
    let out = Command::new(bin())
        .args(["check-config", "-c"])
        .arg(&regex)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blacklist[0].regex: unclosed group"), "{err}");

    let good = Command::new(bin())
        .args(["check-config", "-c", "config/whosin.yaml"])
        .output()
        .unwrap();
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    // `run` with a bad file exits 2 too, and says how to check it.
    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("check-config"));
}

#[test]
fn simulated_traffic_ends_in_exactly_the_expected_state() {
    for format in ["legacy", "extended"] {
        let d = Daemon::start("blacklist:\n  - directory: INTERNAL\n");
        let report = d.dir.path().join("report.json");
        let out = common::run_ok(
            Command::new(bin())
                .args(["simulate", "--target", &d.udp.to_string(), "--users", "40"])
                .args(["--rate", "2000", "--duration", "2s", "--format", format])
                .arg("--report")
                .arg(&report),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("sent "), "{stdout}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let sent = r["sent"].as_f64().unwrap();
        assert!(
            sent >= 3000.0,
            "{r}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.wait_metric("whosin_datagrams_received_total", sent);
        d.wait_metric(
            "whosin_events_blacklisted_total",
            r["service_account_events"].as_f64().unwrap(),
        );
        let deadline = Instant::now() + DEADLINE;
        for (host, want) in r["expected"].as_object().unwrap() {
            for (gauge, key) in [
                ("qliksense_sessions_active", "sessions"),
                ("qliksense_connections_active", "connections"),
                ("qliksense_users_active", "users"),
            ] {
                let sample = format!("{gauge}{{host=\"{host}\"}}");
                d.wait_metric(&sample, want[key].as_f64().unwrap());
            }
        }
        assert!(Instant::now() < deadline + DEADLINE);
        let m = d.metrics();
        assert_eq!(
            m.must("whosin_events_unmatched_total{event=\"session_stop\"}"),
            0.0
        );
        assert_eq!(
            m.must("whosin_events_unmatched_total{event=\"connection_close\"}"),
            0.0
        );
        if format == "extended" {
            for host in r["expected"].as_object().unwrap().keys() {
                assert_eq!(
                    m.must(&format!("whosin_events_lost_total{{host=\"{host}\"}}")),
                    0.0
                );
            }
        }
    }
}

/// The kernel drops datagrams when whosin's socket buffer is full; whosin reads
/// the kernel's drop counter (SO_RXQ_OVFL), so every datagram sent is either
/// received or counted as dropped. Freezing the daemon with SIGSTOP makes the
/// buffer overflow for certain.
#[cfg(target_os = "linux")]
#[test]
fn kernel_drops_are_counted_exactly() {
    let d = Daemon::start("");
    let line = session("n1", "Start session", "LAB\\flood");
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(d.child.id().to_string())
                .status()
                .unwrap()
                .success()
        )
    };
    signal("STOP");
    let flood = 60_000;
    for _ in 0..flood {
        d.send(line.as_bytes());
    }
    signal("CONT");
    // Let it drain, then one more datagram carries the kernel's final drop count.
    let until = Instant::now() + DEADLINE;
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = d.metrics().must("whosin_datagrams_received_total");
        if now == last {
            break;
        }
        last = now;
        assert!(Instant::now() < until, "never drained");
    }
    d.send(line.as_bytes());
    let total = f64::from(flood + 1);
    let until = Instant::now() + DEADLINE;
    loop {
        let m = d.metrics();
        let received = m.must("whosin_datagrams_received_total");
        let dropped = m.must("whosin_datagrams_dropped_total");
        if received + dropped == total {
            assert!(
                dropped > 0.0,
                "the buffer never overflowed: {received} received"
            );
            assert!(received > 1.0);
            break;
        }
        assert!(
            Instant::now() < until,
            "received {received} + dropped {dropped} != sent {total}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ipv6_listen_takes_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "udp:\n  listen: \"[::1]:0\"\n");
    let d = Daemon::start_with(dir, config);
    assert!(d.udp.is_ipv6());
    let tx = std::net::UdpSocket::bind("[::1]:0").unwrap();
    tx.send_to(session("n6", "Start session", "LAB\\v6").as_bytes(), d.udp)
        .unwrap();
    d.wait_metric("qliksense_sessions_active{host=\"n6\"}", 1.0);
}

#[test]
fn idle_sessions_expire_and_are_timed() {
    let d = Daemon::start("sessions:\n  idle_timeout: \"1s\"\n");
    d.send(session("n1", "Start session", "LAB\\idle").as_bytes());
    d.send(session("n1", "Start session", "LAB\\busy").as_bytes());
    d.send(connection("n1", "Open connection", "LAB\\busy", APP).as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 2.0);
    // The idle one expires; the one with an open app stays.
    let m = d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1.0);
    assert_eq!(m.must("qliksense_users_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_connections_active{host=\"n1\"}"), 1.0);
    assert_eq!(
        m.must("qliksense_session_duration_seconds_count{host=\"n1\"}"),
        1.0
    );
    assert_eq!(
        m.must("qliksense_user_events_total{event=\"session_stop\",host=\"n1\"}"),
        0.0
    );
}

#[test]
fn without_a_config_file_the_built_in_default_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built-in default configuration is valid")
    );
    let out = Command::new(bin())
        .args(["check-config", "-c", "missing.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read missing.yaml"));
}

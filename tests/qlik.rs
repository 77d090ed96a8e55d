//! `whosin sessions list` and `whosin sessions end` against an in-process fake
//! of the Qlik proxy service API (tests/common/fake_qps.rs: HTTPS, client
//! certificate required, Xrfkey checked), since no real Qlik runs here.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::fake_qps::{FakeQps, Mode};

fn config(dir: &Path, qps: &FakeQps, client: &str, key: &str, timeout: &str) -> std::path::PathBuf {
    let certs = qps.cert_dir();
    let path = dir.join(format!("whosin-{client}-{timeout}.yaml"));
    std::fs::write(
        &path,
        format!(
            "qlik:\n  proxies:\n    - host: localhost\n      port: {port}\n      virtual_proxies: [\"\", \"finance\"]\n  certificates:\n    client: \"{c}\"\n    client_key: \"{k}\"\n    root: \"{r}\"\n  reconcile_interval: null\n  request_timeout: \"{timeout}\"\n",
            port = qps.port(),
            c = certs.join(client).display(),
            k = certs.join(key).display(),
            r = certs.join("root.pem").display(),
        ),
    )
    .unwrap();
    path
}

fn whosin(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(common::bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn site() -> Option<(FakeQps, tempfile::TempDir, std::path::PathBuf)> {
    let qps = FakeQps::start()?;
    qps.add_virtual_proxy("finance");
    qps.add_session("", "LAB", "anna", "Anna Berg", "s-anna-1");
    qps.add_session("", "LAB", "bob", "Bob", "s-bob-1");
    qps.add_session("", "LAB", "anna", "Anna Berg", "s-anna-2");
    qps.add_session("finance", "CORP", "carl", "", "s-carl-1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &qps, "client.pem", "client_key.pem", "2s");
    Some((qps, dir, cfg))
}

#[test]
fn list_shows_every_virtual_proxy_with_totals_and_as_json() {
    let Some((qps, _dir, cfg)) = site() else {
        return;
    };
    let out = whosin(&cfg, &["sessions", "list", "--format", "json"], "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    let carl = rows.iter().find(|r| r["user_id"] == "carl").unwrap();
    assert_eq!(carl["host"], "localhost");
    assert_eq!(carl["virtual_proxy"], "finance");
    assert_eq!(carl["user_directory"], "CORP");
    assert_eq!(carl["session_id"], "s-carl-1");
    assert_eq!(carl["user_name"], serde_json::Value::Null);
    let anna = rows.iter().find(|r| r["session_id"] == "s-anna-1").unwrap();
    assert_eq!(anna["virtual_proxy"], "");
    assert_eq!(anna["user_name"], "Anna Berg");
    assert!(anna["attributes"].is_array());
    let keys: Vec<&str> = anna
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "host",
        "virtual_proxy",
        "user_directory",
        "user_id",
        "user_name",
        "session_id",
        "attributes",
    ] {
        assert!(keys.contains(&k), "{k} missing in {anna}");
    }
    // Every request had a fresh Xrfkey (the fake refuses a mismatch).
    let keys: std::collections::BTreeSet<String> =
        qps.requests().into_iter().map(|(_, _, k)| k).collect();
    assert_eq!(keys.len(), 2, "one key per request");

    // The table, sorted by user id, with totals per proxy and virtual proxy.
    let out = whosin(&cfg, &["sessions", "list", "--sort", "user-id"], "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("HOST"), "{stdout}");
    let users: Vec<&str> = lines[1..5]
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(users, ["anna", "anna", "bob", "carl"], "{stdout}");
    assert!(
        stdout.contains("localhost: 4 sessions ((default): 3, finance: 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("total: 4 sessions"), "{stdout}");

    // One virtual proxy only.
    let out = whosin(
        &cfg,
        &[
            "sessions",
            "list",
            "--virtual-proxy",
            "finance",
            "--format",
            "json",
        ],
        "",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn end_by_id_by_user_and_all_with_and_without_yes() {
    let Some((qps, _dir, cfg)) = site() else {
        return;
    };
    let ids = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = qps
            .sessions(prefix)
            .into_iter()
            .map(|s| s.session_id)
            .collect();
        v.sort();
        v
    };
    // Ends on the default virtual proxy with more arguments.
    let end_default = |extra: &[&str]| {
        let mut args = vec![
            "sessions",
            "end",
            "--host",
            "localhost",
            "--virtual-proxy",
            "",
        ];
        args.extend_from_slice(extra);
        whosin(&cfg, &args, "")
    };
    // By id.
    let out = end_default(&["--session-id", "s-bob-1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ended s-bob-1 LAB\\bob (Bob)"), "{stdout}");
    assert!(stdout.contains("ended 1 session"), "{stdout}");
    assert_eq!(ids(""), ["s-anna-1", "s-anna-2"]);

    // By user: both of anna's sessions.
    let out = end_default(&["--user", "lab\\ANNA"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ended 2 sessions"), "{stdout}");
    assert!(ids("").is_empty());

    // All on a virtual proxy: asked first; "n" ends nothing.
    let all = [
        "sessions",
        "end",
        "--host",
        "localhost",
        "--virtual-proxy",
        "finance",
    ];
    let out = whosin(&cfg, &all, "n\n");
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("End all 1 session on localhost:"),
        "{stdout}"
    );
    assert!(stdout.contains("nothing ended"), "{stdout}");
    assert_eq!(ids("finance"), ["s-carl-1"]);
    // "y" ends them.
    let out = whosin(&cfg, &all, "y\n");
    assert!(text(&out).0.contains("ended 1 session"), "{:?}", text(&out));
    assert!(ids("finance").is_empty());
    // --yes does not ask.
    qps.add_session("finance", "CORP", "dora", "Dora", "s-dora-1");
    qps.add_session("finance", "CORP", "erik", "Erik", "s-erik-1");
    let mut yes = all.to_vec();
    yes.push("--yes");
    let out = whosin(&cfg, &yes, "");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("[y/N]"), "{stdout}");
    assert!(stdout.contains("ended 2 sessions"), "{stdout}");
    assert!(ids("finance").is_empty());

    // Bad usage exits 2.
    let out = end_default(&["--user", "anna"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("DIRECTORY\\userid"));
    let out = whosin(&cfg, &["sessions", "list", "--host", "qs9"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out)
            .1
            .contains("--host qs9: not a proxy in qlik.proxies")
    );
}

#[test]
fn failures_name_the_proxy_and_what_went_wrong() {
    let Some((qps, dir, cfg)) = site() else {
        return;
    };
    // A certificate from another site: the handshake is refused.
    let other = config(
        dir.path(),
        &qps,
        "other_client.pem",
        "other_client_key.pem",
        "2s",
    );
    let before = qps.handshake_failures();
    let out = whosin(&other, &["sessions", "list"], "");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("localhost:")
            && stderr.contains("virtual proxy \"\"")
            && stderr.contains("certificate"),
        "{stderr}"
    );
    // The fake counts the refused handshake a moment after the client sees it.
    let until = std::time::Instant::now() + common::DEADLINE;
    while qps.handshake_failures() == before {
        assert!(
            std::time::Instant::now() < until,
            "no refused handshake counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Listing the finance virtual proxy fails (exit 1); what it says.
    let refused = |cfg: &Path| {
        let out = whosin(cfg, &["sessions", "list", "--virtual-proxy", "finance"], "");
        assert_eq!(out.status.code(), Some(1));
        text(&out).1
    };
    // 403.
    qps.set_mode(Mode::Forbidden);
    let stderr = refused(&cfg);
    assert!(
        stderr.contains("virtual proxy \"finance\": 403 Forbidden"),
        "{stderr}"
    );
    // Not a session list.
    qps.set_mode(Mode::Garbage);
    let stderr = refused(&cfg);
    assert!(stderr.contains("unexpected answer"), "{stderr}");

    // A proxy that does not answer: the request timeout.
    qps.set_mode(Mode::Hang);
    let short = config(dir.path(), &qps, "client.pem", "client_key.pem", "1s");
    let started = std::time::Instant::now();
    let stderr = refused(&short);
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    qps.set_mode(Mode::Normal);

    // Missing certificate files are a configuration problem: exit 2.
    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("root.pem", "nope.pem"),
    )
    .unwrap();
    let out = whosin(&missing, &["sessions", "list"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("qlik.certificates.root"),
        "{:?}",
        text(&out)
    );
}

/// Polls until a counter that keeps counting reaches `value`.
fn at_least(d: &common::Daemon, sample: &str, value: f64) {
    let until = std::time::Instant::now() + common::DEADLINE;
    while d.metrics().must(sample) < value {
        assert!(
            std::time::Instant::now() < until,
            "{sample} never reached {value}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn reconciliation_fixes_a_phantom_and_a_missed_start_and_leaves_the_rest() {
    let Some(qps) = FakeQps::start() else {
        return;
    };
    qps.add_virtual_proxy("finance");
    qps.add_session("", "LAB", "anna", "Anna", "s-anna");
    // Carl logged in while nobody listened: whosin never saw his start.
    qps.add_session("finance", "CORP", "carl", "Carl", "s-carl");
    let certs = qps.cert_dir();
    let d = common::Daemon::start(&format!(
        "qlik:\n  proxies:\n    - host: localhost\n      port: {port}\n      node_name: sense-node1\n      virtual_proxies: [\"\", \"finance\"]\n  certificates:\n    client: \"{c}\"\n    client_key: \"{k}\"\n    root: \"{r}\"\n  reconcile_interval: \"1s\"\n  request_timeout: \"2s\"\n",
        port = qps.port(),
        c = certs.join("client.pem").display(),
        k = certs.join("client_key.pem").display(),
        r = certs.join("root.pem").display(),
    ));
    // Anna is in (the proxy agrees); the ghost's stop was lost.
    d.send(b"/qseow-proxy-session/;sense-node1;Start session;LAB;anna;AppAccess;/hub/;Start");
    d.send(b"/qseow-proxy-session/;sense-node1;Start session;LAB;ghost;AppAccess;/hub/;Start");
    d.send(b"/qseow-proxy-connection/;sense-node1;Open connection;LAB;ghost;AppAccess;/app/x;Open");
    d.wait_metric("whosin_reconcile_corrections_total{kind=\"ended\"}", 1.0);
    d.wait_metric("whosin_reconcile_corrections_total{kind=\"started\"}", 1.0);
    let m = d.wait_metric("qliksense_sessions_active{host=\"sense-node1\"}", 2.0);
    assert_eq!(
        m.must("qliksense_connections_active{host=\"sense-node1\"}"),
        0.0
    );

    let v = d.json("/api/v1/sessions");
    let mut who: Vec<(String, serde_json::Value, bool)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["user"].as_str().unwrap().to_owned(),
                s["virtual_proxy"].clone(),
                s["reconciled"].as_bool().unwrap(),
            )
        })
        .collect();
    who.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        who,
        [
            ("CORP\\carl".to_owned(), serde_json::json!("finance"), true),
            ("LAB\\anna".to_owned(), serde_json::json!(""), false),
        ],
        "{v}"
    );

    // Later runs find the picture right and change nothing.
    let ok = "whosin_reconcile_runs_total{result=\"ok\"}";
    at_least(&d, ok, d.metrics().must(ok) + 2.0);
    let m = d.metrics();
    assert_eq!(
        m.must("whosin_reconcile_corrections_total{kind=\"ended\"}"),
        1.0
    );
    assert_eq!(
        m.must("whosin_reconcile_corrections_total{kind=\"started\"}"),
        1.0
    );
    assert_eq!(
        m.must("qliksense_sessions_active{host=\"sense-node1\"}"),
        2.0
    );

    // A proxy that refuses: counted as failed, the picture stays.
    qps.set_mode(Mode::Forbidden);
    at_least(&d, "whosin_reconcile_runs_total{result=\"failed\"}", 1.0);
    qps.set_mode(Mode::Normal);
    assert_eq!(
        d.metrics()
            .must("qliksense_sessions_active{host=\"sense-node1\"}"),
        2.0
    );

    // The corrections are in the journal: after a restart the picture is
    // right from the start, and the next run has nothing to correct.
    let mut d = d;
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let config = d.config.clone();
    assert!(d.terminate().success());
    let d = common::Daemon::start_with(dir, config);
    let v = d.json("/api/v1/sessions?user=CORP%5Ccarl");
    assert_eq!(v["sessions"][0]["reconciled"], true, "{v}");
    assert_eq!(v["sessions"][0]["virtual_proxy"], "finance", "{v}");
    at_least(&d, "whosin_reconcile_runs_total{result=\"ok\"}", 1.0);
    let m = d.metrics();
    assert_eq!(
        m.must("whosin_reconcile_corrections_total{kind=\"ended\"}"),
        0.0
    );
    assert_eq!(
        m.must("whosin_reconcile_corrections_total{kind=\"started\"}"),
        0.0
    );
    assert_eq!(
        m.must("qliksense_sessions_active{host=\"sense-node1\"}"),
        2.0
    );
}

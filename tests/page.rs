//! The live page in a real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm, see tests/page/check.mjs): the right people
//! per host, a new login without a reload, the time control, the token, and
//! never a blacklisted account. Writes docs/img/live-page.png for the README.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DEADLINE, Daemon, http_get_with};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const APP: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";

#[test]
fn the_live_page_shows_who_is_in_now_and_then() {
    let Some(node) = common::browser() else {
        return;
    };

    // App names from a stand-in repository (the FakeQps also fakes the QRS).
    let Some(qps) = common::fake_qps::FakeQps::start() else {
        return;
    };
    qps.set_apps(&[(APP, "Sales dashboard", Some("Everyone"))]);
    let certs = qps.cert_dir();
    let d = Daemon::start(&format!(
        "http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"page-t0ken\"\nblacklist:\n  - directory: INTERNAL\nqlik:\n  proxies: []\n  repository:\n    host: localhost\n    port: {}\n  certificates:\n    client: \"{}\"\n    client_key: \"{}\"\n    root: \"{}\"\n  reconcile_interval: null\n",
        qps.port(),
        certs.join("client.pem").display(),
        certs.join("client_key.pem").display(),
        certs.join("root.pem").display(),
    ));
    let now = jiff::Timestamp::now();
    let ago = |minutes: i64| now - jiff::SignedDuration::from_mins(minutes);
    // Dave was in from two hours ago until an hour ago.
    for (seq, minutes, command) in [(1, 120, "Start session"), (2, 60, "Stop session")] {
        d.send(
            format!("/whosin-session/;{};{seq};sense-node1;{command};LAB;dave;AppAccess;/hub/;d1;{command} UserAgent: '{CHROME}'", ago(minutes))
                .as_bytes(),
        );
    }
    for line in [
        format!("/qseow-proxy-session/;sense-node1;Start session;LAB;anna;AppAccess;/hub/;Start UserAgent: '{CHROME}'"),
        "/qseow-proxy-connection/;sense-node1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;open".to_owned(),
        format!("/qseow-proxy-session/;sense-node1;Start session;LAB;bob;AppAccess;/hub/;Start UserAgent: '{CHROME}'"),
        format!("/qseow-proxy-session/;sense-node2;Start session;CORP;carl;AppAccess;/hub/;Start UserAgent: '{SAFARI}'"),
        "/qseow-proxy-session/;sense-node1;Start session;INTERNAL;sa_scheduler;AppAccess;/hub/;Start".to_owned(),
    ] {
        d.send(line.as_bytes());
    }
    let auth = "Authorization: Bearer page-t0ken\r\n";
    let until = Instant::now() + DEADLINE;
    loop {
        let (_, body) = http_get_with(d.http, "/api/v1/sessions", auth);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let named = v["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["apps"][0]["name"] == "Sales dashboard");
        if v["sessions"].as_array().map(Vec::len) == Some(3) && named {
            break;
        }
        assert!(Instant::now() < until, "the sessions never arrived: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img/live-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let want = serde_json::json!({
        "url": format!("http://{}/", d.http),
        "udp": d.udp.to_string(),
        "token": "page-t0ken",
        "now": [["LAB\\anna", "sense-node1"], ["LAB\\bob", "sense-node1"], ["CORP\\carl", "sense-node2"]],
        "past_at": ago(100).to_string(),
        "past": [["LAB\\dave", "sense-node1"]],
        "screenshot": shot,
        "app": {"name": "Sales dashboard", "id": APP},
    });
    common::run_page_script(&node, "check.mjs", &want, "page checks passed");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

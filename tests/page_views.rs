//! The page's incident, app, user and peak-hour views in a real headless
//! Chromium (tests/page/views.mjs), served over HTTPS with a test CA: a
//! morning of traffic with exact times (the extended format), then every
//! view, the deep links a Grafana data link makes, CSV downloads and the
//! keyboard. Writes docs/img/incident.png and docs/img/peak-hours.png.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tls::{TestCa, https_get};
use common::{DEADLINE, Daemon};
use jiff::{SignedDuration, Timestamp};

const SALES: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
const FINANCE: &str = "9b8c7d6e-5f4a-4b3c-8d2e-1f0a9b8c7d6e";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/// Extended-format datagrams with exact times and per-stream sequence numbers.
struct Traffic {
    lines: Vec<String>,
    seq: std::collections::HashMap<(String, &'static str), u64>,
}

impl Traffic {
    fn session(&mut self, t: Timestamp, host: &str, cmd: &str, user: &str, psid: &str) {
        let (dir, id) = user.split_once('\\').unwrap();
        let seq = self.next(host, "session");
        self.lines.push(format!(
            "/whosin-session/;{t};{seq};{host};{cmd};{dir};{id};AppAccess;/hub/;{psid};{cmd} for user '{user}' UserAgent: '{CHROME}'"
        ));
    }

    fn connection(
        &mut self,
        t: Timestamp,
        host: &str,
        cmd: &str,
        user: &str,
        app: Option<&str>,
        psid: &str,
    ) {
        let (dir, id) = user.split_once('\\').unwrap();
        let seq = self.next(host, "connection");
        let ctx = app.map_or("/hub/".to_owned(), |a| format!("/app/{a}"));
        self.lines.push(format!(
            "/whosin-connection/;{t};{seq};{host};{cmd};{dir};{id};AppAccess;{ctx};{psid};connection {cmd} for session"
        ));
    }

    /// A session with a hub tab open from its start (so it is never idle),
    /// ended by a stop at `end` when given.
    fn visit(
        &mut self,
        host: &str,
        user: &str,
        psid: &str,
        start: Timestamp,
        end: Option<Timestamp>,
    ) {
        self.session(start, host, "Start session", user, psid);
        self.connection(start, host, "Open connection", user, None, psid);
        if let Some(e) = end {
            self.session(e, host, "Stop session", user, psid);
        }
    }

    fn next(&mut self, host: &str, stream: &'static str) -> u64 {
        let n = self.seq.entry((host.to_owned(), stream)).or_insert(0);
        *n += 1;
        *n
    }
}

#[test]
fn the_incident_app_user_and_peak_views_over_https() {
    let Some(node) = common::browser() else {
        return;
    };
    let Some(qps) = common::fake_qps::FakeQps::start() else {
        return;
    };
    qps.set_apps(&[
        (SALES, "Sales dashboard", Some("Everyone")),
        (FINANCE, "Finance", None),
    ]);
    let certs = qps.cert_dir();
    let ca = TestCa::new("whosin page test CA");
    let d = Daemon::start(&format!(
        "{}sessions:\n  per_user_limit: 2\n  idle_timeout: \"2s\"\nqlik:\n  proxies: []\n  repository:\n    host: localhost\n    port: {}\n  certificates:\n    client: \"{}\"\n    client_key: \"{}\"\n    root: \"{}\"\n  reconcile_interval: null\n",
        ca.http_yaml("  auth_token: \"v1ews\"\n"),
        qps.port(),
        certs.join("client.pem").display(),
        certs.join("client_key.pem").display(),
        certs.join("root.pem").display(),
    ));

    // The incident: two hours ago, to the second.
    let now = Timestamp::now();
    let t = Timestamp::from_second(now.as_second() - 2 * 3600).unwrap();
    let m = |minutes: i64| t + SignedDuration::from_mins(minutes);
    // Six people at once a week ago, within one hour (more than are in now).
    let week = Timestamp::from_second((now.as_second() - 7 * 86_400) / 3600 * 3600).unwrap();
    let mut tr = Traffic {
        lines: Vec::new(),
        seq: Default::default(),
    };
    for i in 0..6 {
        tr.visit(
            "sense-node1",
            &format!("LAB\\peak{i}"),
            &format!("pk{i}"),
            week + SignedDuration::from_mins(10 + i),
            Some(week + SignedDuration::from_mins(40)),
        );
    }
    // Ten days ago, 205 short visits one after another (never two at once):
    // more rows than a table draws at first.
    let bulk = Timestamp::from_second((now.as_second() - 10 * 86_400) / 3600 * 3600).unwrap();
    for i in 0..205 {
        tr.visit(
            "sense-node3",
            &format!("LAB\\visitor{i:03}"),
            &format!("vi{i}"),
            bulk + SignedDuration::from_mins(i),
            Some(bulk + SignedDuration::from_mins(i + 1)),
        );
    }
    // Anna two days ago, for an hour.
    tr.visit(
        "sense-node2",
        "LAB\\anna",
        "an0",
        now - SignedDuration::from_hours(48),
        Some(now - SignedDuration::from_hours(47)),
    );
    // Erin in since before the window, with a hub tab: in at the instant, no change in the window.
    tr.visit("sense-node2", "LAB\\erin", "er1", m(-60), None);
    // Anna: in from 40 minutes before; Sales from 10 before to 2 after; out 3 after.
    tr.visit("sense-node1", "LAB\\anna", "an1", m(-40), None);
    // Dave left before the window.
    tr.visit("sense-node1", "LAB\\dave", "dv1", m(-30), Some(m(-20)));
    tr.connection(
        m(-10),
        "sense-node1",
        "Open connection",
        "LAB\\anna",
        Some(SALES),
        "an1",
    );
    // Bob signs in 5 minutes before and opens Finance; still in.
    tr.visit("sense-node2", "CORP\\bob", "bb1", m(-5), None);
    tr.connection(
        m(-4),
        "sense-node2",
        "Open connection",
        "CORP\\bob",
        Some(FINANCE),
        "bb1",
    );
    tr.connection(
        m(2),
        "sense-node1",
        "Close connection",
        "LAB\\anna",
        Some(SALES),
        "an1",
    );
    tr.session(m(3), "sense-node1", "Stop session", "LAB\\anna", "an1");
    // Frank has two sessions now: at the limit of 2.
    tr.visit(
        "sense-node1",
        "LAB\\frank",
        "fr1",
        now - SignedDuration::from_mins(3),
        None,
    );
    tr.visit(
        "sense-node2",
        "LAB\\frank",
        "fr2",
        now - SignedDuration::from_mins(2),
        None,
    );
    // Anna now, without opening anything: idle, it expires (idle_timeout 2s;
    // the others always have a tab open).
    tr.session(now, "sense-node2", "Start session", "LAB\\anna", "an9");
    for l in &tr.lines {
        d.send(l.as_bytes());
    }

    // Wait until the journal has it all and the app names are known.
    let until = Instant::now() + DEADLINE;
    loop {
        let at = https_get(
            d.http,
            &ca.ca(),
            &format!("/api/v1/apps?at={t}"),
            "Authorization: Bearer v1ews\r\n",
        );
        let limits = https_get(
            d.http,
            &ca.ca(),
            "/api/v1/limits",
            "Authorization: Bearer v1ews\r\n",
        );
        let named = at
            .as_ref()
            .is_ok_and(|(_, b)| b.contains("Sales dashboard") && b.contains("\"Finance\""));
        let frank = limits
            .as_ref()
            .is_ok_and(|(_, b)| b.contains("LAB\\\\frank"));
        // Anna's idle session of now has expired (the core checks every second).
        let expired = https_get(
            d.http,
            &ca.ca(),
            "/api/v1/sessions?user=LAB%5Canna",
            "Authorization: Bearer v1ews\r\n",
        )
        .is_ok_and(|(_, b)| b.contains("\"sessions\":[]"));
        if named && frank && expired {
            break;
        }
        assert!(
            Instant::now() < until,
            "the traffic never showed: {at:?} {limits:?} {:?}",
            https_get(
                d.http,
                &ca.ca(),
                &format!("/api/v1/sessions?at={t}"),
                "Authorization: Bearer v1ews\r\n"
            )
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
    std::fs::create_dir_all(&img).unwrap();
    let want = serde_json::json!({
        "url": format!("https://localhost:{}/", d.http.port()),
        "cert": std::fs::read_to_string(ca.cert()).unwrap(),
        "token": "v1ews",
        "at": t.to_string(),
        "at_ms": t.as_millisecond(),
        "who_at": ["CORP\\bob", "LAB\\anna", "LAB\\erin"],
        "lanes": ["LAB\\anna", "CORP\\bob"],
        "changes": [
            [m(-10).to_string(), "LAB\\anna", "opened app", "Sales dashboard"],
            [m(-5).to_string(), "CORP\\bob", "signed in", ""],
            [m(-5).to_string(), "CORP\\bob", "opened the hub", ""],
            [m(-4).to_string(), "CORP\\bob", "opened app", "Finance"],
            [m(2).to_string(), "LAB\\anna", "closed app", "Sales dashboard"],
            [m(3).to_string(), "LAB\\anna", "session ended", ""],
            [m(3).to_string(), "LAB\\anna", "closed the hub", ""],
        ],
        "apps_at": [["Sales dashboard", SALES, 1], ["Finance", FINANCE, 1]],
        "peak_hour": (week + SignedDuration::from_mins(20)).to_string(),
        "peak": 6,
        "limit_user": "LAB\\frank",
        // 3 hours before to 5 minutes after bulk + 180 minutes: the starts of
        // visits 0 to 185 and the ends of visits 0 to 184, two changes each
        // (the session and its hub tab).
        "bulk_at": (bulk + SignedDuration::from_mins(180)).as_millisecond(),
        "bulk_changes": 186 * 2 + 185 * 2,
        "shots": {"incident": img.join("incident.png"), "peaks": img.join("peak-hours.png")},
        "downloads": tempfile::tempdir().unwrap().keep(),
    });
    common::run_page_script(&node, "views.mjs", &want, "view checks passed");
    for shot in ["incident.png", "peak-hours.png"] {
        assert!(std::fs::metadata(img.join(shot)).unwrap().len() > 10_000);
    }
}

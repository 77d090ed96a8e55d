//! App names from the Qlik repository everywhere: the API, `who`, the
//! session limit, InfluxDB (real 1.x) and MQTT (real Mosquitto), against the
//! in-process FakeQps, which also fakes the QRS's `/qrs/app/full` (mTLS,
//! Xrfkey and the `X-Qlik-User` header checked).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::fake_new_relic::FakeNewRelic;
use common::fake_qps::FakeQps;
use common::influx::Influx;
use common::mosquitto::{Mosquitto, Subscriber};
use common::{Daemon, poll};
use serde_json::Value;

const SALES: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
const FINANCE: &str = "a421f4a2-c311-4ef4-ba41-fe2e6a2b0d69";

fn start(user: &str) -> String {
    format!("/qseow-proxy-session/;sense-node1;Start session;LAB;{user};AppAccess;/hub/;Start")
}

fn open(user: &str, app: &str) -> String {
    format!(
        "/qseow-proxy-connection/;sense-node1;Open connection;LAB;{user};AppAccess;/app/{app};Open"
    )
}

fn config(qps: &FakeQps, influx: u16, mqtt: &str, nr: &FakeNewRelic) -> String {
    let certs = qps.cert_dir();
    format!(
        "sessions:\n  per_user_limit: 2\nqlik:\n  proxies: []\n  repository:\n    host: localhost\n    port: {port}\n  certificates:\n    client: \"{c}\"\n    client_key: \"{k}\"\n    root: \"{r}\"\n  app_names_interval: \"2s\"\n  reconcile_interval: null\n  request_timeout: \"2s\"\nsinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{influx}\"\n    flush_interval: \"100ms\"\n  mqtt:\n    enabled: true\n    url: \"{mqtt}\"\n  new_relic:\n    enabled: true\n    url: \"{nr}\"\n    accounts:\n      - account_id: \"42\"\n        insert_key: k\n    flush_interval: \"100ms\"\n",
        nr = nr.url(),
        port = qps.port(),
        c = certs.join("client.pem").display(),
        k = certs.join("client_key.pem").display(),
        r = certs.join("root.pem").display(),
    )
}

/// The apps of the sessions of `user` in `/api/v1/sessions`.
fn apps_of(d: &Daemon, user: &str) -> Vec<Value> {
    d.json("/api/v1/sessions")["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user_id"] == user)
        .flat_map(|s| s["apps"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn names_reach_every_place_new_apps_within_seconds_and_renames_after_a_refresh() {
    let Some(qps) = FakeQps::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(influx) = Influx::start(dir.path()) else {
        return;
    };
    let broker_dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(broker_dir.path()) else {
        return;
    };
    let sub = Subscriber::connect(broker.port, "names-test", false);
    let nr = FakeNewRelic::start(&[("42", "k")]);
    qps.set_apps(&[(SALES, "Sales", Some("Everyone"))]);
    let d = Daemon::start(&config(&qps, influx.port, &broker.url(), &nr));
    d.wait_metric("whosin_apps_known", 1.0);

    // Finance is created in Qlik after whosin's first refresh.
    qps.set_apps(&[
        (SALES, "Sales", Some("Everyone")),
        (FINANCE, "Finance", None),
    ]);
    d.send_all(&[
        &start("anna"),
        &open("anna", SALES),
        &start("anna"),
        &start("bob"),
    ]);
    let sent = Instant::now();
    d.send_all(&[&open("bob", FINANCE)]);
    let sales = poll("anna's app", || {
        let a = apps_of(&d, "anna");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(sales[0]["id"], SALES);
    assert_eq!(sales[0]["name"], "Sales");
    assert_eq!(sales[0]["stream"], "Everyone");
    poll("Finance to be named", || {
        (apps_of(&d, "bob").first()?["name"] == "Finance").then_some(())
    });
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(10), "named after {took:?}");
    assert_eq!(apps_of(&d, "bob")[0]["stream"], Value::Null, "unpublished");

    // Who is in which app, and the app filters.
    let apps = d.json("/api/v1/apps");
    let list = apps["apps"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{apps}");
    assert_eq!(list[0]["name"], "Finance");
    assert_eq!(list[0]["users"], serde_json::json!(["LAB\\bob"]));
    assert_eq!(list[1]["connections"], 1);
    let only = d.json("/api/v1/sessions?app=SALES");
    assert_eq!(only["sessions"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["users"], 1);
    let by_id = d.json(&format!("/api/v1/sessions?app={FINANCE}"));
    assert_eq!(by_id["sessions"][0]["user_id"], "bob");
    let from = "2000-01-01T00:00:00Z";
    let to = "2100-01-01T00:00:00Z";
    let events = d.json(&format!("/api/v1/events?from={from}&to={to}&app=finance"));
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["app_name"], "Finance");
    assert_eq!(events[0]["app_id"], FINANCE);
    let c = d.json(&format!(
        "/api/v1/concurrency?from={}&to={}&step=1m&app=Sales",
        jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10),
        jiff::Timestamp::now()
    ));
    let last = c["points"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["sessions"].as_u64(),
            last["users"].as_u64(),
            last["connections"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{c}"
    );

    // The session limit: anna has two sessions, the limit is two.
    let limits = d.json("/api/v1/limits");
    assert_eq!(limits["per_user_limit"], 2);
    assert_eq!(
        limits["users"],
        serde_json::json!([{"user": "LAB\\anna", "sessions": 2, "hosts": ["sense-node1"]}])
    );
    d.wait_metric("qliksense_users_at_session_limit", 1.0);

    // `who --app NAME --format csv`: the people a restart of Finance affects.
    let out = common::run_ok(
        Command::new(common::bin())
            .args(["who", "--server", &format!("http://{}", d.http)])
            .args(["--app", "Finance", "--format", "csv"]),
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[1].starts_with("sense-node1,LAB\\bob,LAB,bob,"),
        "{csv}"
    );
    assert!(lines[1].contains(",Finance,"), "{csv}");
    // Piped into a reader that stops early (`| head`): no panic, success.
    let mut child = Command::new(common::bin())
        .args(["who", "--server", &format!("http://{}", d.http)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");

    // The sinks write the name they know when they send.
    let tag = poll("the Sales point in InfluxDB", || {
        let v = influx.first_value(&format!(
            "SELECT \"appName\" FROM user_events WHERE \"appId\" = '{SALES}'"
        ))?;
        v.as_str().map(str::to_owned)
    });
    assert_eq!(tag, "Sales");
    let msgs = sub.wait("anna's open on MQTT", |m| {
        m.iter()
            .any(|m| m.payload.contains(SALES) && m.topic == "qliksense/userevent")
    });
    let open_msg = msgs
        .iter()
        .find(|m| m.payload.contains(SALES) && m.topic == "qliksense/userevent")
        .unwrap();
    let v: Value = serde_json::from_str(&open_msg.payload).unwrap();
    assert_eq!(v["appName"], "Sales");
    let nr_open = poll("anna's open at New Relic", || {
        nr.events("42").into_iter().find(|e| e["qs_appId"] == SALES)
    });
    assert_eq!(nr_open["qs_appName"], "Sales");

    // A rename shows after the next refresh, for past instants too.
    qps.set_apps(&[
        (SALES, "Sales 2027", Some("Everyone")),
        (FINANCE, "Finance", None),
    ]);
    poll("the new name", || {
        (apps_of(&d, "anna").first()?["name"] == "Sales 2027").then_some(())
    });

    // The repository goes away: events flow on, names stay, failures count.
    qps.set_qrs_down(true);
    d.wait_metric_at_least("whosin_qrs_requests_total{result=\"failed\"}", 1.0);
    d.send_all(&[&start("carl")]);
    poll("carl's session", || {
        let v = d.json("/api/v1/sessions");
        v["sessions"]
            .as_array()?
            .iter()
            .any(|s| s["user_id"] == "carl")
            .then_some(())
    });
    assert_eq!(apps_of(&d, "anna")[0]["name"], "Sales 2027");
    assert!(
        qps.qrs_users()
            .iter()
            .all(|u| u == "UserDirectory=INTERNAL; UserId=sa_repository"),
        "{:?}",
        qps.qrs_users()
    );

    // A restart while the repository is still down: the journal has the names.
    let (dir, cfg) = d.kill9();
    let d = Daemon::start_with(dir, cfg);
    assert!(d.metrics().must("whosin_apps_known") >= 2.0);
    assert_eq!(apps_of(&d, "anna")[0]["name"], "Sales 2027");
}

/// `qlik.discover`: the proxies and virtual proxies come from the QRS, as
/// Ctrl-Q reads them, for `sessions list` and for reconciliation.
#[test]
fn discovered_proxies_serve_sessions_list_and_reconciliation() {
    let Some(qps) = FakeQps::start() else { return };
    qps.add_virtual_proxy("finance");
    qps.add_session("", "LAB", "anna", "Anna", "s-anna");
    qps.add_session("finance", "LAB", "bob", "Bob", "s-bob");
    qps.set_proxy_services(vec![serde_json::json!({
        "id": "p1",
        "serverNodeConfiguration": {"name": "sense-node1", "hostName": "localhost"},
        "settings": {
            "restListenPort": qps.port(),
            "virtualProxies": [{"prefix": "", "description": "Central"}, {"prefix": "finance"}]
        }
    })]);
    let certs = qps.cert_dir();
    let yaml = format!(
        "qlik:\n  proxies: []\n  discover: true\n  repository:\n    host: localhost\n    port: {port}\n  certificates:\n    client: \"{c}\"\n    client_key: \"{k}\"\n    root: \"{r}\"\n  app_names_interval: null\n  reconcile_interval: \"1s\"\n  request_timeout: \"2s\"\n",
        port = qps.port(),
        c = certs.join("client.pem").display(),
        k = certs.join("client_key.pem").display(),
        r = certs.join("root.pem").display(),
    );
    let d = Daemon::start(&yaml);
    let out = common::run_ok(Command::new(common::bin()).args([
        "sessions",
        "list",
        "-c",
        d.config.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["virtual_proxy"].as_str().unwrap().to_owned(),
                s["user_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("".to_owned(), "anna".to_owned()),
            ("finance".to_owned(), "bob".to_owned())
        ]
    );
    // Reconciliation finds both users on the discovered node, whose events
    // would say sense-node1 (its node name).
    d.wait_metric("whosin_reconcile_corrections_total{kind=\"started\"}", 2.0);
    let v = d.json("/api/v1/sessions");
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{v}");
    assert!(sessions.iter().all(|s| s["reconciled"] == true));
    let finance = sessions.iter().find(|s| s["user_id"] == "bob").unwrap();
    assert_eq!(finance["virtual_proxy"], "finance");
}

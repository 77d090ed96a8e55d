//! The MQTT sink against a real Mosquitto (Debian's `mosquitto`), started here
//! on a free loopback port with persistence: Butler SOS's payloads on Butler
//! SOS's topics, a retained state topic per host, and nothing lost when the
//! broker or whosin restarts mid-stream.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mosquitto::{Message, Mosquitto, Subscriber};
use common::{DEADLINE, Daemon, free_port};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn config(url: &str, extra: &str) -> String {
    format!(
        "blacklist:\n  - directory: INTERNAL\ntags:\n  qs_env: test\n  site: \"north, 1\"\nsinks:\n  mqtt:\n    enabled: true\n    url: \"{url}\"\n    client_id: whosin-test\n{extra}"
    )
}

/// Extended-format datagrams stamped now (so the sessions do not expire).
fn extended(kind: &str, seq: u64, rest: &str) -> String {
    let now = jiff::Timestamp::now();
    format!("/whosin-{kind}/;{now};{seq};{rest}")
}

#[test]
fn payloads_topics_and_the_retained_state_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let sub = Subscriber::connect(broker.port, "t-exact", false);
    let d = Daemon::start(&config(&broker.url(), ""));
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let lines = [
        extended(
            "session",
            1,
            &format!(
                "sense-node1;Start session;LAB;anna;AppAccess;/hub/;abc123;Start session for user 'LAB\\anna' UserAgent: '{chrome}'"
            ),
        ),
        extended(
            "connection",
            1,
            "sense-node1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;abc123;connection Opened \"x\"",
        ),
        extended(
            "session",
            2,
            "sense-node1;Start session;CORP;Bob;AppAccess;/hub/;def456;Start session",
        ),
        extended(
            "session",
            3,
            "sense-node1;Stop session;CORP;Bob;AppAccess;/hub/;def456;Stop session",
        ),
        // A service account, blacklisted: never published.
        extended(
            "session",
            4,
            "sense-node1;Start session;INTERNAL;sa_scheduler;AppAccess;/hub/;x;Start",
        ),
    ];
    for l in &lines {
        d.send(l.as_bytes());
    }
    let events = |m: &[Message]| {
        m.iter()
            .filter(|m| m.topic.starts_with("qliksense/userevent"))
            .count()
    };
    let got = sub.wait("8 event messages", |m| events(m) >= 8);
    // Every accepted event once to `all` and once to its command's topic.
    let mut by_topic: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for m in got
        .iter()
        .filter(|m| m.topic.starts_with("qliksense/userevent"))
    {
        assert!(!m.retain, "events are not retained: {m:?}");
        by_topic.entry(&m.topic).or_default().push(json(&m.payload));
    }
    let commands = |topic: &str| -> Vec<String> {
        by_topic[topic]
            .iter()
            .map(|v| format!("{} {}", v["command"].as_str().unwrap(), v["userFull"]))
            .collect()
    };
    assert_eq!(
        commands("qliksense/userevent"),
        [
            "Start session \"LAB\\\\anna\"",
            "Open connection \"LAB\\\\anna\"",
            "Start session \"CORP\\\\Bob\"",
            "Stop session \"CORP\\\\Bob\""
        ]
    );
    assert_eq!(
        commands("qliksense/userevent/session/start"),
        [
            "Start session \"LAB\\\\anna\"",
            "Start session \"CORP\\\\Bob\""
        ]
    );
    assert_eq!(
        commands("qliksense/userevent/session/stop"),
        ["Stop session \"CORP\\\\Bob\""]
    );
    assert_eq!(
        commands("qliksense/userevent/connection/open"),
        ["Open connection \"LAB\\\\anna\""]
    );
    assert!(!by_topic.contains_key("qliksense/userevent/connection/close"));

    // The payload, field by field, against the journal's own view.
    let api = d.json("/api/v1/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
    let first = &api["events"][0];
    let start = &by_topic["qliksense/userevent"][0];
    let expected = serde_json::json!({
        "messageType": "whosin-session",
        "host": "sense-node1",
        "command": "Start session",
        "userDir": "LAB",
        "userId": "anna",
        "origin": "AppAccess",
        "context": "/hub/",
        "message": "Start session for user 'LAB\\anna' UserAgent: '".to_owned() + chrome + "'",
        "tags": {"qs_env": "test", "site": "north, 1"},
        "uaBrowserName": "Chrome",
        "uaBrowserMajorVersion": "131",
        "uaOsName": "Windows",
        "uaOsVersion": "NT 10.0",
        "userFull": "LAB\\anna",
        "seq": first["seq"],
        "timestamp": start["timestamp"],
    });
    assert_eq!(start, &expected);
    // The timestamp is the event time, with microseconds.
    let ts = start["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-11-21T08:59:59.120000Z".len(), "{ts}");
    assert_eq!(ts[..26], first["time"].as_str().unwrap()[..26]);
    let open = &by_topic["qliksense/userevent"][1];
    assert_eq!(open["appId"], "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c");
    assert_eq!(open["messageType"], "whosin-connection");
    assert_eq!(open["message"], "connection Opened \"x\"");
    assert_eq!(
        open["appName"], "<unknown app name>",
        "as Butler SOS writes an app it has no name for: {open}"
    );
    let seqs: Vec<u64> = by_topic["qliksense/userevent"]
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 4);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        !got.iter()
            .any(|m| m.payload.contains("sa_scheduler") && m.topic.contains("userevent")),
        "the blacklisted account was published"
    );

    // The retained state topic matches the live state: anna is in, Bob left.
    let state = |m: &[Message]| -> Option<serde_json::Value> {
        m.iter()
            .rev()
            .find(|m| m.topic == "qliksense/sessions/sense-node1")
            .map(|m| json(&m.payload))
    };
    let got = sub.wait("the state of sense-node1 after Bob left", |m| {
        state(m).is_some_and(|s| s["sessions"] == 1 && s["connections"] == 1)
    });
    let s = state(&got).unwrap();
    assert_eq!(s["users"], 1);
    assert_eq!(s["userList"], serde_json::json!(["LAB\\anna"]));
    assert_eq!(s["host"], "sense-node1");
    assert_eq!(s["tags"]["qs_env"], "test");
    let live = d.json("/api/v1/sessions?host=sense-node1");
    assert_eq!(live["users"], s["users"]);
    assert_eq!(
        live["sessions"].as_array().unwrap().len() as u64,
        s["sessions"].as_u64().unwrap()
    );

    // A subscriber that comes later gets the state at once: it is retained.
    let late = Subscriber::connect(broker.port, "t-late", false);
    let got = late.wait("the retained state", |m| {
        m.iter()
            .any(|m| m.topic == "qliksense/sessions/sense-node1")
    });
    let retained = got
        .iter()
        .find(|m| m.topic == "qliksense/sessions/sense-node1")
        .unwrap();
    assert!(retained.retain);
    assert_eq!(json(&retained.payload)["userList"], s["userList"]);
    assert!(
        !got.iter()
            .any(|m| m.topic.starts_with("qliksense/userevent")),
        "events are not retained"
    );
    let m = d.metrics();
    assert_eq!(
        m.must("whosin_sink_events_written_total{sink=\"mqtt\"}"),
        4.0
    );
    assert_eq!(m.must("whosin_sink_backlog_events{sink=\"mqtt\"}"), 0.0);
    let ready = d.json("/readyz");
    assert_eq!(ready["parts"]["sinks"]["mqtt"]["state"], "ok", "{ready}");
    assert_eq!(ready["parts"]["sinks"]["influxdb"]["state"], "disabled");
}

#[test]
fn null_topics_are_not_published_and_qos_0_works() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let sub = Subscriber::connect(broker.port, "t-null", false);
    let d = Daemon::start(&config(
        &broker.url(),
        "    qos: 0\n    topics:\n      all: null\n      session_start: qliksense/userevent/login\n      state: null\n",
    ));
    d.send_all(&[
        "/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start",
        "/qseow-proxy-connection/;n1;Open connection;LAB;anna;AppAccess;/app/x;Open",
    ]);
    d.wait_metric("whosin_sink_events_written_total{sink=\"mqtt\"}", 2.0);
    let got = sub.wait("two messages", |m| m.len() >= 2);
    let mut topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(
        topics,
        [
            "qliksense/userevent/connection/open",
            "qliksense/userevent/login"
        ]
    );
    // No state topic either: a message after the first tick would show it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sub.messages().len(), 2, "{:?}", sub.messages());
}

/// Sends `n` events, a session start then connection opens, spread over the
/// users, numbered from `from`; returns what was sent.
fn traffic(d: &Daemon, from: usize, n: usize) {
    for i in from..from + n {
        let user = format!("user{}", i % 50);
        let line = if i % 50 == i % 100 {
            format!(
                "/qseow-proxy-session/;sense-node1;Start session;LAB;{user};AppAccess;/hub/;Start {i}"
            )
        } else {
            format!(
                "/qseow-proxy-connection/;sense-node1;Open connection;LAB;{user};AppAccess;/app/{i};Open {i}"
            )
        };
        d.send(line.as_bytes());
        if i % 20 == 0 {
            // A steady stream rather than one burst.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn accepted(d: &Daemon) -> BTreeSet<u64> {
    d.all_events()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_broker_restart_and_a_whosin_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    // A persistent QoS 1 subscriber: its queue survives the broker's restart.
    let sub = Subscriber::connect(broker.port, "t-persistent", true);
    let mut d = Daemon::start(&config(&broker.url(), "    topics:\n      state: null\n"));
    traffic(&d, 0, 300);
    sub.wait("the first messages", |m| m.len() >= 300);

    // The broker goes away mid-stream: events wait in the journal.
    traffic(&d, 300, 100);
    broker.stop();
    traffic(&d, 400, 300);
    let until = Instant::now() + DEADLINE;
    loop {
        let v = d.json("/readyz");
        let mqtt = &v["parts"]["sinks"]["mqtt"];
        if mqtt["state"] == "retrying" && mqtt["backlog"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < until, "the outage never showed: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.run();
    traffic(&d, 700, 100);

    // whosin restarts mid-stream too.
    let dir_whosin = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let config = d.config.clone();
    assert!(d.terminate().success());
    let d = Daemon::start_with(dir_whosin, config);
    traffic(&d, 800, 200);
    d.wait_metric("whosin_sink_backlog_events{sink=\"mqtt\"}", 0.0);

    let want = accepted(&d);
    assert!(
        want.len() >= 900,
        "most events were accepted: {}",
        want.len()
    );
    let seqs = |m: &[Message], topic: &str| -> BTreeSet<u64> {
        m.iter()
            .filter(|m| m.topic == topic)
            .map(|m| json(&m.payload)["seq"].as_u64().unwrap())
            .collect()
    };
    let got = sub.wait("every accepted event on qliksense/userevent", |m| {
        seqs(m, "qliksense/userevent") == want
    });
    // And each on its command's topic; redeliveries are byte-identical.
    let starts = seqs(&got, "qliksense/userevent/session/start");
    let opens = seqs(&got, "qliksense/userevent/connection/open");
    assert_eq!(&starts | &opens, want);
    assert!(starts.is_disjoint(&opens));
    let mut first: BTreeMap<(String, u64), String> = BTreeMap::new();
    for m in &got {
        let seq = json(&m.payload)["seq"].as_u64().unwrap();
        let earlier = first
            .entry((m.topic.clone(), seq))
            .or_insert_with(|| m.payload.clone());
        assert_eq!(earlier, &m.payload, "a redelivery differs");
    }
}

#[test]
fn qos_2_is_confirmed_by_pubcomp() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let sub = Subscriber::connect(broker.port, "t-qos2", false);
    let d = Daemon::start(&config(&broker.url(), "    qos: 2\n"));
    d.send_all(&[
        "/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start",
        "/qseow-proxy-connection/;n1;Open connection;LAB;anna;AppAccess;/app/x;Open",
        "/qseow-proxy-connection/;n1;Close connection;LAB;anna;AppAccess;/app/x;Close",
    ]);
    d.wait_metric("whosin_sink_events_written_total{sink=\"mqtt\"}", 3.0);
    sub.wait("six event messages", |m| {
        m.iter()
            .filter(|m| m.topic.starts_with("qliksense/userevent"))
            .count()
            == 6
    });
    assert_eq!(
        d.metrics()
            .must("whosin_sink_backlog_events{sink=\"mqtt\"}"),
        0.0
    );
}

#[test]
fn changed_sink_settings_apply_without_a_restart_and_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let sub = Subscriber::connect(broker.port, "t-reload", false);
    let d = Daemon::start(&config(&broker.url(), "    topics:\n      state: null\n"));
    let start = |i: usize| {
        format!("/qseow-proxy-session/;n1;Start session;LAB;user{i};AppAccess;/hub/;Start")
    };
    d.send(start(0).as_bytes());
    d.wait_metric("whosin_sink_events_written_total{sink=\"mqtt\"}", 1.0);

    // New tags and a new `all` topic, saved while whosin runs.
    let yaml = std::fs::read_to_string(&d.config).unwrap();
    let changed = yaml.replace("qs_env: test", "qs_env: changed").replace(
        "    topics:\n      state: null\n",
        "    topics:\n      all: qliksense/everything\n      state: null\n",
    );
    assert_ne!(yaml, changed);
    let tmp = d.config.with_extension("tmp");
    std::fs::write(&tmp, &changed).unwrap();
    std::fs::rename(&tmp, &d.config).unwrap();
    d.wait_metric("whosin_config_reloads_total{result=\"applied\"}", 1.0);

    // The sink restarts with the new settings; until it has, an event may
    // still go out the old way, so send until one arrives the new way.
    let until = Instant::now() + DEADLINE;
    let mut i = 1;
    loop {
        d.send(start(i).as_bytes());
        let got = sub.wait(&format!("user{i}'s event"), |m| {
            m.iter().any(|m| {
                m.topic.ends_with("/userevent") || m.topic.ends_with("/everything")
            } && m.payload.contains(&format!("user{i}\"")))
        });
        let m = got
            .iter()
            .rev()
            .find(|m| m.payload.contains(&format!("user{i}\"")) && !m.topic.ends_with("/start"))
            .unwrap();
        if m.topic == "qliksense/everything" {
            assert_eq!(json(&m.payload)["tags"]["qs_env"], "changed");
            break;
        }
        assert!(Instant::now() < until, "the new settings never applied");
        i += 1;
    }
    // The restart began at the cursor: nothing was published twice.
    let got = sub.messages();
    let mut seen = BTreeSet::new();
    for m in got.iter().filter(|m| m.topic.ends_with("/start")) {
        let seq = json(&m.payload)["seq"].as_u64().unwrap();
        assert!(seen.insert(seq), "seq {seq} published twice: {got:?}");
    }
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, in PEM
/// files under `dir`: (ca, server cert, server key, client cert, client key).
fn certificates(dir: &Path) -> [PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "whosin test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "whosin");
    let client = client.signed_by(&client_key, &issuer).unwrap();
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

#[test]
fn mqtts_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    // A second listener on TLS that requires a client certificate.
    let [ca, cert, key, client_cert, client_key] = certificates(dir.path());
    let tls_port = free_port();
    broker.stop();
    let mut conf = std::fs::read_to_string(&broker.config).unwrap();
    conf.push_str(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        ca.display(),
        cert.display(),
        key.display()
    ));
    std::fs::write(&broker.config, conf).unwrap();
    broker.run();
    let sub = Subscriber::connect(broker.port, "t-tls", false);
    let url = format!("mqtts://127.0.0.1:{tls_port}");
    let d = Daemon::start(&config(
        &url,
        &format!(
            "    ca_file: \"{}\"\n    client_cert: \"{}\"\n    client_key: \"{}\"\n",
            ca.display(),
            client_cert.display(),
            client_key.display()
        ),
    ));
    d.send(b"/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start");
    d.wait_metric("whosin_sink_events_written_total{sink=\"mqtt\"}", 1.0);
    sub.wait("the event, published over TLS", |m| {
        m.iter().any(|m| m.topic == "qliksense/userevent")
    });

    // Without the client certificate the broker refuses, and /readyz says so.
    let d = Daemon::start(&config(
        &url,
        &format!("    ca_file: \"{}\"\n", ca.display()),
    ));
    let until = Instant::now() + DEADLINE;
    loop {
        let v = d.json("/readyz");
        if v["parts"]["sinks"]["mqtt"]["state"] == "retrying" {
            break;
        }
        assert!(Instant::now() < until, "no failure shown: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_broker_with_passwords_takes_the_configured_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Mosquitto::start(dir.path()) else {
        return;
    };
    let passwd = common::tool("mosquitto_passwd", "mosquitto").unwrap();
    let file = dir.path().join("passwords");
    let ok = Command::new(passwd)
        .args(["-c", "-b"])
        .arg(&file)
        .args(["whosin", "s3cret; with spaces"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_passwd failed");
    broker.stop();
    let conf = std::fs::read_to_string(&broker.config)
        .unwrap()
        .replace("allow_anonymous true", "allow_anonymous false")
        + &format!("password_file {}\n", file.display());
    std::fs::write(&broker.config, conf).unwrap();
    broker.run();

    // Wrong password: refused, shown, retried.
    let wrong = Daemon::start(&config(
        &broker.url(),
        "    username: whosin\n    password: wrong\n",
    ));
    wrong.send(b"/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start");
    let until = Instant::now() + DEADLINE;
    loop {
        let v = wrong.json("/readyz");
        let mqtt = &v["parts"]["sinks"]["mqtt"];
        if mqtt["state"] == "retrying" {
            assert!(
                mqtt["detail"].as_str().unwrap().contains("refused"),
                "{mqtt}"
            );
            break;
        }
        assert!(Instant::now() < until, "no failure shown: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        wrong
            .metrics()
            .must("whosin_sink_events_written_total{sink=\"mqtt\"}"),
        0.0
    );

    drop(wrong);

    // The right one: delivered.
    let d = Daemon::start(&config(
        &broker.url(),
        "    username: whosin\n    password: \"s3cret; with spaces\"\n",
    ));
    d.send(b"/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start");
    d.wait_metric("whosin_sink_events_written_total{sink=\"mqtt\"}", 1.0);
}

//! The InfluxDB sink against a real InfluxDB 1.x (Debian's `influxdb`), started
//! here on free loopback ports: Butler SOS's points arrive, and an outage of
//! InfluxDB loses nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::influx::Influx;
use common::{DEADLINE, Daemon, free_port, http_get};

/// The InfluxDB 1.x sink on `port` (database senseops), plus `extra` keys.
fn v1_sink(port: u16, extra: &str) -> String {
    format!(
        "sinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{port}\"\n    database: senseops\n    flush_interval: \"100ms\"\n{extra}"
    )
}

fn start(user: &str, origin: &str) -> String {
    let (dir, id) = user.split_once('\\').unwrap();
    format!(
        "/qseow-proxy-session/;sense-node1;Start session;{dir};{id};{origin};/hub/;Start session for user '{user}' UserAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'"
    )
}

#[test]
fn butler_points_arrive_and_an_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut influx) = Influx::start(dir.path()) else {
        return;
    };
    influx.create_db();
    let d = Daemon::start(&format!(
        "tags:\n  qs_env: test\nsinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{}\"\n    version: 1\n    database: senseops\n    flush_interval: \"100ms\"\n",
        influx.port
    ));
    // An empty origin is a tag left out, not a lost event (Butler SOS loses it).
    d.send_all(&[
        &start("LAB\\anna", "AppAccess"),
        &start("LAB\\bob", ""),
        &start("CORP\\carl", "AppAccess"),
    ]);
    influx.wait_count(3);
    let v = influx.query(
        "SELECT \"userFull\", \"userId\" FROM user_events WHERE \"userFull\" = 'LAB\\\\anna'",
    );
    let row = &v["results"][0]["series"][0]["values"][0];
    assert_eq!(row[1], "LAB\\anna", "{v}");
    assert_eq!(row[2], "anna");
    let tags = influx.query("SHOW TAG VALUES FROM user_events WITH KEY IN (\"event_action\", \"qs_env\", \"uaBrowserName\", \"userFull\")");
    let text = tags.to_string();
    for want in [
        "Start session",
        "test",
        "Chrome",
        "LAB\\\\anna",
        "CORP\\\\carl",
    ] {
        assert!(text.contains(want), "missing {want} in {text}");
    }
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 3.0);
    d.wait_metric("whosin_sink_backlog_events{sink=\"influxdb\"}", 0.0);

    // InfluxDB goes away; events keep coming; nothing is lost.
    influx.stop();
    d.send_all(&[
        &start("LAB\\dora", "AppAccess"),
        &start("LAB\\emil", "AppAccess"),
    ]);
    d.wait_metric("whosin_sink_backlog_events{sink=\"influxdb\"}", 2.0);
    let until = Instant::now() + DEADLINE;
    while d
        .metrics()
        .must("whosin_sink_errors_total{sink=\"influxdb\"}")
        < 1.0
    {
        assert!(
            Instant::now() < until,
            "no write error counted while InfluxDB was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Readiness names the sink's trouble but stays 200: a sink never makes whosin unready.
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["parts"]["sinks"]["influxdb"]["state"], "retrying",
        "{body}"
    );
    assert_eq!(v["parts"]["sinks"]["influxdb"]["backlog"], 2);
    influx.run();
    influx.wait_count(5);
    d.wait_metric("whosin_sink_backlog_events{sink=\"influxdb\"}", 0.0);
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 5.0);
    let v = d.json("/readyz");
    assert_eq!(v["parts"]["sinks"]["influxdb"]["state"], "ok", "{v}");

    // The 10-second summaries, computed from the journal: the five sessions on
    // sense-node1, and every event counted once.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let v = influx.query(
            "SELECT last(\"session_count\"), last(\"user_count\"), last(\"session_user_id_list\") FROM user_session_summary WHERE \"user_session_host\" = 'sense-node1'",
        );
        let row = &v["results"][0]["series"][0]["values"][0];
        if row[1].as_u64() == Some(5) {
            assert_eq!(row[2].as_u64(), Some(5));
            let list = row[3].as_str().unwrap();
            assert!(
                list.contains("LAB\\anna") && list.contains("CORP\\carl"),
                "{list}"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "no user_session_summary with 5 sessions: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = influx.query("SELECT sum(\"counter\") FROM event_count WHERE \"event_type\" = 'user' AND \"source\" = 'qseow-proxy-session'");
    assert_eq!(
        v["results"][0]["series"][0]["values"][0][1].as_u64(),
        Some(5),
        "{v}"
    );

    // Every query of Butler SOS's SenseOps user panels (shared/qlik/user-events.md)
    // runs and returns data, with $timeFilter and $interval filled in.
    d.send(b"/qseow-proxy-connection/;sense-node1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;connection Opened for session UserAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'");
    influx.wait_count(6);
    let panels = [
        "SELECT count(distinct(\"userFull\")) FROM \"user_events\" WHERE $timeFilter GROUP BY time(15m)",
        "SELECT count(distinct(\"userFull\")) FROM \"user_events\" WHERE $timeFilter GROUP BY time(1d)",
        "SELECT count(\"userId\") FROM \"user_events\" WHERE $timeFilter GROUP BY time(1m), \"event_action\" fill(null)",
        "SELECT count(\"userId\") FROM \"user_events\" WHERE $timeFilter GROUP BY time(1m), \"origin\" fill(null)",
        "SELECT count(distinct(\"userFull\")) FROM \"user_events\" WHERE \"event_action\"::tag = 'Open connection' AND $timeFilter GROUP BY \"appName\"::tag",
        "SELECT count(distinct(\"userFull\")) FROM \"user_events\" WHERE $timeFilter GROUP BY \"uaBrowserName\"::tag",
        "SELECT count(distinct(\"userFull\")) FROM \"user_events\" WHERE $timeFilter GROUP BY \"uaOsName\"::tag",
        "SELECT \"userFull\", \"appName\", \"appId\" FROM \"user_events\" WHERE $timeFilter GROUP BY \"origin\", \"event_action\", \"host\"",
        "SELECT mean(\"session_count\") FROM \"user_session_summary\" WHERE $timeFilter GROUP BY time($interval), \"user_session_host\" fill(none)",
        "SELECT sum(\"counter\") FROM \"event_count\" WHERE $timeFilter GROUP BY \"source\"::tag, \"event_type\"::tag, \"host\"::tag",
    ];
    for q in panels {
        let q = q
            .replace("$timeFilter", "time > now() - 1h")
            .replace("$interval", "10s");
        let v = influx.query(&q);
        let series = &v["results"][0]["series"];
        assert!(
            series.as_array().is_some_and(|s| !s.is_empty()) && v["results"][0]["error"].is_null(),
            "no data for {q}: {v}"
        );
    }
}

/// VictoriaMetrics speaks the InfluxDB v2 write API (it keeps numeric fields
/// only, so what can be checked is that it takes every batch whosin sends).
#[test]
fn v2_writes_are_accepted_by_victoria_metrics() {
    let Some(bin) = common::tool("victoria-metrics", "victoria-metrics") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut vm = Command::new(bin)
        .arg(format!(
            "-storageDataPath={}",
            dir.path().join("vm").display()
        ))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("victoria-metrics starts");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let until = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(addr).is_err() || http_get(addr, "/health").0 != 200 {
        assert!(Instant::now() < until, "victoria-metrics did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = Daemon::start(&format!(
        "sinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{port}\"\n    version: 2\n    org: qlik\n    bucket: senseops\n    token: t0ken\n    flush_interval: \"100ms\"\n"
    ));
    d.send_all(&[
        &start("LAB\\anna", "AppAccess"),
        &start("LAB\\bob", "AppAccess"),
        &start("LAB\\carl", ""),
    ]);
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 3.0);
    assert_eq!(
        d.metrics()
            .must("whosin_sink_errors_total{sink=\"influxdb\"}"),
        0.0
    );
    let until = Instant::now() + DEADLINE;
    loop {
        let text = http_get(addr, "/metrics").1;
        let rows = common::Metrics(text)
            .get("vm_rows_inserted_total{type=\"influx\"}")
            .unwrap_or(0.0);
        if rows >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "victoria-metrics counted {rows} rows"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = vm.kill();
    let _ = vm.wait();
}

/// What no real server here does on demand: a fake InfluxDB (in-process,
/// named as such) that answers 401 (a wrong token: fixed by the administrator,
/// so retried, never dropped), 500, then 429, then 400 to any request holding
/// a bad point. The sink retries the first three and isolates the bad point.
#[test]
fn fake_influxdb_errors_are_retried_and_a_bad_point_is_isolated() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Fake {
        requests: usize,
        stored: Vec<String>,
    }
    let fake = Arc::new(Mutex::new(Fake::default()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let state = fake.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/write",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        let mut text = String::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_string(&mut text)
                            .unwrap();
                        let mut f = state.lock().unwrap();
                        f.requests += 1;
                        match f.requests {
                            1 => (
                                axum::http::StatusCode::UNAUTHORIZED,
                                "{\"error\":\"authorization failed\"}".to_owned(),
                            ),
                            2 => (
                                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                                "down".to_owned(),
                            ),
                            3 => (
                                axum::http::StatusCode::TOO_MANY_REQUESTS,
                                "slow down".to_owned(),
                            ),
                            _ if text.contains("userId=\"bad\"") => (
                                axum::http::StatusCode::BAD_REQUEST,
                                "{\"error\":\"partial write: field type conflict\"}".to_owned(),
                            ),
                            _ => {
                                f.stored.extend(text.lines().map(str::to_owned));
                                (axum::http::StatusCode::NO_CONTENT, String::new())
                            }
                        }
                    }
                }),
            );
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    let d = Daemon::start(&format!(
        "sinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{port}\"\n    database: senseops\n    flush_interval: \"100ms\"\n"
    ));
    d.send_all(&[
        &start("LAB\\good1", "AppAccess"),
        &start("LAB\\bad", "AppAccess"),
        &start("LAB\\good2", "AppAccess"),
        &start("LAB\\good3", "AppAccess"),
    ]);
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 3.0);
    d.wait_metric("whosin_sink_backlog_events{sink=\"influxdb\"}", 0.0);
    let m = d.metrics();
    assert_eq!(
        m.must("whosin_sink_errors_total{sink=\"influxdb\"}"),
        3.0,
        "401, 500 and 429 (retried)"
    );
    assert_eq!(
        m.must("whosin_sink_points_refused_total{sink=\"influxdb\"}"),
        1.0,
        "the bad point, refused for good"
    );
    let v = d.json("/readyz");
    let sink = &v["parts"]["sinks"]["influxdb"];
    assert_eq!(sink["state"], "degraded", "{v}");
    assert!(
        sink["detail"]
            .as_str()
            .unwrap()
            .contains("field type conflict"),
        "the server's reason is shown: {v}"
    );
    let f = fake.lock().unwrap();
    let mut users: Vec<&str> = f
        .stored
        .iter()
        .filter(|l| l.starts_with("user_events,"))
        .map(|l| {
            l.split("userId=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    users.sort_unstable();
    assert_eq!(
        users,
        vec!["good1", "good2", "good3"],
        "each good point exactly once"
    );
}

/// Butler SOS creates its database at start; so does whosin, when InfluxDB
/// says it is missing (unless `create_database: false`, which says what to do).
#[test]
fn a_missing_database_is_created_or_the_fix_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let Some(influx) = Influx::start(dir.path()) else {
        return;
    };
    assert!(!influx.databases().contains("senseops"));
    let off = Daemon::start(&v1_sink(influx.port, "    create_database: false\n"));
    off.send_all(&[&start("LAB\\anna", "AppAccess")]);
    let detail = common::poll("the sink to say the database is missing", || {
        let v = off.json("/readyz");
        let s = &v["parts"]["sinks"]["influxdb"];
        (s["state"] == "retrying").then(|| s["detail"].as_str().unwrap_or_default().to_owned())
    });
    assert!(detail.contains("database not found"), "{detail}");
    assert!(detail.contains("create_database: true"), "{detail}");
    assert!(
        !influx.databases().contains("senseops"),
        "not created when switched off"
    );
    drop(off);

    let on = Daemon::start(&v1_sink(influx.port, ""));
    on.send_all(&[
        &start("LAB\\anna", "AppAccess"),
        &start("LAB\\bob", "AppAccess"),
    ]);
    influx.wait_count(2);
    assert!(influx.databases().contains("senseops"));
    on.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 2.0);
    assert_eq!(
        on.json("/readyz")["parts"]["sinks"]["influxdb"]["state"],
        "ok"
    );
}

/// In a database Butler SOS has written, `event_count.counter` is a float:
/// whosin's counters must go in beside them; and a point InfluxDB refuses
/// for good (here `userId`, once an integer field) is counted and shown.
#[test]
fn a_database_butler_sos_wrote_takes_whosins_points_and_refusals_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let Some(influx) = Influx::start(dir.path()) else {
        return;
    };
    influx.create_db();
    // Butler SOS's own event_count point (its v1 client writes a float).
    let (code, body) = influx.write(
        "event_count,event_type=user,host=sense-node1,source=qseow-proxy-session,subsystem=AppAccess counter=3\n",
    );
    assert_eq!(code, 204, "{body}");
    // Another client once wrote user_events.userId as an integer.
    let (code, body) = influx.write("user_events,host=old userId=5i\n");
    assert_eq!(code, 204, "{body}");
    let d = Daemon::start(&v1_sink(influx.port, ""));
    d.send_all(&[
        &start("LAB\\anna", "AppAccess"),
        &start("LAB\\bob", "AppAccess"),
    ]);
    d.wait_metric("whosin_sink_points_refused_total{sink=\"influxdb\"}", 2.0);
    d.wait_metric("whosin_sink_backlog_events{sink=\"influxdb\"}", 0.0);
    let v = d.json("/readyz");
    let sink = &v["parts"]["sinks"]["influxdb"];
    assert_eq!(sink["state"], "degraded", "{v}");
    assert!(
        sink["detail"]
            .as_str()
            .unwrap()
            .contains("field type conflict"),
        "{v}"
    );
    // The summaries of the same events go in: 3 from Butler SOS + 2 of whosin's.
    // Summaries are written for each 10-second boundary once it has passed
    // (and a second more): up to ~12 s after the events, longer under load.
    let until = Instant::now() + Duration::from_secs(45);
    let total = loop {
        let n = influx
            .first_value(
                "SELECT sum(\"counter\") FROM event_count WHERE \"source\" = 'qseow-proxy-session'",
            )
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if n >= 5.0 {
            break n;
        }
        assert!(
            Instant::now() < until,
            "whosin's event_count never joined Butler SOS's: sum {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(total, 5.0);
    assert_eq!(
        d.metrics()
            .must("whosin_sink_points_refused_total{sink=\"influxdb\"}"),
        2.0,
        "no summary was refused"
    );
}

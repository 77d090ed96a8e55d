//! The InfluxDB sink with `version: 3` against FakeInfluxDb3
//! (tests/common/fake_influx3.rs), an in-process stand-in as strict as
//! InfluxDB 3's documentation: no InfluxDB 3 runs here.

mod common;

use common::Daemon;
use common::fake_influx3::FakeInfluxDb3;

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";

fn config(port: u16) -> String {
    format!(
        "tags:\n  qs_env: test\nsinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:{port}\"\n    version: 3\n    database: senseops\n    token: apiv3_t0ken\n    flush_interval: \"100ms\"\n"
    )
}

#[test]
fn the_fake_refuses_a_tag_and_a_field_of_one_name_as_influxdb_3_does() {
    // The v2 form (userFull as tag and field) is what whosin once sent.
    let fake = FakeInfluxDb3::start("t", "db");
    let post = |line: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", fake.port)).unwrap();
        write!(
            s,
            "POST /api/v3/write_lp?db=db&precision=nanosecond&accept_partial=false HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}",
            line.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let r = post("user_events,userFull=LAB\\anna userFull=\"LAB\\\\anna\" 1\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("tag and a field"), "{r}");
    assert!(fake.rows("user_events").is_empty());
    let r = post("user_events,userFull=LAB\\anna userFull_field=\"LAB\\\\anna\" 1\n");
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    // A column keeps its kind.
    let r = post("user_events,userFull_field=x userId_field=\"y\" 2\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

#[test]
fn v3_writes_butler_sos_s_v3_points_and_an_outage_loses_nothing() {
    let fake = FakeInfluxDb3::start("apiv3_t0ken", "senseops");
    let d = Daemon::start(&config(fake.port));
    d.send_all(&[
        &format!("/qseow-proxy-session/;sense-node1;Start session;LAB;anna;AppAccess;/hub/;Start session for user 'LAB\\anna' UserAgent: '{UA}'"),
        "/qseow-proxy-connection/;sense-node1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;connection Opened",
    ]);
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 2.0);
    let rows = fake.rows("user_events");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let start = &rows[0];
    assert_eq!(start.tags["userFull"], "LAB\\anna");
    assert_eq!(start.tags["event_action"], "Start session");
    assert_eq!(start.tags["uaBrowserName"], "Microsoft Edge");
    assert_eq!(start.tags["uaOsVersion"], "NT 10.0");
    assert_eq!(start.tags["qs_env"], "test");
    assert_eq!(start.fields["userFull_field"], "LAB\\anna");
    assert_eq!(start.fields["userId_field"], "anna");
    let open = &rows[1];
    assert_eq!(open.tags["appId"], "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c");
    assert_eq!(open.tags["appName"], "unknown app name", "v3 strips <>");
    assert_eq!(
        open.fields["appId_field"],
        "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"
    );
    assert_eq!(open.fields["appName_field"], "<unknown app name>");
    assert_eq!(
        d.metrics()
            .must("whosin_sink_points_refused_total{sink=\"influxdb\"}"),
        0.0
    );

    // An outage: events wait in the journal and arrive once it is over.
    fake.set_down(true);
    d.send_all(&[
        "/qseow-proxy-session/;sense-node1;Start session;LAB;bob;AppAccess;/hub/;Start",
        "/qseow-proxy-session/;sense-node1;Start session;LAB;carl;AppAccess;/hub/;Start",
    ]);
    common::poll("the sink to retry", || {
        (d.json("/readyz")["parts"]["sinks"]["influxdb"]["state"] == "retrying").then_some(())
    });
    fake.set_down(false);
    d.wait_metric("whosin_sink_events_written_total{sink=\"influxdb\"}", 4.0);
    let users: Vec<String> = fake
        .rows("user_events")
        .iter()
        .map(|r| r.fields["userId_field"].clone())
        .collect();
    assert_eq!(users, ["anna", "anna", "bob", "carl"]);

    // The summaries, with an integer counter as Butler SOS's v3 writer has it.
    let summaries = std::time::Duration::from_secs(45);
    let counts = common::poll_for("event_count points", summaries, || {
        let rows = fake.rows("event_count");
        (!rows.is_empty()).then_some(rows)
    });
    assert!(
        counts.iter().all(|r| r.fields["counter"].ends_with('i')),
        "{counts:?}"
    );
    let summary = common::poll_for("user_session_summary points", summaries, || {
        fake.rows("user_session_summary").pop()
    });
    assert_eq!(summary.tags["user_session_host"], "sense-node1");
}

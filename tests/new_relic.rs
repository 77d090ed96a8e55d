//! The New Relic sink against FakeNewRelic (tests/common/fake_new_relic.rs),
//! an in-process stand-in for the Event API, which is on the internet.

mod common;

use std::collections::BTreeMap;

use common::Daemon;
use common::fake_new_relic::FakeNewRelic;
use serde_json::Value;

fn start(user: &str) -> String {
    format!(
        "/qseow-proxy-session/;sense-node1;Start session;LAB;{user};AppAccess;/hub/;Start session for user 'LAB\\{user}' UserAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1'"
    )
}

fn config(fake: &FakeNewRelic, scramble: bool) -> String {
    format!(
        "tags:\n  qs_env: test\nsinks:\n  new_relic:\n    enabled: true\n    url: \"{}\"\n    accounts:\n      - account_id: \"111\"\n        insert_key: \"${{NR_KEY_ONE}}\"\n      - account_id: 222\n        insert_key: key-two\n    scramble: {scramble}\n    batch_size: 7\n    flush_interval: \"100ms\"\n",
        fake.url()
    )
}

/// How often each `qs_seq` arrived at an account.
fn seqs(events: &[Value]) -> BTreeMap<u64, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["qs_seq"].as_u64().unwrap()).or_default() += 1;
    }
    m
}

#[test]
fn every_account_gets_every_event_once_across_an_outage() {
    let fake = FakeNewRelic::start(&[("111", "key-one"), ("222", "key-two")]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), &config(&fake, false));
    // SAFETY: set before the daemon (a child process) starts; tests in this
    // file that read it run after.
    unsafe { std::env::set_var("NR_KEY_ONE", "key-one") };
    let d = Daemon::start_with(dir, cfg);
    let users: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    let lines: Vec<String> = users[..10].iter().map(|u| start(u)).collect();
    d.send_all(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    d.wait_metric("whosin_sink_events_written_total{sink=\"new_relic\"}", 20.0);
    let e = fake.events("111")[0].clone();
    assert_eq!(e["eventType"], "qs_userEvent");
    assert_eq!(e["qs_userFull"], "LAB\\u00");
    assert_eq!(e["qs_event_action"], "Start session");
    assert_eq!(e["qs_uaBrowserName"], "Safari");
    assert_eq!(e["qs_uaOsName"], "iOS");
    assert_eq!(e["qs_uaOsVersion"], "17.5");
    assert_eq!(e["qs_env"], "test");
    assert!(e["timestamp"].as_i64().unwrap() > 1_700_000_000_000, "ms");

    // New Relic goes away mid-stream; events keep coming.
    fake.set_down(true);
    let lines: Vec<String> = users[10..].iter().map(|u| start(u)).collect();
    d.send_all(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    common::poll("both accounts to retry", || {
        let v = d.json("/readyz");
        let s = &v["parts"]["sinks"];
        (s["new_relic:111"]["state"] == "retrying" && s["new_relic:222"]["state"] == "retrying")
            .then_some(())
    });
    assert_eq!(
        d.metrics()
            .must("whosin_sink_backlog_events{sink=\"new_relic\"}"),
        10.0
    );
    fake.set_down(false);
    d.wait_metric("whosin_sink_events_written_total{sink=\"new_relic\"}", 40.0);
    d.wait_metric("whosin_sink_backlog_events{sink=\"new_relic\"}", 0.0);
    for account in ["111", "222"] {
        let got = seqs(&fake.events(account));
        assert_eq!(got.len(), 20, "{account}: every event");
        assert!(
            got.values().all(|n| *n == 1),
            "{account}: no duplicates {got:?}"
        );
    }
    assert!(
        d.metrics()
            .must("whosin_sink_errors_total{sink=\"new_relic\"}")
            >= 2.0
    );
}

#[test]
fn scrambled_users_and_refused_events_are_counted() {
    let fake = FakeNewRelic::start(&[("111", "key-one"), ("222", "key-two")]);
    fake.state.lock().unwrap().refuse_user = Some(whosin::sinks::new_relic::scramble("bad"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        &config(&fake, true).replace("${NR_KEY_ONE}", "key-one"),
    );
    let d = Daemon::start_with(dir, cfg);
    d.send_all(&[&start("anna"), &start("bad"), &start("bob")]);
    d.wait_metric("whosin_sink_points_refused_total{sink=\"new_relic\"}", 2.0);
    d.wait_metric("whosin_sink_backlog_events{sink=\"new_relic\"}", 0.0);
    let events = fake.events("111");
    assert_eq!(events.len(), 2, "{events:?}");
    // Butler SOS's scrambling: shake256, 8 bytes, hex.
    assert_eq!(
        events[0]["qs_userId"],
        whosin::sinks::new_relic::scramble("anna")
    );
    assert_eq!(events[0]["qs_userDirectory"], "e917621682605938");
    assert_eq!(
        events[0]["qs_userFull"],
        whosin::sinks::new_relic::scramble("LAB\\anna")
    );
    let v = d.json("/readyz");
    assert_eq!(
        v["parts"]["sinks"]["new_relic:111"]["state"], "degraded",
        "{v}"
    );
}

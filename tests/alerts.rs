//! The alert rules in `config/prometheus/alerts.yml`: valid for Prometheus,
//! passing their unit tests, and about metrics whosin really exposes.

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;

fn rules_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/prometheus"))
}

fn promtool(args: &[&str]) -> Option<String> {
    let promtool = common::tool("promtool", "prometheus")?;
    let out = Command::new(promtool)
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Some(text)
}

#[test]
fn the_rules_are_valid() {
    if let Some(out) = promtool(&["check", "rules", "alerts.yml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn each_alert_fires_when_it_should_and_only_then() {
    let Some(out) = promtool(&["test", "rules", "alerts.test.yml"]) else {
        return;
    };
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a test of its own.
    let rules = std::fs::read_to_string(rules_dir().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("alerts.test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "{name} has no unit test in alerts.test.yml"
            );
        }
    }
}

#[test]
fn the_rules_use_only_metrics_whosin_exposes() {
    let rules = std::fs::read_to_string(rules_dir().join("alerts.yml")).unwrap();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("qliksense_") || w.starts_with("whosin_"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    // A daemon with a sink and a host, so that every labelled family has a
    // series: the InfluxDB sink points at a closed port and just retries.
    let d =
        Daemon::start("sinks:\n  influxdb:\n    enabled: true\n    url: \"http://127.0.0.1:9\"\n");
    let now = jiff::Timestamp::now();
    d.send(
        format!("/whosin-session/;{now};1;n1;Start session;LAB;anna;AppAccess;/hub/;s1;Start")
            .as_bytes(),
    );
    d.send(
        format!("/whosin-session/;{now};5;n1;Stop session;LAB;anna;AppAccess;/hub/;s1;Stop")
            .as_bytes(),
    );
    d.wait_metric("whosin_events_lost_total{host=\"n1\"}", 3.0);
    let text = d.metrics().0;
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "alerts.yml uses {name}, which whosin does not expose"
        );
    }
}

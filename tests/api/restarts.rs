//! Restarts, clean and SIGKILL, that change no answer of the API.

use std::process::Command;
use std::time::Duration;

use crate::common::{self, Daemon};

use super::{applied, now, open, start, stop, users_of};

#[test]
fn a_restart_changes_no_answer_and_sigkill_keeps_committed_events() {
    let mut d = Daemon::start("");
    d.send_all(&[
        &start("n1", "LAB\\anna"),
        &open("n1", "LAB\\anna"),
        &start("n1", "LAB\\bob"),
    ]);
    applied(&d, 3.0);
    let t1 = now();
    d.send(stop("n1", "LAB\\bob").as_bytes());
    applied(&d, 4.0);
    let now_before = d.json("/api/v1/sessions");
    let past_before = d.json(&format!("/api/v1/sessions?at={t1}"));
    assert_eq!(users_of(&past_before).len(), 2);

    // A clean stop, then a start on the same journal.
    let (dir, config) = (
        std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()),
        d.config.clone(),
    );
    assert_eq!(d.terminate().code(), Some(0));
    let d = Daemon::start_with(dir, config);
    let m = d.metrics();
    assert_eq!(m.must("qliksense_sessions_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_connections_active{host=\"n1\"}"), 1.0);
    assert_eq!(m.must("qliksense_users_active{host=\"n1\"}"), 1.0);
    let mut now_after = d.json("/api/v1/sessions");
    now_after["at"] = now_before["at"].clone();
    assert_eq!(now_after, now_before);
    assert_eq!(d.json(&format!("/api/v1/sessions?at={t1}")), past_before);

    // New events continue the numbering; the restored session can be stopped.
    d.send(stop("n1", "LAB\\anna").as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 0.0);
    let ev = d.json("/api/v1/events?from=2020-01-01T00:00:00Z&to=2100-01-01T00:00:00Z");
    let seqs: Vec<u64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);

    // SIGKILL once the journal committed on its own (no API call forcing it):
    // nothing committed is lost.
    let mut d = d;
    let (dir, config) = (
        std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap()),
        d.config.clone(),
    );
    d.send(start("n1", "LAB\\carl").as_bytes());
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1.0);
    let journal = whosin::storage::path_in(&dir.path().join("data"));
    let until = std::time::Instant::now() + common::DEADLINE;
    loop {
        let conn = whosin::storage::open_reader(&journal).unwrap();
        if whosin::storage::max_seq(&conn).unwrap() == 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the journal never committed event 6"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        Command::new("kill")
            .arg("-KILL")
            .arg(d.child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let _ = d.child.wait();
    let d = Daemon::start_with(dir, config);
    assert_eq!(users_of(&d.json("/api/v1/sessions")), vec!["LAB\\carl@n1"]);
    assert_eq!(
        d.metrics().must("qliksense_sessions_active{host=\"n1\"}"),
        1.0
    );
}

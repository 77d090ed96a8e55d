//! A full disk under the journal, for real: a small tmpfs mounted as the data
//! folder, filled up while whosin runs, then emptied again.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, poll};

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts it, or says why it cannot (not root, no mount in this container).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes into `path` until the filesystem says it is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc_enospc()), "{e}");
            break;
        }
    }
    // Whatever a smaller write can still take.
    while f.write_all(&[0x5a; 512]).is_ok() {}
}

fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux
}

fn start(user: &str, n: usize) -> String {
    // A long message makes each event take real room in the journal.
    format!(
        "/qseow-proxy-session/;n1;Start session;LAB;{user}{n};AppAccess;/hub/;Start session for user 'LAB\\{user}{n}' {}",
        "x".repeat(800)
    )
}

/// Every user with a journaled session start, oldest first.
fn journaled(d: &Daemon) -> Vec<String> {
    d.all_events()
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_full_disk_turns_readiness_red_keeps_counting_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _fs = match Tmpfs::mount(&data, "24m") {
        Ok(fs) => fs,
        Err(why) => {
            assert!(
                !common::required(),
                "a tmpfs is needed for the full-disk test (run as root): {why}"
            );
            eprintln!("skipping: cannot mount a tmpfs: {why}");
            return;
        }
    };
    let config = common::write_config(
        dir.path(),
        "journal:\n  commit_window: \"50ms\"\n  max_uncommitted: 1000\n",
    );
    let d = Daemon::start_with(dir, config);
    for i in 0..20 {
        d.send(start("before", i).as_bytes());
    }
    poll("the first events are journaled", || {
        (journaled(&d).len() == 20).then_some(())
    });

    // The disk fills up. Events go on arriving: counted, shown live, kept in memory.
    fill(&data.join("filler"));
    for i in 0..300 {
        d.send(start("during", i).as_bytes());
    }
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 320.0);
    let body = poll("readiness turns red", || {
        let (code, body) = d.get("/readyz");
        (code == 503).then_some(body)
    });
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["parts"]["journal"]["state"], "failed", "{body}");
    let detail = v["parts"]["journal"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("full") || detail.contains("No space"),
        "{detail}"
    );
    // Rows wait in memory (each start is an event, a session and the new
    // user's dictionary entry); none dropped.
    let m = d.wait_metric("whosin_journal_uncommitted_rows", 900.0);
    assert_eq!(m.must("whosin_journal_rows_dropped_total"), 0.0);
    // The API still answers, from what is on disk.
    assert_eq!(d.get("/api/v1/sessions").0, 200);
    assert_eq!(d.get("/metrics").0, 200);

    // Space returns: everything kept is committed, readiness is green again.
    std::fs::remove_file(data.join("filler")).unwrap();
    poll("readiness turns green", || {
        (d.get("/readyz").0 == 200).then_some(())
    });
    d.wait_metric("whosin_journal_uncommitted_rows", 0.0);
    let users = journaled(&d);
    assert_eq!(users.len(), 320);
    assert_eq!(users[20], "LAB\\during0");
    assert_eq!(users[319], "LAB\\during299");

    // Full again, and longer than the buffer holds: the oldest rows go, counted.
    fill(&data.join("filler"));
    for i in 0..700 {
        d.send(start("overflow", i).as_bytes());
    }
    d.wait_metric("qliksense_sessions_active{host=\"n1\"}", 1020.0);
    let m = d.wait_metric("whosin_journal_uncommitted_rows", 1000.0);
    // 700 starts are 2100 rows; 1000 fit, and the 700 new users' dictionary
    // entries are never dropped (later rows refer to them): 1100 events and
    // sessions go, the oldest first.
    assert_eq!(m.must("whosin_journal_rows_dropped_total"), 1100.0);
    std::fs::remove_file(data.join("filler")).unwrap();
    poll("readiness turns green again", || {
        (d.get("/readyz").0 == 200).then_some(())
    });
    let users = journaled(&d);
    assert_eq!(users.last().map(String::as_str), Some("LAB\\overflow699"));
    assert!(d.terminate().success());
}

#[test]
fn a_flood_faster_than_the_journal_waits_for_it_and_loses_nothing_it_took() {
    // A tiny budget of uncommitted rows makes the journal the bottleneck at
    // once: the core must wait for room (memory bounded) without dropping
    // rows or stalling for good.
    let d = Daemon::start("journal:\n  commit_window: \"1s\"\n  max_uncommitted: 1000\n");
    let n = 20_000;
    for i in 0..n {
        d.send(start("flood", i).as_bytes());
    }
    // Each datagram is read, or dropped by the kernel and counted. The
    // kernel reports its drops with the next datagram it delivers, so while
    // the count is short a probe is sent (and counted as sent).
    let mut sent = n;
    let (received, accepted) = poll("every datagram is accounted for", || {
        let m = d.metrics();
        let received = m.must("whosin_datagrams_received_total");
        let dropped = m.must("whosin_datagrams_dropped_total");
        let accepted = m
            .get("qliksense_user_events_total{event=\"session_start\",host=\"n1\"}")
            .unwrap_or(0.0);
        if received + dropped == sent as f64 && accepted == received {
            return Some((received, accepted));
        }
        d.send(start("probe", sent).as_bytes());
        sent += 1;
        None
    });
    assert!(received > 0.0);
    // Everything taken is journaled; nothing was dropped for want of room.
    let m = d.wait_metric("whosin_journal_uncommitted_rows", 0.0);
    assert_eq!(m.must("whosin_journal_rows_dropped_total"), 0.0);
    let last = accepted as u64;
    let v = d.json(&format!(
        "/api/v1/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&after={}&limit=10",
        last - 1
    ));
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(events[0]["seq"].as_u64(), Some(last));
}

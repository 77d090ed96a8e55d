//! The config file edited badly (truncated, missing, broken) while the daemon runs.

use std::path::PathBuf;

use crate::common::{self, Daemon, poll};

use super::{assert_alive, log_text, session};

const PROBE_HOST: &str = "probe";

/// Sends one session start of `user` and answers whether the daemon dropped
/// it as blacklisted (else it counted it as an event).
fn blacklisted(d: &Daemon, user: &str) -> bool {
    let events =
        format!("qliksense_user_events_total{{event=\"session_start\",host=\"{PROBE_HOST}\"}}");
    let m = d.metrics();
    let dropped = m.must("whosin_events_blacklisted_total");
    let counted = m.get(&events).unwrap_or(0.0);
    d.send(session(PROBE_HOST, "Start session", user, "probe").as_bytes());
    poll(&format!("the probe of {user} to be counted"), || {
        let m = d.metrics();
        if m.must("whosin_events_blacklisted_total") == dropped + 1.0 {
            Some(true)
        } else if m.get(&events).unwrap_or(0.0) == counted + 1.0 {
            Some(false)
        } else {
            None
        }
    })
}

/// `(applied, refused)` reloads so far.
fn reloads(d: &Daemon) -> (f64, f64) {
    let m = d.metrics();
    (
        m.must("whosin_config_reloads_total{result=\"applied\"}"),
        m.must("whosin_config_reloads_total{result=\"refused\"}"),
    )
}

fn wait_reloads(d: &Daemon, what: &str, ok: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    poll(what, || {
        let (a, r) = reloads(d);
        ok(a, r).then_some((a, r))
    })
}

fn blacklist(dirs: &[&str]) -> String {
    let mut s = "blacklist:\n".to_owned();
    for d in dirs {
        s.push_str(&format!("  - directory: {d}\n"));
    }
    s
}

/// A daemon blacklisting directory OLD, and its config file's text without
/// the blacklist (listen addresses and data_dir).
fn config_daemon() -> (Daemon, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}{}", blacklist(&["OLD"]))).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let d = Daemon::start_logged(dir, config, &logs.join("whosin.log"));
    assert!(blacklisted(&d, "OLD\\a"));
    assert!(!blacklisted(&d, "NEW\\a"));
    (d, base)
}

/// Saves `text` as editors do: a temporary file in the same folder, renamed
/// over the config.
fn save_by_rename(path: &PathBuf, text: &str) {
    let tmp = path.with_file_name(".whosin.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn config_saved_by_rename_is_applied() {
    let (mut d, base) = config_daemon();
    save_by_rename(&d.config, &format!("{base}{}", blacklist(&["NEW"])));
    // One save, one reload; nothing refused.
    assert_eq!(
        wait_reloads(&d, "the rename to apply", |a, _| a >= 1.0),
        (1.0, 0.0)
    );
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert_eq!(reloads(&d), (1.0, 0.0));
    assert_alive(&mut d);
}

#[test]
fn config_truncated_mid_write_keeps_the_last_good_settings() {
    use std::io::Write;
    let (mut d, base) = config_daemon();
    let full = format!("{base}{}  - regex: '^CORP\\\\svc_'\n", blacklist(&["NEW"]));
    // The cut falls inside the quoted regex, so the first half is not YAML
    // and is refused for certain (a cut that left valid YAML would be applied
    // as it stands, then replaced by the whole file).
    let cut = full.find("^CORP").unwrap();
    let (first, rest) = full.split_at(cut);

    // Saving in place: the file is truncated to nothing first. The daemon
    // must not take an empty file for "all defaults" (no blacklist).
    let mut f = std::fs::File::create(&d.config).unwrap();
    let (applied, refused) = wait_reloads(&d, "a reaction to the empty file", |a, r| a + r >= 1.0);
    assert_eq!(applied, 0.0, "the empty file was applied as all defaults");
    assert!(
        log_text(&d).contains("is empty; keeping the running settings — probably saved halfway"),
        "{}",
        log_text(&d)
    );
    assert!(blacklisted(&d, "OLD\\a"), "the last good blacklist stays");
    assert!(!blacklisted(&d, "NEW\\a"));
    assert_eq!(reloads(&d).0, 0.0, "nothing applied");

    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    wait_reloads(&d, "the half file to be refused", |_, r| r > refused);
    assert!(log_text(&d).contains("not valid YAML"), "{}", log_text(&d));
    assert!(blacklisted(&d, "OLD\\a"), "the last good blacklist stays");
    assert_eq!(reloads(&d).0, 0.0, "nothing applied");

    f.write_all(rest.as_bytes()).unwrap();
    f.flush().unwrap();
    drop(f);
    wait_reloads(&d, "the whole file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(blacklisted(&d, "CORP\\svc_x"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert!(!blacklisted(&d, "CORP\\anna"));
    assert_eq!(reloads(&d).0, 1.0);
    assert_alive(&mut d);
}

#[test]
fn config_briefly_missing_keeps_the_settings_until_it_returns() {
    let (mut d, base) = config_daemon();
    std::fs::remove_file(&d.config).unwrap();
    wait_reloads(&d, "the missing file to be refused", |_, r| r >= 1.0);
    assert!(log_text(&d).contains("cannot read"), "{}", log_text(&d));
    assert!(!d.config.exists());
    assert!(
        blacklisted(&d, "OLD\\a"),
        "the blacklist stays while the file is gone"
    );
    assert!(!blacklisted(&d, "NEW\\a"));
    assert_eq!(reloads(&d).0, 0.0);
    assert_alive(&mut d);

    // Recreated in place (the daemon may see it still empty: refused, not applied).
    std::fs::write(&d.config, format!("{base}{}", blacklist(&["NEW"]))).unwrap();
    wait_reloads(&d, "the recreated file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));
    assert_eq!(reloads(&d).0, 1.0);
    assert_alive(&mut d);
}

#[test]
fn a_broken_config_after_a_good_one_leaves_the_good_one_in_force() {
    let (mut d, base) = config_daemon();
    save_by_rename(&d.config, &format!("{base}{}", blacklist(&["NEW"])));
    wait_reloads(&d, "the good file to apply", |a, _| a >= 1.0);
    assert!(blacklisted(&d, "NEW\\a"));

    // An unknown key: refused as a whole, so OTHER is not blacklisted either.
    std::fs::write(
        &d.config,
        format!("{base}{}nope: 1\n", blacklist(&["NEW", "OTHER"])),
    )
    .unwrap();
    let (_, refused) = wait_reloads(&d, "the unknown key to be refused", |_, r| r >= 1.0);
    assert!(
        log_text(&d).contains("nope: unknown key"),
        "{}",
        log_text(&d)
    );
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OTHER\\a"));
    assert!(!blacklisted(&d, "OLD\\a"));

    // A regex that does not compile, saved by rename this time.
    save_by_rename(
        &d.config,
        &format!("{base}{}  - regex: '(unclosed'\n", blacklist(&["OTHER"])),
    );
    wait_reloads(&d, "the bad regex to be refused", |_, r| r > refused);
    assert!(log_text(&d).contains("unclosed group"), "{}", log_text(&d));
    assert!(blacklisted(&d, "NEW\\a"));
    assert!(!blacklisted(&d, "OTHER\\a"));
    assert_eq!(reloads(&d).0, 1.0, "only the good file was applied");
    assert_alive(&mut d);
}

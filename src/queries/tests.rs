use super::*;
use crate::ingest::parse::Parser;
use crate::live::LiveState;
use crate::storage::{self, Write};
use std::time::Duration;

const APP: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";

fn at(min: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + min * 60).unwrap()
}

/// A journal fed like the daemon feeds it, with events at chosen minutes.
struct Fixture {
    _dir: tempfile::TempDir,
    conn: Connection,
    state: LiveState,
    parser: Parser,
    seq: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conn = storage::open(&storage::path_in(dir.path())).unwrap();
        Fixture {
            _dir: dir,
            conn,
            state: LiveState::new(Duration::from_secs(30 * 60)),
            parser: Parser::new(),
            seq: 0,
        }
    }

    fn send(&mut self, min: i64, host: &str, cmd: &str, user: &str) {
        let (dir, id) = user.split_once('\\').unwrap();
        let (kind, ctx) = if cmd.contains("connection") {
            ("connection", format!("/app/{APP}"))
        } else {
            ("session", "/hub/".to_owned())
        };
        let line = format!("/qseow-proxy-{kind}/;{host};{cmd};{dir};{id};AppAccess;{ctx};m");
        let ev = self.parser.parse(line.as_bytes(), at(min)).unwrap();
        let out = self.state.apply(&ev);
        self.seq += 1;
        let mut batch = vec![Write::Event(self.seq, Box::new(ev))];
        batch.extend(out.changes.into_iter().map(Write::Change));
        storage::write_batch(&mut self.conn, &batch).unwrap();
    }

    fn expire(&mut self, min: i64) {
        let out = self.state.expire(at(min));
        let batch: Vec<Write> = out.changes.into_iter().map(Write::Change).collect();
        storage::write_batch(&mut self.conn, &batch).unwrap();
    }

    /// `user@host` of every session in at `min` (minutes may be fractional via seconds).
    fn who(&self, t: Timestamp, f: &Filter) -> Vec<String> {
        sessions_at(&self.conn, t, f)
            .unwrap()
            .sessions
            .iter()
            .map(|s| format!("{}@{}", s.user, s.host))
            .collect()
    }
}

fn all() -> Filter {
    Filter::default()
}

#[test]
fn forensic_answers_at_several_instants() {
    let mut fx = Fixture::new();
    // anna: two overlapping sessions on n1 and one on n2.
    fx.send(0, "n1", "Start session", "LAB\\anna");
    fx.send(10, "n1", "Start session", "LAB\\Anna");
    fx.send(15, "n2", "Start session", "lab\\anna");
    fx.send(16, "n1", "Open connection", "LAB\\anna");
    fx.send(20, "n1", "Stop session", "LAB\\anna"); // ends the oldest (from 0)
    fx.send(30, "n1", "Close connection", "LAB\\anna");
    fx.send(40, "n1", "Stop session", "LAB\\anna"); // ends the one from 10
    // bob: starts and goes idle; expires 30 minutes after his last event.
    fx.send(5, "n2", "Start session", "CORP\\bob");
    fx.expire(36);
    fx.send(50, "n2", "Stop session", "LAB\\anna");

    let minute = |m: i64| fx.who(at(m), &all());
    assert_eq!(minute(-1), Vec::<String>::new());
    // Exactly at a start: in.
    assert_eq!(minute(0), vec!["LAB\\anna@n1"]);
    assert_eq!(minute(5), vec!["LAB\\anna@n1", "CORP\\bob@n2"]);
    // Each session shows the user as the event that started it wrote it.
    assert_eq!(
        minute(12),
        vec!["LAB\\anna@n1", "LAB\\Anna@n1", "CORP\\bob@n2"]
    );
    let at17 = sessions_at(&fx.conn, at(17), &all()).unwrap();
    assert_eq!(at17.sessions.len(), 4);
    assert_eq!(at17.users, 2, "anna on two hosts is one user");
    // Exactly at a stop: out (the session from minute 0 ended at 20).
    let at20 = sessions_at(
        &fx.conn,
        at(20),
        &Filter {
            host: Some("n1".into()),
            ..all()
        },
    )
    .unwrap();
    assert_eq!(at20.sessions.len(), 1);
    assert_eq!(at20.sessions[0].started_at, at(10));
    assert_eq!(at20.sessions[0].connections, 1);
    assert_eq!(at20.sessions[0].apps[0].id, APP);
    // bob expired at 5 + 30 = 35, not when it was noticed (36).
    assert!(minute(34).contains(&"CORP\\bob@n2".to_owned()));
    assert!(!minute(35).contains(&"CORP\\bob@n2".to_owned()));
    assert_eq!(minute(45), vec!["lab\\anna@n2"]);
    assert_eq!(minute(50), Vec::<String>::new());
    // The user filter folds case.
    let anna = Filter {
        user_key: Some("lab\\anna".into()),
        ..all()
    };
    assert_eq!(fx.who(at(17), &anna).len(), 3);
}

#[test]
fn now_is_every_open_session_even_with_a_clock_ahead() {
    let mut fx = Fixture::new();
    // The fixture's minutes lie in 2027: a source clock far ahead.
    fx.send(0, "n1", "Start session", "LAB\\anna");
    fx.send(1, "n1", "Start session", "LAB\\bob");
    fx.send(2, "n1", "Stop session", "LAB\\bob");
    let now = sessions_now(&fx.conn, &all()).unwrap();
    assert_eq!(now.sessions.len(), 1);
    assert_eq!(now.sessions[0].user, "LAB\\anna");
    assert_eq!(now.users, 1);
    assert!(
        sessions_at(&fx.conn, Timestamp::now(), &all())
            .unwrap()
            .sessions
            .is_empty()
    );
}

#[test]
fn concurrency_points_and_peak() {
    let fx = morning();
    let c = concurrency(
        &fx.conn,
        at(-5),
        at(30),
        Duration::from_secs(600),
        "10m".into(),
        &all(),
    )
    .unwrap();
    let got: Vec<(u64, u64, u64)> = c
        .points
        .iter()
        .map(|p| (p.sessions, p.users, p.connections))
        .collect();
    // -5, 5, 15, 25 (bob stopped exactly then), and last `to` = 30.
    assert_eq!(
        got,
        vec![(0, 0, 0), (1, 1, 0), (3, 2, 1), (1, 1, 0), (1, 1, 0)]
    );
    assert_eq!(c.points.last().unwrap().t, at(30));
    assert_eq!((c.peak.t, c.peak.sessions, c.peak.users), (at(12), 3, 2));
    let n2 = concurrency(
        &fx.conn,
        at(-5),
        at(30),
        Duration::from_secs(600),
        "10m".into(),
        &Filter {
            host: Some("n2".into()),
            ..all()
        },
    )
    .unwrap();
    assert_eq!(n2.peak.sessions, 1);
    assert_eq!(
        n2.peak.connections, 0,
        "the earliest instant with the most sessions"
    );
}

/// Anna twice on n1, bob on n2 with an app open.
fn morning() -> Fixture {
    let mut fx = Fixture::new();
    fx.send(0, "n1", "Start session", "LAB\\anna");
    fx.send(10, "n1", "Start session", "LAB\\anna");
    fx.send(12, "n2", "Start session", "CORP\\bob");
    fx.send(13, "n2", "Open connection", "CORP\\bob");
    fx.send(20, "n1", "Stop session", "LAB\\anna");
    fx.send(25, "n2", "Stop session", "CORP\\bob");
    fx
}

#[test]
fn peaks_are_the_most_at_any_instant_of_each_bucket() {
    let fx = morning();
    let p = curve::peaks(
        &fx.conn,
        at(0),
        at(30),
        Duration::from_secs(300),
        "5m".into(),
        &all(),
    )
    .unwrap();
    let got: Vec<(Timestamp, u64, u64, u64)> = p
        .buckets
        .iter()
        .map(|b| (b.t, b.sessions, b.users, b.connections))
        .collect();
    assert_eq!(
        got,
        vec![
            (at(0), 1, 1, 0),
            (at(5), 1, 1, 0),
            // 3 sessions from 12, though a sample at 10 or 15 would see 2 or 3.
            (at(10), 3, 2, 1),
            (at(15), 3, 2, 1),
            (at(20), 2, 2, 1),
            // bob stopped exactly at 25: not in that bucket.
            (at(25), 1, 1, 0),
        ]
    );
    // A crowd between two samples: sampled at 0 and 15 the curve never sees 3.
    let hourly = curve::peaks(
        &fx.conn,
        at(-60),
        at(60),
        Duration::from_secs(3600),
        "1h".into(),
        &Filter {
            host: Some("n1".into()),
            ..all()
        },
    )
    .unwrap();
    let got: Vec<u64> = hourly.buckets.iter().map(|b| b.sessions).collect();
    assert_eq!(got, vec![0, 2]);
}

#[test]
fn a_timeline_has_the_sessions_and_connections_of_a_window_and_how_they_ended() {
    let mut fx = morning();
    fx.send(40, "n1", "Start session", "LAB\\carl");
    fx.expire(40 + 31);
    let t = timeline::timeline(&fx.conn, at(11), at(14), &all()).unwrap();
    let got: Vec<(String, Timestamp, Option<Timestamp>, Option<&str>)> = t
        .sessions
        .iter()
        .map(|s| (s.user.clone(), s.started_at, s.ended_at, s.end_reason))
        .collect();
    assert_eq!(
        got,
        vec![
            ("LAB\\anna".into(), at(0), Some(at(20)), Some("stopped")),
            // Idle from 10: expired 30 minutes later, when carl's check ran.
            ("LAB\\anna".into(), at(10), Some(at(40)), Some("expired")),
            ("CORP\\bob".into(), at(12), Some(at(25)), Some("stopped")),
        ]
    );
    assert_eq!(t.connections.len(), 1);
    let c = &t.connections[0];
    assert_eq!(
        c.session,
        Some(t.sessions[2].id),
        "bob's connection is in bob's session"
    );
    assert_eq!(c.app.as_ref().map(|a| a.id.as_str()), Some(APP));
    assert_eq!((c.opened_at, c.closed_at), (at(13), Some(at(25))));
    assert_eq!(c.close_reason, Some("session_ended"));
    assert!(!t.truncated);

    // A window after anna's first session ended leaves it out; carl expired.
    let later = timeline::timeline(&fx.conn, at(21), at(80), &all()).unwrap();
    let got: Vec<(&str, Option<&str>)> = later
        .sessions
        .iter()
        .map(|s| (s.user.as_str(), s.end_reason))
        .collect();
    assert_eq!(
        got,
        vec![
            ("LAB\\anna", Some("expired")),
            ("CORP\\bob", Some("stopped")),
            ("LAB\\carl", Some("expired"))
        ]
    );

    // One user's history.
    let bob = timeline::timeline(
        &fx.conn,
        at(-600),
        at(600),
        &Filter {
            user_key: Some("corp\\bob".into()),
            ..all()
        },
    )
    .unwrap();
    assert_eq!(bob.sessions.len(), 1);
    assert_eq!(bob.connections.len(), 1);
}

use super::*;
use crate::event::{Format, Stream};

fn ev(cmd: Command, host: &str, user: &str, ctx: &str, secs: i64) -> Event {
    let (dir, id) = user.split_once('\\').unwrap();
    let at = Timestamp::from_second(1_800_000_000 + secs).unwrap();
    Event {
        received_at: at,
        source_time: None,
        source_seq: None,
        format: Format::Legacy,
        stream: Stream::Session,
        host: host.into(),
        command: cmd,
        user_directory: dir.into(),
        user_id: id.into(),
        origin: Default::default(),
        context: ctx.into(),
        proxy_session_id: None,
        message: String::new(),
        app_id: crate::ingest::parse::app_id_of(ctx),
        user_agent: None,
    }
}

fn with_sid(mut e: Event, sid: &str) -> Event {
    e.proxy_session_id = Some(sid.into());
    e.format = Format::Extended;
    e
}

const APP: &str = "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
use Command::*;

fn counts(s: &LiveState, h: &str) -> (usize, usize, usize) {
    let c = s.counts(h);
    (c.sessions, c.connections, c.users)
}

fn listed(user: &str, sid: &str, vp: &str) -> ProxyEntry {
    let (dir, id) = user.split_once('\\').unwrap();
    ProxyEntry {
        user_directory: dir.into(),
        user_id: id.into(),
        session_id: sid.into(),
        virtual_proxy: vp.into(),
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

#[test]
fn reconciliation_ends_a_phantom_and_its_connections() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
    s.apply(&ev(SessionStart, "n1", "LAB\\bob", "", 2));
    // The proxy has bob, not anna: anna's stop was lost.
    let (out, fixes) = s.reconcile(
        &["n1".into()],
        "n1",
        &[listed("lab\\BOB", "s-b", "")],
        at(60),
    );
    assert_eq!(
        fixes,
        Corrections {
            ended: 1,
            started: 0
        }
    );
    assert_eq!(counts(&s, "n1"), (1, 0, 1));
    assert_eq!(out.ended[0].reason, EndReason::Reconciled);
    assert!(out.changes.iter().any(|c| matches!(
        c,
        Change::ConnectionClosed {
            reason: CloseReason::SessionEnded,
            ..
        }
    )));
    // Bob's session learned its virtual proxy.
    assert!(out.changes.iter().any(|c| matches!(c, Change::SessionVirtualProxy { virtual_proxy, .. } if virtual_proxy.is_empty())));
}

#[test]
fn reconciliation_starts_a_missed_session_once() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    let list = [listed("CORP\\carl", "s-c", "finance")];
    // whosin never saw the node: the session goes on the default host.
    let (out, fixes) = s.reconcile(&[], "sense-node1", &list, at(60));
    assert_eq!(
        fixes,
        Corrections {
            ended: 0,
            started: 1
        }
    );
    assert_eq!(counts(&s, "sense-node1"), (1, 0, 1));
    let u = &s.host("sense-node1").unwrap().users["corp\\carl"];
    assert!(u.sessions[0].reconciled);
    assert_eq!(u.sessions[0].virtual_proxy.as_deref(), Some("finance"));
    assert_eq!(u.sessions[0].proxy_session_id.as_deref(), Some("s-c"));
    assert!(matches!(out.changes[0], Change::SessionStarted { .. }));
    // The next run finds it: nothing more to do.
    let (_, fixes) = s.reconcile(&["sense-node1".into()], "sense-node1", &list, at(120));
    assert_eq!(fixes, Corrections::default());
    assert_eq!(counts(&s, "sense-node1"), (1, 0, 1));
}

#[test]
fn reconciliation_leaves_a_correct_picture_and_newer_sessions_alone() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
    s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\bob", "", 1), "s-b"));
    // Dora logs in after the proxy was asked: not a phantom.
    s.apply(&ev(SessionStart, "n1", "LAB\\dora", "", 100));
    let before = s.clone();
    let list = [
        listed("LAB\\anna", "s-a", "sales"),
        listed("LAB\\bob", "s-b", "sales"),
    ];
    let (out, fixes) = s.reconcile(&["n1".into()], "n1", &list, at(60));
    assert_eq!(fixes, Corrections::default());
    assert_eq!(s.counts("n1"), before.counts("n1"));
    assert!(out.ended.is_empty());
    assert!(
        out.changes
            .iter()
            .all(|c| matches!(c, Change::SessionVirtualProxy { .. }))
    );
    let users = &s.host("n1").unwrap().users;
    assert_eq!(
        users["lab\\anna"].sessions[0].virtual_proxy.as_deref(),
        Some("sales")
    );
    assert_eq!(users["lab\\dora"].sessions[0].virtual_proxy, None);
}

#[test]
fn sessions_are_counted_not_set_and_users_fold_case() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    assert!(
        s.apply(&ev(SessionStart, "n1", "LAB\\Anna", "", 0))
            .new_host
    );
    assert!(
        !s.apply(&ev(SessionStart, "n1", "lab\\anna", "", 1))
            .new_host
    );
    assert_eq!(counts(&s, "n1"), (2, 0, 1));
    s.apply(&ev(SessionStop, "n1", "LAB\\ANNA", "", 2));
    assert_eq!(counts(&s, "n1"), (1, 0, 1));
    s.apply(&ev(SessionStop, "n1", "lab\\anna", "", 3));
    assert_eq!(counts(&s, "n1"), (0, 0, 0));
}

#[test]
fn stop_without_start_is_counted_not_negative() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    let o = s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 0));
    assert!(o.unmatched);
    assert!(o.new_host);
    let o = s.apply(&ev(ConnectionClose, "n1", "LAB\\anna", APP, 0));
    assert!(o.unmatched);
    assert_eq!(counts(&s, "n1"), (0, 0, 0));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 1));
    assert!(
        s.apply(&ev(ConnectionClose, "n1", "LAB\\anna", APP, 2))
            .unmatched
    );
    assert_eq!(counts(&s, "n1"), (1, 0, 1));
}

#[test]
fn legacy_stop_ends_the_oldest_session_and_reports_its_duration() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 100));
    let o = s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 160));
    assert_eq!(o.ended[0].duration, Duration::from_secs(160));
    assert_eq!(o.ended[0].reason, EndReason::Stopped);
}

#[test]
fn connections_count_per_app_and_close_the_oldest() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "/hub/", 0));
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
    s.apply(&ev(
        ConnectionOpen,
        "n1",
        "LAB\\anna",
        &format!("{APP}?reloaduri=x"),
        2,
    ));
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", "/hub/", 3));
    assert_eq!(counts(&s, "n1"), (1, 3, 1));
    s.apply(&ev(
        ConnectionClose,
        "n1",
        "LAB\\anna",
        &format!("{APP}?reloaduri=y"),
        4,
    ));
    assert_eq!(counts(&s, "n1"), (1, 2, 1));
    let u = &s.hosts["n1"].users["lab\\anna"];
    assert_eq!(
        u.connections[0].opened_at,
        Timestamp::from_second(1_800_000_002).unwrap()
    );
}

#[test]
fn open_without_session_implies_one_and_last_stop_closes_connections() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 0));
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
    assert!(s.hosts["n1"].users["lab\\anna"].sessions[0].implied);
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\anna", APP, 1));
    assert_eq!(counts(&s, "n1"), (1, 2, 1));
    s.apply(&ev(SessionStop, "n1", "LAB\\anna", "", 2));
    assert_eq!(counts(&s, "n1"), (0, 0, 0));
}

#[test]
fn hosts_are_separate() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\anna", "", 0));
    s.apply(&ev(SessionStart, "n2", "LAB\\anna", "", 0));
    assert!(
        s.apply(&ev(SessionStop, "n3", "LAB\\anna", "", 0))
            .unmatched
    );
    assert_eq!(counts(&s, "n1"), (1, 0, 1));
    assert_eq!(counts(&s, "n2"), (1, 0, 1));
    assert_eq!(counts(&s, "n3"), (0, 0, 0));
}

#[test]
fn proxy_session_id_decides() {
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 0), "a"));
    s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 1), "b"));
    s.apply(&with_sid(ev(SessionStart, "n1", "LAB\\anna", "", 2), "b"));
    assert_eq!(counts(&s, "n1"), (2, 0, 1));
    s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\anna", APP, 3),
        "a",
    ));
    s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\anna", APP, 4),
        "b",
    ));
    assert_eq!(counts(&s, "n1"), (2, 2, 1));
    // Stopping b ends b (not the older a) and b's connection.
    let o = s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\anna", "", 5), "b"));
    assert_eq!(o.ended[0].duration, Duration::from_secs(4));
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
    assert_eq!(
        s.hosts["n1"].users["lab\\anna"].sessions[0]
            .proxy_session_id
            .as_deref(),
        Some("a")
    );
    assert!(
        s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\anna", "", 6), "zz"))
            .unmatched
    );
    assert!(
        s.apply(&with_sid(
            ev(ConnectionClose, "n1", "LAB\\anna", APP, 7),
            "b"
        ))
        .unmatched
    );
    // An open with an unknown id implies that session.
    s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\anna", APP, 8),
        "c",
    ));
    assert_eq!(counts(&s, "n1"), (2, 2, 1));
}

#[test]
fn a_start_without_id_is_bound_by_its_first_connection() {
    // Qlik gives the proxy session id on connection events; the start may lack it.
    let mut s = LiveState::new(Duration::from_secs(1800));
    s.apply(&ev(SessionStart, "n1", "LAB\\karin", "", 0));
    let o = s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\karin", APP, 1),
        "x1",
    ));
    assert!(matches!(o.changes[0], Change::SessionBound { .. }));
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
    s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\karin", APP, 2),
        "x1",
    ));
    assert_eq!(counts(&s, "n1"), (1, 2, 1));
    // A second id with no unbound session left implies a second session.
    s.apply(&with_sid(
        ev(ConnectionOpen, "n1", "LAB\\karin", APP, 3),
        "x2",
    ));
    assert_eq!(counts(&s, "n1"), (2, 3, 1));
    assert!(
        !s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\karin", "", 4), "x1"))
            .unmatched
    );
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
    // A stop with an unknown id ends the oldest session that never had an id.
    s.apply(&ev(SessionStart, "n1", "LAB\\karin", "", 5));
    assert!(
        !s.apply(&with_sid(ev(SessionStop, "n1", "LAB\\karin", "", 6), "zz"))
            .unmatched
    );
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
}

#[test]
fn over_the_cap_the_longest_idle_sessions_are_evicted_with_their_tabs() {
    let mut s = LiveState::new(Duration::from_secs(3600));
    // 200 users, each with a session and one tab: 400 tracked.
    for i in 0..200 {
        let u = format!("LAB\\u{i}");
        s.apply(&ev(Command::SessionStart, "n1", &u, "", i));
        s.apply(&ev(Command::ConnectionOpen, "n1", &u, "/app/x", i));
    }
    assert_eq!(s.tracked(), 400);
    assert!(s.evict(400, at(500)).changes.is_empty());
    // u0 becomes the most recently active.
    s.apply(&ev(Command::ConnectionOpen, "n1", "LAB\\u0", "/app/y", 300));
    let out = s.evict(400, at(500));
    // 401 > 400: freed down to 396 (a hundredth ahead), two entries per
    // user, the longest idle first: u1, u2 and u3 go; u0 is busy again.
    assert_eq!(s.tracked(), 395);
    assert_eq!(out.ended.len(), 3);
    assert!(out.ended.iter().all(|e| e.reason == EndReason::Evicted));
    let users = &s.host("n1").unwrap().users;
    for gone in ["lab\\u1", "lab\\u2", "lab\\u3"] {
        assert!(!users.contains_key(gone), "{gone} not evicted");
    }
    assert!(users.contains_key("lab\\u0") && users.contains_key("lab\\u4"));
    let closed = out
        .changes
        .iter()
        .filter(|c| matches!(c, Change::ConnectionClosed { .. }))
        .count();
    assert_eq!(closed, 3);
    assert_eq!(counts(&s, "n1"), (197, 198, 197));
}

#[test]
fn idle_sessions_expire_but_not_while_a_connection_is_open() {
    let mut s = LiveState::new(Duration::from_secs(60));
    s.apply(&ev(SessionStart, "n1", "LAB\\idle", "", 0));
    s.apply(&ev(SessionStart, "n1", "LAB\\busy", "", 0));
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\busy", APP, 1));
    s.apply(&ev(SessionStart, "n1", "LAB\\late", "", 50));
    let at = |secs: i64| Timestamp::from_second(1_800_000_000 + secs).unwrap();
    assert!(s.expire(at(59)).ended.is_empty());
    let ended = s.expire(at(61)).ended;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].reason, EndReason::Expired);
    // It ended one idle timeout after its last event, not when noticed.
    assert_eq!(ended[0].duration, Duration::from_secs(60));
    assert_eq!(counts(&s, "n1"), (2, 1, 2));
    // Activity resets the clock.
    s.apply(&ev(ConnectionOpen, "n1", "LAB\\late", APP, 100));
    s.apply(&ev(ConnectionClose, "n1", "LAB\\late", APP, 101));
    assert!(s.expire(at(150)).ended.is_empty());
    assert_eq!(s.expire(at(162)).ended.len(), 1);
    assert_eq!(counts(&s, "n1"), (1, 1, 1));
}

/// The counts a host reports, recomputed from its users.
fn recount(s: &LiveState, h: &str) -> (usize, usize, usize) {
    s.host(h).map_or((0, 0, 0), |hs| {
        (
            hs.users.values().map(|u| u.sessions.len()).sum(),
            hs.users.values().map(|u| u.connections.len()).sum(),
            hs.users.values().filter(|u| !u.sessions.is_empty()).count(),
        )
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

    /// Any sequence of events, expiries and evictions keeps every host's
    /// counts equal to what its users hold, keeps users only while they
    /// have a session, and keeps the state within the cap.
    #[test]
    fn counts_always_match_the_users_and_the_cap_holds(
        steps in proptest::collection::vec(
            (0u8..6, 0usize..2, 0usize..5, 0usize..3, 0i64..4000),
            1..200,
        ),
        cap in 100usize..140,
    ) {
        let mut s = LiveState::new(Duration::from_secs(600));
        let cmds = [
            Command::SessionStart,
            Command::SessionStop,
            Command::ConnectionOpen,
            Command::ConnectionClose,
        ];
        let mut t = 0;
        for (op, host, user, app, dt) in steps {
            t += dt;
            let host = ["n1", "n2"][host];
            let user = format!("LAB\\u{user}");
            match op {
                0..=3 => {
                    let ctx = format!("/app/{app}");
                    s.apply(&ev(cmds[op as usize], host, &user, &ctx, t));
                }
                4 => {
                    s.expire(at(t));
                }
                _ => {
                    s.evict(cap, at(t));
                    proptest::prop_assert!(s.tracked() <= cap);
                }
            }
            for h in ["n1", "n2"] {
                proptest::prop_assert_eq!(counts(&s, h), recount(&s, h));
            }
        }
    }
}

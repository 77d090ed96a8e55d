use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::Connection;

use super::writer::Writer;
use super::*;
use crate::ingest::parse::Parser;
use crate::live::LiveState;

fn write_events(conn: &mut Connection, lines: &[&str]) -> LiveState {
    let mut state = LiveState::new(Duration::from_secs(1800));
    let mut parser = Parser::new();
    let mut batch = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let ev = parser.parse(l.as_bytes(), Timestamp::now()).unwrap();
        let out = state.apply(&ev);
        batch.push(Write::Event(i as u64 + 1, Box::new(ev)));
        batch.extend(out.changes.into_iter().map(Write::Change));
    }
    write_batch(conn, &batch).unwrap();
    state
}

fn sender(
    max: usize,
) -> (
    JournalSender,
    std::sync::mpsc::Receiver<Msg>,
    Arc<JournalHealth>,
) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open(&path_in(dir.path())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let health = Arc::new(JournalHealth::default());
    let s = JournalSender::new(tx, health.clone(), max, Encoder::load(&conn).unwrap());
    (s, rx, health)
}

fn encode(s: &mut JournalSender, n: usize) {
    let ev = Parser::new()
        .parse(LINES[0].as_bytes(), Timestamp::now())
        .unwrap();
    for i in 0..n {
        s.event(i as u64 + 1, &ev);
    }
}

#[test]
fn the_sender_waits_for_room_unless_the_disk_refuses() {
    let (mut sender, rx, health) = sender(20);
    encode(&mut sender, 8);
    let first = sender.pending();
    sender.send();
    assert_eq!(health.in_flight.load(Ordering::Relaxed), first);
    assert!(rx.try_recv().is_ok());
    // first + 8 more events > 20 rows: the next batch waits for the writer.
    let waiting = std::thread::spawn(move || {
        encode(&mut sender, 14);
        sender.send();
        sender
    });
    // Nothing may arrive while there is no room; a quarter second of
    // nothing is the evidence (a wrong sender sends at once).
    assert!(rx.recv_timeout(Duration::from_millis(250)).is_err());
    health.done(first); // the writer committed them
    assert!(rx.recv_timeout(Duration::from_secs(20)).is_ok());
    let mut sender = waiting.join().unwrap();
    assert_eq!(health.in_flight.load(Ordering::Relaxed), 14);
    // While the disk refuses, waiting would stall everything for nothing:
    // the writer drops the oldest instead.
    health.failing.store(true, Ordering::Relaxed);
    encode(&mut sender, 19);
    sender.send();
    assert!(rx.try_recv().is_ok());
    assert_eq!(health.in_flight.load(Ordering::Relaxed), 33);
    // Never below zero, whatever is reported done.
    health.done(100);
    assert_eq!(health.in_flight.load(Ordering::Relaxed), 0);
}

const LINES: [&str; 4] = [
    "/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start session for user 'LAB\\anna' UserAgent: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0'",
    "/qseow-proxy-connection/;n1;Open connection;LAB;anna;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;open",
    "/qseow-proxy-session/;n2;Start session;LAB;bob;AppAccess;/hub/;Start",
    "/qseow-proxy-session/;n2;Stop session;LAB;bob;AppAccess;/hub/;Stop",
];

fn restored(r: &Recovered) -> LiveState {
    LiveState::restored(r, Duration::from_secs(1800))
}

#[test]
fn recovery_rebuilds_the_open_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let mut conn = open(&path).unwrap();
    let before = write_events(&mut conn, &LINES);
    drop(conn);
    let conn = open(&path).unwrap();
    let r = recover(&conn, Duration::from_secs(1800)).unwrap();
    assert_eq!(r.next_seq, 5);
    let state = restored(&r);
    assert_eq!(state.counts("n1"), before.counts("n1"));
    assert_eq!(state.counts("n2"), before.counts("n2"));
    assert_eq!(state.counts("n1").connections, 1);
    assert!(state.next_id() >= before.next_id());
    let (_, h) = state.hosts().find(|(h, _)| *h == "n1").unwrap();
    let anna = &h.users["lab\\anna"].sessions[0];
    assert_eq!(
        anna.user_agent.as_ref().unwrap().browser.as_deref(),
        Some("Firefox")
    );
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let conn = open(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v as usize, schema::MIGRATIONS.len());
    assert!(!migrate::pending(&conn).unwrap());
    drop(conn);
    open(&path).unwrap();
}

/// Every field of every event comes back as it went in, through the
/// dictionaries and the message templates, in both formats.
#[test]
fn events_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let mut conn = open(&path).unwrap();
    // The repository's copy of shared/qlik/samples.txt (tests/samples.rs
    // keeps it in step).
    let samples = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/samples.txt"
    ))
    .unwrap();
    let mut lines: Vec<String> = LINES.iter().map(|l| l.to_string()).collect();
    lines.push("/whosin-session/;2026-11-21T08:59:59.120Z;41;sense-node1;Start session;LAB;Karin.Lund;AppAccess;/hub/;7d1e0f2a9c;Start session for user 'LAB\\Karin.Lund' twice 'LAB\\Karin.Lund' UserAgent: 'Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0'".into());
    lines.push("/whosin-connection/;2026-11-21T09:00:02.007Z;17;sense-node1;Open connection;LAB;Karin.Lund;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;7d1e0f2a9c;connection Opened for session".into());
    lines.extend(
        samples
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from),
    );
    let mut parser = Parser::new();
    let now = Timestamp::now();
    let events: Vec<crate::event::Event> = lines
        .iter()
        .filter_map(|l| parser.parse(l.as_bytes(), now).ok())
        .collect();
    assert!(events.len() >= 12, "{}", events.len());
    let batch: Vec<Write> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Write::Event(i as u64 + 1, Box::new(e.clone())))
        .collect();
    write_batch(&mut conn, &batch).unwrap();
    let back = events_after(&conn, 0, 1000).unwrap();
    assert_eq!(back.len(), events.len());
    for (e, b) in events.iter().zip(&back) {
        assert_eq!(b.host, e.host);
        assert_eq!(b.event, e.command);
        assert_eq!(b.user_directory, e.user_directory);
        assert_eq!(b.user_id, e.user_id);
        assert_eq!(b.origin, e.origin);
        assert_eq!(b.context, e.context);
        assert_eq!(b.message, e.message, "message of {e:?}");
        assert_eq!(b.app_id, e.app_id);
        assert_eq!(b.time, e.time());
        assert_eq!(b.received_at, e.received_at);
        assert_eq!(b.detail.source_time, e.source_time);
        assert_eq!(b.detail.source_seq, e.source_seq);
        assert_eq!(b.detail.format, e.format);
        assert_eq!(b.detail.stream, e.stream);
        assert_eq!(b.detail.proxy_session_id, e.proxy_session_id);
        let ua = e.user_agent.as_deref().cloned().unwrap_or_default();
        assert_eq!(b.detail.browser_name, ua.browser);
        assert_eq!(b.detail.os_version, ua.os_version);
    }
    // The templated message is stored once for both users of one agent.
    let texts: i64 = conn
        .query_row(
            "SELECT count(*) FROM texts WHERE text LIKE '%' || char(1) || '%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(texts >= 1);
}

/// A copy of `tests/data/journal-v3.sqlite` in `dir`.
fn previous_release_journal(dir: &std::path::Path) -> std::path::PathBuf {
    let path = path_in(dir);
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/journal-v3.sqlite"),
        &path,
    )
    .unwrap();
    path
}

/// A journal written by the previous release (schema 3: `tests/data/
/// journal-v3.sqlite`, made by `whosin run` of that release with simulated
/// traffic in both formats) opens with every event, session, connection,
/// cursor and app name.
#[test]
fn a_journal_of_the_previous_release_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = previous_release_journal(dir.path());
    // What the old release wrote, read with its own columns.
    let old = Connection::open(&path).unwrap();
    let v: i64 = old
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 3);
    type OldRow = (
        i64,
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let wide: Vec<OldRow> = old
        .prepare("SELECT seq, time, received_at, host, command, user_directory, user_id, origin, context, message, app_id, proxy_session_id FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let count = |c: &Connection, sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    let sessions = count(&old, "SELECT count(*) FROM sessions");
    let open_sessions = count(&old, "SELECT count(*) FROM sessions WHERE ended_at IS NULL");
    let connections = count(&old, "SELECT count(*) FROM connections");
    let open_connections = count(
        &old,
        "SELECT count(*) FROM connections WHERE closed_at IS NULL",
    );
    let ended_sig = count(
        &old,
        "SELECT sum(id * 7 + ended_at % 1000003 + length(end_reason)) FROM sessions WHERE ended_at IS NOT NULL",
    );
    let size_before = std::fs::metadata(&path).unwrap().len();
    assert_eq!(wide.len(), 2703);
    drop(old);

    let conn = open(&path).unwrap();
    assert!(!migrate::pending(&conn).unwrap());
    let back = events_after(&conn, 0, 10_000).unwrap();
    assert_eq!(back.len(), wide.len());
    for (w, b) in wide.iter().zip(&back) {
        assert_eq!(b.seq as i64, w.0);
        assert_eq!(nanos(b.time), w.1);
        assert_eq!(nanos(b.received_at), w.2);
        assert_eq!(b.host, w.3);
        assert_eq!(b.event.label(), w.4);
        assert_eq!(
            (&b.user_directory, &b.user_id, &b.origin, &b.context),
            (&w.5, &w.6, &w.7, &w.8)
        );
        assert_eq!(Some(&b.message), w.9.as_ref());
        assert_eq!(b.app_id, w.10);
        assert_eq!(b.detail.proxy_session_id, w.11);
    }
    assert!(
        back.iter()
            .any(|e| e.detail.format == crate::event::Format::Extended)
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM sessions"), sessions);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM open_sessions"),
        open_sessions
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM connections"),
        connections
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM connections_v WHERE closed_at IS NULL"
        ),
        open_connections
    );
    let reasons = "CASE end_reason WHEN 0 THEN 7 WHEN 1 THEN 7 WHEN 2 THEN 10 ELSE 7 END";
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT sum(id * 7 + ended_at % 1000003 + {reasons}) FROM sessions_v WHERE ended_at IS NOT NULL"
            )
        ),
        ended_sig,
        "ended sessions keep their end and reason"
    );
    assert_eq!(cursor(&conn, "influxdb").unwrap(), 1500);
    assert_eq!(cursor(&conn, "mqtt").unwrap(), 2000);
    assert_eq!(cursor(&conn, "influxdb:summaries").unwrap(), 1_796_000_000);
    assert_eq!(crate::apps::load(&conn).unwrap()[0].1.name, "Sales");
    // The open state is the one the old release had.
    let r = recover(&conn, Duration::from_secs(1800)).unwrap();
    assert_eq!(r.sessions.len() as i64, open_sessions);
    assert_eq!(r.connections.len() as i64, open_connections);
    assert_eq!(r.next_seq, 2704);
    // Smaller, once checkpointed and vacuumed (the file keeps its pages
    // until then; new rows reuse them).
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let size_after = std::fs::metadata(&path).unwrap().len();
    assert!(
        size_after * 3 < size_before,
        "{size_after} vs {size_before}"
    );
}

/// A copy that stopped half way continues at the next start.
#[test]
fn an_interrupted_migration_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = previous_release_journal(dir.path());
    {
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate_to(&conn, schema::MIGRATIONS.len()).unwrap();
        // Copy the first thousand events only, as a killed upgrade would have.
        let mut enc = Encoder::load(&conn).unwrap();
        let old: Vec<(u64, crate::event::Event)> = {
            let mut stmt = conn.prepare("SELECT seq, received_at, source_time, source_seq, format, stream, host, command, user_directory, user_id, origin, context, app_id, proxy_session_id, message, browser, browser_major, os, os_version FROM v3_events WHERE seq <= 1000 ORDER BY seq").unwrap();
            let mut q = stmt.query([]).unwrap();
            let mut v = Vec::new();
            while let Some(r) = q.next().unwrap() {
                v.push((
                    r.get::<_, i64>(0).unwrap() as u64,
                    migrate::old_event(r).unwrap(),
                ));
            }
            v
        };
        for (seq, ev) in &old {
            enc.event(*seq, ev);
        }
        super::rows::write_rows(&mut conn, &enc.take()).unwrap();
    }
    let conn = open(&path).unwrap();
    let back = events_after(&conn, 0, 10_000).unwrap();
    assert_eq!(back.len(), 2703);
    assert!(back.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[test]
fn a_sink_reads_after_its_cursor_and_its_backlog_is_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let mut conn = open(&path).unwrap();
    write_events(&mut conn, &LINES);
    let sink = SinkReader::open(&path, "test").unwrap();
    let gauge = || sink.backlog().unwrap();
    assert_eq!(gauge(), 4);
    let batch = sink.next_batch(3).unwrap();
    assert_eq!(
        batch.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(batch[0].browser.as_deref(), Some("Firefox 133"));
    assert_eq!(batch[0].detail.message_type(), "qseow-proxy-session");
    // Not confirmed: the same events come again (nothing is lost).
    assert_eq!(sink.next_batch(3).unwrap()[0].seq, 1);
    sink.confirm(3).unwrap();
    assert_eq!(gauge(), 1);
    assert_eq!(
        sink.next_batch(10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![4]
    );
    // A cursor never moves back, and survives a reopen.
    sink.confirm(2).unwrap();
    drop(sink);
    let sink = SinkReader::open(&path, "test").unwrap();
    assert_eq!(sink.cursor().unwrap(), 3);
    sink.confirm(4).unwrap();
    assert_eq!(sink.backlog().unwrap(), 0);
    assert!(sink.next_batch(10).unwrap().is_empty());
}

#[test]
fn retention_deletes_only_what_is_old_and_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let mut conn = open(&path).unwrap();
    write_events(&mut conn, &LINES);
    let mut w = Writer::new(
        conn,
        Arc::default(),
        crate::metrics::Metrics::new(&[]),
        1000,
    );
    w.retain(Duration::from_secs(3600));
    assert_eq!(max_seq(&w.conn).unwrap(), 4);
    // Everything is older than a zero retention, but open sessions stay,
    // and so does the newest event, so numbering never restarts.
    w.retain(Duration::ZERO);
    assert_eq!(max_seq(&w.conn).unwrap(), 4);
    let count = |sql: &str| -> i64 { w.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM events"), 1);
    assert_eq!(
        count("SELECT count(*) FROM sessions"),
        1,
        "anna's open session stays; bob's ended one goes"
    );
    // The newest event still reads whole: its texts were kept.
    assert_eq!(events_after(&w.conn, 0, 10).unwrap()[0].message, "Stop");
}

/// Texts start over in generations; retention drops the generations no
/// remaining event refers to, and the remaining events read whole.
#[test]
fn retention_drops_old_generations_of_texts() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    let mut conn = open(&path).unwrap();
    write_events(&mut conn, &LINES);
    // A second generation (as after a restart), with the newest event.
    let ev = Parser::new()
        .parse(LINES[2].as_bytes(), Timestamp::now())
        .unwrap();
    write_batch(&mut conn, &[Write::Event(5, Box::new(ev))]).unwrap();
    let gens: i64 = conn
        .query_row("SELECT count(*) FROM text_generations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(gens, 2);
    let mut w = Writer::new(
        conn,
        Arc::default(),
        crate::metrics::Metrics::new(&[]),
        1000,
    );
    w.retain(Duration::ZERO);
    let count = |sql: &str| -> i64 { w.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM text_generations"), 1);
    assert_eq!(
        count("SELECT min(id) FROM texts"),
        count("SELECT first_id FROM text_generations")
    );
    let last = events_after(&w.conn, 0, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].message, "Start");
}

/// A journal written by the compact journal's first release (schema 4:
/// `tests/data/journal-v4.sqlite`, made by `whosin run` of commit 016d50f
/// with simulated traffic in both formats and a 2 s idle timeout, so that
/// sessions ended both ways) keeps every end when migration 5 moves the ends
/// into the hour tables, including one whose first hour's row the old
/// retention had removed.
#[test]
fn a_journal_of_schema_4_keeps_every_end() {
    use rusqlite::types::Value;
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(dir.path());
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/journal-v4.sqlite"),
        &path,
    )
    .unwrap();
    let all = |c: &Connection, sql: &str| -> Vec<Vec<Value>> {
        let mut stmt = c.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let old = Connection::open(&path).unwrap();
    let v: i64 = old
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4);
    // What retention of schema 4 left of a session that began three hours
    // before the cutoff and ended after it: its row, its end, and only the
    // hour rows from the cutoff's hour on.
    let moved: i64 = old
        .query_row("SELECT min(id) FROM session_ends", [], |r| r.get(0))
        .unwrap();
    old.execute_batch(&format!(
        "UPDATE sessions SET started_at = started_at - 3 * {HOUR_NS} WHERE id = {moved};
         UPDATE session_hours SET first = 0 WHERE id = {moved};"
    ))
    .unwrap();
    let sessions = all(&old, "SELECT * FROM sessions_v ORDER BY id");
    let connections = all(&old, "SELECT * FROM connections_v ORDER BY id");
    let ended = |rows: &[Vec<Value>], col: usize| {
        rows.iter()
            .filter(|r| !matches!(r[col], Value::Null))
            .count()
    };
    assert_eq!(ended(&sessions, 9), 519);
    assert_eq!(ended(&connections, 7), 556);
    let reasons: Vec<Vec<Value>> = all(
        &old,
        "SELECT end_reason, count(*) FROM session_ends GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        reasons.len(),
        2,
        "stopped and expired sessions: {reasons:?}"
    );
    drop(old);

    let conn = open(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v as usize, schema::MIGRATIONS.len());
    assert_eq!(all(&conn, "SELECT * FROM sessions_v ORDER BY id"), sessions);
    assert_eq!(
        all(&conn, "SELECT * FROM connections_v ORDER BY id"),
        connections
    );
    let tables = all(
        &conn,
        "SELECT name FROM sqlite_schema WHERE name IN ('session_ends', 'connection_closes')",
    );
    assert!(tables.is_empty(), "{tables:?}");
    // Every hour row has its interval's end: the queries read it there.
    let without_end = all(
        &conn,
        "SELECT (SELECT count(*) FROM session_hours WHERE ended_at IS NULL OR end_reason IS NULL)
              + (SELECT count(*) FROM connection_hours WHERE closed_at IS NULL OR close_reason IS NULL)",
    );
    assert_eq!(without_end, vec![vec![Value::Integer(0)]]);
    // The open state and the forensic answers are the ones of before.
    let r = recover(&conn, Duration::from_secs(2)).unwrap();
    assert_eq!(r.sessions.len(), sessions.len() - 519);
    assert_eq!(r.connections.len(), connections.len() - 556);
    let nanos_of = |v: &Value| match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    };
    // (Before the cutoff, the moved session is missing hour rows: retention
    // had made those times older than the journal answers for.)
    let first = sessions
        .iter()
        .filter(|s| nanos_of(&s[0]) != Some(moved))
        .filter_map(|s| nanos_of(&s[8]))
        .min()
        .unwrap();
    let last = sessions
        .iter()
        .filter_map(|s| nanos_of(&s[9]))
        .max()
        .unwrap();
    let mut t = first;
    while t <= last {
        let expected = sessions
            .iter()
            .filter(|s| nanos_of(&s[8]).unwrap() <= t && nanos_of(&s[9]).is_none_or(|e| e > t))
            .count();
        let got = crate::queries::sessions_at(&conn, from_nanos(t), &Default::default())
            .unwrap()
            .sessions
            .len();
        assert_eq!(got, expected, "sessions at {}", from_nanos(t));
        t += 250_000_000;
    }
    // Retention with its cutoff a second before the first of the other
    // sessions began: nothing ended before it, and the moved session keeps
    // the row of its first hour (hours before the cutoff's) with its end.
    let mut w = Writer::new(
        conn,
        Arc::default(),
        crate::metrics::Metrics::new(&[]),
        1000,
    );
    let age = nanos(Timestamp::now()) - (first - 1_000_000_000);
    w.retain(Duration::from_nanos(age as u64));
    assert_eq!(
        all(&w.conn, "SELECT * FROM sessions_v ORDER BY id"),
        sessions
    );
}

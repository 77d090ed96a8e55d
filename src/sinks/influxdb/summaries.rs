//! Butler SOS's periodic points, `user_session_summary` and `event_count`,
//! computed from the journal for every 10-second boundary, so an outage loses
//! none of them either.

use crate::storage::SinkReader;

/// The cursor of the periodic summaries: the end (Unix seconds) of the last
/// interval written.
pub const SUMMARY_CURSOR: &str = "influxdb:summaries";

/// Butler SOS writes its summaries every 10 seconds.
pub const SUMMARY_EVERY_S: u64 = 10;

/// Most intervals written in one request (an hour) when catching up.
const MAX_SUMMARY_INTERVALS: u64 = 360;

/// The `user_session_summary` and `event_count` points of every 10-second
/// boundary since the last one written, computed from the journal (so an
/// outage loses none of them either). `None` when no boundary is due.
pub fn summaries(
    r: &SinkReader,
    extra: &[(String, String)],
    now: jiff::Timestamp,
    version: super::schema::Version,
) -> rusqlite::Result<Option<(String, u64)>> {
    use crate::storage::{cursor, nanos, set_cursor};
    use crate::queries::{Filter, sessions_at};
    let conn = r.conn();
    // Leave a second for the journal's commit window to close.
    let due = (now.as_second().max(1) as u64 - 1) / SUMMARY_EVERY_S * SUMMARY_EVERY_S;
    let mut last = cursor(conn, SUMMARY_CURSOR)?;
    if last == 0 || due <= last {
        return Ok(None);
    }
    let tags: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut body = String::new();
    let mut n = 0;
    while last < due && n < MAX_SUMMARY_INTERVALS {
        let end = last + SUMMARY_EVERY_S;
        let at = jiff::Timestamp::from_second(end as i64).unwrap_or(now);
        let t = nanos(at);
        let answer = sessions_at(conn, at, &Filter::default())?;
        let mut hosts: std::collections::BTreeMap<
            String,
            Vec<&crate::queries::SessionView>,
        > = Default::default();
        for s in &answer.sessions {
            hosts.entry(s.host.clone()).or_default().push(s);
        }
        // Grouped by the dictionary ids, then named: the kind's stream and
        // format bits make Butler SOS's `source`.
        let mut stmt = conn.prepare_cached(
            "SELECT g.kind, h.name AS host, o.text AS origin, g.n
             FROM (SELECT kind & 12 AS kind, host, origin, count(*) AS n FROM events
                   WHERE seq BETWEEN ?3 AND ?4 AND time > ?1 AND time <= ?2 GROUP BY 1, 2, 3) g
             JOIN hosts h ON h.id = g.host JOIN texts o ON o.id = g.origin",
        )?;
        let from = t - (SUMMARY_EVERY_S as i64) * 1_000_000_000;
        let mut counts = Vec::new();
        for (lo, hi) in crate::storage::blocks::ranges(conn, from + 1, t)? {
            let rows = stmt.query_map(rusqlite::params![from, t, lo, hi], |row| {
                Ok((
                    row.get::<_, i64>("kind")?,
                    row.get::<_, String>("host")?,
                    row.get::<_, String>("origin")?,
                    row.get::<_, i64>("n")?,
                ))
            })?;
            for r in rows {
                counts.push(r?);
            }
        }
        // The same host or origin may be stored under two ids (a dictionary
        // that started over): add those up.
        let mut merged: std::collections::BTreeMap<(&'static str, String, String), i64> =
            Default::default();
        for (kind, host, origin, count) in counts {
            let (_, stream, format) = crate::storage::read::decode_kind(kind);
            let source = crate::event::source_name(format, stream);
            *merged.entry((source, host, origin)).or_default() += count;
        }
        for ((source, host, origin), count) in merged {
            super::schema::event_count(
                &mut body,
                source,
                &host,
                &origin,
                count as u64,
                t,
                &tags,
                version,
            );
            // A host with events but nobody left still gets its zero summary.
            hosts.entry(host).or_default();
        }
        for (host, sessions) in &hosts {
            super::schema::session_summary(&mut body, host, sessions, t, &tags);
        }
        last = end;
        n += 1;
    }
    if body.is_empty() {
        // Nothing happened in those intervals: nothing to write, but done.
        set_cursor(conn, SUMMARY_CURSOR, last)?;
        return Ok(None);
    }
    Ok(Some((body, last)))
}

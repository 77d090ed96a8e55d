//! Butler SOS's periodic points, `user_session_summary` and `event_count`,
//! computed from the journal for every 10-second boundary, so an outage loses
//! none of them either.

use crate::sessions::journal::SinkReader;

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
    use crate::sessions::journal::{cursor, nanos, set_cursor};
    use crate::sessions::query::{Filter, sessions_at};
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
            Vec<&crate::sessions::query::SessionView>,
        > = Default::default();
        for s in &answer.sessions {
            hosts.entry(s.host.clone()).or_default().push(s);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT format, stream, host, origin, count(*) FROM events
             WHERE time > ?1 AND time <= ?2 GROUP BY 1, 2, 3, 4",
        )?;
        let counts = stmt.query_map(
            rusqlite::params![t - (SUMMARY_EVERY_S as i64) * 1_000_000_000, t],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            },
        )?;
        for c in counts {
            let (format, stream, host, origin, count) = c?;
            let prefix = if format == "extended" {
                "whosin"
            } else {
                "qseow-proxy"
            };
            let source = format!("{prefix}-{stream}");
            super::schema::event_count(
                &mut body,
                &source,
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

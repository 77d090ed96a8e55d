//! How many were in over a range: the concurrency curve (the state at
//! sampled instants, and the peak) and the peaks per bucket (the most at any
//! instant of each hour, for the page's weekday × hour heatmap). Both come
//! from one sweep over the starts and ends of the intervals that overlap the
//! range, not from one query per point.

use std::collections::BTreeMap;

use foldhash::HashMap;
use jiff::Timestamp;
use rusqlite::{Connection, params};
use serde::Serialize;

use super::{CONNECTIONS, Filter, SESSIONS, overlapping};
use crate::storage::{from_nanos, hour_of, nanos};

/// One point of the concurrency curve.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Point {
    /// The instant.
    pub t: Timestamp,
    /// Sessions in.
    pub sessions: u64,
    /// Distinct users in.
    pub users: u64,
    /// Connections open.
    pub connections: u64,
}

/// The body of `/api/v1/concurrency`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConcurrencyAnswer {
    /// Start of the range.
    pub from: Timestamp,
    /// End of the range.
    pub to: Timestamp,
    /// The step, as written (`5m`).
    pub step: String,
    /// The state at `from + k*step`, and last at `to`.
    pub points: Vec<Point>,
    /// The instant in the range with the most sessions (the earliest such).
    pub peak: Point,
}

/// Most points one concurrency answer may have.
pub const MAX_POINTS: usize = 10_000;

/// The sampled instants of a concurrency curve (nanoseconds): `lo`,
/// `lo + step`, ... below `hi`, and last `hi`.
pub fn instants(lo: i64, hi: i64, step: std::time::Duration) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    let step_ns = step_nanos(step);
    let mut t = lo;
    while t < hi && out.len() < MAX_POINTS {
        out.push(t);
        t = t.saturating_add(step_ns);
    }
    out.push(hi);
    out
}

fn step_nanos(step: std::time::Duration) -> i64 {
    i64::try_from(step.as_nanos()).unwrap_or(i64::MAX).max(1)
}

/// What a change does; at one instant ends (sorted first) apply before
/// starts, matching `started_at <= t < ended_at`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    SessionEnd,
    ConnEnd,
    SessionStart,
    ConnStart,
}

/// The starts and ends (time, kind, user number) of the sessions and
/// connections that overlap `[lo, hi]`, in the order they apply.
fn changes(
    conn: &Connection,
    lo: i64,
    hi: i64,
    f: &Filter,
) -> rusqlite::Result<Vec<(i64, Kind, u32)>> {
    let mut changes: Vec<(i64, Kind, u32)> = Vec::new();
    let mut user_ids: HashMap<i64, u32> = HashMap::default();
    let (lo_h, hi_h) = (hour_of(lo), hour_of(hi));
    let no_user: Option<String> = None;
    let mut stmt = conn.prepare_cached(&overlapping(
        SESSIONS,
        "x.user_ref, x.started_at, k.ended_at",
        "",
    ))?;
    let rows = stmt.query_map(params![lo, hi, f.host, lo_h, hi_h, no_user], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?,
        ))
    })?;
    for row in rows {
        let (key, start, end) = row?;
        let next = user_ids.len() as u32;
        let uid = *user_ids.entry(key).or_insert(next);
        changes.push((start, Kind::SessionStart, uid));
        if let Some(e) = end {
            changes.push((e, Kind::SessionEnd, uid));
        }
    }
    let mut stmt =
        conn.prepare_cached(&overlapping(CONNECTIONS, "x.opened_at, k.closed_at", ""))?;
    let rows = stmt.query_map(params![lo, hi, f.host, lo_h, hi_h, no_user], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
    })?;
    for row in rows {
        let (start, end) = row?;
        changes.push((start, Kind::ConnStart, 0));
        if let Some(e) = end {
            changes.push((e, Kind::ConnEnd, 0));
        }
    }
    changes.sort_unstable();
    Ok(changes)
}

/// The state while sweeping the changes in order.
struct Sweep {
    changes: Vec<(i64, Kind, u32)>,
    next: usize,
    sessions: i64,
    conns: i64,
    per_user: BTreeMap<u32, u32>,
}

impl Sweep {
    fn new(changes: Vec<(i64, Kind, u32)>) -> Self {
        Self {
            changes,
            next: 0,
            sessions: 0,
            conns: 0,
            per_user: BTreeMap::new(),
        }
    }

    /// The time of the next change, if any.
    fn next_time(&self) -> Option<i64> {
        self.changes.get(self.next).map(|c| c.0)
    }

    /// Applies every change at or before `upto`.
    fn apply(&mut self, upto: i64) {
        while let Some(&(t, kind, uid)) = self.changes.get(self.next) {
            if t > upto {
                break;
            }
            match kind {
                Kind::SessionStart => {
                    self.sessions += 1;
                    *self.per_user.entry(uid).or_insert(0) += 1;
                }
                Kind::SessionEnd => {
                    self.sessions -= 1;
                    if let Some(n) = self.per_user.get_mut(&uid) {
                        *n -= 1;
                        if *n == 0 {
                            self.per_user.remove(&uid);
                        }
                    }
                }
                Kind::ConnStart => self.conns += 1,
                Kind::ConnEnd => self.conns -= 1,
            }
            self.next += 1;
        }
    }

    fn point(&self, t: i64) -> Point {
        Point {
            t: from_nanos(t),
            sessions: self.sessions.max(0) as u64,
            users: self.per_user.len() as u64,
            connections: self.conns.max(0) as u64,
        }
    }
}

/// The concurrency curve over `[from, to]`.
pub fn concurrency(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    step: std::time::Duration,
    step_text: String,
    f: &Filter,
) -> rusqlite::Result<ConcurrencyAnswer> {
    let (lo, hi) = (nanos(from), nanos(to));
    let mut sweep = Sweep::new(changes(conn, lo, hi, f)?);
    let instants = instants(lo, hi, step);

    // The state at `from`, then at each change inside the range, for the peak;
    // the sampled points are taken on the way.
    sweep.apply(lo);
    let mut peak = sweep.point(lo);
    let mut points = Vec::with_capacity(instants.len());
    let mut next_point = 0;
    while next_point < instants.len() && instants[next_point] <= lo {
        points.push(sweep.point(instants[next_point]));
        next_point += 1;
    }
    while let Some(at) = sweep.next_time().filter(|&t| t <= hi) {
        while next_point < instants.len() && instants[next_point] < at {
            points.push(sweep.point(instants[next_point]));
            next_point += 1;
        }
        sweep.apply(at);
        if sweep.sessions.max(0) as u64 > peak.sessions {
            peak = sweep.point(at);
        }
    }
    while next_point < instants.len() {
        points.push(sweep.point(instants[next_point]));
        next_point += 1;
    }
    Ok(ConcurrencyAnswer {
        from,
        to,
        step: step_text,
        points,
        peak,
    })
}

/// The most in at any instant of one bucket.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    /// Start of the bucket (`from + k*step`); it lasts `step`, the last one
    /// ends at `to`.
    pub t: Timestamp,
    /// The most sessions in at one instant of it.
    pub sessions: u64,
    /// The most distinct users in at one instant of it.
    pub users: u64,
    /// The most connections open at one instant of it.
    pub connections: u64,
}

/// The body of `/api/v1/peaks`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeaksAnswer {
    /// Start of the range.
    pub from: Timestamp,
    /// End of the range.
    pub to: Timestamp,
    /// The bucket length, as written (`1h`).
    pub step: String,
    /// One per bucket, oldest first.
    pub buckets: Vec<Bucket>,
}

/// The peaks of every `step` bucket of `[from, to)`: unlike sampled points,
/// a crowd that came and went between two samples is never missed.
pub fn peaks(
    conn: &Connection,
    from: Timestamp,
    to: Timestamp,
    step: std::time::Duration,
    step_text: String,
    f: &Filter,
) -> rusqlite::Result<PeaksAnswer> {
    let (lo, hi) = (nanos(from), nanos(to));
    let mut sweep = Sweep::new(changes(conn, lo, hi, f)?);
    let step_ns = step_nanos(step);
    let mut buckets = Vec::new();
    let mut start = lo;
    while start < hi && buckets.len() < MAX_POINTS {
        let end = start.saturating_add(step_ns).min(hi);
        // The state at the bucket's start, then after each change inside it.
        sweep.apply(start);
        let first = sweep.point(start);
        let mut b = Bucket {
            t: first.t,
            sessions: first.sessions,
            users: first.users,
            connections: first.connections,
        };
        while let Some(at) = sweep.next_time().filter(|&t| t < end) {
            sweep.apply(at);
            let p = sweep.point(at);
            b.sessions = b.sessions.max(p.sessions);
            b.users = b.users.max(p.users);
            b.connections = b.connections.max(p.connections);
        }
        buckets.push(b);
        start = end;
    }
    Ok(PeaksAnswer {
        from,
        to,
        step: step_text,
        buckets,
    })
}

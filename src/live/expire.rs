//! Ending what went quiet: idle expiry, and eviction beyond `sessions.max_tracked`.

use compact_str::CompactString;
use jiff::Timestamp;

use super::*;

impl LiveState {
    /// How many sessions and connections are tracked, on every host.
    pub fn tracked(&self) -> usize {
        self.hosts
            .values()
            .map(|h| h.sessions + h.connections)
            .sum()
    }

    /// Ends sessions (with their tabs), the longest idle first, until at most
    /// `max` sessions and connections are tracked. A hundredth of `max` more
    /// is freed than needed, so the scan over every session this takes runs
    /// once per that many new entries, not once per event.
    pub fn evict(&mut self, max: usize, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let mut total = self.tracked();
        if total <= max {
            return out;
        }
        let target = max - max / 100;
        let mut idle: Vec<(Timestamp, u64, &CompactString, &CompactString)> = Vec::new();
        for (host, h) in &self.hosts {
            for (key, user) in &h.users {
                idle.extend(
                    user.sessions
                        .iter()
                        .map(|s| (s.last_event, s.id, host, key)),
                );
            }
        }
        idle.sort_unstable_by_key(|&(last, id, ..)| (last, id));
        let idle: Vec<(u64, CompactString, CompactString)> = idle
            .into_iter()
            .map(|(_, id, host, key)| (id, host.clone(), key.clone()))
            .collect();
        for (id, host, key) in idle {
            if total <= target {
                break;
            }
            let h = self.hosts.get_mut(&host).expect("listed above");
            let user = h.users.get_mut(&key).expect("listed above");
            let Some(i) = user.sessions.iter().position(|s| s.id == id) else {
                continue;
            };
            let s = user.sessions.remove(i);
            h.sessions -= 1;
            out.end_session(host.clone(), &s, now, EndReason::Evicted);
            let closed =
                close_with_session(user, s.proxy_session_id.as_deref(), now, &mut out.changes);
            h.connections -= closed;
            total -= 1 + closed;
            if user.sessions.is_empty() {
                h.users.remove(&key);
            }
        }
        out
    }

    /// Ends, as expired, every session with no open connection and no event
    /// for the idle timeout as of `now`.
    pub fn expire(&mut self, now: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        let timeout = self.idle_timeout;
        for (name, host) in self.hosts.iter_mut() {
            let mut dropped_connections = 0;
            let mut expired_sessions = 0;
            host.users.retain(|_, user| {
                let conns = &user.connections;
                let mut ended_at: Option<Timestamp> = None;
                user.sessions.retain(|s| {
                    let busy = conns.iter().any(|c| match &s.proxy_session_id {
                        Some(id) => c.proxy_session_id.as_ref() == Some(id),
                        None => c.proxy_session_id.is_none(),
                    });
                    if busy || elapsed(s.last_event, now) < timeout {
                        return true;
                    }
                    // Qlik timed it out one idle timeout after its last event;
                    // that is when it ended, even if whosin notices later
                    // (after a restart, say).
                    let at = s
                        .last_event
                        .checked_add(timeout)
                        .map_or(now, |t| t.min(now))
                        .max(s.started_at);
                    out.end_session(name.clone(), s, at, EndReason::Expired);
                    ended_at = ended_at.max(Some(at));
                    expired_sessions += 1;
                    false
                });
                if user.sessions.is_empty() {
                    dropped_connections += user.connections.len();
                    let at = ended_at.unwrap_or(now);
                    out.changes.extend(user.connections.drain(..).map(|c| {
                        Change::ConnectionClosed {
                            id: c.id,
                            opened_at: c.opened_at,
                            at,
                            reason: CloseReason::SessionEnded,
                        }
                    }));
                    return false;
                }
                true
            });
            host.sessions -= expired_sessions;
            host.connections -= dropped_connections;
        }
        out
    }
}

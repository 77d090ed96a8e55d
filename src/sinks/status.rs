//! What each running sink tells `/readyz` (a sink never makes whosin unready).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running sink's state.
#[derive(Default)]
pub struct SinkStatus {
    /// Since when deliveries fail, and the last error; `None` while they work.
    failing: Mutex<Option<(Timestamp, String)>>,
    /// Since when the server refuses points for good, and its last reason;
    /// cleared by the next write without refusals.
    degraded: Mutex<Option<(Timestamp, String)>>,
    /// Accepted events this sink has not delivered yet.
    backlog: AtomicU64,
}

impl SinkStatus {
    /// Records a failed attempt (keeping when the failures began).
    pub fn failed(&self, error: &str) {
        let mut f = lock(&self.failing);
        let since = f.as_ref().map_or_else(Timestamp::now, |(t, _)| *t);
        *f = Some((since, error.to_owned()));
    }

    /// Records a write: without refusals it clears `degraded`, with some it
    /// sets it.
    pub fn wrote(&self, refused: Option<&str>) {
        *lock(&self.failing) = None;
        let mut d = lock(&self.degraded);
        *d = refused.map(|reason| {
            let since = d.as_ref().map_or_else(Timestamp::now, |(t, _)| *t);
            (since, reason.to_owned())
        });
    }

    /// Records that the sink works again without having written (connected).
    pub fn ok(&self) {
        *lock(&self.failing) = None;
    }

    /// Sets the backlog shown.
    pub fn set_backlog(&self, n: u64) {
        self.backlog.store(n, Ordering::Relaxed);
    }

    /// The backlog shown.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// `("ok", ..)`, `("retrying", "since ...: error")` or
    /// `("degraded", "points refused since ...: reason")`.
    pub fn describe(&self) -> (&'static str, String) {
        if let Some((since, e)) = &*lock(&self.failing) {
            return ("retrying", format!("retrying since {since}: {e}"));
        }
        match &*lock(&self.degraded) {
            Some((since, reason)) => (
                "degraded",
                format!(
                    "the server refuses points for good since {since} (they are dropped and counted in whosin_sink_points_refused_total): {reason}"
                ),
            ),
            None => ("ok", "writing".to_owned()),
        }
    }
}

/// A sink as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `influxdb`, `mqtt`, `new_relic:1234567`, ...
    pub id: String,
    /// `ok`, `retrying`, `degraded` or `disabled`.
    pub state: &'static str,
    /// What it is doing, or what is wrong.
    pub detail: String,
    /// Events not delivered yet (`None` when disabled).
    pub backlog: Option<u64>,
}

/// The status of every running sink, by its id, and the names of every sink
/// whosin has (shown as `disabled` while none of theirs runs).
pub struct Statuses {
    names: Vec<&'static str>,
    running: Mutex<BTreeMap<String, (&'static str, Arc<SinkStatus>)>>,
}

impl Default for Statuses {
    fn default() -> Self {
        Self {
            names: super::NAMES.to_vec(),
            running: Mutex::default(),
        }
    }
}

impl Statuses {
    /// A fresh status for the sink `id` of the kind `name`.
    pub fn register(&self, name: &'static str, id: &str) -> Arc<SinkStatus> {
        let s = Arc::new(SinkStatus::default());
        lock(&self.running).insert(id.to_owned(), (name, s.clone()));
        s
    }

    /// The sink `id` stopped.
    pub fn remove(&self, id: &str) {
        lock(&self.running).remove(id);
    }

    /// The largest backlog of the running sinks of kind `name` (New Relic
    /// runs one per account: an event is delivered when every account has it).
    pub fn backlog_of(&self, name: &str) -> u64 {
        lock(&self.running)
            .values()
            .filter(|(n, _)| *n == name)
            .map(|(_, s)| s.backlog())
            .max()
            .unwrap_or(0)
    }

    /// Every sink: the running ones by id, the others by name as disabled.
    pub fn reports(&self) -> Vec<Report> {
        let running = lock(&self.running);
        let mut out: Vec<Report> = running
            .iter()
            .map(|(id, (_, s))| {
                let (state, detail) = s.describe();
                Report {
                    id: id.clone(),
                    state,
                    detail,
                    backlog: Some(s.backlog()),
                }
            })
            .collect();
        for name in &self.names {
            if !running.values().any(|(n, _)| n == name) {
                out.push(Report {
                    id: (*name).to_owned(),
                    state: "disabled",
                    detail: "switched off in the config".to_owned(),
                    backlog: None,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_until_a_write_without_refusals() {
        let s = SinkStatus::default();
        assert_eq!(s.describe().0, "ok");
        s.wrote(Some("field type conflict"));
        let (state, detail) = s.describe();
        assert_eq!(state, "degraded");
        assert!(detail.contains("field type conflict"), "{detail}");
        s.failed("connection refused");
        assert_eq!(s.describe().0, "retrying");
        s.wrote(Some("again"));
        assert_eq!(s.describe().0, "degraded");
        s.wrote(None);
        assert_eq!(s.describe().0, "ok");
    }

    #[test]
    fn sinks_not_running_show_as_disabled_and_accounts_by_id() {
        let st = Statuses::default();
        let a = st.register("new_relic", "new_relic:1");
        let b = st.register("new_relic", "new_relic:2");
        a.set_backlog(5);
        b.set_backlog(9);
        assert_eq!(st.backlog_of("new_relic"), 9);
        let r = st.reports();
        let ids: Vec<_> = r.iter().map(|r| (r.id.as_str(), r.state)).collect();
        assert!(ids.contains(&("influxdb", "disabled")), "{ids:?}");
        assert!(ids.contains(&("new_relic:1", "ok")), "{ids:?}");
        assert!(!ids.iter().any(|(id, _)| *id == "new_relic"), "{ids:?}");
        st.remove("new_relic:1");
        st.remove("new_relic:2");
        assert!(
            st.reports()
                .iter()
                .any(|r| r.id == "new_relic" && r.state == "disabled")
        );
    }
}

//! The core: blacklist, sequence-gap detection and the live session state.
//!
//! One thread owns the [`Core`] and takes [`Input`] from a channel: batches of
//! parsed events from the receive thread and new settings from the config
//! watcher. Keeping the state on one thread makes every update ordered and
//! lock-free on the hot path; readers (the HTTP API) will get snapshots.

pub mod feed;
mod thread;

pub use thread::spawn;

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use jiff::Timestamp;

use crate::blacklist::Blacklist;
use crate::event::{Command, Event, Stream};
use crate::live::{self, Ended, LiveState, UserKey};
use crate::metrics::{HostMetrics, Metrics};
use crate::storage;

/// Most distinct hosts tracked. A Qlik site has a handful of proxy nodes, a
/// large one dozens; events naming further hosts are rejected as
/// `too_many_hosts`, so made-up host names cannot grow the state and the
/// per-host metric series without bound.
pub const MAX_HOSTS: usize = 1000;

/// Most inputs (batches of up to [`crate::ingest::udp::BATCH`] events) waiting
/// for the core.
pub const INPUT_QUEUE: usize = 256;

/// How often at most evictions are logged (they are always counted).
const EVICT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often idle sessions are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// A late or repeated counter value within this distance of the last one is
/// out-of-order delivery, not a restart of the proxy.
const REORDER_WINDOW: u64 = 1024;

/// Settings the core takes from the configuration; replaced on reload.
#[derive(Debug)]
pub struct CoreSettings {
    /// Who is dropped.
    pub blacklist: Blacklist,
    /// When idle sessions expire.
    pub idle_timeout: Duration,
    /// Most sessions plus connections tracked; beyond, the longest idle are evicted.
    pub max_tracked: usize,
    /// Qlik's parallel sessions per user: users at or over it are counted in
    /// `qliksense_users_at_session_limit`.
    pub per_user_limit: usize,
}

/// What the core's thread receives.
pub enum Input {
    /// Parsed events, in arrival order.
    Events(Vec<Event>),
    /// New settings from a config reload.
    Reload(Arc<CoreSettings>),
    /// Commit the journal now and answer (sent by the API before it reads, so
    /// that its answer includes every event handed to the core before).
    Flush(Sender<Result<(), String>>),
    /// A Qlik proxy's own session list, to correct the state against.
    Reconcile(Box<Reconciliation>),
}

/// One proxy's sessions, listed through its API.
pub struct Reconciliation {
    /// The proxy.
    pub proxy: crate::config::QlikProxy,
    /// Its sessions, on every configured virtual proxy.
    pub sessions: Vec<live::ProxyEntry>,
    /// When the list was asked for: sessions with events after it are newer.
    pub listed_at: Timestamp,
    /// Where to say what was corrected.
    pub reply: Sender<live::Corrections>,
}

/// The live state with everything that feeds it.
pub struct Core {
    state: LiveState,
    settings: Arc<CoreSettings>,
    metrics: Arc<Metrics>,
    hosts: HashMap<String, HostMetrics>,
    last_seq: HashMap<String, [Option<u64>; 2]>,
    journal: Option<storage::JournalSender>,
    next_seq: u64,
    feed: Option<Arc<feed::Feed>>,
    /// Hosts whose state changed since the feed was last refreshed.
    dirty: std::collections::HashSet<String>,
    /// Evictions come in bursts under a flood: logged at most every 10 s.
    evict_log: crate::ratelog::RateLog,
    /// [`MAX_HOSTS`], lower in tests.
    max_hosts: usize,
    host_log: crate::ratelog::RateLog,
    /// Sessions started or ended since the session-limit gauge was counted.
    limit_dirty: bool,
    /// Where a host with a sequence gap is announced (`qlik.reconcile_on_gap`).
    gaps: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Core {
    /// A core with an empty state and no journal.
    pub fn new(settings: Arc<CoreSettings>, metrics: Arc<Metrics>) -> Self {
        Self {
            state: LiveState::new(settings.idle_timeout),
            settings,
            metrics,
            hosts: HashMap::default(),
            last_seq: HashMap::default(),
            journal: None,
            next_seq: 1,
            feed: None,
            dirty: Default::default(),
            evict_log: crate::ratelog::RateLog::new(EVICT_LOG_EVERY),
            max_hosts: MAX_HOSTS,
            host_log: crate::ratelog::RateLog::new(EVICT_LOG_EVERY),
            limit_dirty: true,
            gaps: None,
        }
    }

    /// Announces every host with a sequence gap on `tx` (never blocks).
    pub fn set_gap_alarm(&mut self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        self.gaps = Some(tx);
    }

    /// A core that continues from a recovered journal and writes to it.
    pub fn with_journal(
        settings: Arc<CoreSettings>,
        metrics: Arc<Metrics>,
        recovered: storage::Recovered,
        tx: storage::JournalSender,
    ) -> Self {
        let mut core = Self::new(settings, metrics);
        core.state = LiveState::restored(&recovered, core.settings.idle_timeout);
        core.next_seq = recovered.next_seq;
        core.journal = Some(tx);
        let hosts: Vec<String> = core.state.hosts().map(|(h, _)| h.to_string()).collect();
        for h in hosts {
            let counts = core.state.counts(&h);
            core.host_metrics(&h).set_counts(counts);
        }
        core
    }

    /// Keeps `feed` up to date with every host's state, from the next tick on.
    pub fn set_feed(&mut self, feed: Arc<feed::Feed>) {
        self.dirty
            .extend(self.state.hosts().map(|(h, _)| h.to_string()));
        self.feed = Some(feed);
    }

    /// The live state.
    pub fn state(&self) -> &LiveState {
        &self.state
    }

    /// Replaces the settings (config reload).
    pub fn reconfigure(&mut self, settings: Arc<CoreSettings>) {
        self.state.set_idle_timeout(settings.idle_timeout);
        self.settings = settings;
    }

    /// Handles one accepted event; returns its journal sequence number unless
    /// it was blacklisted.
    pub fn handle(&mut self, ev: Event) -> Option<u64> {
        // Blacklisted events use counter values too, so gaps are checked
        // first, and their host is tracked for that.
        if let Some(seq) = ev.source_seq {
            if !self.admit_host(&ev.host) {
                return None;
            }
            self.check_sequence(&ev, seq);
        }
        let key = UserKey::new(&ev.user_directory, &ev.user_id);
        if self.settings.blacklist.matches(key.dir(), key.id(), &ev) {
            self.metrics.events_blacklisted.inc();
            return None;
        }
        if !self.admit_host(&ev.host) {
            return None;
        }
        let outcome = self.state.apply_keyed(&ev, &key);
        let received_at = ev.received_at;
        // Only a start or an open (which may imply a session) adds entries.
        let grows = matches!(ev.command, Command::SessionStart | Command::ConnectionOpen);
        if outcome.unmatched {
            self.metrics
                .events_unmatched
                .with_label_values(&[ev.command.label()])
                .inc();
        }
        // Any event can start (an implied session) or end one: recounted on
        // the next tick, once per second at most.
        self.limit_dirty = true;
        let counts = self.state.counts(&ev.host);
        let hm = self.host_metrics(&ev.host);
        // Gauges first: a scrape that sees the event counted sees its effect.
        hm.set_counts(counts);
        hm.count_event(ev.command);
        self.record_ended(&outcome.ended);
        if self.feed.is_some() && !self.dirty.contains(ev.host.as_str()) {
            self.dirty.insert(ev.host.to_string());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(j) = &mut self.journal {
            j.event(seq, &ev);
            for c in outcome.changes {
                j.change(c);
            }
        }
        if grows {
            self.enforce_cap(received_at);
        }
        Some(seq)
    }

    /// Hands what the last input produced to the journal, in one message.
    pub fn send_outbox(&mut self) {
        if let Some(j) = &mut self.journal {
            j.send();
        }
    }

    /// Asks the journal to commit and answer on `reply` (at once when there is none).
    pub fn flush(&mut self, reply: Sender<Result<(), String>>) {
        self.send_outbox();
        match &mut self.journal {
            Some(j) => {
                j.flush(reply);
            }
            None => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Corrects the state against a proxy's own session list.
    pub fn reconcile(&mut self, r: &Reconciliation) -> live::Corrections {
        self.limit_dirty = true;
        let hosts: Vec<String> = self
            .state
            .hosts()
            .map(|(h, _)| h)
            .filter(|h| crate::qlik::names(&r.proxy, h))
            .map(|h| h.to_string())
            .collect();
        // A session whosin never saw the node of goes where Qlik's events
        // would name it: node_name when set, else the host as configured.
        let default_host = r.proxy.node_name.as_deref().unwrap_or(&r.proxy.host);
        let (outcome, fixes) = self
            .state
            .reconcile(&hosts, default_host, &r.sessions, r.listed_at);
        self.record_ended(&outcome.ended);
        let touched: Vec<String> = outcome
            .changes
            .iter()
            .filter_map(|c| match c {
                live::Change::SessionStarted { host, .. } => Some(host.to_string()),
                _ => None,
            })
            .chain(hosts)
            .collect();
        for h in touched {
            let counts = self.state.counts(&h);
            self.host_metrics(&h).set_counts(counts);
            if self.feed.is_some() {
                self.dirty.insert(h);
            }
        }
        let m = &self.metrics.reconcile_corrections;
        m.with_label_values(&["ended"]).inc_by(fixes.ended as u64);
        m.with_label_values(&["started"])
            .inc_by(fixes.started as u64);
        if let Some(j) = &mut self.journal {
            for c in outcome.changes {
                j.change(c);
            }
        }
        fixes
    }

    /// Expires idle sessions as of `now`, and refreshes the feed.
    pub fn tick(&mut self, now: Timestamp) {
        let outcome = self.state.expire(now);
        self.record_ended(&outcome.ended);
        if let Some(j) = &mut self.journal {
            for c in outcome.changes {
                j.change(c);
            }
        }
        if let Some(feed) = &self.feed {
            for host in self.dirty.drain() {
                feed.update(&host, feed::host_snapshot(&self.state, &host), now);
            }
        }
        if self.limit_dirty || !outcome.ended.is_empty() {
            self.limit_dirty = false;
            let at = self.state.users_at_limit(self.settings.per_user_limit);
            self.metrics.users_at_limit.set(at as i64);
        }
    }

    /// Keeps the state within `max_tracked` (a flood of made-up users must
    /// not take all memory): the longest idle sessions end as evicted.
    fn enforce_cap(&mut self, now: Timestamp) {
        let outcome = self.state.evict(self.settings.max_tracked, now);
        if outcome.ended.is_empty() {
            return;
        }
        let n = outcome.ended.len() as u64;
        self.metrics.sessions_evicted.inc_by(n);
        if let Some(more) = self.evict_log.due() {
            tracing::warn!(
                "sessions and connections reached sessions.max_tracked ({}): ended {n} sessions, \
                 the longest idle, as evicted (whosin_sessions_evicted_total){}",
                self.settings.max_tracked,
                crate::ratelog::more(more)
            );
        }
        self.record_ended(&outcome.ended);
        if let Some(j) = &mut self.journal {
            for c in outcome.changes {
                j.change(c);
            }
        }
    }

    fn record_ended(&mut self, ended: &[Ended]) {
        for e in ended {
            if self.feed.is_some() && !self.dirty.contains(e.host.as_str()) {
                self.dirty.insert(e.host.to_string());
            }
            let counts = self.state.counts(&e.host);
            let hm = self.host_metrics(&e.host);
            hm.observe_duration(e.duration.as_secs_f64());
            hm.set_counts(counts);
        }
    }

    /// Whether `host` is known or may become known; else counts the event
    /// as rejected (`too_many_hosts`).
    fn admit_host(&mut self, host: &str) -> bool {
        if self.hosts.contains_key(host) {
            return true;
        }
        if self.hosts.len() < self.max_hosts {
            self.host_metrics(host);
            return true;
        }
        self.metrics
            .reject(crate::ingest::parse::Reject::TooManyHosts);
        if let Some(more) = self.host_log.due() {
            tracing::warn!(
                "rejected an event of a new host \"{}\": {} hosts are tracked already{}",
                crate::ingest::escape_for_log(host.as_bytes()),
                self.max_hosts,
                crate::ratelog::more(more)
            );
        }
        false
    }

    fn host_metrics(&mut self, host: &str) -> &HostMetrics {
        if !self.hosts.contains_key(host) {
            let hm = self.metrics.host(host);
            self.hosts.insert(host.to_owned(), hm);
        }
        &self.hosts[host]
    }

    /// Counts the values missing between this counter and the last one of the
    /// same host and appender.
    fn check_sequence(&mut self, ev: &Event, seq: u64) {
        // By host, then appender: looked up by the borrowed host name, so no
        // key is built (an allocation an event) once the host is known.
        let slot = match ev.stream {
            Stream::Session => 0,
            Stream::Connection => 1,
        };
        let last = self.last_seq.get(ev.host.as_str()).and_then(|l| l[slot]);
        match last {
            Some(last) if seq > last => {
                let gap = seq - last - 1;
                if gap > 0 {
                    self.host_metrics(&ev.host);
                    self.metrics
                        .events_lost
                        .with_label_values(&[&ev.host])
                        .inc_by(gap);
                    // A lost stop leaves a phantom, a lost start hides a
                    // user: ask the proxies of this host for the truth now.
                    if let Some(tx) = &self.gaps {
                        let _ = tx.send(ev.host.to_string());
                    }
                }
            }
            // Late or duplicate delivery: nothing lost, nothing to move.
            Some(last) if last - seq < REORDER_WINDOW => return,
            // First value seen, or the proxy restarted and the counter began again.
            _ => {}
        }
        match self.last_seq.get_mut(ev.host.as_str()) {
            Some(l) => l[slot] = Some(seq),
            None => {
                let mut l = [None; 2];
                l[slot] = Some(seq);
                self.last_seq.insert(ev.host.to_string(), l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlacklistEntry;
    use crate::ingest::parse::Parser;

    fn core(entries: &[BlacklistEntry]) -> (Core, Arc<Metrics>) {
        let metrics = Metrics::new(&[]);
        let settings = CoreSettings {
            per_user_limit: 5,
            blacklist: Blacklist::new(entries).unwrap(),
            idle_timeout: Duration::from_secs(60),
            max_tracked: 1_000_000,
        };
        (Core::new(Arc::new(settings), metrics.clone()), metrics)
    }

    fn ev(line: &str) -> Event {
        Parser::new()
            .parse(line.as_bytes(), Timestamp::now())
            .unwrap()
    }

    #[test]
    fn blacklisted_events_touch_nothing_but_their_counter() {
        let (mut c, m) = core(&[BlacklistEntry {
            directory: Some("internal".into()),
            ..Default::default()
        }]);
        assert!(
            c.handle(ev(
                "/qseow-proxy-session/;n1;Start session;INTERNAL;sa_scheduler;;;"
            ))
            .is_none()
        );
        assert_eq!(m.events_blacklisted.get(), 1);
        assert_eq!(c.state().counts("n1").sessions, 0);
        assert!(!m.render().contains("host=\"n1\""));
    }

    #[test]
    fn sequence_gaps_count_lost_events_per_host() {
        let (mut c, m) = core(&[]);
        let line = |seq: u64| {
            format!(
                "/whosin-session/;2026-11-21T08:59:59.120Z;{seq};n1;Start session;LAB;u{seq};;;;"
            )
        };
        for seq in [41, 42, 45, 44, 46, 1, 2] {
            c.handle(ev(&line(seq)));
        }
        // 43 and 44 were missing at 45; 44 arriving late does not count again;
        // the restart at 1 is not a loss.
        assert_eq!(m.events_lost.with_label_values(&["n1"]).get(), 2);
        // Session and connection appenders count separately.
        c.handle(ev(
            "/whosin-connection/;2026-11-21T08:59:59.120Z;7;n1;Open connection;LAB;u;;;;",
        ));
        assert_eq!(m.events_lost.with_label_values(&["n1"]).get(), 2);
    }

    #[test]
    fn the_cap_evicts_and_counts_and_the_gauges_follow() {
        let (mut c, m) = core(&[]);
        c.settings = Arc::new(CoreSettings {
            per_user_limit: 5,
            blacklist: Blacklist::new(&[]).unwrap(),
            idle_timeout: Duration::from_secs(60),
            max_tracked: 100,
        });
        for i in 0..250 {
            c.handle(ev(&format!(
                "/qseow-proxy-session/;n1;Start session;LAB;u{i};;;"
            )));
        }
        let kept = c.state().tracked();
        assert!((90..=100).contains(&kept), "{kept} tracked");
        assert_eq!(m.sessions_evicted.get(), 250 - kept as u64);
        assert_eq!(
            m.sessions_active.with_label_values(&["n1"]).get(),
            kept as i64
        );
        // The newest are kept.
        let users = &c.state().host("n1").unwrap().users;
        assert!(users.contains_key("lab\\u249"));
        assert!(!users.contains_key("lab\\u0"));
    }

    #[test]
    fn made_up_hosts_beyond_the_limit_are_rejected() {
        let (mut c, m) = core(&[]);
        c.max_hosts = 3;
        for h in ["n1", "n2", "n3", "n4", "n1"] {
            c.handle(ev(&format!(
                "/qseow-proxy-session/;{h};Start session;LAB;u;;;"
            )));
        }
        let ext = "/whosin-session/;2026-11-21T08:59:59.120Z;7;n5;Start session;LAB;u;;;;";
        assert!(c.handle(ev(ext)).is_none());
        use crate::ingest::parse::Reject;
        assert_eq!(m.datagrams_rejected[Reject::TooManyHosts.index()].get(), 2);
        assert_eq!(c.state().counts("n1").sessions, 2);
        assert_eq!(c.state().hosts().count(), 3);
        assert!(!m.render().contains("host=\"n4\""));
    }

    #[test]
    fn unmatched_stop_is_counted_by_event() {
        let (mut c, m) = core(&[]);
        assert!(
            c.handle(ev("/qseow-proxy-session/;n1;Stop session;LAB;u;;;"))
                .is_some()
        );
        assert_eq!(
            m.events_unmatched
                .with_label_values(&["session_stop"])
                .get(),
            1
        );
        assert_eq!(
            m.user_events
                .with_label_values(&["n1", "session_stop"])
                .get(),
            1
        );
        assert_eq!(m.sessions_active.with_label_values(&["n1"]).get(), 0);
    }
}

//! Every Prometheus metric whosin exposes; the names are part of the contract.
//!
//! Counters whose label values are known at start (each reject reason, each
//! unmatched event kind, each reload result, each enabled sink) are created at 0,
//! so that `rate()` and alerts work before the first occurrence. Per-host series
//! appear when a host is first seen and stay, at 0 when empty. No label ever
//! carries a user name: that would make one series per user.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::event::Command;
use crate::ingest::parse::Reject;
use crate::live::Counts;

/// Session duration buckets, in seconds: 1 minute to 12 hours.
const DURATION_BUCKETS: [f64; 11] = [
    60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
];

/// The metrics registry and handles to every metric.
pub struct Metrics {
    registry: Registry,
    /// `qliksense_sessions_active{host}`
    pub sessions_active: IntGaugeVec,
    /// `qliksense_connections_active{host}`
    pub connections_active: IntGaugeVec,
    /// `qliksense_users_active{host}`
    pub users_active: IntGaugeVec,
    /// `qliksense_user_events_total{host,event}`
    pub user_events: IntCounterVec,
    /// `qliksense_session_duration_seconds{host}`
    pub session_duration: HistogramVec,
    /// `whosin_datagrams_received_total`
    pub datagrams_received: IntCounter,
    /// `whosin_datagrams_rejected_total{reason}`, one handle per [`Reject`].
    pub datagrams_rejected: Vec<IntCounter>,
    /// `whosin_datagrams_dropped_total`
    pub datagrams_dropped: IntCounter,
    /// `whosin_events_blacklisted_total`
    pub events_blacklisted: IntCounter,
    /// `whosin_events_lost_total{host}`
    pub events_lost: IntCounterVec,
    /// `whosin_sink_events_written_total{sink}`
    pub sink_written: IntCounterVec,
    /// `whosin_sink_errors_total{sink}`
    pub sink_errors: IntCounterVec,
    /// `whosin_sink_backlog_events{sink}`
    pub sink_backlog: IntGaugeVec,
    /// `whosin_sink_points_refused_total{sink}`
    pub sink_refused: IntCounterVec,
    /// `whosin_qrs_requests_total{result}`
    pub qrs_requests: IntCounterVec,
    /// `whosin_apps_known`
    pub apps_known: IntGauge,
    /// `qliksense_users_at_session_limit`
    pub users_at_limit: IntGauge,
    /// `whosin_events_unmatched_total{event}`
    pub events_unmatched: IntCounterVec,
    /// `whosin_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `whosin_reconcile_runs_total{result}` (`ok`, `failed`)
    pub reconcile_runs: IntCounterVec,
    /// `whosin_reconcile_corrections_total{kind}` (`ended`, `started`)
    pub reconcile_corrections: IntCounterVec,
    /// `whosin_sessions_evicted_total`
    pub sessions_evicted: IntCounter,
    /// `whosin_journal_rows_dropped_total`
    pub journal_dropped: IntCounter,
    /// `whosin_journal_uncommitted_rows`
    pub journal_uncommitted: IntGauge,
}

/// Handles to one host's series, so the hot path does not look labels up.
pub struct HostMetrics {
    sessions: IntGauge,
    connections: IntGauge,
    users: IntGauge,
    events: [IntCounter; 4],
    duration: Histogram,
}

impl HostMetrics {
    /// Sets the three gauges.
    pub fn set_counts(&self, c: Counts) {
        self.sessions.set(c.sessions as i64);
        self.connections.set(c.connections as i64);
        self.users.set(c.users as i64);
    }

    /// Counts one event.
    pub fn count_event(&self, cmd: Command) {
        self.events[cmd.index()].inc();
    }

    /// Records an ended session's duration.
    pub fn observe_duration(&self, secs: f64) {
        self.duration.observe(secs);
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    /// Creates and registers every metric; `sinks` are the enabled sinks' names.
    pub fn new(sinks: &[&str]) -> Arc<Self> {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        let plain = |name: &str, help: &str| {
            register(&r, IntCounter::with_opts(Opts::new(name, help)).unwrap())
        };

        let rejected = counter(
            "whosin_datagrams_rejected_total",
            "Datagrams that were not user events, by reason.",
            &["reason"],
        );
        let m = Metrics {
            sessions_active: gauge(
                "qliksense_sessions_active",
                "Open Qlik Sense proxy sessions, per host.",
                &["host"],
            ),
            connections_active: gauge(
                "qliksense_connections_active",
                "Open Qlik Sense connections (app and hub tabs), per host.",
                &["host"],
            ),
            users_active: gauge(
                "qliksense_users_active",
                "Distinct users with at least one open session, per host.",
                &["host"],
            ),
            user_events: counter(
                "qliksense_user_events_total",
                "Accepted user events that are not blacklisted, per host and event.",
                &["host", "event"],
            ),
            session_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "qliksense_session_duration_seconds",
                        "Duration of ended sessions (stopped or expired), per host.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["host"],
                )
                .unwrap(),
            ),
            datagrams_received: plain(
                "whosin_datagrams_received_total",
                "Datagrams read from the UDP socket.",
            ),
            datagrams_rejected: Reject::ALL
                .iter()
                .map(|r| rejected.with_label_values(&[r.label()]))
                .collect(),
            datagrams_dropped: plain(
                "whosin_datagrams_dropped_total",
                "Datagrams the kernel dropped before whosin read them (socket buffer full).",
            ),
            events_blacklisted: plain(
                "whosin_events_blacklisted_total",
                "Accepted events dropped because their user is blacklisted.",
            ),
            events_lost: counter(
                "whosin_events_lost_total",
                "Events missing from the extended format's sequence, per host.",
                &["host"],
            ),
            sink_written: counter(
                "whosin_sink_events_written_total",
                "Events delivered to a sink and confirmed by it.",
                &["sink"],
            ),
            sink_errors: counter(
                "whosin_sink_errors_total",
                "Failed deliveries to a sink (each is retried).",
                &["sink"],
            ),
            sink_backlog: gauge(
                "whosin_sink_backlog_events",
                "Accepted events not yet delivered to a sink.",
                &["sink"],
            ),
            sink_refused: counter(
                "whosin_sink_points_refused_total",
                "Points a sink's server refused for good (dropped, logged with the reason).",
                &["sink"],
            ),
            qrs_requests: counter(
                "whosin_qrs_requests_total",
                "Requests to the Qlik repository service (app names, discovery), by result.",
                &["result"],
            ),
            apps_known: register(
                &r,
                IntGauge::with_opts(Opts::new(
                    "whosin_apps_known",
                    "Apps whose name the Qlik repository service told.",
                ))
                .unwrap(),
            ),
            users_at_limit: register(
                &r,
                IntGauge::with_opts(Opts::new(
                    "qliksense_users_at_session_limit",
                    "Users whose sessions across all hosts are at or over sessions.per_user_limit (their next login is refused).",
                ))
                .unwrap(),
            ),
            events_unmatched: counter(
                "whosin_events_unmatched_total",
                "Stops and closes with no matching start or open.",
                &["event"],
            ),
            config_reloads: counter(
                "whosin_config_reloads_total",
                "Configuration reloads, applied or refused.",
                &["result"],
            ),
            reconcile_runs: counter(
                "whosin_reconcile_runs_total",
                "Comparisons of whosin's sessions with a Qlik proxy's own list, by result.",
                &["result"],
            ),
            reconcile_corrections: counter(
                "whosin_reconcile_corrections_total",
                "Sessions reconciliation ended (the proxy no longer had them) or started (the proxy had them, whosin had not).",
                &["kind"],
            ),
            sessions_evicted: plain(
                "whosin_sessions_evicted_total",
                "Sessions ended to stay within sessions.max_tracked, the longest idle first.",
            ),
            journal_dropped: plain(
                "whosin_journal_rows_dropped_total",
                "Journal rows (events and state changes) dropped because the disk refused them for longer than journal.max_uncommitted rows.",
            ),
            journal_uncommitted: register(
                &r,
                IntGauge::with_opts(Opts::new(
                    "whosin_journal_uncommitted_rows",
                    "Journal rows waiting in memory to be committed.",
                ))
                .unwrap(),
            ),
            registry: r,
        };
        for sink in sinks {
            m.sink_written.with_label_values(&[sink]);
            m.sink_errors.with_label_values(&[sink]);
            m.sink_backlog.with_label_values(&[sink]);
            m.sink_refused.with_label_values(&[sink]);
        }
        for ev in [Command::SessionStop, Command::ConnectionClose] {
            m.events_unmatched.with_label_values(&[ev.label()]);
        }
        for result in ["ok", "failed"] {
            m.qrs_requests.with_label_values(&[result]);
        }
        for result in ["applied", "refused"] {
            m.config_reloads.with_label_values(&[result]);
        }
        for result in ["ok", "failed"] {
            m.reconcile_runs.with_label_values(&[result]);
        }
        for kind in ["ended", "started"] {
            m.reconcile_corrections.with_label_values(&[kind]);
        }
        Arc::new(m)
    }

    /// Counts one rejected datagram.
    pub fn reject(&self, reason: Reject) {
        self.datagrams_rejected[reason.index()].inc();
    }

    /// Creates a host's series (all at 0) and returns handles to them.
    pub fn host(&self, host: &str) -> HostMetrics {
        let hm = HostMetrics {
            sessions: self.sessions_active.with_label_values(&[host]),
            connections: self.connections_active.with_label_values(&[host]),
            users: self.users_active.with_label_values(&[host]),
            events: Command::ALL.map(|c| self.user_events.with_label_values(&[host, c.label()])),
            duration: self.session_duration.with_label_values(&[host]),
        };
        self.events_lost.with_label_values(&[host]);
        hm
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_values_start_at_zero() {
        let m = Metrics::new(&["influxdb"]);
        let text = m.render();
        for line in [
            "whosin_datagrams_rejected_total{reason=\"empty_user\"} 0",
            "whosin_datagrams_rejected_total{reason=\"unknown_type\"} 0",
            "whosin_events_unmatched_total{event=\"session_stop\"} 0",
            "whosin_config_reloads_total{result=\"refused\"} 0",
            "whosin_sink_backlog_events{sink=\"influxdb\"} 0",
            "whosin_datagrams_dropped_total 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        assert!(!text.contains("qliksense_sessions_active{"));
    }

    #[test]
    fn a_new_host_gets_every_series() {
        let m = Metrics::new(&[]);
        m.host("n1").set_counts(Counts {
            sessions: 2,
            connections: 1,
            users: 1,
        });
        let text = m.render();
        assert!(text.contains("qliksense_sessions_active{host=\"n1\"} 2"));
        assert!(
            text.contains("qliksense_user_events_total{event=\"connection_close\",host=\"n1\"} 0")
        );
        assert!(text.contains("qliksense_session_duration_seconds_count{host=\"n1\"} 0"));
        assert!(text.contains("whosin_events_lost_total{host=\"n1\"} 0"));
    }
}

//! From the UDP socket to parsed events: the first stage of the pipeline.
//!
//! [`spawn`] starts the receive thread. It owns the socket and the parser, counts
//! every datagram as received and either rejected (with its reason) or passed on,
//! and hands each batch of events to the core over a channel without waiting.

pub mod bowser;
pub mod parse;
pub mod udp;
pub mod useragent;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::sessions::Input;
use parse::{Parser, Reject};

/// How often at most a rejected datagram is logged; the rest are counted.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How much of a rejected datagram a log line shows.
const REJECT_LOG_CHARS: usize = 200;

/// Socket settings the receive thread needs.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Longest datagram accepted.
    pub max_datagram_bytes: usize,
    /// Allowed sources; empty allows all.
    pub allowed_sources: Vec<ipnet::IpNet>,
    /// Most datagrams per second from one source IP.
    pub rate_limit_per_source: Option<u32>,
}

/// Starts the receive thread. It stops when `stop` is set, after handing over
/// what it has read.
pub fn spawn(
    sock: UdpSocket,
    settings: IngestSettings,
    metrics: Arc<Metrics>,
    tx: std::sync::mpsc::SyncSender<Input>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("whosin-udp".into())
        .spawn(move || {
            let mut parser = Parser::new();
            let mut log = RejectLog::default();
            let mut limiter = RateLimiter::default();
            let result = udp::receive_loop(
                &sock,
                settings.max_datagram_bytes,
                &stop,
                |batch| {
                    let events = handle_batch(
                        batch,
                        &settings,
                        &mut parser,
                        &mut limiter,
                        &metrics,
                        &mut log,
                    );
                    if !events.is_empty() {
                        // The core outlives this thread; a send can only fail at
                        // shutdown, when there is nobody left to count for.
                        let _ = tx.send(Input::Events(events));
                    }
                    // Counted once handed over: whoever sees the count and then
                    // asks the API gets an answer that includes these events.
                    metrics.datagrams_received.inc_by(batch.len() as u64);
                },
                |dropped| metrics.datagrams_dropped.inc_by(dropped),
            );
            if let Err(e) = result {
                tracing::error!("UDP receive loop ended: {e}");
            }
        })
}

/// Filters and parses one batch, counting rejects; returns the accepted events.
/// (The caller counts the batch as received once it has handed it over.)
pub fn handle_batch(
    batch: &[udp::Datagram<'_>],
    settings: &IngestSettings,
    parser: &mut Parser,
    limiter: &mut RateLimiter,
    metrics: &Metrics,
    log: &mut RejectLog,
) -> Vec<Event> {
    let mut events = Vec::with_capacity(batch.len());
    for d in batch {
        let verdict = if d
            .from
            .is_some_and(|a| !udp::source_allowed(&settings.allowed_sources, a.ip()))
        {
            Err(Reject::SourceNotAllowed)
        } else if let (Some(limit), Some(from)) = (settings.rate_limit_per_source, d.from)
            && !limiter.admit(from.ip(), d.received_at.as_second(), limit)
        {
            Err(Reject::RateLimited)
        } else if d.truncated || d.data.len() > settings.max_datagram_bytes {
            Err(Reject::TooLarge)
        } else {
            parser.parse(d.data, d.received_at)
        };
        match verdict {
            Ok(ev) => events.push(ev),
            Err(reason) => {
                metrics.reject(reason);
                log.rejected(reason, d.from, d.data);
            }
        }
    }
    events
}

/// Counts datagrams per source IP in one-second windows, for
/// `udp.rate_limit_per_source`.
#[derive(Default)]
pub struct RateLimiter {
    second: i64,
    counts: foldhash::HashMap<std::net::IpAddr, u32>,
}

impl RateLimiter {
    /// Whether one more datagram from `ip` in second `second` is within `limit`.
    pub fn admit(&mut self, ip: std::net::IpAddr, second: i64, limit: u32) -> bool {
        if second != self.second {
            // A new second: every source starts again (this also bounds the
            // map to the sources of one second, however many are spoofed).
            self.second = second;
            self.counts.clear();
        }
        let n = self.counts.entry(ip).or_insert(0);
        *n = n.saturating_add(1);
        *n <= limit
    }
}

/// Rate-limited warnings about rejected datagrams: one line per
/// [`REJECT_LOG_EVERY`], saying how many were not shown.
pub struct RejectLog(crate::ratelog::RateLog);

impl Default for RejectLog {
    fn default() -> Self {
        Self(crate::ratelog::RateLog::new(REJECT_LOG_EVERY))
    }
}

impl RejectLog {
    fn rejected(&mut self, reason: Reject, from: Option<SocketAddr>, data: &[u8]) {
        let Some(more) = self.0.due() else {
            return;
        };
        let from = from.map_or_else(|| "?".to_owned(), |a| a.to_string());
        tracing::warn!(
            "rejected datagram from {from} ({}): \"{}\"{}",
            reason.label(),
            escape_for_log(data),
            crate::ratelog::more(more)
        );
    }
}

/// The first [`REJECT_LOG_CHARS`] characters of a datagram, with control
/// characters escaped so that nothing from the wire can drive a terminal.
pub fn escape_for_log(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(REJECT_LOG_CHARS) {
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_escape_control_characters_and_are_capped() {
        assert_eq!(escape_for_log(b"a\x1b[2Jb\n\0"), "a\\u{1b}[2Jb\\n\\0");
        let long = escape_for_log(&[b'x'; 1000]);
        assert_eq!(long.chars().count(), REJECT_LOG_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn the_rate_limit_counts_per_source_and_second() {
        let mut l = RateLimiter::default();
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| l.admit(a, 100, 3)));
        assert!(!l.admit(a, 100, 3));
        assert!(l.admit(b, 100, 3), "another source has its own budget");
        assert!(l.admit(a, 101, 3), "a new second starts again");
    }

    #[test]
    fn batch_counts_every_datagram_once() {
        let metrics = Metrics::new(&[]);
        let settings = IngestSettings {
            max_datagram_bytes: 100,
            allowed_sources: vec!["127.0.0.1/32".parse().unwrap()],
            rate_limit_per_source: None,
        };
        let ok = b"/qseow-proxy-session/;h;Start session;D;u;;;";
        let now = jiff::Timestamp::now();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let foreign: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let d = |data: &'static [u8], from, truncated| udp::Datagram {
            data,
            truncated,
            from: Some(from),
            received_at: now,
        };
        let batch = [
            d(ok, local, false),
            d(ok, foreign, false),
            d(ok, local, true),
            d(b"junk", local, false),
        ];
        let events = handle_batch(
            &batch,
            &settings,
            &mut Parser::new(),
            &mut RateLimiter::default(),
            &metrics,
            &mut RejectLog::default(),
        );
        assert_eq!(events.len(), 1);
        let r = |x: Reject| metrics.datagrams_rejected[x.index()].get();
        assert_eq!(r(Reject::SourceNotAllowed), 1);
        assert_eq!(r(Reject::TooLarge), 1);
        assert_eq!(r(Reject::UnknownType), 1);
    }
}

//! A flood of junk datagrams: counted, logged safely, memory bounded.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::Instant;

use crate::common::poll;

use super::{APPS, Rng, all_events, assert_alive, connection, session, start_logged, sum};

const MAX_DATAGRAM: usize = 4096;

/// What the daemon must make of a datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Event,
    Blacklisted,
    Reject(&'static str),
}

/// Junk that cannot be taken for a user event: random bytes after a first
/// byte that is neither blank nor `/` (so never `empty`, never a known type).
fn junk(rng: &mut Rng, len: usize) -> (Vec<u8>, Verdict) {
    let mut b = rng.bytes(len);
    b[0] = [0x00, 0x1b, 0x7f, 0xff, 0xc3, b'x', 0x07][rng.below(7)];
    let verdict = if len > MAX_DATAGRAM {
        Verdict::Reject("too_large")
    } else {
        Verdict::Reject("unknown_type")
    };
    (b, verdict)
}

fn flood(rng: &mut Rng) -> Vec<(Vec<u8>, Verdict)> {
    let mut out = Vec::new();
    // Every small size, then sizes across the whole range, the edges of
    // max_datagram_bytes and the largest an IPv4 datagram can be.
    for len in 1..=600 {
        out.push(junk(rng, len));
    }
    for _ in 0..3000 {
        let len = 1 + rng.below(64);
        out.push(junk(rng, len));
    }
    for _ in 0..1500 {
        let len = 1 + rng.below(65_507);
        out.push(junk(rng, len));
    }
    for len in [
        MAX_DATAGRAM - 1,
        MAX_DATAGRAM,
        MAX_DATAGRAM + 1,
        65_506,
        65_507,
        65_507,
        65_507,
        65_507,
        65_507,
    ] {
        out.push(junk(rng, len));
    }
    let bytes = |s: &[u8], v| (s.to_vec(), v);
    let unknown = Verdict::Reject("unknown_type");
    for (d, v) in [
        bytes(b"\xff\xfe\xfd\xfc", unknown),
        bytes(b"\xc0\xaf\xed\xa0\x80 overlong and surrogate", unknown),
        bytes(b"\0", unknown),
        bytes(&[0u8; 512], unknown),
        bytes(b"\x1b[2J", unknown),
        bytes(b"\x1b]0;title\x07", unknown),
        bytes(b"\x1b[31mred\x1b[0m;\x1b[1A", unknown),
        bytes(b"\x9b2J C1 CSI", unknown),
        bytes(b"", Verdict::Reject("empty")),
        bytes(b" \t\r\n ", Verdict::Reject("empty")),
        bytes(
            b"/qseow-proxy-session/;\x1b[2J;Start session",
            Verdict::Reject("too_few_fields"),
        ),
        bytes(
            b"/qseow-proxy-session/;h;Start session;\x1b[2J;;AppAccess;/hub/;x",
            Verdict::Reject("empty_user"),
        ),
        bytes(
            // The OSC's own ';' shifts the fields: the command is "]0".
            b"/qseow-proxy-session/;h;\x1b]0;x\x07;LAB;u;AppAccess;/hub/;x",
            Verdict::Reject("unknown_command"),
        ),
    ] {
        out.push((d, v));
    }
    // Valid events, some with control characters in their fields (stripped,
    // still events), some of a blacklisted directory.
    for i in 0..300 {
        let (user, verdict) = if i % 5 == 0 {
            (format!("INTERNAL\\svc{i}"), Verdict::Blacklisted)
        } else {
            (format!("CORP\\user{i}"), Verdict::Event)
        };
        let message = if i % 3 == 0 {
            "\x1b[2J\x1b]0;title\x07\0 evil"
        } else {
            "ok"
        };
        let line = if i % 2 == 0 {
            session("flood\x1b[1m", "Start session", &user, message)
        } else {
            connection("flood", "Open connection", &user, APPS[0], message)
        };
        out.push((line.into_bytes(), verdict));
    }
    // Shuffle, so valid events sit between junk of every kind.
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    // The first reject is the one the log shows: make it the nastiest.
    out.insert(0, (b"\x1b[2J\x1b]0;pwned\x07junk\0\r\n".to_vec(), unknown));
    out
}

#[test]
fn a_junk_flood_is_counted_logged_safely_and_leaves_memory_bounded() {
    let mut d = start_logged(&format!(
        "udp:\n  listen: \"127.0.0.1:0\"\n  max_datagram_bytes: {MAX_DATAGRAM}\nblacklist:\n  - directory: INTERNAL\n"
    ));
    let rss_before = d.rss_kib();
    let datagrams = flood(&mut Rng::new(0xf100d));
    let started = Instant::now();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0usize;
    let mut in_batch = 0usize;
    for (i, (data, _)) in datagrams.iter().enumerate() {
        sock.send_to(data, d.udp).unwrap();
        sent += 1;
        in_batch += data.len();
        // Flow control: after a batch, wait until the daemon counted all of
        // it, so the kernel never drops one (each must be counted exactly).
        if in_batch > 512 * 1024 || sent.is_multiple_of(200) || i + 1 == datagrams.len() {
            poll(&format!("{sent} datagrams to be received"), || {
                let m = d.metrics();
                assert_eq!(m.must("whosin_datagrams_dropped_total"), 0.0);
                (m.must("whosin_datagrams_received_total") == sent as f64).then_some(())
            });
            in_batch = 0;
            let (code, body) = d.get("/readyz");
            assert_eq!(code, 200, "readiness during the flood: {body}");
        }
    }
    let flood_time = started.elapsed();

    let count = |v: Verdict| datagrams.iter().filter(|(_, x)| *x == v).count() as f64;
    let events = count(Verdict::Event);
    let blacklisted = count(Verdict::Blacklisted);
    // The core counts events just after the receive thread: wait for it.
    d.wait_metric("whosin_events_blacklisted_total", blacklisted);
    let m = poll("every valid event to be counted", || {
        let m = d.metrics();
        (sum(&m, "qliksense_user_events_total") == events).then_some(m)
    });
    let received = m.must("whosin_datagrams_received_total");
    assert_eq!(received, datagrams.len() as f64);
    assert_eq!(
        received,
        sum(&m, "qliksense_user_events_total")
            + m.must("whosin_events_blacklisted_total")
            + sum(&m, "whosin_datagrams_rejected_total"),
        "received = events + blacklisted + rejected"
    );
    let mut reasons: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, v) in &datagrams {
        if let Verdict::Reject(r) = v {
            *reasons.entry(r).or_default() += 1.0;
        }
    }
    assert!(reasons["too_large"] >= 10.0, "{reasons:?}");
    for (reason, n) in &reasons {
        assert_eq!(
            m.must(&format!(
                "whosin_datagrams_rejected_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "reason {reason}"
        );
    }
    assert_eq!(
        sum(&m, "whosin_datagrams_rejected_total"),
        reasons.values().sum::<f64>()
    );

    // The stored events carry no control characters either.
    let stored = all_events(&d);
    assert_eq!(stored.len() as f64, events);
    for e in &stored {
        for (k, v) in e.as_object().unwrap() {
            if let Some(s) = v.as_str() {
                assert!(!s.chars().any(char::is_control), "{k} of {e}");
            }
        }
    }

    // Memory: a debug build starts at ~25 MiB and measured ~40 MiB after
    // this flood (the same with three times as much junk: nothing is kept per
    // datagram). The ~1,500 large datagrams carry ~50 MB, so a daemon that
    // kept them would grow by more than the 48 MiB allowed here, three times
    // the growth measured; 200 MiB caps the total whatever the build.
    let rss_after = d.rss_kib();
    assert!(
        rss_after < 200 * 1024 && rss_after < rss_before + 48 * 1024,
        "RSS {rss_before} KiB before the flood, {rss_after} KiB after"
    );

    // The log: no raw control bytes from the wire (nor colour codes), and the
    // reject warnings rate-limited to one per 10 s.
    assert_alive(&mut d);
    let log = d.log_bytes();
    if let Some(pos) = log
        .iter()
        .position(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
    {
        panic!(
            "raw control byte {:#04x} in the log at {pos}: {:?}",
            log[pos],
            String::from_utf8_lossy(&log[pos.saturating_sub(200)..(pos + 50).min(log.len())])
        );
    }
    let text = String::from_utf8(log).expect("the log is UTF-8");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rejected datagram"))
        .collect();
    let allowed = 2 + (flood_time.as_secs() / 10) as usize;
    assert!(
        !warnings.is_empty() && warnings.len() <= allowed,
        "{} reject warnings for {} rejects in {flood_time:?}:\n{}",
        warnings.len(),
        reasons.values().sum::<f64>(),
        warnings.join("\n")
    );
    assert!(
        warnings[0].contains(r#"(unknown_type): "\u{1b}[2J\u{1b}]0;pwned\u{7}junk\0\r\n""#),
        "the first reject, escaped: {}",
        warnings[0]
    );
    assert_eq!(d.terminate().code(), Some(0));
}

//! The shipped LocalLogConfig.xml files produce datagrams whosin parses.
//!
//! log4net does not run here, so this renders each appender's conversion
//! pattern the way log4net would (properties, message, host name, counter and
//! UTC date) and feeds the result to the parser.

use whosin::event::{Command, Format, Stream};
use whosin::ingest::parse::Parser;

fn attr_values<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!("name=\"{name}\" value=\"");
    xml.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &xml[i + needle.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

/// Renders a conversion pattern for one event.
fn render(pattern: &str, command: &str, message: &str, counter: u64) -> String {
    let mut out = pattern
        .replace("%hostname", "sense-node1")
        .replace("%property{Command}", command)
        .replace("%property{UserDirectory}", "LAB")
        .replace("%property{UserId}", "anna")
        .replace("%property{Origin}", "AppAccess")
        .replace(
            "%property{Context}",
            "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c",
        )
        .replace("%property{ProxySessionId}", "(null)")
        .replace("%message", message)
        .replace("%rownum{999999999}", &counter.to_string());
    if let Some(i) = out.find("%utcdate{yyyy-MM-ddTHH:mm:ss.fffZ}") {
        out.replace_range(
            i..i + "%utcdate{yyyy-MM-ddTHH:mm:ss.fffZ}".len(),
            "2026-11-21T09:00:00.123Z",
        );
    }
    assert!(!out.contains('%'), "unrendered conversion in {out}");
    out
}

fn check(xml: &str, format: Format) {
    assert!(xml.starts_with("<?xml"));
    assert_eq!(xml.matches("<appender ").count(), 2);
    assert_eq!(xml.matches("</appender>").count(), 2);
    assert!(xml.contains("<logger name=\"AuditActivity.Proxy\">"));
    assert!(xml.contains("<appender-ref ref=\"WhosinSessionEvents\" />"));
    assert!(xml.contains("<appender-ref ref=\"WhosinConnectionEvents\" />"));
    assert_eq!(attr_values(xml, "remotePort"), vec!["9997", "9997"]);
    assert_eq!(
        attr_values(xml, "stringToMatch"),
        vec![
            "Start session for user",
            "Stop session for user",
            "connection Opened for session",
            "connection Closed for session"
        ]
    );
    let patterns = attr_values(xml, "conversionpattern");
    assert_eq!(patterns.len(), 2);
    let mut parser = Parser::new();
    let now = jiff::Timestamp::now();
    let cases = [
        (
            patterns[0],
            "Start session",
            "Start session for user 'LAB\\anna' UserAgent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'",
            Stream::Session,
            Command::SessionStart,
        ),
        (
            patterns[0],
            "Stop session",
            "Stop session for user 'LAB\\anna'",
            Stream::Session,
            Command::SessionStop,
        ),
        (
            patterns[1],
            "Open connection",
            "connection Opened for session; with 'quotes'",
            Stream::Connection,
            Command::ConnectionOpen,
        ),
        (
            patterns[1],
            "Close connection",
            "connection Closed for session",
            Stream::Connection,
            Command::ConnectionClose,
        ),
    ];
    for (i, (pattern, cmd, msg, stream, command)) in cases.into_iter().enumerate() {
        let line = render(pattern, cmd, msg, 40 + i as u64);
        let e = parser
            .parse(line.as_bytes(), now)
            .unwrap_or_else(|r| panic!("{line}: {r:?}"));
        assert_eq!(e.format, format);
        assert_eq!((e.stream, e.command), (stream, command));
        assert_eq!(e.host, "sense-node1");
        assert_eq!(e.user_full(), "LAB\\anna");
        assert_eq!(e.message, msg);
        assert_eq!(
            e.app_id.as_deref(),
            Some("3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c")
        );
        if format == Format::Extended {
            assert_eq!(e.source_seq, Some(40 + i as u64));
            assert_eq!(
                e.source_time,
                Some("2026-11-21T09:00:00.123Z".parse().unwrap())
            );
            assert_eq!(e.proxy_session_id, None);
        }
    }
}

#[test]
fn legacy_log_config_renders_to_parseable_datagrams() {
    check(
        include_str!("../config/log4net/LocalLogConfig.xml"),
        Format::Legacy,
    );
}

#[test]
fn extended_log_config_renders_to_parseable_datagrams() {
    let xml = include_str!("../config/log4net/extended/LocalLogConfig.xml");
    assert_eq!(xml.matches("CounterPatternConverter").count(), 2);
    check(xml, Format::Extended);
}

//! Every line of `tests/data/samples.txt` (a copy of `shared/qlik/samples.txt`)
//! parsed, with what each must give; plus arbitrary bytes that must never panic.

use jiff::Timestamp;
use proptest::prelude::*;
use whosin::event::{Command, Format, Stream};
use whosin::ingest::parse::{Parser, Reject};

const SAMPLES: &str = include_str!("data/samples.txt");

fn lines() -> Vec<&'static str> {
    SAMPLES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

fn now() -> Timestamp {
    "2026-11-21T09:00:00Z".parse().unwrap()
}

/// What we check of an accepted line.
struct Want {
    format: Format,
    stream: Stream,
    host: &'static str,
    command: Command,
    dir: &'static str,
    id: &'static str,
    origin: &'static str,
    app_id: Option<&'static str>,
    browser: Option<(&'static str, &'static str)>,
    os: Option<(&'static str, &'static str)>,
    message_ends: &'static str,
}

#[test]
fn every_sample_line_parses_as_expected() {
    use Command::*;
    let guid_a = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
    let guid_b = "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f";
    let chrome_win = Some(("Chrome", "131"));
    let win = Some(("Windows", "10"));
    let legacy = |stream, host, command, dir, id, origin, app_id, browser, os, message_ends| Want {
        format: Format::Legacy,
        stream,
        host,
        command,
        dir,
        id,
        origin,
        app_id,
        browser,
        os,
        message_ends,
    };
    let accepted: Vec<Want> = vec![
        legacy(
            Stream::Session,
            "sense-node1",
            SessionStart,
            "LAB",
            "anna.berg",
            "AppAccess",
            None,
            chrome_win,
            win,
            "Safari/537.36'",
        ),
        legacy(
            Stream::Connection,
            "sense-node1",
            ConnectionOpen,
            "LAB",
            "anna.berg",
            "AppAccess",
            Some(guid_a),
            chrome_win,
            win,
            "Safari/537.36'",
        ),
        legacy(
            Stream::Connection,
            "sense-node1",
            ConnectionClose,
            "LAB",
            "anna.berg",
            "AppAccess",
            Some(guid_a),
            None,
            None,
            "connection Closed for session",
        ),
        legacy(
            Stream::Session,
            "sense-node1",
            SessionStop,
            "LAB",
            "anna.berg",
            "AppAccess",
            None,
            None,
            None,
            "Stop session for user 'LAB\\anna.berg'",
        ),
        legacy(
            Stream::Session,
            "sense-node2",
            SessionStart,
            "CORP",
            "Per.Olsson",
            "https://sense.example.com",
            Some(guid_b),
            Some(("Safari", "17")),
            Some(("Mac OS X", "10.15.7")),
            "Safari/605.1.15'",
        ),
        legacy(
            Stream::Session,
            "sense-node2",
            SessionStart,
            "INTERNAL",
            "sa_scheduler",
            "",
            None,
            None,
            None,
            "Start session for user 'INTERNAL\\sa_scheduler'",
        ),
        legacy(
            Stream::Connection,
            "sense-node2",
            ConnectionOpen,
            "CORP",
            "per.olsson",
            "AppAccess",
            None,
            Some(("Mobile Safari", "17")),
            Some(("iOS", "17.5")),
            "Safari/604.1",
        ),
        legacy(
            Stream::Connection,
            "sense-node2",
            ConnectionOpen,
            "CORP",
            "per.olsson",
            "AppAccess",
            Some(guid_b),
            None,
            None,
            "UserAgent: ''",
        ),
        Want {
            format: Format::Extended,
            stream: Stream::Session,
            host: "sense-node1",
            command: SessionStart,
            dir: "LAB",
            id: "Karin.Lund",
            origin: "AppAccess",
            app_id: None,
            browser: Some(("Firefox", "133")),
            os: Some(("Linux", "")),
            message_ends: "Firefox/133.0'",
        },
        Want {
            format: Format::Extended,
            stream: Stream::Connection,
            host: "sense-node1",
            command: ConnectionOpen,
            dir: "LAB",
            id: "Karin.Lund",
            origin: "AppAccess",
            app_id: Some(guid_a),
            browser: None,
            os: None,
            message_ends: "connection Opened for session",
        },
    ];
    let rejected = [
        Reject::UnknownType,
        Reject::UnknownType,
        Reject::TooFewFields,
    ];

    let all = lines();
    assert_eq!(
        all.len(),
        accepted.len() + rejected.len(),
        "samples.txt changed: update this test"
    );
    let mut parser = Parser::new();
    for (line, want) in all.iter().zip(&accepted) {
        let e = parser
            .parse(line.as_bytes(), now())
            .unwrap_or_else(|r| panic!("{line}: {r:?}"));
        assert_eq!(e.format, want.format, "{line}");
        assert_eq!(e.stream, want.stream, "{line}");
        assert_eq!(e.host, want.host, "{line}");
        assert_eq!(e.command, want.command, "{line}");
        assert_eq!(e.user_directory, want.dir, "{line}");
        assert_eq!(e.user_id, want.id, "{line}");
        assert_eq!(e.origin, want.origin, "{line}");
        assert_eq!(e.app_id.as_deref(), want.app_id, "{line}");
        assert!(
            e.message.ends_with(want.message_ends),
            "{line}: {:?}",
            e.message
        );
        let ua = e.user_agent.as_deref();
        assert_eq!(
            ua.and_then(|u| Some((u.browser.as_deref()?, u.browser_major.as_deref()?))),
            want.browser,
            "{line}"
        );
        assert_eq!(
            ua.and_then(|u| Some((u.os.as_deref()?, u.os_version.as_deref().unwrap_or("")))),
            want.os,
            "{line}"
        );
    }
    // The extended lines carry their time, counter and session id.
    let karin = parser.parse(all[8].as_bytes(), now()).unwrap();
    assert_eq!(
        karin.source_time,
        Some("2026-11-21T08:59:59.120Z".parse().unwrap())
    );
    assert_eq!(karin.source_seq, Some(41));
    assert_eq!(karin.proxy_session_id, None, "(null) is absent");
    let conn = parser.parse(all[9].as_bytes(), now()).unwrap();
    assert_eq!(conn.source_seq, Some(17));
    assert_eq!(conn.proxy_session_id.as_deref(), Some("7d1e0f2a9c"));
    // The message with semicolons and quotes is kept whole.
    let per = parser.parse(all[6].as_bytes(), now()).unwrap();
    assert!(
        per.message
            .starts_with("text with; semicolons; and 'quotes' UserAgent: Mozilla/5.0 (iPhone;")
    );

    for (line, want) in all[accepted.len()..].iter().zip(rejected) {
        assert_eq!(
            parser.parse(line.as_bytes(), now()).err(),
            Some(want),
            "{line}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Parser::new().parse(&data, now());
    }

    #[test]
    fn arbitrary_fields_after_a_valid_prefix_never_panic(
        prefix in prop_oneof![
            Just("/qseow-proxy-session/;"),
            Just("/qseow-proxy-connection/;"),
            Just("/whosin-session/;"),
            Just("/whosin-connection/;2026-11-21T08:59:59.120Z;"),
        ],
        fields in proptest::collection::vec("[^;]{0,40}", 0..14),
    ) {
        let line = format!("{prefix}{}", fields.join(";"));
        if let Ok(e) = Parser::new().parse(line.as_bytes(), now()) {
            // Whatever is accepted has a user and no control characters.
            prop_assert!(!e.user_directory.is_empty() && !e.user_id.is_empty());
            for f in [&*e.host, &e.user_directory, &e.user_id, &e.origin, &e.context, &e.message] {
                prop_assert!(!f.chars().any(char::is_control));
            }
        }
    }
}

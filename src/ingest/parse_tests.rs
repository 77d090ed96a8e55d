use super::*;

fn t0() -> Timestamp {
    "2026-11-21T09:00:00Z".parse().unwrap()
}

fn parse(s: &str) -> Result<Event, Reject> {
    Parser::new().parse(s.as_bytes(), t0())
}

#[test]
fn legacy_fields_land_in_place() {
    let e = parse("/qseow-proxy-session/;sense-node1;Start session;LAB;anna.berg;AppAccess;/hub/;Start session for user 'LAB\\anna.berg'").unwrap();
    assert_eq!(e.format, Format::Legacy);
    assert_eq!(e.stream, Stream::Session);
    assert_eq!(e.host, "sense-node1");
    assert_eq!(e.command, Command::SessionStart);
    assert_eq!(e.user_directory, "LAB");
    assert_eq!(e.user_id, "anna.berg");
    assert_eq!(e.origin, "AppAccess");
    assert_eq!(e.context, "/hub/");
    assert_eq!(e.message, "Start session for user 'LAB\\anna.berg'");
    assert_eq!(e.received_at, t0());
    assert_eq!(e.source_time, None);
    assert_eq!(e.app_id, None);
    assert_eq!(e.user_agent, None);
}

#[test]
fn message_keeps_semicolons_and_quotes() {
    let e = parse("/qseow-proxy-connection/;h;Open connection;D;u;;;a;b; 'c' d").unwrap();
    assert_eq!(e.message, "a;b; 'c' d");
    assert_eq!(e.origin, "");
    assert_eq!(e.context, "");
}

#[test]
fn message_type_is_case_insensitive_and_slashes_optional() {
    for p in [
        "/QSEOW-PROXY-SESSION/",
        "qseow-proxy-session",
        "/qseow-proxy-session",
        " qseow-proxy-session/ ",
    ] {
        let e = parse(&format!("{p};h;Start session;D;u;;;")).unwrap();
        assert_eq!(e.stream, Stream::Session, "{p}");
    }
}

#[test]
fn command_is_kept_even_when_it_contradicts_the_type() {
    let e = parse("/qseow-proxy-connection/;h;Start session;D;u;;;m").unwrap();
    assert_eq!(e.stream, Stream::Connection);
    assert_eq!(e.command, Command::SessionStart);
}

#[test]
fn null_properties_are_absent() {
    assert_eq!(
        parse("/qseow-proxy-session/;h;Start session;(null);u;;;m"),
        Err(Reject::EmptyUser)
    );
    let e = parse("/qseow-proxy-session/;h;Start session;D;u;(null);(null);(null)").unwrap();
    assert_eq!((e.origin.as_str(), e.context.as_str()), ("", ""));
    assert_eq!(e.message, "");
}

#[test]
fn rejects_name_their_reason() {
    let cases = [
        ("", Reject::Empty),
        ("  \r\n", Reject::Empty),
        ("GET / HTTP/1.1", Reject::UnknownType),
        ("/qseow-proxy/;1;x;y", Reject::UnknownType),
        (
            "/qseow-proxy-session/;sense-node1;Start session",
            Reject::TooFewFields,
        ),
        (
            "/qseow-proxy-session/;h;Begin session;D;u;;;",
            Reject::UnknownCommand,
        ),
        (
            "/qseow-proxy-session/;h;Start session;;u;;;",
            Reject::EmptyUser,
        ),
        (
            "/qseow-proxy-session/;h;Start session;D; ;;;",
            Reject::EmptyUser,
        ),
        (
            "/qseow-proxy-session/;;Start session;D;u;;;",
            Reject::EmptyHost,
        ),
        (
            "/whosin-session/;yesterday;1;h;Start session;D;u;;;;",
            Reject::InvalidTime,
        ),
        (
            "/whosin-session/;2026-11-21T08:59:59.120Z;x;h;Start session;D;u;;;;",
            Reject::InvalidSequence,
        ),
        (
            "/whosin-session/;2026-11-21T08:59:59.120Z;1;h",
            Reject::TooFewFields,
        ),
    ];
    for (d, want) in cases {
        assert_eq!(parse(d).err(), Some(want), "{d:?}");
    }
}

#[test]
fn extended_carries_time_counter_and_session_id() {
    let e = parse("/whosin-connection/;2026-11-21T09:00:02.007Z;17;sense-node1;Open connection;LAB;Karin.Lund;AppAccess;/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c;7d1e0f2a9c;connection Opened for session").unwrap();
    assert_eq!(e.format, Format::Extended);
    assert_eq!(
        e.source_time,
        Some("2026-11-21T09:00:02.007Z".parse().unwrap())
    );
    assert_eq!(e.time(), e.source_time.unwrap());
    assert_eq!(e.source_seq, Some(17));
    assert_eq!(e.proxy_session_id.as_deref(), Some("7d1e0f2a9c"));
    assert_eq!(
        e.app_id.as_deref(),
        Some("3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c")
    );
    assert_eq!(e.message, "connection Opened for session");
}

#[test]
fn app_id_only_when_a_guid() {
    assert_eq!(
        app_id_of("/app/3F2A1C9E-8b7d-4e6f-a5c4-1d2e3f4a5b6c?reloaduri=x").as_deref(),
        Some("3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c")
    );
    assert_eq!(
        app_id_of("app/0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f").as_deref(),
        Some("0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f")
    );
    assert_eq!(
        app_id_of("/sense/app/0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f/sheet/x").as_deref(),
        Some("0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f")
    );
    assert_eq!(app_id_of("/app/not-a-guid?x=1"), None);
    assert_eq!(app_id_of("/hub/"), None);
    assert_eq!(app_id_of("/app/0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6"), None);
    assert_eq!(
        app_id_of("/app/0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6fz"),
        None
    );
}

#[test]
fn user_agent_quoted_unquoted_and_empty() {
    assert_eq!(
        user_agent_of("x UserAgent: 'Mozilla/5.0 (a; b)' y"),
        Some("Mozilla/5.0 (a; b)")
    );
    assert_eq!(
        user_agent_of("UserAgent: Mozilla/5.0 (iPhone)"),
        Some("Mozilla/5.0 (iPhone)")
    );
    assert_eq!(user_agent_of("UserAgent: ''"), None);
    assert_eq!(user_agent_of("UserAgent:"), None);
    assert_eq!(user_agent_of("no agent here"), None);
    assert_eq!(
        user_agent_of("useragent: 'unterminated"),
        Some("unterminated")
    );
}

#[test]
fn control_characters_are_stripped_and_fields_capped() {
    let long = "x".repeat(10_000);
    let d = format!("/qseow-proxy-session/;no\x1b[31mde;Start session;D\0;u\x07;;;{long}\n");
    let e = parse(&d).unwrap();
    assert_eq!(e.host, "no[31mde");
    assert_eq!(e.user_directory, "D");
    assert_eq!(e.user_id, "u");
    assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS);
}

#[test]
fn invalid_utf8_is_decoded_lossily_not_rejected() {
    let mut d = b"/qseow-proxy-session/;h;Start session;D;us\xff\xfeer;;;".to_vec();
    d.extend_from_slice(b"m\xc3");
    let e = Parser::new().parse(&d, t0()).unwrap();
    assert_eq!(e.user_id, "us\u{fffd}\u{fffd}er");
}

#[test]
fn multibyte_text_is_capped_on_char_boundaries() {
    let long = "å".repeat(MAX_USER_CHARS + 10);
    let e = parse(&format!(
        "/qseow-proxy-session/;h;Start session;D;{long};;;"
    ))
    .unwrap();
    assert_eq!(e.user_id.chars().count(), MAX_USER_CHARS);
}

/// What `clean` does, without its fast path for printable ASCII.
fn clean_reference(field: &str, max_chars: usize) -> String {
    let t = field.trim();
    if t == "(null)" {
        return String::new();
    }
    let has_control = t.chars().any(char::is_control);
    let too_long = t.chars().count() > max_chars;
    if !has_control && !too_long {
        return t.to_owned();
    }
    let s: String = t
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    s.trim().to_owned()
}

proptest::proptest! {
    #[test]
    fn clean_is_its_definition_with_or_without_the_fast_path(
        field in "[ \\t\\x0b\\x0c\\r\\n\\u{a0}\\u{3000}\\x01\\x1f\\x7f~a-z(nul)é🙂;'\\\\]{0,40}",
        max in 0usize..24,
    ) {
        let cleaned = clean(&field, max);
        proptest::prop_assert_eq!(cleaned.as_ref(), clean_reference(&field, max));
    }
}

proptest::proptest! {
    #[test]
    fn fields_split_as_splitn_does(line in "[a;é🙂 ]{0,30}") {
        let want: Vec<&str> = line.splitn(7, ';').collect();
        match fields::<7>(&line) {
            Ok(got) => proptest::prop_assert_eq!(&got[..], &want[..]),
            Err(r) => {
                proptest::prop_assert_eq!(r, Reject::TooFewFields);
                proptest::prop_assert!(want.len() < 7);
            }
        }
    }
}

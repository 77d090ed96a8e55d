//! The Qlik proxy wire format: bytes in, an [`Event`] or a [`Reject`] out.
//!
//! This is a pure function of the datagram and its receive time (the user-agent
//! memo in [`Parser`] only caches a pure lookup). Nothing here touches a socket,
//! a lock or the clock, so it can be tested exhaustively and fuzzed.
//!
//! Two formats are accepted (see `shared/qlik/user-events.md`):
//!
//! ```text
//! legacy:   /qseow-proxy-session/;host;command;dir;id;origin;context;message
//! extended: /whosin-session/;utc-time;counter;host;command;dir;id;origin;context;proxy-session-id;message
//! ```
//!
//! The message is the last field and may itself contain `;`.

use std::borrow::Cow;

use jiff::Timestamp;

use super::useragent::UaCache;
use crate::event::{Command, Event, Format, Stream};

/// Why a datagram is not a user event; each is a `reason` label of
/// `whosin_datagrams_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Zero bytes, or only blanks.
    Empty,
    /// Longer than `udp.max_datagram_bytes`.
    TooLarge,
    /// From an address outside `udp.allowed_sources`.
    SourceNotAllowed,
    /// The first field is not one of the known message types.
    UnknownType,
    /// Fewer fields than the format has.
    TooFewFields,
    /// The command is not one of the four Qlik commands.
    UnknownCommand,
    /// The user directory or user id is empty.
    EmptyUser,
    /// The host field is empty.
    EmptyHost,
    /// The extended format's time is not an RFC 3339 UTC time.
    InvalidTime,
    /// The extended format's counter is not a whole number.
    InvalidSequence,
    /// Its source sent more than `udp.rate_limit_per_source` this second.
    RateLimited,
    /// It names a new host when [`crate::sessions::MAX_HOSTS`] are known
    /// already (made-up host names must not grow the state and the metrics
    /// without bound).
    TooManyHosts,
}

impl Reject {
    /// Every reason, so metrics can expose each at 0 from the start.
    pub const ALL: [Reject; 12] = [
        Reject::Empty,
        Reject::TooLarge,
        Reject::SourceNotAllowed,
        Reject::UnknownType,
        Reject::TooFewFields,
        Reject::UnknownCommand,
        Reject::EmptyUser,
        Reject::EmptyHost,
        Reject::InvalidTime,
        Reject::InvalidSequence,
        Reject::RateLimited,
        Reject::TooManyHosts,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::TooLarge => "too_large",
            Reject::SourceNotAllowed => "source_not_allowed",
            Reject::UnknownType => "unknown_type",
            Reject::TooFewFields => "too_few_fields",
            Reject::UnknownCommand => "unknown_command",
            Reject::EmptyUser => "empty_user",
            Reject::EmptyHost => "empty_host",
            Reject::InvalidTime => "invalid_time",
            Reject::InvalidSequence => "invalid_sequence",
            Reject::RateLimited => "rate_limited",
            Reject::TooManyHosts => "too_many_hosts",
        }
    }

    /// Index into per-reason arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Longest host name kept (DNS allows 253).
pub const MAX_HOST_CHARS: usize = 255;
/// Longest user directory or user id kept.
pub const MAX_USER_CHARS: usize = 255;
/// Longest command kept before it is matched.
pub const MAX_COMMAND_CHARS: usize = 64;
/// Longest origin kept.
pub const MAX_ORIGIN_CHARS: usize = 1024;
/// Longest context kept (contexts carry a `reloaduri` that can be long).
pub const MAX_CONTEXT_CHARS: usize = 2048;
/// Longest proxy session id kept.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// Longest message kept.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Longest user agent kept.
pub const MAX_USER_AGENT_CHARS: usize = 1024;

/// A datagram parser with a memo of user-agent lookups.
///
/// A site sends a handful of distinct user agents, and resolving one runs
/// hundreds of regexes, so each distinct string is resolved once.
#[derive(Default)]
pub struct Parser {
    ua: UaCache,
}

impl Parser {
    /// A parser with an empty user-agent memo.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one datagram received at `received_at`.
    pub fn parse(&mut self, datagram: &[u8], received_at: Timestamp) -> Result<Event, Reject> {
        // Valid UTF-8 is the rule; the lossy decoder is much slower, so it only
        // runs for the datagrams that need it.
        let text = match std::str::from_utf8(datagram) {
            Ok(t) => Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(datagram),
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(Reject::Empty);
        }
        let (prefix, rest) = text.split_once(';').unwrap_or((text, ""));
        let (format, stream) = message_type(prefix).ok_or(Reject::UnknownType)?;
        let mut ev = match format {
            Format::Legacy => parse_legacy(rest, received_at, stream)?,
            Format::Extended => parse_extended(rest, received_at, stream)?,
        };
        if let Some(ua) = user_agent_of(&ev.message) {
            ev.user_agent = self.ua.resolve(ua);
        }
        Ok(ev)
    }
}

/// Recognises the message type: case-insensitive, slashes and blanks optional.
fn message_type(field: &str) -> Option<(Format, Stream)> {
    let name = field.trim().trim_matches('/');
    const TYPES: [(&str, Format, Stream); 4] = [
        ("qseow-proxy-session", Format::Legacy, Stream::Session),
        ("qseow-proxy-connection", Format::Legacy, Stream::Connection),
        ("whosin-session", Format::Extended, Stream::Session),
        ("whosin-connection", Format::Extended, Stream::Connection),
    ];
    TYPES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, f, s)| (f, s))
}

/// The fields both formats share, in order.
struct Common<'a> {
    host: &'a str,
    command: &'a str,
    dir: &'a str,
    id: &'a str,
    origin: &'a str,
    context: &'a str,
    message: &'a str,
}

/// Splits into exactly `N` fields, the last keeping its own `;`, without allocating.
fn fields<const N: usize>(rest: &str) -> Result<[&str; N], Reject> {
    let mut out = [""; N];
    let mut n = 0;
    for (slot, part) in out.iter_mut().zip(rest.splitn(N, ';')) {
        *slot = part;
        n += 1;
    }
    if n < N {
        return Err(Reject::TooFewFields);
    }
    Ok(out)
}

fn parse_legacy(rest: &str, received_at: Timestamp, stream: Stream) -> Result<Event, Reject> {
    // host;command;dir;id;origin;context;message — the message keeps its own ';'.
    let f = fields::<7>(rest)?;
    let common = Common {
        host: f[0],
        command: f[1],
        dir: f[2],
        id: f[3],
        origin: f[4],
        context: f[5],
        message: f[6],
    };
    build(
        common,
        received_at,
        stream,
        Format::Legacy,
        None,
        None,
        None,
    )
}

fn parse_extended(rest: &str, received_at: Timestamp, stream: Stream) -> Result<Event, Reject> {
    // time;counter;host;command;dir;id;origin;context;proxy-session-id;message
    let f = fields::<10>(rest)?;
    let time = clean(f[0], 64);
    let source_time: Timestamp = time.parse().map_err(|_| Reject::InvalidTime)?;
    let seq = clean(f[1], 32);
    let source_seq: u64 = seq.parse().map_err(|_| Reject::InvalidSequence)?;
    let sid = clean(f[8], MAX_SESSION_ID_CHARS);
    let proxy_session_id = (!sid.is_empty()).then(|| sid.into_owned());
    let common = Common {
        host: f[2],
        command: f[3],
        dir: f[4],
        id: f[5],
        origin: f[6],
        context: f[7],
        message: f[9],
    };
    build(
        common,
        received_at,
        stream,
        Format::Extended,
        Some(source_time),
        Some(source_seq),
        proxy_session_id,
    )
}

fn build(
    c: Common<'_>,
    received_at: Timestamp,
    stream: Stream,
    format: Format,
    source_time: Option<Timestamp>,
    source_seq: Option<u64>,
    proxy_session_id: Option<String>,
) -> Result<Event, Reject> {
    let command =
        Command::from_qlik(&clean(c.command, MAX_COMMAND_CHARS)).ok_or(Reject::UnknownCommand)?;
    let user_directory = clean(c.dir, MAX_USER_CHARS);
    let user_id = clean(c.id, MAX_USER_CHARS);
    if user_directory.is_empty() || user_id.is_empty() {
        return Err(Reject::EmptyUser);
    }
    let host = clean(c.host, MAX_HOST_CHARS);
    if host.is_empty() {
        return Err(Reject::EmptyHost);
    }
    let context = clean(c.context, MAX_CONTEXT_CHARS).into_owned();
    let message = clean(c.message, MAX_MESSAGE_CHARS).into_owned();
    Ok(Event {
        received_at,
        source_time,
        source_seq,
        format,
        stream,
        host: host.into_owned(),
        command,
        user_directory: user_directory.into_owned(),
        user_id: user_id.into_owned(),
        origin: clean(c.origin, MAX_ORIGIN_CHARS).into_owned(),
        app_id: app_id_of(&context),
        context,
        proxy_session_id,
        message,
        user_agent: None,
    })
}

/// Trims a field, strips control characters, maps log4net's `(null)` to empty,
/// and caps the length in characters. Borrows when nothing needs changing.
pub fn clean(field: &str, max_chars: usize) -> Cow<'_, str> {
    let t = field.trim();
    if t == "(null)" {
        return Cow::Borrowed("");
    }
    // Fast path for the usual printable-ASCII field: one pass over bytes.
    if t.len() <= max_chars && t.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(t);
    }
    let has_control = t.chars().any(char::is_control);
    let too_long = t.len() > max_chars && t.chars().count() > max_chars;
    if !has_control && !too_long {
        return Cow::Borrowed(t);
    }
    let s: String = t
        .chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect();
    Cow::Owned(s.trim().to_owned())
}

/// The app GUID after `/app/` (or a leading `app/`) in the context, up to `?`,
/// `/` or `#`, lower-cased; `None` unless it is a well-formed GUID.
pub fn app_id_of(context: &str) -> Option<String> {
    let after = if let Some(i) = context.find("/app/") {
        &context[i + 5..]
    } else {
        context.strip_prefix("app/")?
    };
    let end = after.find(['?', '/', '#']).unwrap_or(after.len());
    let candidate = &after[..end];
    is_guid(candidate).then(|| candidate.to_ascii_lowercase())
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The user agent after `UserAgent:` in the message: quoted with `'` or, when
/// unquoted, the rest of the message. `None` when absent or empty. The message
/// is already cleaned and capped, so the slice needs no cleaning of its own.
pub fn user_agent_of(message: &str) -> Option<&str> {
    const KEY: &str = "UserAgent:";
    // Qlik writes it in this case; any other case is looked for only when that fails.
    let pos = message.find(KEY).or_else(|| {
        message
            .as_bytes()
            .windows(KEY.len())
            .position(|w| w.eq_ignore_ascii_case(KEY.as_bytes()))
    })?;
    let rest = message[pos + KEY.len()..].trim_start();
    let ua = match rest.strip_prefix('\'') {
        Some(q) => q.find('\'').map_or(q, |end| &q[..end]),
        None => rest,
    };
    let ua = ua.trim();
    if ua.is_empty() {
        return None;
    }
    // Cap on a char boundary.
    let end = ua
        .char_indices()
        .nth(MAX_USER_AGENT_CHARS)
        .map_or(ua.len(), |(i, _)| i);
    Some(&ua[..end])
}

#[cfg(test)]
mod tests {
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
}

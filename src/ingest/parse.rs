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
use std::sync::LazyLock;

use memchr::memmem::Finder;

use compact_str::CompactString;
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
    let mut start = 0;
    let mut n = 0;
    // memchr's vectorised search for the separators: `str::splitn` went
    // through a char searcher and the standard library's plain memchr for
    // each field (5% of the daemon's time).
    for i in memchr::memchr_iter(b';', rest.as_bytes()).take(N - 1) {
        // A ';' byte is never inside a UTF-8 sequence, so `i` is a boundary.
        out[n] = &rest[start..i];
        start = i + 1;
        n += 1;
    }
    if n < N - 1 {
        return Err(Reject::TooFewFields);
    }
    out[N - 1] = &rest[start..];
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
        // Short names are kept inline in the event: no allocation, and
        // none to free on the core thread.
        host: CompactString::new(&host),
        command,
        user_directory: CompactString::new(&user_directory),
        user_id: CompactString::new(&user_id),
        origin: CompactString::new(clean(c.origin, MAX_ORIGIN_CHARS)),
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
    // Fast path for the usual printable-ASCII field: one pass over bytes,
    // without an early exit, which the compiler turns into vector code.
    if t.len() <= max_chars && printable_ascii(t.as_bytes()) {
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

/// Every byte is printable ASCII (0x20 to 0x7e).
fn printable_ascii(b: &[u8]) -> bool {
    b.iter()
        .fold(0u8, |bad, &c| bad | u8::from(c.wrapping_sub(0x20) > 0x5e))
        == 0
}

/// Searchers for the fixed strings of every datagram, built once: a
/// `str::find` sets its searcher up again on each call.
static APP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("/app/"));
static USER_AGENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("UserAgent:"));

/// The app GUID after `/app/` (or a leading `app/`) in the context, up to `?`,
/// `/` or `#`, lower-cased; `None` unless it is a well-formed GUID.
pub fn app_id_of(context: &str) -> Option<String> {
    let after = if let Some(i) = APP.find(context.as_bytes()) {
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
    let pos = USER_AGENT.find(message.as_bytes()).or_else(|| {
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
#[path = "parse_tests.rs"]
mod tests;

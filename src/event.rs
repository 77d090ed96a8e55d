//! The one event type that flows through whosin.
//!
//! A datagram from the Qlik proxy becomes an [`Event`] in the parser and is not
//! changed afterwards: the blacklist, the live state, the journal and every sink
//! read the same value. Fields keep what Qlik sent (after control characters were
//! stripped and lengths capped), so that sinks can reproduce Butler SOS's output.

use compact_str::CompactString;
use std::sync::Arc;

use jiff::Timestamp;

/// What the user did, from the datagram's command field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `Start session`
    SessionStart,
    /// `Stop session`
    SessionStop,
    /// `Open connection`
    ConnectionOpen,
    /// `Close connection`
    ConnectionClose,
}

impl Command {
    /// Every command, in the order used for metric labels.
    pub const ALL: [Command; 4] = [
        Command::SessionStart,
        Command::SessionStop,
        Command::ConnectionOpen,
        Command::ConnectionClose,
    ];

    /// The label value used in metrics and the API (`session_start`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Command::SessionStart => "session_start",
            Command::SessionStop => "session_stop",
            Command::ConnectionOpen => "connection_open",
            Command::ConnectionClose => "connection_close",
        }
    }

    /// The command as Qlik writes it (`Start session`, ...); Butler SOS's `event_action`.
    pub fn qlik_name(self) -> &'static str {
        match self {
            Command::SessionStart => "Start session",
            Command::SessionStop => "Stop session",
            Command::ConnectionOpen => "Open connection",
            Command::ConnectionClose => "Close connection",
        }
    }

    /// Index into per-command arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The command at [`Command::index`] `i`.
    pub fn from_index(i: usize) -> Option<Command> {
        Command::ALL.get(i).copied()
    }

    /// Parses Qlik's command text, ignoring case and surrounding blanks.
    pub fn from_qlik(s: &str) -> Option<Command> {
        let s = s.trim();
        Command::ALL
            .into_iter()
            .find(|c| c.qlik_name().eq_ignore_ascii_case(s))
    }
}

/// Which wire format the datagram used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `/qseow-proxy-session/` and `/qseow-proxy-connection/` (Butler SOS's pattern).
    Legacy,
    /// `/whosin-session/` and `/whosin-connection/` (with source time, counter, proxy session id).
    Extended,
}

impl Format {
    /// The name the journal's first schema stored (`legacy`, `extended`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Legacy => "legacy",
            Format::Extended => "extended",
        }
    }
}

/// Which appender sent the datagram (its message type), independent of the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The session appender.
    Session,
    /// The connection appender.
    Connection,
}

impl Stream {
    /// The name the journal's first schema stored (`session`, `connection`).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Session => "session",
            Stream::Connection => "connection",
        }
    }
}

/// Browser and operating system derived from a user agent string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UserAgent {
    /// Browser family, e.g. `Chrome`, `Edge`, `Firefox`, `Mobile Safari`.
    pub browser: Option<String>,
    /// Browser major version, e.g. `131`.
    pub browser_major: Option<String>,
    /// Operating system family, e.g. `Windows`, `Mac OS X`, `iOS`, `Android`.
    pub os: Option<String>,
    /// Operating system version, e.g. `10`, `10.15.7`, `17.5`.
    pub os_version: Option<String>,
}

/// One accepted user event.
///
/// Host, user and origin are [`CompactString`]s: names of up to 24 bytes (nearly
/// all of them) live in the event itself. The receive thread made seven heap
/// strings per event and the core thread freed them, and that allocator
/// traffic across threads was a tenth of the daemon's time.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// When whosin received the datagram.
    pub received_at: Timestamp,
    /// The event time at the source (extended format only).
    pub source_time: Option<Timestamp>,
    /// The appender's running counter (extended format only).
    pub source_seq: Option<u64>,
    /// Wire format.
    pub format: Format,
    /// The appender that sent it.
    pub stream: Stream,
    /// The Qlik node's host name.
    pub host: CompactString,
    /// What happened.
    pub command: Command,
    /// User directory, as sent.
    pub user_directory: CompactString,
    /// User id, as sent.
    pub user_id: CompactString,
    /// Origin (may be empty).
    pub origin: CompactString,
    /// Context (may be empty).
    pub context: String,
    /// The proxy session id (extended format, when Qlik provides it).
    pub proxy_session_id: Option<String>,
    /// The free-text message.
    pub message: String,
    /// The app GUID from the context, lower-cased, when there is one.
    pub app_id: Option<String>,
    /// Browser and OS derived from the user agent.
    pub user_agent: Option<Arc<UserAgent>>,
}

impl Event {
    /// The event time: the source time when the datagram carried one, else the receive time.
    pub fn time(&self) -> Timestamp {
        self.source_time.unwrap_or(self.received_at)
    }

    /// `DIRECTORY\userid` as sent.
    pub fn user_full(&self) -> String {
        format!("{}\\{}", self.user_directory, self.user_id)
    }

    /// The message type without slashes (`qseow-proxy-session`, ...), Butler SOS's `source`.
    pub fn source_name(&self) -> &'static str {
        source_name(self.format, self.stream)
    }
}

/// The message type of a format and stream without slashes
/// (`qseow-proxy-session`, ...), Butler SOS's `source`.
pub fn source_name(format: Format, stream: Stream) -> &'static str {
    match (format, stream) {
        (Format::Legacy, Stream::Session) => "qseow-proxy-session",
        (Format::Legacy, Stream::Connection) => "qseow-proxy-connection",
        (Format::Extended, Stream::Session) => "whosin-session",
        (Format::Extended, Stream::Connection) => "whosin-connection",
    }
}

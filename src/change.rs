//! What the live state tells the journal: the vocabulary both share.
//!
//! The live state machine (`live`) produces these changes and the
//! journal (`storage`) records them and gives them back at a restart, so they
//! live below both: neither imports the other.

use compact_str::CompactString;
use std::sync::Arc;

use jiff::Timestamp;

use crate::event::UserAgent;

/// The journal's small-integer code of a reason (its index in `ALL`), and
/// the reason of a name as the first schema stored it.
macro_rules! journal_codes {
    ($t:ident) => {
        impl $t {
            /// The small integer the journal stores (the index in `ALL`).
            pub fn code(self) -> u8 {
                self as u8
            }

            /// The reason of a journal code.
            pub fn from_code(code: i64) -> Option<Self> {
                usize::try_from(code)
                    .ok()
                    .and_then(|i| Self::ALL.get(i).copied())
            }

            /// The reason named `name` (as `as_str` writes it).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|r| r.as_str() == name)
            }
        }
    };
}

journal_codes!(EndReason);
journal_codes!(CloseReason);

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A `Stop session` ended it.
    Stopped,
    /// No connection and no event for the idle timeout.
    Expired,
    /// The Qlik proxy no longer had it (a lost `Stop session`).
    Reconciled,
    /// whosin tracked `sessions.max_tracked` sessions and connections and
    /// ended this one, idle the longest, to make room.
    Evicted,
}

impl EndReason {
    /// Every reason, by its code in the journal.
    pub const ALL: [EndReason; 4] = [
        EndReason::Stopped,
        EndReason::Expired,
        EndReason::Reconciled,
        EndReason::Evicted,
    ];

    /// The name stored in the journal and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stopped => "stopped",
            EndReason::Expired => "expired",
            EndReason::Reconciled => "reconciled",
            EndReason::Evicted => "evicted",
        }
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A `Close connection` ended it.
    Closed,
    /// The session it belonged to ended (the user's last session on the host,
    /// or the session with its proxy session id).
    SessionEnded,
}

impl CloseReason {
    /// Every reason, by its code in the journal.
    pub const ALL: [CloseReason; 2] = [CloseReason::Closed, CloseReason::SessionEnded];

    /// The name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::SessionEnded => "session_ended",
        }
    }
}

/// One change to the state, in order: what the journal records so that the
/// state at any instant can be answered later, and rebuilt after a restart.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A session began (by a start, or implied by a connection).
    SessionStarted {
        /// The host.
        host: CompactString,
        /// The user's key.
        user_key: CompactString,
        /// The session as it now is.
        session: Session,
        /// Directory as sent.
        user_directory: CompactString,
        /// User id as sent.
        user_id: CompactString,
    },
    /// A session without a proxy session id learned its id from a connection
    /// (Qlik gives the id on connection events, not always on the start).
    SessionBound {
        /// The session's id.
        id: u64,
        /// Qlik's proxy session id.
        proxy_session_id: String,
    },
    /// The proxy API told which virtual proxy a session belongs to.
    SessionVirtualProxy {
        /// The session's id.
        id: u64,
        /// The virtual proxy prefix (`""` for the default one).
        virtual_proxy: String,
    },
    /// A session ended.
    SessionEnded {
        /// The session's id.
        id: u64,
        /// When it started (so the journal need not look it up).
        started_at: Timestamp,
        /// When.
        at: Timestamp,
        /// Why.
        reason: EndReason,
    },
    /// A connection opened.
    ConnectionOpened {
        /// The host.
        host: CompactString,
        /// The user's key.
        user_key: CompactString,
        /// The connection as it now is.
        connection: Connection,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The connection's id.
        id: u64,
        /// When it opened (so the journal need not look it up).
        opened_at: Timestamp,
        /// When.
        at: Timestamp,
        /// Why.
        reason: CloseReason,
    },
}

/// One open proxy session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// whosin's id for it (unique across restarts; the journal's key).
    pub id: u64,
    /// Qlik's proxy session id, when the extended format carried one.
    pub proxy_session_id: Option<String>,
    /// When it started (event time), or when whosin first saw it.
    pub started_at: Timestamp,
    /// When whosin last received an event of this session.
    pub last_event: Timestamp,
    /// Browser and OS, from the first event that had a user agent.
    pub user_agent: Option<Arc<UserAgent>>,
    /// It was not started by a `Start session` but implied by a connection.
    pub implied: bool,
    /// It was started by reconciliation: the proxy had it, whosin had not
    /// heard of it (a lost `Start session`, or one from before whosin ran).
    pub reconciled: bool,
    /// The virtual proxy it belongs to, once the proxy API has told.
    pub virtual_proxy: Option<String>,
}

/// One open connection (an app or hub tab).
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// whosin's id for it.
    pub id: u64,
    /// The app GUID, or the context without its query when there is none
    /// (shared: a site has few apps and many tabs on them).
    pub app_key: Arc<str>,
    /// The app GUID, when the context had one (the same allocation as `app_key`).
    pub app_id: Option<Arc<str>>,
    /// Qlik's proxy session id, when the extended format carried one.
    pub proxy_session_id: Option<String>,
    /// When it opened (event time).
    pub opened_at: Timestamp,
}

/// The key a user is tracked under: `dir\id`, lower-cased, computed once per
/// event and shared by the blacklist and the state (inline up to 24 bytes:
/// no allocation per event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKey {
    key: CompactString,
    dir_len: usize,
}

impl UserKey {
    /// The key of `dir\id`.
    pub fn new(dir: &str, id: &str) -> Self {
        let mut key = CompactString::with_capacity(dir.len() + id.len() + 1);
        push_lower(&mut key, dir);
        let dir_len = key.len();
        key.push('\\');
        push_lower(&mut key, id);
        Self { key, dir_len }
    }

    /// The whole key, `dir\id`.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The lower-cased directory.
    pub fn dir(&self) -> &str {
        &self.key[..self.dir_len]
    }

    /// The lower-cased user id.
    pub fn id(&self) -> &str {
        &self.key[self.dir_len + 1..]
    }
}

fn push_lower(out: &mut CompactString, s: &str) {
    if s.is_ascii() {
        // Copied whole, then lowered in place: a char at a time, each push
        // checked the string's inline or heap form again.
        let start = out.len();
        out.push_str(s);
        out.as_mut_str()[start..].make_ascii_lowercase();
    } else {
        out.push_str(&s.to_lowercase());
    }
}

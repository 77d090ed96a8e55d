//! What whosin must show: the datagrams actually sent, replayed through
//! whosin's own parser and state machine.

use std::collections::BTreeMap;
use std::time::Duration;

use super::HostCounts;

/// The datagrams actually sent, replayed through whosin's rules with the
/// service accounts left out (the tour's blacklist): what whosin must show.
pub struct Oracle {
    parser: crate::ingest::parse::Parser,
    state: crate::live::LiveState,
    hosts: Vec<String>,
}

impl Oracle {
    /// A replay for the nodes `hosts` with whosin's default idle timeout.
    pub fn new(hosts: &[String]) -> Self {
        Self {
            parser: crate::ingest::parse::Parser::new(),
            state: crate::live::LiveState::new(Duration::from_secs(30 * 60)),
            hosts: hosts.to_vec(),
        }
    }

    /// One datagram as whosin receives it.
    pub fn feed(&mut self, datagram: &str) {
        if let Ok(ev) = self
            .parser
            .parse(datagram.as_bytes(), jiff::Timestamp::now())
            && !ev.user_directory.eq_ignore_ascii_case("INTERNAL")
        {
            self.state.apply(&ev);
        }
    }

    /// The counts per node now.
    pub fn counts(&mut self) -> BTreeMap<String, HostCounts> {
        self.state.expire(jiff::Timestamp::now());
        self.hosts
            .iter()
            .map(|h| {
                let c = self.state.counts(h);
                (
                    h.clone(),
                    HostCounts {
                        sessions: c.sessions as u64,
                        connections: c.connections as u64,
                        users: c.users as u64,
                    },
                )
            })
            .collect()
    }
}

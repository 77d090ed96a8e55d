//! A per-host summary of the live state for followers outside the core: the
//! MQTT sink's retained state topic (and the live page).
//!
//! The core refreshes the hosts that changed at most once per second (on its
//! tick), so a follower that publishes on every change publishes at most once
//! per second per host, however busy the site is.

use std::collections::BTreeMap;
use std::sync::Mutex;

use jiff::Timestamp;

/// One host, now.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostSnapshot {
    /// Open sessions.
    pub sessions: usize,
    /// Open connections.
    pub connections: usize,
    /// Distinct users with a session.
    pub users: usize,
    /// Those users, `DIRECTORY\userid` as first sent, sorted case-insensitively.
    pub user_list: Vec<String>,
}

/// The snapshots and a version that moves on every change.
pub struct Feed {
    hosts: Mutex<BTreeMap<String, (HostSnapshot, Timestamp)>>,
    version: tokio::sync::watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            hosts: Mutex::default(),
            version: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Feed {
    /// Stores `snap` for `host` if it differs from the last one; true if it did.
    pub fn update(&self, host: &str, snap: HostSnapshot, at: Timestamp) -> bool {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.get(host).is_some_and(|(old, _)| *old == snap) {
            return false;
        }
        hosts.insert(host.to_owned(), (snap, at));
        drop(hosts);
        self.version.send_modify(|v| *v += 1);
        true
    }

    /// Every host's last snapshot and when it was taken.
    pub fn snapshot(&self) -> Vec<(String, HostSnapshot, Timestamp)> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(h, (s, t))| (h.clone(), s.clone(), *t))
            .collect()
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The snapshot of one host of `state`.
pub fn host_snapshot(state: &crate::live::LiveState, host: &str) -> HostSnapshot {
    let counts = state.counts(host);
    // In the order of the users' keys (lower-cased `dir\id`): the key is
    // at hand, where lower-casing every name again for each comparison
    // made this a thirtieth of the core thread with 5,000 users on a host.
    let mut users: Vec<(&str, &crate::live::UserState)> = state
        .host(host)
        .map(|h| h.users.iter().map(|(k, u)| (k.as_str(), &**u)).collect())
        .unwrap_or_default();
    users.sort_unstable_by_key(|(k, _)| *k);
    let user_list = users
        .iter()
        .map(|(_, u)| format!("{}\\{}", u.user_directory, u.user_id))
        .collect();
    HostSnapshot {
        sessions: counts.sessions,
        connections: counts.connections,
        users: counts.users,
        user_list,
    }
}

//! Correcting the picture against a Qlik proxy's own session list.

use compact_str::CompactString;
use jiff::Timestamp;

use super::*;

impl LiveState {
    /// Corrects the sessions of one Qlik proxy against its own list, taken
    /// at `listed_at`: on `hosts` (the live hosts that belong to the proxy), a
    /// session the proxy no longer has ends as reconciled (its `Stop session`
    /// was lost), and a session the proxy has that whosin lacks starts as
    /// reconciled, on the user's host or else on `default_host` (its `Start
    /// session` was lost, or came before whosin listened). Sessions with an
    /// event after `listed_at` are left alone: they are newer than the list.
    /// Sessions the proxy confirms learn their virtual proxy, and count as
    /// active (so idle expiry does not end what the proxy still holds).
    pub fn reconcile(
        &mut self,
        hosts: &[String],
        default_host: &str,
        listed: &[ProxyEntry],
        listed_at: Timestamp,
    ) -> (Outcome, Corrections) {
        let mut out = Outcome::default();
        let mut fixes = Corrections::default();
        let mut by_user: HashMap<String, Vec<&ProxyEntry>> = HashMap::default();
        for e in listed {
            by_user
                .entry(
                    UserKey::new(&e.user_directory, &e.user_id)
                        .as_str()
                        .to_owned(),
                )
                .or_default()
                .push(e);
        }
        // 1. What whosin holds: confirm, or end.
        for host in hosts {
            let Some(h) = self.hosts.get_mut(host.as_str()) else {
                continue;
            };
            let keys: Vec<CompactString> = h.users.keys().cloned().collect();
            for key in keys {
                let theirs = by_user.get(key.as_str()).map_or(&[][..], Vec::as_slice);
                let user = h.users.get_mut(&key).expect("listed above");
                let only_vp = match theirs.first() {
                    Some(first)
                        if theirs
                            .iter()
                            .all(|e| e.virtual_proxy == first.virtual_proxy) =>
                    {
                        Some(first.virtual_proxy.clone())
                    }
                    _ => None,
                };
                let mut ending = Vec::new();
                for (i, s) in user.sessions.iter_mut().enumerate() {
                    if s.started_at > listed_at || s.last_event > listed_at {
                        continue;
                    }
                    let vp = match &s.proxy_session_id {
                        Some(id) => match theirs.iter().find(|e| &e.session_id == id) {
                            Some(e) => Some(e.virtual_proxy.clone()),
                            None => {
                                ending.push(i);
                                continue;
                            }
                        },
                        None if theirs.is_empty() => {
                            ending.push(i);
                            continue;
                        }
                        None => only_vp.clone(),
                    };
                    s.last_event = s.last_event.max(listed_at);
                    if let Some(vp) = vp
                        && s.virtual_proxy.as_ref() != Some(&vp)
                    {
                        s.virtual_proxy = Some(vp.clone());
                        out.changes.push(Change::SessionVirtualProxy {
                            id: s.id,
                            virtual_proxy: vp,
                        });
                    }
                }
                for i in ending.into_iter().rev() {
                    let s = user.sessions.remove(i);
                    h.sessions -= 1;
                    fixes.ended += 1;
                    out.end_session(
                        host.as_str().into(),
                        &s,
                        listed_at.max(s.started_at),
                        EndReason::Reconciled,
                    );
                    h.connections -= close_with_session(
                        user,
                        s.proxy_session_id.as_deref(),
                        listed_at,
                        &mut out.changes,
                    );
                }
                if user.sessions.is_empty() {
                    h.users.remove(&key);
                }
            }
        }
        // 2. What the proxy holds and whosin lacks: start.
        for (key, theirs) in &by_user {
            let mut ids: HashSet<&str> = HashSet::default();
            let mut without_id = 0;
            let mut home: Option<&String> = None;
            for host in hosts {
                if let Some(u) = self
                    .hosts
                    .get(host.as_str())
                    .and_then(|h| h.users.get(key.as_str()))
                {
                    home.get_or_insert(host);
                    for s in &u.sessions {
                        match &s.proxy_session_id {
                            Some(id) => {
                                ids.insert(id.as_str());
                            }
                            None => without_id += 1,
                        }
                    }
                }
            }
            // Sessions without an id may be any of the proxy's; only what
            // they cannot account for is missing.
            let missing: Vec<&ProxyEntry> = theirs
                .iter()
                .filter(|e| !ids.contains(e.session_id.as_str()))
                .skip(without_id)
                .copied()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let host = home.cloned().unwrap_or_else(|| default_host.to_owned());
            for e in missing {
                let session = Session {
                    id: self.next_id,
                    proxy_session_id: Some(e.session_id.clone()),
                    started_at: listed_at,
                    last_event: listed_at,
                    user_agent: None,
                    implied: false,
                    reconciled: true,
                    virtual_proxy: Some(e.virtual_proxy.clone()),
                };
                self.next_id += 1;
                fixes.started += 1;
                out.changes.push(Change::SessionStarted {
                    host: host.as_str().into(),
                    user_key: key.as_str().into(),
                    session: session.clone(),
                    user_directory: e.user_directory.as_str().into(),
                    user_id: e.user_id.as_str().into(),
                });
                let h = self.hosts.entry(host.as_str().into()).or_default();
                let user = h.users.entry(key.as_str().into()).or_insert_with(|| {
                    Box::new(UserState {
                        user_directory: e.user_directory.as_str().into(),
                        user_id: e.user_id.as_str().into(),
                        ..Default::default()
                    })
                });
                user.sessions.push(session);
                h.sessions += 1;
            }
        }
        (out, fixes)
    }
}

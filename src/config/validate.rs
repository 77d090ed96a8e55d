//! What types cannot say: forms, ranges, regexes, required keys. One function
//! per section, each naming its problems by key path within its [`Scope`];
//! the sinks validate their own sections (`crate::sinks::SinksConfig`).

use super::{BlacklistEntry, Config, HttpConfig, JournalConfig, QlikConfig, UdpConfig};
use crate::problems::{Problem, Scope};

/// Every semantic problem of `c`.
pub fn validate(c: &Config, problems: &mut Vec<Problem>) {
    udp(&c.udp, &mut Scope::new("udp", problems));
    http(&c.http, &mut Scope::new("http", problems));
    journal(&c.journal, &mut Scope::new("journal", problems));
    let mut top = Scope::new("", problems);
    top.range(
        "sessions.max_tracked",
        c.sessions.max_tracked,
        100,
        100_000_000,
    );
    top.positive("sessions.idle_timeout", c.sessions.idle_timeout);
    top.range(
        "sessions.per_user_limit",
        c.sessions.per_user_limit,
        1,
        1000,
    );
    top.positive("retention", c.retention);
    for (i, e) in c.blacklist.iter().enumerate() {
        blacklist_entry(e, &mut top.nested(&format!("blacklist[{i}]")));
    }
    if c.tags.keys().any(|k| k.trim().is_empty()) {
        top.add("tags", "a tag name is empty");
    }
    if let Some(q) = &c.qlik {
        qlik(q, &mut Scope::new("qlik", problems));
    }
    c.sinks.validate(&mut Scope::new("sinks", problems));
}

fn udp(u: &UdpConfig, p: &mut Scope<'_>) {
    p.range("max_datagram_bytes", u.max_datagram_bytes, 1, 65_535);
    if u.rate_limit_per_source == Some(0) {
        p.add(
            "rate_limit_per_source",
            "0 would refuse everything: null switches the limit off",
        );
    }
}

fn http(h: &HttpConfig, p: &mut Scope<'_>) {
    p.range("max_connections", h.max_connections, 1, 100_000);
    p.range(
        "max_header_bytes",
        h.max_header_bytes,
        8 * 1024,
        1024 * 1024,
    );
    p.range("max_body_bytes", h.max_body_bytes, 0, 1024 * 1024);
    p.positive("header_timeout", h.header_timeout);
    p.positive("request_timeout", h.request_timeout);
    if h.auth_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        p.add(
            "auth_token",
            "is empty: remove it (null) or set a real token",
        );
    }
    // The files are read here, so that `check-config` and a reload name a
    // bad certificate or key before the daemon would serve with it.
    if let Err((key, why)) = crate::http::tls::server_config(&h.tls) {
        p.nested("tls").add(key, why);
    }
}

fn journal(j: &JournalConfig, p: &mut Scope<'_>) {
    p.range("max_uncommitted", j.max_uncommitted, 1_000, 100_000_000);
    let window = j.commit_window.get();
    if window.is_zero() || window > std::time::Duration::from_secs(60) {
        p.add(
            "commit_window",
            format!("{} is out of range: between 1ms and 60s", j.commit_window),
        );
    }
}

fn blacklist_entry(e: &BlacklistEntry, p: &mut Scope<'_>) {
    match (&e.directory, &e.user_id, &e.regex) {
        (Some(d), _, None) if d.trim().is_empty() => p.add("directory", "is empty"),
        (Some(_), Some(u), None) if u.trim().is_empty() => p.add("user_id", "is empty"),
        (Some(_), _, None) => {}
        (None, None, Some(re)) => {
            if let Err(err) = crate::blacklist::compile_regex(re) {
                p.add("regex", err);
            }
        }
        (None, Some(_), None) => p.add(
            "user_id",
            "needs a directory beside it (directory: LAB, user_id: svc_reload)",
        ),
        _ => p.add(
            "",
            "give either directory (with an optional user_id) or regex, not both and not neither",
        ),
    }
}

fn qlik(q: &QlikConfig, p: &mut Scope<'_>) {
    for (key, file) in [
        ("client", &q.certificates.client),
        ("client_key", &q.certificates.client_key),
        ("root", &q.certificates.root),
    ] {
        if file.as_os_str().is_empty() {
            p.nested("certificates").add(
                key,
                "is required: the PEM file exported from the QMC (Certificates, platform independent PEM format)",
            );
        }
    }
    for (i, proxy) in q.proxies.iter().enumerate() {
        let mut at = p.nested(&format!("proxies[{i}]"));
        if proxy.host.trim().is_empty() {
            at.add("host", "is empty");
        }
        if proxy.port == 0 {
            at.add("port", "must not be 0");
        }
    }
    if q.repository.port == 0 {
        p.nested("repository").add("port", "must not be 0");
    }
    if q.repository
        .host
        .as_deref()
        .is_some_and(|h| h.trim().is_empty())
    {
        p.nested("repository").add(
            "host",
            "is empty: remove it (null) to use the first proxy's host",
        );
    }
    if q.proxies.is_empty() && q.repository.host.is_none() {
        let why = if q.discover {
            "is required with discover: true when qlik.proxies is empty (the repository to discover the proxies from)"
        } else {
            "is required when qlik.proxies is empty (the repository to read app names from); or list the proxies"
        };
        p.nested("repository").add("host", why);
    }
    if q.app_names_interval.is_some_and(|d| d.get().is_zero()) {
        p.add(
            "app_names_interval",
            "must be longer than 0s, or null to switch app names off",
        );
    }
    if q.reconcile_interval.is_some_and(|d| d.get().is_zero()) {
        p.add(
            "reconcile_interval",
            "must be longer than 0s, or null to switch it off",
        );
    }
}

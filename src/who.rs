//! `whosin who`: who is (or was) logged in, from a running daemon's API.
//!
//! `--format json` prints exactly the body of `/api/v1/sessions`; the table is
//! for a person during an incident: host, user, since when, for how long, how
//! many apps, browser and OS, and a total line.

use std::time::Duration;

use crate::queries::SessionsAnswer;
use anyhow::{Context, bail};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// The API's JSON, unchanged.
    Json,
    /// Comma-separated values with a header line, for a spreadsheet or for
    /// mailing the people a restart will affect.
    Csv,
}

/// Table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// By host, then user (the API's order).
    Host,
    /// By user, then host.
    User,
    /// Longest-running first.
    Since,
}

/// What to ask.
#[derive(Clone, Debug)]
pub struct Options {
    /// Base URL of the daemon, e.g. `http://127.0.0.1:9842`.
    pub server: String,
    /// The instant (RFC 3339), or now.
    pub at: Option<String>,
    /// Only this host.
    pub host: Option<String>,
    /// Only this user (`DIRECTORY\userid`).
    pub user: Option<String>,
    /// Only sessions in this app (its id or name).
    pub app: Option<String>,
    /// Output format.
    pub format: Format,
    /// Bearer token, when the daemon has `http.auth_token`.
    pub token: Option<String>,
    /// Table order (JSON stays as the API sends it).
    pub sort: Sort,
    /// A PEM file of CA certificates to trust besides the system's, for a
    /// daemon with `http.tls` whose certificate a private CA signed.
    pub ca: Option<std::path::PathBuf>,
}

/// A failure the user caused (bad `--at`, unknown user syntax): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Asks the daemon and returns what to print.
pub fn run(opts: &Options) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(fetch(opts))
}

async fn fetch(opts: &Options) -> anyhow::Result<String> {
    let base = opts.server.trim_end_matches('/');
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(at) = &opts.at {
        query.push(("at", at));
    }
    if let Some(h) = &opts.host {
        query.push(("host", h));
    }
    if let Some(u) = &opts.user {
        query.push(("user", u));
    }
    if let Some(a) = &opts.app {
        query.push(("app", a));
    }
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/sessions")).map_err(|e| {
        BadRequest(format!(
            "--server {base:?} is not a URL like http://127.0.0.1:9842 ({e})"
        ))
    })?;
    url.query_pairs_mut().extend_pairs(query);
    let mut builder = reqwest::Client::builder()
        // The daemon answers once its journal has committed (seconds after a burst).
        .timeout(Duration::from_secs(150));
    if let Some(ca) = &opts.ca {
        let pem = std::fs::read(ca)
            .map_err(|e| BadRequest(format!("--ca {}: cannot read it: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            BadRequest(format!(
                "--ca {}: not a PEM file of certificates: {e}",
                ca.display()
            ))
        })?;
        if certs.is_empty() {
            return Err(BadRequest(format!(
                "--ca {} holds no certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            ))
            .into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder.build().context("creating the HTTP client")?;
    let mut req = client.get(url);
    if let Some(t) = &opts.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| {
        let hint = if base.starts_with("https://") {
            "; if its certificate is signed by a private CA, pass that CA with --ca FILE, and \
             name the host the certificate was made for in --server"
        } else {
            "; if it has http.tls, use --server https://..."
        };
        format!(
            "cannot reach whosin at {base}: is it running, and is --server (or http.listen) right?{hint}"
        )
    })?;
    let status = resp.status();
    let body = resp.text().await.context("reading the answer")?;
    if status == reqwest::StatusCode::BAD_REQUEST {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(BadRequest(msg).into());
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "whosin at {base} wants a token: pass --token, set WHOSIN_TOKEN, or give -c with the config that has http.auth_token"
        );
    }
    if !status.is_success() {
        bail!("whosin at {base} answered {status}: {body}");
    }
    match opts.format {
        Format::Json => Ok(body),
        Format::Table | Format::Csv => {
            let mut answer: SessionsAnswer =
                serde_json::from_str(&body).context("the answer is not the sessions JSON")?;
            sort(&mut answer, opts.sort);
            Ok(if opts.format == Format::Csv {
                csv(&answer)
            } else {
                table(&answer)
            })
        }
    }
}

/// Orders the sessions for the table.
pub fn sort(a: &mut SessionsAnswer, by: Sort) {
    let key = |s: &crate::queries::SessionView| s.user.to_lowercase();
    match by {
        Sort::Host => a
            .sessions
            .sort_by(|x, y| (&x.host, key(x), x.started_at).cmp(&(&y.host, key(y), y.started_at))),
        Sort::User => a
            .sessions
            .sort_by(|x, y| (key(x), &x.host, x.started_at).cmp(&(key(y), &y.host, y.started_at))),
        Sort::Since => a.sessions.sort_by_key(|s| s.started_at),
    }
}

/// `1h 02m`, `3m 05s`, `2d 4h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The apps of a session by name (the id while the name is unknown).
fn app_names(s: &crate::queries::SessionView) -> Vec<String> {
    s.apps
        .iter()
        .map(|a| a.name.clone().unwrap_or_else(|| a.id.clone()))
        .collect()
}

/// One CSV field, quoted when it must be (RFC 4180).
pub fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// The sessions as CSV, one line each, with a header line.
pub fn csv(a: &SessionsAnswer) -> String {
    let mut out = String::from(
        "host,user,user_directory,user_id,started_at,connections,apps,app_ids,browser,os\n",
    );
    for s in &a.sessions {
        let ids: Vec<&str> = s.apps.iter().map(|a| a.id.as_str()).collect();
        let cells = [
            s.host.clone(),
            s.user.clone(),
            s.user_directory.clone(),
            s.user_id.clone(),
            s.started_at.to_string(),
            s.connections.to_string(),
            app_names(s).join("; "),
            ids.join("; "),
            s.browser.clone().unwrap_or_default(),
            s.os.clone().unwrap_or_default(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// The table a person reads; durations are as of the answer's instant.
pub fn table(a: &SessionsAnswer) -> String {
    let header = [
        "HOST",
        "USER",
        "SINCE (UTC)",
        "FOR",
        "CONN",
        "APPS",
        "BROWSER",
        "OS",
    ];
    let rows: Vec<[String; 8]> = a
        .sessions
        .iter()
        .map(|s| {
            let since = s.started_at.strftime("%Y-%m-%d %H:%M:%S").to_string();
            let dur =
                a.at.duration_since(s.started_at)
                    .try_into()
                    .unwrap_or(Duration::ZERO);
            [
                s.host.clone(),
                s.user.clone(),
                since,
                human(dur),
                s.connections.to_string(),
                if s.apps.is_empty() {
                    "-".into()
                } else {
                    app_names(s).join(", ")
                },
                s.browser.clone().unwrap_or_else(|| "-".into()),
                s.os.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            if i + 1 < cells.len() {
                l.extend(std::iter::repeat_n(
                    ' ',
                    w.saturating_sub(c.chars().count()),
                ));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    if !rows.is_empty() {
        line(&header.map(String::from), &mut out);
        for r in &rows {
            line(r, &mut out);
        }
    }
    out.push_str(&format!(
        "{} session{}, {} user{} at {}\n",
        a.sessions.len(),
        if a.sessions.len() == 1 { "" } else { "s" },
        a.users,
        if a.users == 1 { "" } else { "s" },
        a.at
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::{AppView, SessionView};
    use jiff::Timestamp;

    #[test]
    fn table_lines_up_and_totals() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let a = SessionsAnswer {
            at: t("2026-11-21T10:42:00Z"),
            users: 1,
            sessions: vec![SessionView {
                host: "sense-node1".into(),
                user_directory: "LAB".into(),
                user_id: "anna".into(),
                user: "LAB\\anna".into(),
                started_at: t("2026-11-21T09:39:30Z"),
                connections: 2,
                apps: vec![
                    AppView {
                        stream: None,
                        connections: 1,
                        id: "3f2a1c9e".into(),
                        name: None,
                    },
                    AppView {
                        stream: Some("Everyone".into()),
                        connections: 1,
                        id: "a421f4a2".into(),
                        name: Some("Sales, EMEA".into()),
                    },
                ],
                browser: Some("Chrome 131".into()),
                os: None,
                virtual_proxy: None,
                reconciled: false,
            }],
        };
        let out = table(&a);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("HOST         USER      SINCE (UTC)"),
            "{out}"
        );
        assert!(
            lines[1].contains(
                "2026-11-21 09:39:30  1h 02m  2     3f2a1c9e, Sales, EMEA  Chrome 131  -"
            ),
            "app names, the id while the name is unknown: {out}"
        );
        let csv = csv(&a);
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "sense-node1,LAB\\anna,LAB,anna,2026-11-21T09:39:30Z,2,\"3f2a1c9e; Sales, EMEA\",3f2a1c9e; a421f4a2,Chrome 131,",
            "{csv}"
        );
        assert!(csv.starts_with("host,user,user_directory,user_id,started_at,"));
        assert_eq!(lines[2], "1 session, 1 user at 2026-11-21T10:42:00Z");
        let empty = SessionsAnswer {
            at: a.at,
            users: 0,
            sessions: vec![],
        };
        assert_eq!(
            table(&empty),
            "0 sessions, 0 users at 2026-11-21T10:42:00Z\n"
        );
    }

    #[test]
    fn sorting_by_user_host_and_since() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let v = |host: &str, user: &str, since: &str| SessionView {
            host: host.into(),
            user_directory: "LAB".into(),
            user_id: user.into(),
            user: format!("LAB\\{user}"),
            started_at: t(since),
            connections: 0,
            apps: vec![],
            browser: None,
            os: None,
            virtual_proxy: None,
            reconciled: false,
        };
        let mut a = SessionsAnswer {
            at: t("2026-11-21T12:00:00Z"),
            users: 2,
            sessions: vec![
                v("n2", "anna", "2026-11-21T09:00:00Z"),
                v("n1", "Bob", "2026-11-21T08:00:00Z"),
                v("n1", "anna", "2026-11-21T10:00:00Z"),
            ],
        };
        let order = |a: &SessionsAnswer| {
            a.sessions
                .iter()
                .map(|s| format!("{}@{}", s.user_id, s.host))
                .collect::<Vec<_>>()
        };
        sort(&mut a, Sort::User);
        assert_eq!(order(&a), ["anna@n1", "anna@n2", "Bob@n1"]);
        sort(&mut a, Sort::Host);
        assert_eq!(order(&a), ["anna@n1", "Bob@n1", "anna@n2"]);
        sort(&mut a, Sort::Since);
        assert_eq!(order(&a), ["Bob@n1", "anna@n2", "anna@n1"]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(185)), "3m 05s");
        assert_eq!(human(Duration::from_secs(3720)), "1h 02m");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d 4h");
    }
}

//! `whosin sessions list` and `whosin sessions end`: the proxy's own session
//! list, and ending sessions, like Ctrl-Q's `session-get` and `session-delete`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use super::{ProxySession, Qps, describe, names};
use crate::config::{Config, QlikConfig, QlikProxy};

/// Table or JSON, as for `whosin who`.
pub use crate::who::Format;

/// Table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// By virtual proxy, then host and user.
    VirtualProxy,
    /// By host, then virtual proxy and user.
    Host,
    /// By user directory, then user id.
    UserDir,
    /// By user id.
    UserId,
    /// By user name.
    UserName,
}

/// Why a command failed: bad usage or configuration (exit 2) or at run time (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Runtime(String),
}

/// The `qlik:` section, with the proxies the repository lists when
/// `qlik.discover` is on.
fn qlik(config: &Config) -> Result<QlikConfig, Failure> {
    let q = config.qlik.as_ref().ok_or_else(|| {
        Failure::Usage(
            "the configuration has no qlik: section; add the proxies and the QMC certificates (docs/configuration.md)".into(),
        )
    })?;
    if !q.discover {
        return Ok(q.clone());
    }
    runtime()?
        .block_on(super::qrs::with_discovered(q))
        .map_err(|e| Failure::Runtime(format!("discovering the proxies (qlik.discover): {e}")))
}

fn proxies<'c>(q: &'c QlikConfig, host: Option<&str>) -> Result<Vec<&'c QlikProxy>, Failure> {
    let chosen: Vec<&QlikProxy> = q
        .proxies
        .iter()
        .filter(|p| host.is_none_or(|h| names(p, h)))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = q.proxies.iter().map(|p| p.host.as_str()).collect();
        return Err(Failure::Usage(match host {
            Some(h) => format!(
                "--host {h}: not a proxy in qlik.proxies or discovered (there: {})",
                known.join(", ")
            ),
            None => "qlik.proxies is empty".into(),
        }));
    }
    Ok(chosen)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

/// `whosin sessions list`: prints the sessions of every chosen proxy and
/// virtual proxy. Every proxy is asked even when one fails; the failures are
/// reported after the list and make the exit code 1.
pub fn list(
    config: &Config,
    host: Option<&str>,
    virtual_proxies: &[String],
    format: Format,
    sort: Sort,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let q = qlik(config)?;
    let chosen = proxies(&q, host)?;
    let qps = Qps::new(&q).map_err(Failure::Usage)?;
    let rt = runtime()?;
    let mut sessions = Vec::new();
    let mut errors = Vec::new();
    rt.block_on(async {
        for p in chosen {
            let vps = if virtual_proxies.is_empty() {
                &p.virtual_proxies
            } else {
                virtual_proxies
            };
            for vp in vps {
                match qps.list(p, vp).await {
                    Ok(s) => sessions.extend(s),
                    Err(e) => errors.push(e),
                }
            }
        }
    });
    sort_sessions(&mut sessions, sort);
    let written = match format {
        Format::Json => serde_json::to_writer_pretty(&mut *out, &sessions)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out)),
        Format::Table => write_table(out, &sessions),
        Format::Csv => write_csv(out, &sessions),
    };
    written.map_err(|e| Failure::Runtime(format!("cannot write the list: {e}")))?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(errors.join("\n")))
    }
}

fn sort_sessions(s: &mut [ProxySession], sort: Sort) {
    let key = |x: &ProxySession| -> Vec<String> {
        let user = (
            x.user_directory.to_lowercase(),
            x.user_id.to_lowercase(),
            x.user_name.clone().unwrap_or_default().to_lowercase(),
        );
        match sort {
            Sort::VirtualProxy => vec![x.virtual_proxy.clone(), x.host.clone(), user.0, user.1],
            Sort::Host => vec![x.host.clone(), x.virtual_proxy.clone(), user.0, user.1],
            Sort::UserDir => vec![user.0, user.1, x.host.clone()],
            Sort::UserId => vec![user.1, user.0, x.host.clone()],
            Sort::UserName => vec![user.2, user.0, user.1],
        }
    };
    s.sort_by_key(key);
}

fn write_csv(out: &mut dyn Write, sessions: &[ProxySession]) -> std::io::Result<()> {
    writeln!(
        out,
        "host,virtual_proxy,user_directory,user_id,user_name,session_id"
    )?;
    for s in sessions {
        let cells = [
            s.host.as_str(),
            s.virtual_proxy.as_str(),
            s.user_directory.as_str(),
            s.user_id.as_str(),
            s.user_name.as_deref().unwrap_or_default(),
            s.session_id.as_str(),
        ];
        let line: Vec<String> = cells.iter().map(|c| crate::who::csv_field(c)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

fn write_table(out: &mut dyn Write, sessions: &[ProxySession]) -> std::io::Result<()> {
    let head = [
        "HOST",
        "VIRTUAL PROXY",
        "USER DIRECTORY",
        "USER ID",
        "USER NAME",
        "SESSION ID",
    ];
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            [
                s.host.clone(),
                shown(&s.virtual_proxy),
                s.user_directory.clone(),
                s.user_id.clone(),
                s.user_name.clone().unwrap_or_default(),
                s.session_id.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        writeln!(out, "{}", l.trim_end())
    };
    line(out, &head)?;
    for r in &rows {
        line(out, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    // Totals per proxy and per virtual proxy.
    let mut totals: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for s in sessions {
        *totals
            .entry(&s.host)
            .or_default()
            .entry(shown(&s.virtual_proxy))
            .or_default() += 1;
    }
    writeln!(out)?;
    for (host, vps) in &totals {
        let n: usize = vps.values().sum();
        let parts: Vec<String> = vps.iter().map(|(vp, n)| format!("{vp}: {n}")).collect();
        writeln!(out, "{host}: {} ({})", plural(n), parts.join(", "))?;
    }
    writeln!(out, "total: {}", plural(sessions.len()))
}

fn shown(virtual_proxy: &str) -> String {
    if virtual_proxy.is_empty() {
        "(default)".into()
    } else {
        virtual_proxy.to_owned()
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 session".into()
    } else {
        format!("{n} sessions")
    }
}

/// What `whosin sessions end` ends.
pub enum Target {
    /// These session ids.
    Sessions(Vec<String>),
    /// Every session of `DIRECTORY\userid`.
    User(String, String),
    /// Every session on the virtual proxy (after confirmation).
    All,
}

/// `whosin sessions end`: ends sessions on one proxy's virtual proxy and
/// prints each ended session and a total. `confirm` is asked before ending
/// all sessions (unless `yes`).
#[allow(clippy::too_many_arguments)]
pub fn end(
    config: &Config,
    host: &str,
    virtual_proxy: &str,
    target: Target,
    yes: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let q = qlik(config)?;
    let proxy = proxies(&q, Some(host))?[0];
    let qps = Qps::new(&q).map_err(Failure::Usage)?;
    let rt = runtime()?;
    let what = describe(proxy, virtual_proxy);
    let io = |e: std::io::Error| Failure::Runtime(format!("cannot write: {e}"));
    rt.block_on(async {
        let before = qps
            .list(proxy, virtual_proxy)
            .await
            .map_err(Failure::Runtime)?;
        let mut ended: Vec<ProxySession> = Vec::new();
        let mut errors = Vec::new();
        match target {
            Target::Sessions(ids) => {
                for id in ids {
                    match qps.end_session(proxy, virtual_proxy, &id).await {
                        Ok(()) => ended.push(
                            before
                                .iter()
                                .find(|s| s.session_id == id)
                                .cloned()
                                .unwrap_or_else(|| unknown(proxy, virtual_proxy, &id)),
                        ),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Target::User(dir, id) => {
                qps.end_user(proxy, virtual_proxy, &dir, &id)
                    .await
                    .map_err(Failure::Runtime)?;
                ended.extend(
                    before
                        .iter()
                        .filter(|s| {
                            s.user_directory.eq_ignore_ascii_case(&dir)
                                && s.user_id.eq_ignore_ascii_case(&id)
                        })
                        .cloned(),
                );
            }
            Target::All => {
                if before.is_empty() {
                    writeln!(out, "{what}: no sessions; nothing ended").map_err(io)?;
                    return Ok(());
                }
                if !yes {
                    write!(
                        out,
                        "End all {} on {what}? Their users are logged out. [y/N] ",
                        plural(before.len())
                    )
                    .map_err(io)?;
                    out.flush().map_err(io)?;
                    let mut answer = String::new();
                    let _ = input.read_line(&mut answer);
                    if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
                        writeln!(out, "nothing ended").map_err(io)?;
                        return Ok(());
                    }
                }
                for s in &before {
                    match qps.end_session(proxy, virtual_proxy, &s.session_id).await {
                        Ok(()) => ended.push(s.clone()),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        for s in &ended {
            writeln!(
                out,
                "ended {} {}\\{}{} on {what}",
                s.session_id,
                s.user_directory,
                s.user_id,
                s.user_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )
            .map_err(io)?;
        }
        writeln!(out, "ended {}", plural(ended.len())).map_err(io)?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Failure::Runtime(errors.join("\n")))
        }
    })
}

fn unknown(proxy: &QlikProxy, virtual_proxy: &str, id: &str) -> ProxySession {
    ProxySession {
        host: proxy.host.clone(),
        virtual_proxy: virtual_proxy.to_owned(),
        user_directory: "?".into(),
        user_id: "?".into(),
        user_name: None,
        session_id: id.to_owned(),
        attributes: serde_json::Value::Array(Vec::new()),
    }
}

//! Reading, substituting and validating the configuration file.
//!
//! serde stops at the first error, but an administrator wants every problem at
//! once. So the YAML is first read into a generic tree, `${NAME}` references are
//! replaced, and then each top-level section (and each blacklist entry) is
//! deserialized on its own, collecting one problem per broken part; finally the
//! typed config is checked for what types cannot say (a regex that does not
//! compile, a v2 InfluxDB without a token, ...). Every problem carries its key path.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{BlacklistEntry, Config};
pub use crate::problems::Problem;
use crate::problems::Scope;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A reload found a file without a single setting (see
    /// [`super::watch::reload`]); at start such a file means "all defaults".
    #[error(
        "{} is empty; keeping the running settings — probably saved halfway (while whosin runs, a file with no settings, only blanks or comments, is refused; to run with the defaults, restart whosin)",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid YAML.
    #[error("{0}")]
    Yaml(String),
    /// The file is YAML but some keys are wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem as one line each.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Loads and validates the file at `path`, with `${NAME}` taken from the environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_env(&read(path)?)
}

/// The file's text, or why it cannot be read.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads `text` with `${NAME}` taken from the environment.
pub fn load_env(text: &str) -> Result<Config, ConfigError> {
    load_str(text, &|name| std::env::var(name).ok())
}

/// Loads and validates YAML text; `env` answers `${NAME}` references.
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut tree: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::Yaml(redact_secrets(text, &format!("not valid YAML: {e}"))))?
    };
    let mut problems = Vec::new();
    substitute_env(&mut tree, &mut String::new(), env, &mut problems);

    let mut config = Config::default();
    match tree {
        Value::Null => {}
        Value::Object(map) => {
            for (key, value) in map {
                apply_section(&mut config, &key, value, &mut problems);
            }
        }
        other => problems.push(Problem::new(
            "",
            format!(
                "the file must be a mapping of keys (udp:, http:, ...), not {}",
                kind(&other)
            ),
        )),
    }
    // What types cannot say, also when some keys were wrong (their defaults
    // stand in): every problem at once, except those about a key already
    // named, or about its section, which would only repeat it.
    let mut semantic = Vec::new();
    validate(&config, &mut semantic);
    let named: Vec<String> = problems.iter().map(|p| p.path.clone()).collect();
    problems.extend(
        semantic
            .into_iter()
            .filter(|p| !named.iter().any(|n| related(n, &p.path))),
    );
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Whether one key path is the other or lies within it.
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        outer.is_empty()
            || inner == outer
            || (inner.starts_with(outer) && matches!(inner.as_bytes()[outer.len()], b'.' | b'['))
    };
    within(a, b) || within(b, a)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Replaces `${NAME}` in every string with the variable's value.
fn substitute_env(
    v: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match v {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    problems.push(Problem::new(path.clone(), "\"${\" without a closing \"}\""));
                    return;
                };
                let name = &after[..end];
                match env(name) {
                    Some(val) => out.push_str(&val),
                    None => problems.push(Problem::new(
                        path.clone(),
                        format!("environment variable {name} is not set"),
                    )),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(item, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A YAML syntax error quotes the lines around it, so that a typo on the
/// password's line would print the password. Every quoted line that holds a
/// secret (a `password:`, `token:` or `auth_token:` line, or a continuation
/// of its value) is replaced, and each secret value of `text` anywhere else
/// in `message` becomes `***`.
fn redact_secrets(text: &str, message: &str) -> String {
    static KEY_LINE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?m)\b(password|token|auth_token)(\s*:).*$").expect("valid")
    });
    static SNIPPET: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^(\s*)(\d+)( \|).*$").expect("valid"));
    // Line numbers (1-based) of secrets: the key's line and the lines
    // indented deeper that follow it (a value continued on the next lines).
    let mut secret_lines = std::collections::HashSet::new();
    let mut key_indent: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(k) = key_indent
            && (line.trim().is_empty() || indent > k)
        {
            secret_lines.insert(i + 1);
            continue;
        }
        key_indent = None;
        if KEY_LINE.is_match(line) {
            secret_lines.insert(i + 1);
            key_indent = Some(indent);
        }
    }
    let mut out: String = message
        .lines()
        .map(|l| match SNIPPET.captures(l) {
            Some(c) if c[2].parse().is_ok_and(|n: usize| secret_lines.contains(&n)) => {
                format!("{}{}{} (a secret's line, not shown)", &c[1], &c[2], &c[3])
            }
            _ => KEY_LINE.replace_all(l, "$1$2 ***").into_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    for cap in KEY_LINE.captures_iter(text) {
        let line = cap.get(0).map_or("", |m| m.as_str());
        let value = line.split_once(':').map_or("", |(_, v)| v).trim();
        for part in [value, value.trim_matches(|c: char| "[]{}'\"".contains(c))] {
            if part.len() >= 3 {
                out = out.replace(part, "***");
            }
        }
    }
    out
}

pub use crate::problems::is_secret;

/// Most problems named in one section (a bound on the retries below).
const MAX_PROBLEMS_PER_SECTION: usize = 100;

/// Deserializes `value` as `T`, recording every problem under `prefix`.
///
/// serde stops at the first error, so on an error its key is recorded and
/// removed from the tree (its default applies), and the rest is read again:
/// a section with a bad `listen`, an unknown key and a bad duration names all
/// three. A missing required key, or an error at the section itself, ends
/// the section (nothing left to remove).
fn section<T: DeserializeOwned>(
    prefix: &str,
    mut value: Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    for _ in 0..MAX_PROBLEMS_PER_SECTION {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = err.path().iter().cloned().collect();
        let inner = err.path().to_string();
        let path = match inner.as_str() {
            "." | "" => prefix.to_owned(),
            p if p.starts_with('[') => format!("{prefix}{p}"),
            p => format!("{prefix}.{p}"),
        };
        let text = err.into_inner().to_string();
        // A type error quotes the value it met: never a secret's.
        let message = if is_secret(&path) {
            "is not a string (the value is not shown: it is a secret)".to_owned()
        } else {
            text.clone()
        };
        problems.push(Problem::new(path, message));
        if text.starts_with("missing field") || !remove_at(&mut value, &segments) {
            return None;
        }
    }
    None
}

/// Removes the node at `path` from `tree`; false when there is none to remove.
/// An item of a list is removed with its whole list (removing it alone would
/// renumber the items after it, and their problems would name wrong indexes).
fn remove_at(tree: &mut Value, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let end = path
        .iter()
        .position(|s| !matches!(s, Segment::Map { .. }))
        .unwrap_or(path.len());
    let path = &path[..end];
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        let Segment::Map { key } = seg else {
            return false;
        };
        match node.get_mut(key.as_str()) {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

fn apply_section(config: &mut Config, key: &str, value: Value, problems: &mut Vec<Problem>) {
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = section(key, value, problems) {
                config.$field = v;
            }
        };
    }
    match key {
        "udp" => set!(udp),
        "http" => set!(http),
        "data_dir" => set!(data_dir),
        "retention" => set!(retention),
        "journal" => set!(journal),
        "sessions" => set!(sessions),
        "sinks" => set!(sinks),
        "qlik" => set!(qlik),
        "tags" => {
            if let Some(v) = tags(value, problems) {
                config.tags = v;
            }
        }
        "blacklist" => match value {
            Value::Null => config.blacklist.clear(),
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("blacklist[{i}]");
                    if let Some(entry) = section::<BlacklistEntry>(&path, item, problems) {
                        config.blacklist.push(entry);
                    }
                }
            }
            other => problems.push(Problem::new(
                "blacklist",
                format!("must be a list of entries, not {}", kind(&other)),
            )),
        },
        other => problems.push(Problem::new(
            other,
            "unknown key (expected one of udp, http, data_dir, retention, journal, sessions, blacklist, tags, sinks, qlik)",
        )),
    }
}

/// Tags take any scalar value and keep it as text (`site: 1` is the tag `1`).
fn tags(
    value: Value,
    problems: &mut Vec<Problem>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let map = match value {
        Value::Null => return Some(Default::default()),
        Value::Object(map) => map,
        other => {
            problems.push(Problem::new(
                "tags",
                format!(
                    "must be a mapping of tag names to values, not {}",
                    kind(&other)
                ),
            ));
            return None;
        }
    };
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in map {
        match scalar_text(&v) {
            Some(text) => {
                out.insert(k, text);
            }
            None => problems.push(Problem::new(
                format!("tags.{k}"),
                format!("must be a single value, not {}", kind(&v)),
            )),
        }
    }
    Some(out)
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Accepts a string or a number as text (`user_id: 12345`).
pub(super) fn opt_scalar_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(None),
        v => scalar_text(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("must be text, not {}", kind(&v)))),
    }
}

/// `0.0.0.0:9997`, `[::]:9997`, with a message that shows the expected form.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let v = Value::deserialize(d)?;
    let text = scalar_text(&v).unwrap_or_default();
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{v} is not an address like 0.0.0.0:9997 or [::]:9997"
        ))
    })
}

/// A list of IPs or CIDRs; a bare IP means just that address.
pub(super) fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let v = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    v.into_iter()
        .enumerate()
        .map(|(i, item)| {
            let text = scalar_text(&item).unwrap_or_default();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "[{i}]: {item} is not an IP address or CIDR like 10.0.0.5 or 10.0.0.0/24"
                    ))
                })
        })
        .collect()
}

/// What types cannot say: forms, ranges, regexes, required-when-enabled keys.
fn validate(c: &Config, problems: &mut Vec<Problem>) {
    let mut p = |path: &str, msg: String| problems.push(Problem::new(path, msg));

    if !(1..=65_535).contains(&c.udp.max_datagram_bytes) {
        p(
            "udp.max_datagram_bytes",
            format!("{} is out of range 1..65535", c.udp.max_datagram_bytes),
        );
    }
    if c.udp.rate_limit_per_source == Some(0) {
        p(
            "udp.rate_limit_per_source",
            "0 would refuse everything: null switches the limit off".into(),
        );
    }
    let mut range = |path: &str, v: usize, lo: usize, hi: usize| {
        if !(lo..=hi).contains(&v) {
            p(path, format!("{v} is out of range {lo}..{hi}"));
        }
    };
    range("http.max_connections", c.http.max_connections, 1, 100_000);
    range(
        "http.max_header_bytes",
        c.http.max_header_bytes,
        8 * 1024,
        1024 * 1024,
    );
    range("http.max_body_bytes", c.http.max_body_bytes, 0, 1024 * 1024);
    range(
        "sessions.max_tracked",
        c.sessions.max_tracked,
        100,
        100_000_000,
    );
    range(
        "journal.max_uncommitted",
        c.journal.max_uncommitted,
        1_000,
        100_000_000,
    );
    for (path, d) in [
        ("http.header_timeout", &c.http.header_timeout),
        ("http.request_timeout", &c.http.request_timeout),
    ] {
        if d.get().is_zero() {
            p(path, "must be longer than 0s".into());
        }
    }
    if c.http
        .auth_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        p(
            "http.auth_token",
            "is empty: remove it (null) or set a real token".into(),
        );
    }
    if c.sessions.idle_timeout.get().is_zero() {
        p("sessions.idle_timeout", "must be longer than 0s".into());
    }
    if c.retention.get().is_zero() {
        p("retention", "must be longer than 0s".into());
    }
    let window = c.journal.commit_window.get();
    if window.is_zero() || window > std::time::Duration::from_secs(60) {
        p(
            "journal.commit_window",
            format!(
                "{} is out of range: between 1ms and 60s",
                c.journal.commit_window
            ),
        );
    }
    for (i, e) in c.blacklist.iter().enumerate() {
        let path = format!("blacklist[{i}]");
        match (&e.directory, &e.user_id, &e.regex) {
            (Some(d), _, None) if d.trim().is_empty() => {
                p(&format!("{path}.directory"), "is empty".into())
            }
            (Some(_), Some(u), None) if u.trim().is_empty() => {
                p(&format!("{path}.user_id"), "is empty".into())
            }
            (Some(_), _, None) => {}
            (None, None, Some(re)) => {
                if let Err(err) = crate::blacklist::compile_regex(re) {
                    p(&format!("{path}.regex"), err);
                }
            }
            (None, Some(_), None) => p(
                &format!("{path}.user_id"),
                "needs a directory beside it (directory: LAB, user_id: svc_reload)".into(),
            ),
            _ => p(
                &path,
                "give either directory (with an optional user_id) or regex, not both and not neither"
                    .into(),
            ),
        }
    }
    for k in c.tags.keys() {
        if k.trim().is_empty() {
            p("tags", "a tag name is empty".into());
        }
    }

    if let Some(q) = &c.qlik {
        for (key, file) in [
            ("client", &q.certificates.client),
            ("client_key", &q.certificates.client_key),
            ("root", &q.certificates.root),
        ] {
            if file.as_os_str().is_empty() {
                p(
                    &format!("qlik.certificates.{key}"),
                    "is required: the PEM file exported from the QMC (Certificates, platform independent PEM format)".into(),
                );
            }
        }
        for (i, proxy) in q.proxies.iter().enumerate() {
            if proxy.host.trim().is_empty() {
                p(&format!("qlik.proxies[{i}].host"), "is empty".into());
            }
            if proxy.port == 0 {
                p(&format!("qlik.proxies[{i}].port"), "must not be 0".into());
            }
        }
        if q.reconcile_interval.is_some_and(|d| d.get().is_zero()) {
            p(
                "qlik.reconcile_interval",
                "must be longer than 0s, or null to switch it off".into(),
            );
        }
    }
    c.sinks.validate(&mut Scope::new("sinks", problems));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn problems(yaml: &str) -> Vec<String> {
        match load_str(yaml, &no_env) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = load_str("", &no_env).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.udp.listen.to_string(), "0.0.0.0:9997");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9842");
        assert_eq!(c.sessions.idle_timeout.get(), Duration::from_secs(1800));
        assert_eq!(c.retention.get(), Duration::from_secs(90 * 86_400));
        assert!(c.sinks.prometheus.enabled);
        assert_eq!(
            c.sinks.mqtt.topics.all.as_deref(),
            Some("qliksense/userevent")
        );
    }

    #[test]
    fn the_shipped_config_file_validates() {
        let text = super::super::EMBEDDED;
        let c = load_str(text, &no_env).unwrap();
        assert_eq!(c.udp.listen.to_string(), "0.0.0.0:9997");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9842");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        // It documents the defaults: every section but the blacklist is them.
        let d = Config::default();
        assert_eq!(
            (&c.udp, &c.http, &c.journal, &c.sessions, &c.sinks),
            (&d.udp, &d.http, &d.journal, &d.sessions, &d.sinks)
        );
    }

    #[test]
    fn limits_out_of_range_are_named() {
        let p = problems(
            "udp: {rate_limit_per_source: 0}\nhttp: {max_connections: 0, max_header_bytes: 100, \
             header_timeout: 0s}\nsessions: {max_tracked: 5}\njournal: {max_uncommitted: 10}\n",
        );
        for key in [
            "udp.rate_limit_per_source",
            "http.max_connections",
            "http.max_header_bytes",
            "http.header_timeout",
            "sessions.max_tracked",
            "journal.max_uncommitted",
        ] {
            assert!(
                p.iter().any(|l| l.starts_with(&format!("{key}:"))),
                "{key} not named in {p:?}"
            );
        }
    }

    #[test]
    fn a_syntax_error_on_a_secret_line_does_not_quote_the_secret() {
        let yaml = "sinks:\n  influxdb:\n    password: 'hunter2-secret\n    url: x\n";
        let msg = load_str(yaml, &no_env).unwrap_err().to_string();
        assert!(msg.starts_with("not valid YAML"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn a_quoted_line_of_a_secret_is_not_shown_even_cut_short() {
        // Found by the fuzzer: the error quotes the line from its middle on,
        // without the key, and NUL bytes shown as blanks.
        let yaml = format!(
            "sinks:\n  influxdb:\n    token: null {}# e.g. \"S3CRET\0\0\0 tail\n    url: x\n",
            " ".repeat(60)
        );
        let msg = load_str(&yaml, &no_env).unwrap_err().to_string();
        assert!(msg.starts_with("not valid YAML"), "{msg}");
        assert!(!msg.contains("S3CRET"), "{msg}");
        assert!(msg.contains("a secret's line, not shown"), "{msg}");
        // A value continued on the next, deeper-indented line is hidden too.
        let yaml = "http:\n  auth_token: \"abc\n    S3CRET\n  listen: [\n";
        let msg = load_str(yaml, &no_env).unwrap_err().to_string();
        assert!(!msg.contains("S3CRET"), "{msg}");
    }

    #[test]
    fn passwords_in_urls_are_redacted_for_logs() {
        use crate::config::redact_url;
        assert_eq!(
            redact_url("http://butler:s3cret@influx:8086"),
            "http://butler:***@influx:8086/"
        );
        assert_eq!(redact_url("mqtt://broker:1883"), "mqtt://broker:1883");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn secrets_are_never_quoted_in_problems() {
        let got = problems(
            "http:\n  auth_token: 918273645\nsinks:\n  influxdb:\n    password: [4711, 1174]\n    token: 55667788\n  mqtt:\n    password: 99887766\n",
        );
        let all = got.join("\n");
        for secret in ["918273645", "4711", "55667788", "99887766"] {
            assert!(!all.contains(secret), "{secret} shown in:\n{all}");
        }
        assert!(
            all.contains("http.auth_token: is not a string (the value is not shown"),
            "{all}"
        );
    }

    #[test]
    fn every_problem_is_named_by_key_path() {
        let got = problems(
            r#"
udp:
  listen: "x"
http:
  lisen: "127.0.0.1:1"
retention: 30
blacklist:
  - regex: '^LAB\\(test'
  - directory: LAB
    regex: x
  - user_id: bob
sessions:
  idle_timeout: "5 minutes"
colour: blue
"#,
        );
        let want_prefixes = [
            "udp.listen: \"x\" is not an address like 0.0.0.0:9997",
            "http.lisen: unknown field `lisen`",
            "retention: 30 has no unit",
            "blacklist[0].regex:",
            "blacklist[1]: give either directory",
            "blacklist[2].user_id: needs a directory",
            "sessions.idle_timeout: \"5 minutes\" is not a duration",
            "colour: unknown key",
        ];
        for want in want_prefixes {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
        assert!(got.iter().any(|g| g.contains("unclosed group")), "{got:#?}");
    }

    #[test]
    fn one_run_names_every_problem_of_five_sections() {
        let got = problems(include_str!("../../tests/data/config/five-sections.yaml"));
        let want = [
            "udp.listen:",
            "udp.colour: unknown field",
            "udp.max_datagram_bytes: 0 is out of range",
            "http.max_connections: invalid type",
            "http.auth_token: is empty",
            "blacklist[0].regex:",
            "blacklist[1].directory: is empty",
            "sessions.idle_timeout:",
            "sinks.influxdb.version: 7 is not 1, 2 or 3",
            "sinks.influxdb.batch_size:",
            "sinks.mqtt.qos:",
            "sinks.mqtt.url:",
            "sinks.new_relic.scramble: invalid type",
            "sinks.new_relic.accounts[0].account_id:",
            "sinks.new_relic.accounts[0].insert_key: is empty",
            "qlik.certificates.client_key: is required",
            "qlik.certificates.root: is required",
            "qlik.proxies[0].host: is empty",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "nothing named twice: {got:#?}");
    }

    #[test]
    fn a_semantic_problem_of_a_key_already_named_is_not_repeated() {
        // `version: "two"` is a type error; the default standing in for it
        // must not add "database is required" or a second version problem.
        let got = problems(
            "sinks:\n  influxdb:\n    enabled: true\n    version: \"two\"\n    database: null\n",
        );
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[0].starts_with("sinks.influxdb.version: invalid type"),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("sinks.influxdb.database: is required"),
            "{got:#?}"
        );
    }

    #[test]
    fn sinks_need_their_keys_when_enabled() {
        let got = problems(
            r#"
sinks:
  influxdb:
    enabled: true
    url: "localhost:8086"
    version: 2
  mqtt:
    enabled: true
    url: "tcp://x"
    qos: 3
    topics:
      all: "a/#"
"#,
        );
        for want in [
            "sinks.influxdb.url:",
            "sinks.influxdb.org: is required with version: 2",
            "sinks.influxdb.bucket:",
            "sinks.influxdb.token:",
            "sinks.mqtt.url:",
            "sinks.mqtt.qos: 3 is not 0, 1 or 2",
            "sinks.mqtt.topics.all:",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn mqtt_tls_files_are_checked() {
        let got = problems(
            r#"
sinks:
  mqtt:
    enabled: true
    url: "mqtt://broker"
    keepalive: "0s"
    ca_file: /etc/hostname
    client_cert: /etc/hostname
    topics:
      state: "qliksense/+"
"#,
        );
        for want in [
            "sinks.mqtt.keepalive: must be at least 1s",
            "sinks.mqtt.ca_file: is only used with an mqtts:// url",
            "sinks.mqtt.client_key: client_cert and client_key go together",
            "sinks.mqtt.topics.state:",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want:?} in {got:#?}"
            );
        }
        let got = problems(
            "sinks:\n  mqtt:\n    enabled: true\n    url: \"mqtts://broker\"\n    ca_file: /nonexistent/ca.pem\n",
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("sinks.mqtt.ca_file: cannot read /nonexistent/ca.pem")),
            "{got:#?}"
        );
    }

    #[test]
    fn environment_references_are_replaced_or_named() {
        let env = |n: &str| (n == "TOKEN").then(|| "s3cret".to_owned());
        let c = load_str("http:\n  auth_token: \"Bearer-${TOKEN}\"\n", &env).unwrap();
        assert_eq!(c.http.auth_token.as_deref(), Some("Bearer-s3cret"));
        let err = load_str("sinks:\n  influxdb:\n    password: \"${NOPE}\"\n", &env).unwrap_err();
        assert_eq!(
            err.lines(),
            vec!["sinks.influxdb.password: environment variable NOPE is not set"]
        );
    }

    #[test]
    fn numbers_are_text_where_text_is_expected() {
        let c = load_str(
            "tags:\n  site: 1\n  prod: true\nblacklist:\n  - directory: 42\n    user_id: 12345\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.tags["site"], "1");
        assert_eq!(c.tags["prod"], "true");
        assert_eq!(c.blacklist[0].user_id.as_deref(), Some("12345"));
    }

    #[test]
    fn sources_accept_ips_and_cidrs() {
        let c = load_str(
            "udp:\n  listen: \"[::]:9997\"\n  allowed_sources: [\"10.0.0.5\", \"192.168.1.0/24\", \"::1\"]\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.udp.allowed_sources.len(), 3);
        assert_eq!(c.udp.allowed_sources[0].to_string(), "10.0.0.5/32");
        let got = problems("udp:\n  allowed_sources: [\"10.0.0.300\"]\n");
        assert!(
            got[0].starts_with("udp.allowed_sources: [0]: \"10.0.0.300\""),
            "{got:?}"
        );
    }

    #[test]
    fn null_topics_switch_off_and_null_reconcile_too() {
        let c = load_str(
            "sinks:\n  mqtt:\n    topics:\n      all: null\nqlik:\n  proxies: [{host: qs1}]\n  certificates: {client: a, client_key: b, root: c}\n  reconcile_interval: null\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.sinks.mqtt.topics.all, None);
        assert!(c.sinks.mqtt.topics.session_start.is_some());
        let q = c.qlik.unwrap();
        assert_eq!(q.reconcile_interval, None);
        assert_eq!(q.proxies[0].port, 4243);
        assert_eq!(q.proxies[0].virtual_proxies, vec![String::new()]);
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let err = load_str("udp: [\n", &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Yaml(_)));
        assert!(problems("- a\n- b\n")[0].contains("must be a mapping"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// Any text is a config or a list of problems, each naming a key or
        /// the file; a secret's value never appears in them.
        #[test]
        fn any_text_loads_or_names_its_problems(text in "(?s).{0,300}") {
            if let Err(e) = load_str(&text, &no_env) {
                proptest::prop_assert!(!e.lines().is_empty());
            }
        }

        #[test]
        fn keys_with_arbitrary_values_never_leak_secrets(
            value in "[a-zA-Z0-9 :,\\[\\]{}-]{1,30}",
        ) {
            let secret = format!("S3CRET{value}");
            for key in ["http:\n  auth_token", "sinks:\n  influxdb:\n    token", "sinks:\n  mqtt:\n    password"] {
                let yaml = format!("{key}: [{secret}]\n");
                if let Err(e) = load_str(&yaml, &no_env) {
                    for line in e.lines() {
                        proptest::prop_assert!(!line.contains("S3CRET"), "{}", line);
                    }
                }
            }
        }
    }
}

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
    super::validate::validate(&config, &mut semantic);
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

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;

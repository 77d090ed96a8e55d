//! Configuration problems named by key path, and the checks every section
//! shares (URLs, secrets).
//!
//! This lives below both `config` (which loads the file) and the sinks (whose
//! config structs validate themselves), so that neither imports the other's
//! internals: a sink's `validate` gets a [`Scope`] at its own key path and
//! names its problems relative to it.

use std::fmt;

/// One thing wrong with the configuration, at a key path like `udp.listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `udp.listen`, `blacklist[0].regex`, ...
    pub path: String,
    /// What is wrong, and where it helps, what to write instead.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Where a section's `validate` writes its problems: `add("url", ..)` in the
/// scope `sinks.influxdb` is the problem `sinks.influxdb.url`.
pub struct Scope<'a> {
    prefix: String,
    out: &'a mut Vec<Problem>,
}

impl<'a> Scope<'a> {
    /// A scope at `prefix` (`""` for the top level) collecting into `out`.
    pub fn new(prefix: impl Into<String>, out: &'a mut Vec<Problem>) -> Self {
        Self {
            prefix: prefix.into(),
            out,
        }
    }

    /// The full path of `key` in this scope (`key` may be `""`: the scope itself).
    pub fn path(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => key.to_owned(),
            (false, false) if key.starts_with('[') => format!("{}{key}", self.prefix),
            (false, false) => format!("{}.{key}", self.prefix),
        }
    }

    /// Records a problem at `key` within this scope.
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.out.push(Problem::new(path, message));
    }

    /// A scope for `key` within this one (`accounts[0]`, `topics`).
    pub fn nested(&mut self, key: &str) -> Scope<'_> {
        Scope {
            prefix: self.path(key),
            out: self.out,
        }
    }

    /// `key` must be a URL of one of `schemes` (`http`, `https`).
    pub fn url(&mut self, key: &str, url: &str, schemes: &[&str]) {
        let ok = url
            .split_once("://")
            .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
        if !ok {
            self.add(
                key,
                format!(
                    "{url:?} is not a URL starting with {}://",
                    schemes.join(":// or ")
                ),
            );
        }
    }

    /// `key` must be set and not blank; `why` says when it is needed
    /// (`"with version: 2"`).
    pub fn required(&mut self, key: &str, value: Option<&str>, why: &str) {
        if value.is_none_or(|v| v.trim().is_empty()) {
            let msg = if why.is_empty() {
                "is required".to_owned()
            } else {
                format!("is required {why}")
            };
            self.add(key, msg);
        }
    }

    /// `key` must be a duration longer than zero.
    pub fn positive(&mut self, key: &str, d: crate::duration::HumanDuration) {
        if d.get().is_zero() {
            self.add(key, "must be longer than 0s");
        }
    }

    /// `key` must lie in `lo..=hi`.
    pub fn range(&mut self, key: &str, v: usize, lo: usize, hi: usize) {
        if !(lo..=hi).contains(&v) {
            self.add(key, format!("{v} is out of range {lo}..{hi}"));
        }
    }
}

/// Keys whose values are secrets, never shown in messages.
pub fn is_secret(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    matches!(last, "password" | "token" | "auth_token" | "insert_key")
}

/// `url` with any password in it replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Deserializes a string, also from a number (`account_id: 1234567`):
/// YAML writes ids either way.
pub fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::Deserialize as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "must be text, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_join_key_paths() {
        let mut out = Vec::new();
        let mut s = Scope::new("sinks.new_relic", &mut out);
        s.add("url", "bad");
        s.nested("accounts[1]").add("insert_key", "is required");
        s.nested("accounts").add("[2]", "is empty");
        Scope::new("", &mut out).add("udp", "x");
        let paths: Vec<&str> = out.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sinks.new_relic.url",
                "sinks.new_relic.accounts[1].insert_key",
                "sinks.new_relic.accounts[2]",
                "udp"
            ]
        );
    }
}

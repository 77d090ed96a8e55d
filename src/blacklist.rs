//! Who is dropped, and why.
//!
//! Service accounts (`INTERNAL\sa_repository`, reload users, monitoring probes)
//! open sessions all day and drown the picture of real people. An entry names a
//! whole directory, one user, or a regex on `DIRECTORY\userid`; all compare
//! case-insensitively because Qlik's user names do (Butler SOS matched exactly,
//! which let `lab\svc` through when the entry said `LAB\svc`).
//!
//! A [`Blacklist`] is compiled once per config load and then only read.

use foldhash::HashSet;

use regex::{RegexSet, RegexSetBuilder};

use crate::config::BlacklistEntry;
use crate::event::Event;

/// Compiles one blacklist regex the way [`Blacklist`] does, for validation;
/// the error text is the regex crate's short description.
pub fn compile_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(re)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => s
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(&s)
                .to_owned(),
            other => other.to_string(),
        })
}

/// The compiled blacklist.
#[derive(Debug, Default)]
pub struct Blacklist {
    directories: HashSet<String>,
    users: HashSet<(String, String)>,
    regexes: Option<RegexSet>,
}

impl Blacklist {
    /// Compiles validated entries (see `config::load`, which rejects bad regexes).
    pub fn new(entries: &[BlacklistEntry]) -> Result<Self, regex::Error> {
        let mut bl = Blacklist::default();
        let mut patterns = Vec::new();
        for e in entries {
            match (&e.directory, &e.user_id, &e.regex) {
                (Some(d), None, _) => {
                    bl.directories.insert(d.trim().to_lowercase());
                }
                (Some(d), Some(u), _) => {
                    bl.users
                        .insert((d.trim().to_lowercase(), u.trim().to_lowercase()));
                }
                (None, _, Some(re)) => patterns.push(re.clone()),
                (None, _, None) => {}
            }
        }
        if !patterns.is_empty() {
            bl.regexes = Some(
                RegexSetBuilder::new(&patterns)
                    .case_insensitive(true)
                    .size_limit(1 << 22)
                    .build()?,
            );
        }
        Ok(bl)
    }

    /// Whether the event's user is blacklisted. `dir_lower` and `id_lower` are
    /// the lower-cased directory and id; regexes see `DIRECTORY\userid` as sent.
    pub fn matches(&self, dir_lower: &str, id_lower: &str, ev: &Event) -> bool {
        if self.directories.contains(dir_lower) {
            return true;
        }
        if !self.users.is_empty()
            && self
                .users
                .contains(&(dir_lower.to_owned(), id_lower.to_owned()))
        {
            return true;
        }
        self.regexes
            .as_ref()
            .is_some_and(|r| r.is_match(&ev.user_full()))
    }

    /// Whether nothing is blacklisted.
    pub fn is_empty(&self) -> bool {
        self.directories.is_empty() && self.users.is_empty() && self.regexes.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: Option<&str>, u: Option<&str>, r: Option<&str>) -> BlacklistEntry {
        BlacklistEntry {
            directory: d.map(Into::into),
            user_id: u.map(Into::into),
            regex: r.map(Into::into),
        }
    }

    fn hit(bl: &Blacklist, dir: &str, id: &str) -> bool {
        let line = format!("/qseow-proxy-session/;h;Start session;{dir};{id};;;");
        let ev = crate::ingest::parse::Parser::new()
            .parse(line.as_bytes(), jiff::Timestamp::now())
            .unwrap();
        bl.matches(&dir.to_lowercase(), &id.to_lowercase(), &ev)
    }

    #[test]
    fn all_three_kinds_match_case_insensitively() {
        let bl = Blacklist::new(&[
            entry(Some("INTERNAL"), None, None),
            entry(Some("LAB"), Some("svc_reload"), None),
            entry(None, None, Some(r"^LAB\\test_")),
        ])
        .unwrap();
        assert!(hit(&bl, "internal", "sa_repository"));
        assert!(hit(&bl, "Internal", "anything"));
        assert!(hit(&bl, "lab", "SVC_Reload"));
        assert!(!hit(&bl, "LAB", "svc_reload2"));
        assert!(!hit(&bl, "CORP", "svc_reload"));
        assert!(hit(&bl, "Lab", "Test_anna"));
        assert!(!hit(&bl, "LAB", "anna_test_"));
        assert!(!hit(&bl, "CORP", "test_x"));
        assert!(!bl.is_empty());
    }

    #[test]
    fn empty_blacklist_matches_nobody() {
        let bl = Blacklist::new(&[]).unwrap();
        assert!(bl.is_empty());
        assert!(!hit(&bl, "INTERNAL", "sa_repository"));
    }

    #[test]
    fn regex_errors_are_short() {
        let e = compile_regex(r"^LAB\\(test").unwrap_err();
        assert_eq!(e, "unclosed group");
    }
}

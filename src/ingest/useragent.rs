//! Browser and OS from a user-agent string, through the uap-core rules.
//!
//! The rules are uap-core's `regexes.yaml` (Apache-2.0, vendored under
//! `assets/uap-core/`, version in its LICENSE folder's README), matched by the
//! `ua-parser` crate, the reference Rust implementation of that project. Only
//! the browser and OS rule sets are compiled; device rules are the largest set
//! and whosin reports no device.
//!
//! Compiling the rules takes a noticeable moment, so it happens once per process
//! ([`warm_up`] starts it early), and [`UaCache`] memoizes every distinct string:
//! a Qlik site sees a handful of user agents, so nearly every lookup is a hit.

use foldhash::HashMap;
use std::sync::{Arc, LazyLock};

use crate::event::UserAgent;

const REGEXES: &str = include_str!("../../assets/uap-core/regexes.yaml");

struct Rules {
    ua: ua_parser::user_agent::Extractor<'static>,
    os: ua_parser::os::Extractor<'static>,
}

static RULES: LazyLock<Option<Rules>> = LazyLock::new(|| match load_rules() {
    Ok(r) => Some(r),
    Err(e) => {
        // The rules are compiled into the binary and tested; this is unreachable
        // in practice, and whosin still works without browser names.
        tracing::error!("user-agent rules failed to load, browsers stay unknown: {e}");
        None
    }
});

fn load_rules() -> anyhow::Result<Rules> {
    let regexes: ua_parser::Regexes<'static> = serde_saphyr::from_str(REGEXES)?;
    let ua = ua_parser::user_agent::Builder::new()
        .push_all(regexes.user_agent_parsers)?
        .build()?;
    let os = ua_parser::os::Builder::new()
        .push_all(regexes.os_parsers)?
        .build()?;
    Ok(Rules { ua, os })
}

/// Starts compiling the rules on a background thread so that the first
/// datagram with a user agent does not wait for it.
pub fn warm_up() {
    std::thread::spawn(|| LazyLock::force(&RULES));
}

/// Compiles the rules now, on this thread (when it has to be done before
/// something is timed).
pub fn load_now() {
    LazyLock::force(&RULES);
}

/// Resolves one user agent without memoizing; `None` when nothing is known.
pub fn resolve(ua: &str) -> Option<UserAgent> {
    let rules = RULES.as_ref()?;
    let mut out = UserAgent::default();
    if let Some(v) = rules.ua.extract(ua)
        && v.family != "Other"
    {
        out.browser = Some(v.family.into_owned());
        out.browser_major = v.major.map(str::to_owned);
    }
    if let Some(v) = rules.os.extract(ua)
        && v.os != "Other"
    {
        out.os = Some(v.os.into_owned());
        let parts = [v.major, v.minor, v.patch];
        let version: Vec<&str> = parts.iter().map_while(|p| p.as_deref()).collect();
        if !version.is_empty() {
            out.os_version = Some(version.join("."));
        }
    }
    (out != UserAgent::default()).then_some(out)
}

/// Most distinct user agents remembered before the memo starts over; bounds
/// memory when junk traffic carries random strings.
pub const UA_CACHE_CAPACITY: usize = 4096;

/// A memo of [`resolve`] per distinct string.
#[derive(Default)]
pub struct UaCache {
    map: HashMap<String, Option<Arc<UserAgent>>>,
}

impl UaCache {
    /// The browser and OS of `ua`, from the memo when seen before.
    pub fn resolve(&mut self, ua: &str) -> Option<Arc<UserAgent>> {
        if let Some(hit) = self.map.get(ua) {
            return hit.clone();
        }
        if self.map.len() >= UA_CACHE_CAPACITY {
            self.map.clear();
        }
        let value = resolve(ua).map(Arc::new);
        self.map.insert(ua.to_owned(), value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real user agents of the browsers Qlik Sense supports, with what we expect.
    const CASES: &[(&str, &str, &str, &str, &str)] = &[
        // Chrome on Windows 10/11 (both send "Windows NT 10.0")
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "131",
            "Windows",
            "10",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.130 Safari/537.36",
            "Chrome",
            "120",
            "Windows",
            "10",
        ),
        // Edge (Chromium)
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
            "Edge",
            "131",
            "Windows",
            "10",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
            "Edge",
            "130",
            "Mac OS X",
            "10.15.7",
        ),
        // Firefox on Windows, macOS and Linux
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox",
            "133",
            "Windows",
            "10",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.7; rv:132.0) Gecko/20100101 Firefox/132.0",
            "Firefox",
            "132",
            "Mac OS X",
            "14.7",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox",
            "133",
            "Linux",
            "",
        ),
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Firefox",
            "128",
            "Ubuntu",
            "",
        ),
        // Safari on macOS
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "Safari",
            "17",
            "Mac OS X",
            "10.15.7",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari",
            "18",
            "Mac OS X",
            "10.15.7",
        ),
        // Safari on iPhone and iPad
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "17",
            "iOS",
            "17.5",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            "Mobile Safari",
            "16",
            "iOS",
            "16.6",
        ),
        // Chrome on iOS
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
            "Chrome Mobile iOS",
            "131",
            "iOS",
            "18.1",
        ),
        // Chrome on Android
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
            "Chrome Mobile",
            "131",
            "Android",
            "14",
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Mobile Safari/537.36",
            "Chrome Mobile",
            "130",
            "Android",
            "10",
        ),
        // Samsung Internet
        (
            "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
            "Samsung Internet",
            "26",
            "Android",
            "14",
        ),
        // Opera
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
            "Opera",
            "115",
            "Windows",
            "10",
        ),
        // Chrome on ChromeOS
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "131",
            "Chrome OS",
            "14541.0.0",
        ),
        // Chrome on macOS and Linux
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "131",
            "Mac OS X",
            "10.15.7",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome",
            "131",
            "Linux",
            "",
        ),
        // Windows 8.1 and 7 (old kiosks still exist)
        (
            "Mozilla/5.0 (Windows NT 6.3; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/109.0.0.0 Safari/537.36",
            "Chrome",
            "109",
            "Windows",
            "8.1",
        ),
        // Firefox on Android
        (
            "Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0",
            "Firefox Mobile",
            "133",
            "Android",
            "14",
        ),
    ];

    #[test]
    fn real_user_agents_resolve_to_browser_and_os() {
        let mut failures = Vec::new();
        for &(ua, browser, major, os, os_version) in CASES {
            let got = resolve(ua).unwrap_or_default();
            let want = (
                Some(browser),
                Some(major),
                Some(os),
                (!os_version.is_empty()).then_some(os_version),
            );
            let have = (
                got.browser.as_deref(),
                got.browser_major.as_deref(),
                got.os.as_deref(),
                got.os_version.as_deref(),
            );
            if want != have {
                failures.push(format!("{ua}\n  want {want:?}\n  got  {have:?}"));
            }
        }
        assert!(CASES.len() >= 20);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn unknown_agents_resolve_to_nothing() {
        assert_eq!(resolve("???"), None);
    }

    #[test]
    fn cache_returns_the_same_answer_and_stays_bounded() {
        let mut c = UaCache::default();
        let ua = CASES[0].0;
        let a = c.resolve(ua).unwrap();
        let b = c.resolve(ua).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..UA_CACHE_CAPACITY + 10 {
            c.resolve(&format!("junk {i}"));
        }
        assert!(c.map.len() <= UA_CACHE_CAPACITY);
    }
}

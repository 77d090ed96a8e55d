//! Browser and OS names as Butler SOS writes them.
//!
//! Butler SOS 15.0.1 parses user agents with Bowser 2.14.1 and writes
//! `browser.name`, the leading digits of `browser.version`, `os.name` and
//! `os.version` as they come. whosin parses with the uap-core rules (see
//! [`super::useragent`]), whose names are friendlier (`Windows 10`) and which
//! the page and the API keep; the sinks write Bowser's names instead, through
//! this mapping, so that a dashboard spanning the switch from Butler SOS
//! shows one bar per browser. `tests/bowser_names.rs` checks it against
//! Bowser itself over a corpus of real user agents.

use std::borrow::Cow;

/// The four values Butler SOS writes, each absent when Bowser gives nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names<'a> {
    /// `uaBrowserName`: `Chrome`, `Microsoft Edge`, `Safari`, ...
    pub browser_name: Option<Cow<'a, str>>,
    /// `uaBrowserMajorVersion`: `131`.
    pub browser_major: Option<Cow<'a, str>>,
    /// `uaOsName`: `Windows`, `macOS`, `iOS`, `Android`, `Linux`, `Chrome OS`.
    pub os_name: Option<Cow<'a, str>>,
    /// `uaOsVersion`: `NT 10.0`, `10.15.7`, `17.5`; none on Linux and Chrome OS.
    pub os_version: Option<Cow<'a, str>>,
}

/// Bowser's browser name for a uap-core family.
fn browser(family: &str) -> &str {
    match family {
        "Chrome Mobile"
        | "Chrome Mobile iOS"
        | "Chrome Mobile WebView"
        | "HeadlessChrome"
        | "Chromium"
        | "Brave" => "Chrome",
        "Edge" | "Edge Mobile" => "Microsoft Edge",
        "Firefox Mobile" | "Firefox iOS" | "Firefox Beta" | "Firefox ESR" => "Firefox",
        "Mobile Safari" | "Mobile Safari UI/WKWebView" => "Safari",
        "Samsung Internet" => "Samsung Internet for Android",
        "IE" | "IE Mobile" => "Internet Explorer",
        "Opera Mobile" => "Opera",
        "Yandex Browser" => "Yandex Browser",
        other => other,
    }
}

/// Bowser's OS name for a uap-core family.
fn os(family: &str) -> &str {
    match family {
        "Mac OS X" => "macOS",
        "Ubuntu" | "Fedora" | "Debian" | "Linux Mint" | "Arch Linux" | "Red Hat" | "SUSE"
        | "openSUSE" | "CentOS" | "Gentoo" | "Slackware" | "Mandriva" => "Linux",
        other => other,
    }
}

/// Bowser's `os.version` for Windows is the NT version the user agent carries.
fn windows_version(v: &str) -> Option<&'static str> {
    Some(match v {
        "11" => "NT 11.0",
        "10" => "NT 10.0",
        "8.1" => "NT 6.3",
        "8" => "NT 6.2",
        "7" => "NT 6.1",
        "Vista" => "NT 6.0",
        "XP" => "NT 5.1",
        "2000" => "NT 5.0",
        _ => return None,
    })
}

/// Butler SOS's values from whosin's parsed user agent (browser family and
/// major, OS family and version, as [`super::useragent::resolve`] gives them).
pub fn names<'a>(
    browser_family: Option<&'a str>,
    browser_major: Option<&'a str>,
    os_family: Option<&'a str>,
    os_version: Option<&'a str>,
) -> Names<'a> {
    let os_name = os_family.map(os);
    let os_version = match (os_name, os_version) {
        // Bowser gives Linux and Chrome OS no version.
        (Some("Linux" | "Chrome OS"), _) | (None, _) => None,
        (Some("Windows"), Some(v)) => windows_version(v).map(Cow::Borrowed),
        (_, v) => v.map(Cow::Borrowed),
    };
    Names {
        browser_name: browser_family.map(|f| Cow::Borrowed(browser(f))),
        // Bowser's major is the leading digits of its version.
        browser_major: browser_major
            .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
            .map(Cow::Borrowed),
        os_name: os_name.map(Cow::Borrowed),
        os_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_butler_sos_writes_for_the_common_browsers() {
        let n = names(Some("Edge"), Some("131"), Some("Windows"), Some("10"));
        assert_eq!(n.browser_name.as_deref(), Some("Microsoft Edge"));
        assert_eq!(n.os_version.as_deref(), Some("NT 10.0"));
        let n = names(Some("Mobile Safari"), Some("17"), Some("iOS"), Some("17.5"));
        assert_eq!(n.browser_name.as_deref(), Some("Safari"));
        assert_eq!(n.os_version.as_deref(), Some("17.5"));
        let n = names(
            Some("Chrome"),
            Some("131"),
            Some("Mac OS X"),
            Some("10.15.7"),
        );
        assert_eq!(n.os_name.as_deref(), Some("macOS"));
        let n = names(Some("Chrome"), Some("131"), Some("Ubuntu"), Some("22.04"));
        assert_eq!((n.os_name.as_deref(), n.os_version), (Some("Linux"), None));
        assert_eq!(names(None, None, None, None), Names::default());
    }
}

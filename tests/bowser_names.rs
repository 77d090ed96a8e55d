//! Browser and OS names as Butler SOS writes them, checked against Bowser
//! itself: `tests/data/bowser-expected.json` is what Bowser 2.14.1 (the
//! version Butler SOS 15.0.1 ships) gives for 325 real user agents, run the
//! way Butler SOS runs it (`tests/bowser/generate.mjs`).

mod common;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Expected {
    ua: String,
    ua_browser_name: Option<String>,
    ua_browser_major_version: Option<String>,
    ua_os_name: Option<String>,
    ua_os_version: Option<String>,
}

type Four = [Option<String>; 4];

fn whosin(ua: &str) -> Four {
    let Some(parsed) = whosin::ingest::useragent::resolve(ua) else {
        return Default::default();
    };
    let n = whosin::ingest::bowser::names(
        parsed.browser.as_deref(),
        parsed.browser_major.as_deref(),
        parsed.os.as_deref(),
        parsed.os_version.as_deref(),
    );
    [n.browser_name, n.browser_major, n.os_name, n.os_version].map(|v| v.map(|c| c.into_owned()))
}

#[test]
fn whosin_writes_bowser_s_names_for_at_least_95_percent_of_real_user_agents() {
    let text = std::fs::read_to_string("tests/data/bowser-expected.json").unwrap();
    let expected: Vec<Expected> = serde_json::from_str(&text).unwrap();
    assert!(
        expected.len() >= 200,
        "corpus too small: {}",
        expected.len()
    );
    let mut differ = Vec::new();
    for e in &expected {
        let want: Four = [
            e.ua_browser_name.clone(),
            e.ua_browser_major_version.clone(),
            e.ua_os_name.clone(),
            e.ua_os_version.clone(),
        ];
        let got = whosin(&e.ua);
        if got != want {
            differ.push(format!("{}\n    bowser {want:?}\n    whosin {got:?}", e.ua));
        }
    }
    let agree = expected.len() - differ.len();
    let share = agree as f64 / expected.len() as f64;
    println!(
        "agree on {agree} of {} ({:.1}%); the others:\n{}",
        expected.len(),
        share * 100.0,
        differ.join("\n")
    );
    assert!(share >= 0.95, "only {:.1}% agree", share * 100.0);
}

/// The committed fixture is what Bowser itself says today: `node` runs the
/// generator over the corpus (the test command installs Bowser with npm).
#[test]
fn the_fixture_is_what_bowser_says() {
    let Some(node) = common::tool("node", "nodejs") else {
        return;
    };
    let modules = std::path::Path::new("tests/bowser/node_modules/bowser");
    if !modules.exists() {
        assert!(
            !common::required(),
            "tests/bowser/node_modules is missing: run npm ci --prefix tests/bowser"
        );
        return;
    }
    let out = common::run_ok(
        std::process::Command::new(node).args(["tests/bowser/generate.mjs", "--stdout"]),
    );
    let fixture = std::fs::read_to_string("tests/data/bowser-expected.json").unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == fixture,
        "tests/data/bowser-expected.json is not what Bowser gives: regenerate it (tests/bowser/README.md)"
    );
}

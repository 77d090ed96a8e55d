//! Any text, as a config file: the loader returns a config or problems
//! named by key, never panics, and never quotes a secret: when every line
//! that holds the marker `S3CRET` is a `password:`, `token:` or
//! `auth_token:` line, no problem may show the marker.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A `password: value` line (YAML needs a blank or the line's end after the
/// colon: `password:"x` is one unknown key, which problems do name).
fn secret_line(line: &str) -> bool {
    let key = line.trim_start().trim_start_matches("- ");
    ["password", "token", "auth_token"].iter().any(|k| {
        key.strip_prefix(k)
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .is_some_and(|after| after.is_empty() || after.starts_with([' ', '\t']))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |name: &str| (name == "SET").then(|| "value".to_owned());
        if let Err(e) = whosin::config::load_str(text, &env) {
            let lines = e.lines();
            assert!(!lines.is_empty());
            let only_secrets = text
                .lines()
                .filter(|l| l.contains("S3CRET"))
                .all(secret_line);
            if only_secrets && text.contains("S3CRET") {
                for l in &lines {
                    assert!(!l.contains("S3CRET"), "secret quoted: {l}");
                }
            }
        }
    }
});

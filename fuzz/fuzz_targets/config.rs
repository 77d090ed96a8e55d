//! Any text, as a config file: the loader returns a config or problems
//! named by key, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = |name: &str| (name == "SET").then(|| "value".to_owned());
        if let Err(e) = whosin::config::load_str(text, &env) {
            assert!(!e.lines().is_empty());
        }
    }
});

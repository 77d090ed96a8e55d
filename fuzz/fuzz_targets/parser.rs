//! Any bytes, as a datagram: the parser accepts or rejects with a reason,
//! never panics, and an accepted event holds no control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whosin::ingest::parse::Parser;

fuzz_target!(|data: &[u8]| {
    let mut parser = Parser::new();
    let at = jiff::Timestamp::UNIX_EPOCH;
    if let Ok(ev) = parser.parse(data, at) {
        for field in [&ev.host, &ev.user_directory, &ev.user_id, &ev.origin, &ev.context, &ev.message] {
            assert!(!field.chars().any(char::is_control), "control character in {field:?}");
        }
        assert!(!ev.user_directory.is_empty() && !ev.user_id.is_empty());
    }
});

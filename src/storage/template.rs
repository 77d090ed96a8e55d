//! A message stored with its user's name taken out, so that Qlik's "Start
//! session for user 'DIR\alice'" is one text for every user, and the name
//! put back when it is read.

/// What stands for `DIRECTORY\userid` in a stored message. Qlik's text
/// never holds it (the parser strips control characters), and a message is
/// only templated when it does not, so putting the name back is exact.
pub const USER_MARK: char = '\u{1}';

/// Writes `message` into `out` (cleared first) with every `dir\uid` in it
/// replaced by [`USER_MARK`], leftmost first, as `str::replace` would.
/// Returns false, and leaves `out` alone, when the name is not there or the
/// message holds the mark itself.
///
/// Every occurrence has its backslash `dir.len()` bytes in, so the search
/// looks only at the message's backslashes (one, nearly always): a
/// substring searcher built for each event's name cost more to build than
/// the search it then did (5% of the core thread).
pub fn take_user_out(message: &str, dir: &str, uid: &str, out: &mut String) -> bool {
    if dir.contains('\\') {
        // Not a directory Qlik sends; the general search, to stay exact.
        let user = format!("{dir}\\{uid}");
        if !message.contains(&user) || message.contains(USER_MARK) {
            return false;
        }
        out.clear();
        out.push_str(&message.replace(&user, "\u{1}"));
        return true;
    }
    let Some(first) = find_user(message, dir, uid, 0) else {
        return false;
    };
    if message.contains(USER_MARK) {
        return false;
    }
    out.clear();
    let len = dir.len() + 1 + uid.len();
    let mut done = 0;
    let mut at = Some(first);
    while let Some(i) = at {
        out.push_str(&message[done..i]);
        out.push(USER_MARK);
        done = i + len;
        at = find_user(message, dir, uid, done);
    }
    out.push_str(&message[done..]);
    true
}

/// Where the first `dir\uid` at or after `from` starts (`dir` has no backslash).
fn find_user(message: &str, dir: &str, uid: &str, from: usize) -> Option<usize> {
    let m = message.as_bytes();
    let base = from + dir.len();
    let tail = m.get(base..)?;
    memchr::memchr_iter(b'\\', tail).find_map(|p| {
        let slash = base + p;
        let start = slash - dir.len();
        (&m[start..slash] == dir.as_bytes() && m[slash + 1..].starts_with(uid.as_bytes()))
            .then_some(start)
    })
}

/// The message `template` with `user` (`DIR\uid`) put back.
pub fn put_user_back(template: &str, user: &str) -> String {
    template.replace(USER_MARK, user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qlik_messages_lose_and_regain_the_name() {
        let mut out = String::new();
        let m = "Start session for user: 'ACME\\alice' (ACME\\alice, ACME\\alicex)";
        assert!(take_user_out(m, "ACME", "alice", &mut out));
        assert_eq!(out, "Start session for user: '\u{1}' (\u{1}, \u{1}x)");
        assert_eq!(put_user_back(&out, "ACME\\alice"), m);
        // Another case is another name: kept as it is.
        assert!(!take_user_out(m, "acme", "alice", &mut out));
        // A message with the mark already is not templated.
        assert!(!take_user_out(
            "\u{1} ACME\\alice",
            "ACME",
            "alice",
            &mut out
        ));
        // An empty directory: `\uid`.
        assert!(take_user_out("x \\bob y", "", "bob", &mut out));
        assert_eq!(out, "x \u{1} y");
    }

    proptest! {
        /// The same as `str::replace` (leftmost, not overlapping) for any
        /// message, directory and id, backslashes and all.
        #[test]
        fn takes_out_what_replace_would(
            message in "[ab\\\\\u{e9}]{0,24}",
            dir in "[ab\\\\]{0,3}",
            uid in "[ab\\\\\u{e9}]{0,3}",
        ) {
            let user = format!("{dir}\\{uid}");
            let mut out = String::from("untouched");
            let took = take_user_out(&message, &dir, &uid, &mut out);
            prop_assert_eq!(took, message.contains(&user));
            if took {
                prop_assert_eq!(&out, &message.replace(&user, "\u{1}"));
                prop_assert_eq!(put_user_back(&out, &user), message);
            } else {
                prop_assert_eq!(out, "untouched");
            }
        }
    }
}

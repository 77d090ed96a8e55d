//! `/api/v1/stream`: server-sent events and state, resuming, and the request timeout.

use std::time::Duration;

use crate::common::{self, Daemon};

use super::{start, stop};

/// A client of `/api/v1/stream`, reading server-sent events as they come
/// (HTTP/1.0, so the body is not chunked).
struct Stream {
    reader: std::io::BufReader<std::net::TcpStream>,
    status: u16,
    skipped: Vec<Message>,
}

#[derive(Debug)]
struct Message {
    event: String,
    id: Option<String>,
    data: String,
}

impl Stream {
    fn open(d: &Daemon, path: &str, headers: &str) -> Stream {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(d.http).unwrap();
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n").unwrap();
        let mut reader = std::io::BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        // The headers.
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Stream {
            reader,
            status,
            skipped: Vec::new(),
        }
    }

    /// The next message (skipping keep-alive comments); fails after the deadline.
    fn next(&mut self) -> Message {
        use std::io::BufRead;
        let mut m = Message {
            event: "message".into(),
            id: None,
            data: String::new(),
        };
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.reader.read_line(&mut line).expect("a message in time");
            assert!(n > 0, "the stream ended");
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !m.data.is_empty() {
                    return m;
                }
                continue;
            }
            if let Some(v) = l.strip_prefix("event:") {
                m.event = v.trim().into();
            } else if let Some(v) = l.strip_prefix("id:") {
                m.id = Some(v.trim().into());
            } else if let Some(v) = l.strip_prefix("data:") {
                m.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
    }

    /// The first message of `kind` that satisfies `pred`, whether it came
    /// already (messages skipped by earlier calls are kept, in order) or
    /// comes before the deadline.
    fn until(
        &mut self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (Message, serde_json::Value) {
        let matches =
            |m: &Message| m.event == kind && pred(&serde_json::from_str(&m.data).unwrap());
        if let Some(i) = self.skipped.iter().position(&matches) {
            let m = self.skipped.remove(i);
            let v = serde_json::from_str(&m.data).unwrap();
            return (m, v);
        }
        let until = std::time::Instant::now() + common::DEADLINE;
        loop {
            // Keep-alive comments keep reads short, so this deadline is checked.
            assert!(
                std::time::Instant::now() < until,
                "no {kind} message as wanted; skipped: {:?}",
                self.skipped
            );
            let m = self.next();
            if matches(&m) {
                let v = serde_json::from_str(&m.data).unwrap();
                return (m, v);
            }
            self.skipped.push(m);
        }
    }
}

#[test]
fn the_stream_carries_events_and_state_and_resumes_after_the_last_id() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"t0k\"\n");
    // The token is needed; a browser's EventSource gives it in the query.
    assert_eq!(Stream::open(&d, "/api/v1/stream", "").status, 401);
    let mut s = Stream::open(&d, "/api/v1/stream?access_token=t0k", "");
    assert_eq!(s.status, 200);

    d.send(start("n1", "LAB\\anna").as_bytes());
    let (m, ev) = s.until("event", |v| v["user"] == "LAB\\anna");
    assert_eq!(ev["event"], "session_start");
    assert_eq!(ev["host"], "n1");
    assert_eq!(ev["browser"], "Chrome 131");
    let first = ev["seq"].as_u64().unwrap();
    assert_eq!(m.id, Some(first.to_string()));
    let (_, state) = s.until("state", |v| v["host"] == "n1" && v["sessions"] == 1);
    assert_eq!(state["user_list"], serde_json::json!(["LAB\\anna"]));
    assert_eq!(state["users"], 1);
    drop(s);

    // Events while nobody listens are not lost to a client that resumes.
    d.send(start("n1", "LAB\\bob").as_bytes());
    d.send(stop("n1", "LAB\\anna").as_bytes());
    let mut s = Stream::open(
        &d,
        "/api/v1/stream",
        &format!("Authorization: Bearer t0k\r\nLast-Event-ID: {first}\r\n"),
    );
    assert_eq!(s.status, 200);
    let (_, bob) = s.until("event", |_| true);
    assert_eq!(bob["user"], "LAB\\bob");
    assert_eq!(bob["seq"].as_u64(), Some(first + 1));
    let (_, anna) = s.until("event", |_| true);
    assert_eq!(anna["event"], "session_stop");
    // On connect, every host's state: bob is in, anna left.
    let (_, state) = s.until("state", |v| {
        v["host"] == "n1" && v["user_list"] == serde_json::json!(["LAB\\bob"])
    });
    assert_eq!(state["sessions"], 1);

    // `?recent=N` begins with the last N events.
    let mut s = Stream::open(&d, "/api/v1/stream?recent=2&access_token=t0k", "");
    let (_, e1) = s.until("event", |_| true);
    let (_, e2) = s.until("event", |_| true);
    assert_eq!(
        (e1["seq"].as_u64(), e2["seq"].as_u64()),
        (Some(first + 1), Some(first + 2))
    );
    assert_eq!(
        Stream::open(&d, "/api/v1/stream?recent=5000&access_token=t0k", "").status,
        400
    );

    // A bad resume point is refused; an open stream does not hold up shutdown.
    assert_eq!(
        Stream::open(&d, "/api/v1/stream?after=x&access_token=t0k", "").status,
        400
    );
    assert!(d.terminate().success());
}

#[test]
fn the_stream_outlives_the_request_timeout() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  request_timeout: \"1s\"\n");
    let mut s = Stream::open(&d, "/api/v1/stream", "");
    assert_eq!(s.status, 200);
    // Waiting past the timeout is the point of this test, not synchronisation.
    std::thread::sleep(Duration::from_millis(1500));
    d.send(start("n1", "LAB\\late").as_bytes());
    let (_, ev) = s.until("event", |v| v["user"] == "LAB\\late");
    assert_eq!(ev["event"], "session_start");
}

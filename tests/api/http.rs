//! The API token, and the HTTP limits that refuse too much and keep serving.

use std::time::Duration;

use crate::common::{self, Daemon, http_get_with};

#[test]
fn the_api_needs_the_token_when_one_is_set() {
    let d = Daemon::start("http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"s3cret-token\"\n");
    let (code, body) = d.get("/api/v1/sessions");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"));
    let (code, _) = http_get_with(
        d.http,
        "/api/v1/sessions",
        "Authorization: Bearer wrong\r\n",
    );
    assert_eq!(code, 401);
    let (code, _) = http_get_with(d.http, "/api/v1/sessions?access_token=s3cret-token", "");
    assert_eq!(code, 401, "only the stream takes the token in the query");
    let (code, body) = http_get_with(
        d.http,
        "/api/v1/sessions",
        "Authorization: Bearer s3cret-token\r\n",
    );
    assert_eq!(code, 200, "{body}");
    // Metrics and health stay open for Prometheus and load balancers.
    assert_eq!(d.get("/metrics").0, 200);
    assert_eq!(d.get("/readyz").0, 200);
}

/// Reads what the server sends until it closes the connection (or the deadline).
fn read_until_closed(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn http_limits_refuse_what_is_too_much_and_keep_serving() {
    use std::io::Write;
    use std::net::TcpStream;
    let d = Daemon::start(
        "http:\n  listen: \"127.0.0.1:0\"\n  max_connections: 3\n  header_timeout: \"3s\"\n  \
         request_timeout: \"1s\"\n  max_header_bytes: 8192\n  max_body_bytes: 1024\n",
    );
    let get = |path: &str, headers: &str| http_get_with(d.http, path, headers);

    // A head larger than max_header_bytes: 431, and the next request is served.
    let big = format!("X-Junk: {}\r\n", "a".repeat(10_000));
    assert_eq!(get("/healthz", &big).0, 431);
    // A body over max_body_bytes is refused before it is read.
    assert_eq!(get("/healthz", "Content-Length: 100000\r\n").0, 413);
    assert_eq!(get("/healthz", "").0, 200);

    // A client that never finishes its head (slowloris) is cut off after
    // header_timeout, and so is an idle keep-alive connection. (3 s: the
    // permits must still be taken when the fourth connects, also on a
    // loaded CI machine.)
    // The connections of the requests above give their permits back when
    // the server has closed them; until then the third of these may be the
    // one refused, so the three are opened again until the third is not.
    let (t0, mut slow, mut idle, mut third) =
        common::poll("three connections hold the permits", || {
            let t0 = std::time::Instant::now();
            let mut slow = TcpStream::connect(d.http).unwrap();
            write!(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            let mut idle = TcpStream::connect(d.http).unwrap();
            write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut third = TcpStream::connect(d.http).unwrap();
            third
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut first = [0u8; 12];
            let refused = matches!(std::io::Read::read(&mut third, &mut first), Ok(n) if n > 0);
            third.set_read_timeout(None).unwrap();
            (!refused).then_some((t0, slow, idle, third))
        });

    // Every permit is taken: the next connection is told so at once.
    let mut refused = TcpStream::connect(d.http).unwrap();
    write!(refused, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut refused);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("http.max_connections"),
        "{answer}"
    );

    // The cut-off ones are closed by the server, not left hanging.
    let slow_answer = read_until_closed(&mut slow);
    assert!(!slow_answer.contains("200 OK"), "{slow_answer}");
    let idle_answer = read_until_closed(&mut idle);
    assert!(idle_answer.starts_with("HTTP/1.1 200"), "{idle_answer}");
    assert_eq!(read_until_closed(&mut third), "");
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "closed before header_timeout"
    );
    // Their permits are back.
    assert_eq!(get("/readyz", "").0, 200);
}

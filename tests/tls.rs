//! `http.tls`: the page, API and `/metrics` over HTTPS only, `whosin who
//! --ca` against it, a renewed certificate taken on reload, and clear errors
//! for a bad certificate or key at start and on reload. Certificates come
//! from a test CA made here (rcgen); the client is rustls trusting only it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{TestCa, https_get};
use common::{DEADLINE, Daemon, bin, http_get_with};

const AUTH: &str = "Authorization: Bearer s3cret\r\n";

fn wait_https(d: &Daemon, ca: &std::path::Path, path: &str, want: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let last = https_get(d.http, ca, path, AUTH);
        if let Ok((200, body)) = &last
            && want(body)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < until,
            "{path} over HTTPS never answered as wanted: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn https_serves_the_page_api_and_metrics_and_who_trusts_a_given_ca() {
    let ca = TestCa::new("whosin test CA");
    let d = Daemon::start(&ca.http_yaml("  auth_token: \"s3cret\"\n"));
    d.send(b"/qseow-proxy-session/;sense-node1;Start session;LAB;anna;AppAccess;/hub/;Start session for user 'LAB\\anna'");

    // The API and the metrics, over HTTPS, with a certificate checked against the CA.
    let body = wait_https(&d, &ca.ca(), "/api/v1/sessions", |b| {
        b.contains("LAB\\\\anna")
    });
    assert!(body.contains("\"users\":1"), "{body}");
    let metrics = wait_https(&d, &ca.ca(), "/metrics", |b| {
        b.contains("qliksense_sessions_active{host=\"sense-node1\"} 1")
    });
    assert!(metrics.contains("# TYPE qliksense_sessions_active gauge"));
    let (code, page) = https_get(d.http, &ca.ca(), "/", "").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<title>whosin"), "{page}");
    let (code, _) = https_get(d.http, &ca.ca(), "/api/v1/sessions", "").unwrap();
    assert_eq!(code, 401, "the token is still asked for over HTTPS");

    // Plain HTTP on the same port gets no answer at all: nothing is served in
    // clear (the server may close before the request is even written).
    let mut plain = std::net::TcpStream::connect(d.http).unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = std::io::Write::write_all(&mut plain, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("qliksense_"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        common::parse_answer(&answer).0,
        0,
        "plain HTTP got an HTTP answer"
    );

    // A client that does not trust the CA is refused by its own TLS check.
    let other = TestCa::new("another CA");
    let refused = https_get(d.http, &other.ca(), "/", "").unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // `whosin who` over HTTPS, trusting the CA given with --ca.
    let server = format!("https://localhost:{}", d.http.port());
    let who = |extra: &[&str]| {
        Command::new(bin())
            .args([
                "who", "--server", &server, "--token", "s3cret", "--format", "json",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let ca_path = ca.ca();
    let out = who(&["--ca", ca_path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "who --ca failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["sessions"][0]["user"], "LAB\\anna", "{stdout}");

    // Without the CA it fails and says what to pass.
    let out = who(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca"), "{err}");
    // A --ca that is not a certificate file is a usage error (exit 2).
    let out = who(&["--ca", ca.key().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"));
}

#[test]
fn a_renewed_certificate_is_taken_on_reload_and_a_bad_one_is_refused() {
    let first = TestCa::new("first CA");
    let dir = tempfile::tempdir().unwrap();
    // The certificate files the config names, replaced in place on renewal.
    let cert = dir.path().join("whosin.pem");
    let key = dir.path().join("whosin_key.pem");
    std::fs::copy(first.cert(), &cert).unwrap();
    std::fs::copy(first.key(), &key).unwrap();
    let etc = tempfile::tempdir().unwrap();
    let yaml = format!(
        "http:\n  listen: \"127.0.0.1:0\"\n  auth_token: \"s3cret\"\n  tls:\n    cert: \"{}\"\n    key: \"{}\"\n",
        cert.display(),
        key.display()
    );
    let config = common::write_config(etc.path(), &yaml);
    let log = dir.path().join("whosin.log");
    let d = Daemon::start_logged(etc, config.clone(), &log);
    wait_https(&d, &first.ca(), "/healthz", |_| true);

    // Renewal: new files in place, then the config file is touched.
    let second = TestCa::new("second CA");
    std::fs::copy(second.cert(), &cert).unwrap();
    std::fs::copy(second.key(), &key).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n# renewed\n")).unwrap();
    wait_https(&d, &second.ca(), "/healthz", |_| true);
    assert!(
        https_get(d.http, &first.ca(), "/healthz", "").is_err(),
        "the old certificate is still served"
    );

    // A broken key on reload: the daemon says so and keeps serving the last good one.
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(&config, format!("{text}\n# broken\n")).unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        let logged = String::from_utf8_lossy(&d.log_bytes()).into_owned();
        if logged.contains("http.tls.key") {
            assert!(logged.contains(&key.display().to_string()), "{logged}");
            break;
        }
        assert!(
            Instant::now() < until,
            "a bad key on reload was not logged:\n{logged}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _) = https_get(d.http, &second.ca(), "/healthz", "").unwrap();
    assert_eq!(code, 200, "the last good certificate is no longer served");
}

#[test]
fn a_bad_certificate_or_key_is_named_at_start() {
    let ca = TestCa::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let other = TestCa::new("other CA");
    for (tls, key_path, says) in [
        (
            format!(
                "    cert: \"{}\"\n    key: \"{}\"\n",
                garbage.display(),
                ca.key().display()
            ),
            "http.tls.cert",
            "holds no PEM certificate",
        ),
        (
            format!(
                "    cert: \"{}\"\n    key: \"{}\"\n",
                ca.cert().display(),
                garbage.display()
            ),
            "http.tls.key",
            "cannot read a PEM private key",
        ),
        (
            format!(
                "    cert: \"{}\"\n    key: \"{}\"\n",
                ca.cert().display(),
                other.key().display()
            ),
            "http.tls.key",
            "does not go with the certificate",
        ),
        (
            format!("    cert: \"{}\"\n", ca.cert().display()),
            "http.tls.key",
            "is required",
        ),
        (
            format!(
                "    cert: \"{}\"\n    key: \"{}\"\n",
                dir.path().join("missing.pem").display(),
                ca.key().display()
            ),
            "http.tls.cert",
            "cannot read",
        ),
    ] {
        let config = common::write_config(
            dir.path(),
            &format!("http:\n  listen: \"127.0.0.1:0\"\n  tls:\n{tls}"),
        );
        for cmd in ["check-config", "run"] {
            let out = Command::new(bin())
                .args([cmd, "-c"])
                .arg(&config)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} with {tls}: {err}");
            assert!(
                err.contains(key_path) && err.contains(says),
                "{cmd} with {tls}: {err}"
            );
        }
    }
}

#[test]
fn an_open_port_without_token_or_tls_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "http:\n  listen: \"0.0.0.0:0\"\n");
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("whosin.log");
    let d = Daemon::start_logged(dir, config, &log);
    let logged = String::from_utf8_lossy(&d.log_bytes()).into_owned();
    assert!(
        logged.contains("neither http.auth_token nor http.tls"),
        "{logged}"
    );

    // On loopback (the default) there is nothing to warn about.
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    let log2 = logs.path().join("loopback.log");
    let d2 = Daemon::start_logged(dir, config, &log2);
    assert!(!String::from_utf8_lossy(&d2.log_bytes()).contains("neither http.auth_token"));
    drop((d, d2));
}

/// A real Prometheus (Debian's `prometheus`) scrapes `/metrics` over HTTPS
/// with the scrape config docs/deploy.md gives: `scheme: https` and the CA.
#[test]
fn prometheus_scrapes_metrics_over_https_with_the_ca() {
    let Some(bin) = common::tool("prometheus", "prometheus") else {
        return;
    };
    let ca = TestCa::new("whosin test CA");
    let d = Daemon::start(&ca.http_yaml(""));
    d.send(b"/qseow-proxy-session/;sense-node1;Start session;LAB;anna;AppAccess;/hub/;Start session for user 'LAB\\anna'");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: whosin\n    scheme: https\n    tls_config:\n      ca_file: \"{}\"\n      server_name: localhost\n    static_configs:\n      - targets: [\"{}\"]\n",
            ca.ca().display(),
            d.http
        ),
    )
    .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut prom = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let until = Instant::now() + DEADLINE * 2;
    let last = loop {
        let (code, body) = if std::net::TcpStream::connect(addr).is_ok() {
            http_get_with(
                addr,
                "/api/v1/query?query=qliksense_sessions_active%7Bhost%3D%22sense-node1%22%7D%20%2A%20on%28instance%29%20up",
                "",
            )
        } else {
            (0, String::new())
        };
        if code == 200 && body.contains("\"value\":[") && body.contains(",\"1\"]") {
            break None;
        }
        if Instant::now() > until {
            break Some(format!("{code} {body}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(last, None, "Prometheus never scraped whosin over HTTPS");
}

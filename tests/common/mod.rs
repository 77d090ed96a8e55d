//! Test harness: start the real `whosin` binary, talk to it over UDP and HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
pub mod fake_influx3;
pub mod fake_new_relic;
pub mod fake_qps;
pub mod influx;
pub mod mosquitto;
pub mod tls;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running daemon, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Where stderr goes, when started with [`Daemon::start_logged`].
    pub log: Option<PathBuf>,
    sender: UdpSocket,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_whosin")
}

/// Writes `extra` YAML after a config that listens on free loopback ports.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("whosin.yaml");
    let data = dir.join("data");
    // A test that sets its own udp section must still listen on a free port.
    let has_section = |name: &str| extra.lines().any(|l| l.starts_with(name));
    let udp = if has_section("udp:") {
        ""
    } else {
        "udp:\n  listen: \"127.0.0.1:0\"\n"
    };
    let http = if has_section("http:") {
        ""
    } else {
        "http:\n  listen: \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &path,
        format!("{udp}{http}data_dir: \"{}\"\n{extra}", data.display()),
    )
    .unwrap();
    path
}

impl Daemon {
    /// Starts `whosin run` with the given extra YAML and waits until it listens.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), extra);
        Self::start_with(dir, config)
    }

    pub fn start_with(dir: tempfile::TempDir, config: PathBuf) -> Daemon {
        Self::spawn(dir, config, Stdio::inherit(), None)
    }

    /// Like [`Daemon::start_with`], but the daemon's stderr (its log) is
    /// appended to `log`, for tests that read what it logged. The file should
    /// not be in the config file's folder: whosin watches that one.
    pub fn start_logged(dir: tempfile::TempDir, config: PathBuf, log: &Path) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn(dir, config, Stdio::from(file), Some(log.to_owned()))
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        stderr: Stdio,
        log: Option<PathBuf>,
    ) -> Daemon {
        let mut child = Command::new(bin())
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("whosin starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            let log = log
                .as_ref()
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            panic!("whosin did not print its listening line; its log:\n{log}")
        });
        // "whosin: listening for Qlik user events on udp A; page, API and /metrics on http://B"
        let udp = line
            .split("on udp ")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .unwrap()
            .parse()
            .unwrap();
        // (`https://B` with `http.tls`.)
        let http = line.rsplit("://").next().unwrap().trim().parse().unwrap();
        Daemon {
            child,
            udp,
            http,
            dir,
            config,
            log,
            sender: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// What the daemon logged so far (with [`Daemon::start_logged`]), as bytes:
    /// a test of the log must see exactly what was written.
    pub fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(self.log.as_ref().expect("started with start_logged")).unwrap()
    }

    /// Kills the daemon with SIGKILL (no chance to commit or clean up) and
    /// hands back its folder and config, to start again on the same data.
    pub fn kill9(mut self) -> (tempfile::TempDir, PathBuf) {
        // std's Child::kill is SIGKILL on Unix.
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "whosin was killed: {status}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config.clone())
    }

    /// The daemon's resident memory in KiB (Linux: VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in:\n{status}"))
    }

    /// Still running (not exited)?
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn send(&self, datagram: &[u8]) {
        self.sender.send_to(datagram, self.udp).unwrap();
    }

    pub fn send_all(&self, lines: &[&str]) {
        for l in lines {
            self.send(l.as_bytes());
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path)
    }

    /// GET a JSON API path, expecting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Every journaled event (up to 100,000), oldest first.
    pub fn all_events(&self) -> Vec<serde_json::Value> {
        let v = self
            .json("/api/v1/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=100000");
        v["events"].as_array().unwrap().clone()
    }

    pub fn metrics(&self) -> Metrics {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        Metrics(body)
    }

    /// Polls /metrics until `sample` has `value`, or fails with the last text.
    pub fn wait_metric(&self, sample: &str, value: f64) -> Metrics {
        let until = Instant::now() + DEADLINE;
        loop {
            let m = self.metrics();
            if m.get(sample) == Some(value) {
                return m;
            }
            if Instant::now() > until {
                panic!("{sample} never became {value}; last:\n{}", m.0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/metrics` until `sample` is at least `value`.
    pub fn wait_metric_at_least(&self, sample: &str, value: f64) -> Metrics {
        let until = Instant::now() + DEADLINE;
        loop {
            let m = self.metrics();
            if m.get(sample).is_some_and(|v| v >= value) {
                return m;
            }
            if Instant::now() > until {
                panic!("{sample} never reached {value}; last:\n{}", m.0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "whosin did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// A minimal HTTP/1.1 GET, enough for our own server.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, "")
}

/// A GET with extra header lines (each ending in \r\n).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_answer(&raw)
}

/// `(status, body)` of a raw HTTP/1.1 answer (0 when there is none), the
/// body de-chunked.
pub fn parse_answer(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, body)
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Prometheus text, with lookups by exact sample name and labels.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of a sample written exactly as in the exposition,
    /// e.g. `qliksense_sessions_active{host="n1"}`.
    pub fn get(&self, sample: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
    }

    /// Like `get`, but 0 is not "missing": panics when absent.
    pub fn must(&self, sample: &str) -> f64 {
        self.get(sample)
            .unwrap_or_else(|| panic!("{sample} missing from:\n{}", self.0))
    }
}

/// Whether tests that need an external tool must fail (not skip) without it.
pub fn required() -> bool {
    std::env::var_os("CI").is_some()
}

/// A server or tool a test needs: its path, or `None` (the test then skips)
/// outside CI. Under CI (`CI` set) a missing tool fails the test.
pub fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = which(name);
    if found.is_none() {
        assert!(
            !required(),
            "{name} is missing: install the {package} package (scripts/test does)"
        );
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// Serves `app` on a free loopback port from a thread of its own (for the
/// in-process fakes); returns the port.
pub fn serve(app: axum::Router) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    port
}

/// A request body as text, gunzipped when `Content-Encoding: gzip` says so;
/// `None` for a broken gzip stream.
pub fn body_text(headers: &axum::http::HeaderMap, body: &[u8]) -> Option<String> {
    use std::io::Read as _;
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    if !gzip {
        return Some(String::from_utf8_lossy(body).into_owned());
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Runs `cmd` to its end and fails the test, with its stderr, unless it
/// succeeded; returns its output.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it answers, or fails after [`DEADLINE`] saying `what`.
pub fn poll<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_for(what, DEADLINE, f)
}

/// [`poll`] with a deadline of its own (the 10-second InfluxDB summaries
/// need longer than [`DEADLINE`] under load).
pub fn poll_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A free TCP port on loopback (free when asked; the server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test in headless Chromium needs: Debian's `chromium`, `node`, and
/// playwright-core in tests/page (which scripts/test installs); the path of
/// `node`, or `None` (the test then skips) outside CI.
pub fn browser() -> Option<PathBuf> {
    let (Some(_), Some(node)) = (tool("chromium", "chromium"), tool("node", "nodejs")) else {
        return None;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page");
    let installed = dir.join("node_modules/playwright-core").is_dir();
    assert!(
        installed || !required(),
        "tests/page/node_modules is missing: scripts/test runs `npm ci` there"
    );
    if !installed {
        eprintln!("skipping: run `npm ci` in tests/page");
        return None;
    }
    Some(node)
}

/// Runs `node SCRIPT WANT` in tests/page and fails the test unless it
/// exits 0 and prints `passed` (its output is in the failure).
pub fn run_page_script(node: &Path, script: &str, want: &serde_json::Value, passed: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page");
    let out = Command::new(node)
        .arg(script)
        .arg(want.to_string())
        .current_dir(&dir)
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(text.contains(passed), "{text}");
}

/// Finds a tool on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

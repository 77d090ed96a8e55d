//! A real InfluxDB 1.x (Debian's `influxd`) for the tests, with its own
//! folders and free loopback ports; it can be stopped and started again on
//! the same data (an outage), and is killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEADLINE, free_port, http_get};

pub struct Influx {
    bin: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    pub port: u16,
}

/// Percent-encodes a query string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Influx {
    /// Starts influxd with its data in `dir`; `None` (skip) when it is not
    /// installed outside CI.
    pub fn start(dir: &Path) -> Option<Influx> {
        let bin = super::tool("influxd", "influxdb")?;
        let port = free_port();
        let config = dir.join("influxdb.conf");
        std::fs::write(
            &config,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n[http]\n  bind-address = \"127.0.0.1:{port}\"\n  log-enabled = false\n[monitor]\n  store-enabled = false\n",
                rpc = free_port(),
                d = dir.display()
            ),
        )
        .unwrap();
        let mut i = Influx {
            bin,
            child: None,
            config,
            port,
        };
        i.run();
        Some(i)
    }

    /// Starts (again) and waits until it answers `/ping`.
    pub fn run(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("influxd starts");
        self.child = Some(child);
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if std::net::TcpStream::connect(self.addr()).is_ok()
                && http_get(self.addr(), "/ping").0 == 204
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("influxd did not answer /ping");
    }

    /// Kills it (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs an InfluxQL statement against `senseops`.
    pub fn try_query(&self, q: &str) -> Result<serde_json::Value, String> {
        let path = format!("/query?db=senseops&q={}", urlencode(q));
        let (code, body) = http_get(self.addr(), &path);
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Like `try_query`, failing the test on an error.
    pub fn query(&self, q: &str) -> serde_json::Value {
        self.try_query(q).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    /// The first value of the first row of the first series.
    pub fn first_value(&self, q: &str) -> Option<serde_json::Value> {
        let v = self.try_query(q).ok()?;
        Some(v["results"][0]["series"][0]["values"][0][1].clone())
    }

    /// `CREATE DATABASE senseops` (a POST).
    pub fn create_db(&self) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr()).unwrap();
        let body = "q=CREATE%20DATABASE%20senseops";
        write!(
            s,
            "POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    /// Writes line protocol into `senseops` (as another client, e.g. Butler
    /// SOS, would have); returns the status code and body.
    pub fn write(&self, lines: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr()).unwrap();
        write!(
            s,
            "POST /write?db=senseops HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{lines}",
            lines.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    }

    /// The database names the server has.
    pub fn databases(&self) -> String {
        let (_, body) = http_get(self.addr(), "/query?q=SHOW%20DATABASES");
        body
    }

    /// Polls until `user_events` holds `want` points.
    pub fn wait_count(&self, want: u64) {
        let until = Instant::now() + DEADLINE;
        let mut last = 0;
        while Instant::now() < until {
            last = self
                .first_value("SELECT count(\"userId\") FROM user_events")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("user_events has {last} points, not {want}");
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Every panel and variable query, run against real InfluxDB and Prometheus servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::influx::Influx;
use crate::common::{self, DEADLINE, Daemon, free_port, http_get};
use serde_json::Value;

use super::{DASHBOARDS, Query, Source, load_dashboard, queries};

/// `path?k=v&...`, percent-encoded.
fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://localhost").unwrap();
    url.set_path(path);
    url.query_pairs_mut().extend_pairs(params);
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// Polls `f` until it returns `Some`, or fails naming `what` and the last state.
fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + deadline;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > until => panic!("{what} did not happen: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------- servers

/// A real Prometheus scraping one whosin every second, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Option<Prometheus> {
        let bin = common::tool("prometheus", "prometheus")?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: whosin\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prom = Prometheus { child, addr };
        wait_for("prometheus ready", DEADLINE, || {
            std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
            match http_get(addr, "/-/ready").0 {
                200 => Ok(()),
                code => Err(format!("/-/ready answered {code}")),
            }
        });
        Some(prom)
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let (code, body) = http_get(self.addr, &with_query(path, params));
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code} {e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v)
    }

    /// The value of an instant query whose answer is one sample.
    fn value(&self, q: &str) -> Option<f64> {
        let v = self.api("/api/v1/query", &[("query", q)]).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- traffic

const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const EDGE_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0";
const SAFARI_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const APP_SALES: &str = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
const APP_FINANCE: &str = "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f";

/// Logins, app opens and closes by five users on two nodes in both wire
/// formats, a blacklisted service account, a stop nobody started, a sequence
/// gap and junk: 10 events that count (plus `LOGOUT` later).
fn first_wave() -> Vec<String> {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ");
    vec![
        format!(
            "/qseow-proxy-session/;sense-node1;Start session;LAB;anna.berg;AppAccess;/hub/;Start session for user 'LAB\\anna.berg' UserAgent: '{CHROME_WIN}'"
        ),
        format!(
            "/qseow-proxy-connection/;sense-node1;Open connection;LAB;anna.berg;AppAccess;/app/{APP_SALES}?reloaduri=https%3A%2F%2Fsense.example.com%2Fsense%2Fapp%2F{APP_SALES};connection Opened for session UserAgent: '{CHROME_WIN}'"
        ),
        format!(
            "/qseow-proxy-connection/;sense-node1;Close connection;LAB;anna.berg;AppAccess;/app/{APP_SALES}?reloaduri=x;connection Closed for session"
        ),
        format!(
            "/qseow-proxy-session/;sense-node1;Start session;LAB;erik.lind;https://sense.example.com;/hub/;Start session for user 'LAB\\erik.lind' UserAgent: '{EDGE_WIN}'"
        ),
        format!(
            "/whosin-session/;{now};41;sense-node1;Start session;LAB;Karin.Lund;AppAccess;/hub/;7d1e0f2a9c;Start session for user 'LAB\\Karin.Lund' UserAgent: '{FIREFOX_LINUX}'"
        ),
        format!(
            "/whosin-connection/;{now};17;sense-node1;Open connection;LAB;Karin.Lund;AppAccess;/app/{APP_SALES};7d1e0f2a9c;connection Opened for session UserAgent: '{FIREFOX_LINUX}'"
        ),
        // Counter 42 never arrives: one event lost on sense-node1.
        format!(
            "/whosin-session/;{now};43;sense-node1;Start session;LAB;nils.ahl;AppAccess;/hub/;9a8b7c6d5e;Start session for user 'LAB\\nils.ahl' UserAgent: '{EDGE_WIN}'"
        ),
        format!(
            "/qseow-proxy-session/;sense-node2;Start session;CORP;Per.Olsson;https://sense.example.com;app/{APP_FINANCE};UserAgent: '{SAFARI_MAC}'"
        ),
        format!(
            "/qseow-proxy-connection/;sense-node2;Open connection;CORP;per.olsson;AppAccess;/app/{APP_FINANCE};connection Opened for session UserAgent: '{SAFARI_IPHONE}'"
        ),
        "/qseow-proxy-session/;sense-node2;Start session;INTERNAL;sa_scheduler;;;Start session for user 'INTERNAL\\sa_scheduler'".to_owned(),
        "/qseow-proxy-session/;sense-node2;Stop session;LAB;ghost;AppAccess;/hub/;Stop session for user 'LAB\\ghost'".to_owned(),
        "GET / HTTP/1.1".to_owned(),
        "/qseow-proxy-session/;sense-node1;Start session".to_owned(),
    ]
}

const FIRST_WAVE_EVENTS: f64 = 10.0;

/// Anna logs out: a session duration for the histogram.
const LOGOUT: &str = "/qseow-proxy-session/;sense-node1;Stop session;LAB;anna.berg;AppAccess;/hub/;Stop session for user 'LAB\\anna.berg'";

/// Fills in Grafana's macros and variables in every form (`$x`, `${x}`,
/// `${x:regex}`, `[[x]]`); an unknown one is an error.
fn expand(q: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let re = regex::Regex::new(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]|\$(\w+)").unwrap();
    let mut err = None;
    let out = re.replace_all(q, |c: &regex::Captures| {
        let name = c
            .get(1)
            .or_else(|| c.get(3))
            .or_else(|| c.get(4))
            .unwrap()
            .as_str();
        if let Some(format) = c.get(2)
            && format.as_str() != "regex"
        {
            err = Some(format!(
                "unsupported variable format ${{{name}:{}}}",
                format.as_str()
            ));
        }
        match vars.get(name) {
            Some(v) => v.clone(),
            None => {
                err = Some(format!("unknown variable ${name}"));
                String::new()
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out.into_owned()),
    }
}

/// Whether an InfluxDB answer holds a row with a value.
fn influx_has_data(v: &Value) -> Result<(), String> {
    let r = &v["results"][0];
    if !r["error"].is_null() || !v["error"].is_null() {
        return Err(format!("error: {v}"));
    }
    let series = r["series"].as_array().ok_or(format!("no series: {v}"))?;
    let any = series.iter().any(|s| {
        s["values"].as_array().into_iter().flatten().any(|row| {
            row.as_array()
                .is_some_and(|cells| cells.iter().skip(1).any(|c| !c.is_null()))
        })
    });
    if any {
        Ok(())
    } else {
        Err(format!("only empty rows: {v}"))
    }
}

/// Whether a Prometheus answer holds a sample that is a number.
fn prom_has_data(v: &Value) -> Result<(), String> {
    let number = |s: &Value| {
        s[1].as_str()
            .and_then(|x| x.parse::<f64>().ok())
            .is_some_and(|x| !x.is_nan())
    };
    let data = &v["data"];
    let any = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| number(&s["value"]))),
        Some("matrix") => data["result"].as_array().is_some_and(|r| {
            r.iter().any(|s| {
                s["values"]
                    .as_array()
                    .is_some_and(|vs| vs.iter().any(number))
            })
        }),
        Some("scalar") => number(&data["result"]),
        _ => false,
    };
    if any {
        Ok(())
    } else {
        Err(format!("no sample with a number: {v}"))
    }
}

/// Runs one (expanded) query; Ok when it succeeded with data.
fn run(q: &Query, text: &str, influx: &Influx, prom: &Prometheus) -> Result<(), String> {
    match q.source {
        Source::Influx => influx_has_data(&influx.try_query(text)?),
        Source::Prom => {
            // Grafana's label_values(metric, label) is not PromQL: it asks the
            // label values API.
            let lv = regex::Regex::new(r"^\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*$").unwrap();
            if let Some(c) = lv.captures(text) {
                let v = prom.api(
                    &format!("/api/v1/label/{}/values", &c[2]),
                    &[("match[]", &c[1])],
                )?;
                return match v["data"].as_array() {
                    Some(values) if !values.is_empty() => Ok(()),
                    _ => Err(format!("no label values: {v}")),
                };
            }
            let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            let v = if q.instant {
                prom.api(
                    "/api/v1/query",
                    &[("query", text), ("time", &now.to_string())],
                )?
            } else {
                prom.api(
                    "/api/v1/query_range",
                    &[
                        ("query", text),
                        ("start", &(now - 120.0).to_string()),
                        ("end", &now.to_string()),
                        ("step", "1"),
                    ],
                )?
            };
            prom_has_data(&v)
        }
    }
}

/// Grafana's macros as a panel over the last hour would get them.
fn macros(source: Source) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    match source {
        Source::Influx => {
            m.insert("timeFilter", "time > now() - 1h".to_owned());
            m.insert("__interval", "10s".to_owned());
            m.insert("interval", "10s".to_owned());
        }
        Source::Prom => {
            m.insert("__rate_interval", "1m".to_owned());
            m.insert("__interval", "10s".to_owned());
            m.insert("interval", "10s".to_owned());
            m.insert("__range", "1h".to_owned());
        }
    }
    m
}

#[test]
fn every_panel_query_returns_data_from_real_servers() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let Some(influx) = Influx::start(dir.path()) else {
        return;
    };
    influx.create_db();
    let d = Daemon::start(&format!(
        "blacklist:\n  - directory: INTERNAL\nsinks:\n  influxdb:\n    enabled: true\n    url: \"http://{}\"\n    version: 1\n    database: senseops\n    flush_interval: \"100ms\"\n",
        influx.addr()
    ));
    let Some(prom) = Prometheus::start(dir.path(), d.http) else {
        return;
    };
    wait_for("a first scrape of whosin", DEADLINE, || {
        match prom.value("up{job=\"whosin\"}") {
            Some(1.0) => Ok(()),
            other => Err(format!("up = {other:?}")),
        }
    });

    let wave = first_wave();
    d.send_all(&wave.iter().map(String::as_str).collect::<Vec<_>>());
    // Prometheus must see the duration histogram at 0 before the logout, so
    // that its rate over the last minute is not 0.
    wait_for("a scrape of the first wave", DEADLINE, || {
        let events = prom.value("sum(qliksense_user_events_total)");
        let ended = prom.value("qliksense_session_duration_seconds_count{host=\"sense-node1\"}");
        match (events, ended) {
            (Some(FIRST_WAVE_EVENTS), Some(0.0)) => Ok(()),
            other => Err(format!("events, ended sessions: {other:?}")),
        }
    });
    d.send(LOGOUT.as_bytes());
    let events = FIRST_WAVE_EVENTS + 1.0;

    // Everything in place: every point in InfluxDB, a 10-second summary that
    // counted every event, the logout scraped, and enough history in
    // Prometheus for the subqueries' 10-second steps.
    wait_for(
        "all data in InfluxDB and Prometheus",
        Duration::from_secs(40),
        || {
            let points = influx.first_value("SELECT count(\"userId\") FROM \"user_events\"");
            let counted = influx.first_value("SELECT sum(\"counter\") FROM \"event_count\"");
            let scraped = prom.value("sum(qliksense_user_events_total)");
            let ended = prom.value("sum(qliksense_session_duration_seconds_count)");
            let history =
                prom.value("count_over_time(qliksense_sessions_active{host=\"sense-node1\"}[1h])");
            let done = points.as_ref().and_then(Value::as_f64) == Some(events)
                && counted.as_ref().and_then(Value::as_f64) == Some(events)
                && scraped == Some(events)
                && ended == Some(1.0)
                && history.is_some_and(|h| h >= 12.0);
            if done {
                Ok(())
            } else {
                Err(format!(
                    "user_events points {points:?}, event_count sum {counted:?}, scraped events {scraped:?}, ended sessions {ended:?}, scrapes {history:?}"
                ))
            }
        },
    );

    // Each query runs twice: with every variable at All, and with one value
    // each, regex-escaped the way Grafana escapes it for that datasource.
    let instance = d.http.to_string().replace('.', r"\\.");
    let all: BTreeMap<&str, &str> = [("host", ".*"), ("user", ".*"), ("instance", ".*")].into();
    let one: BTreeMap<&str, &str> = [
        ("host", "sense-node1"),
        ("user", r"LAB\\anna\.berg"),
        ("instance", instance.as_str()),
    ]
    .into();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (file, _, _) in DASHBOARDS {
        let dashboard = load_dashboard(file);
        let qs = queries(file, &dashboard);
        for q in &qs {
            for (label, values) in [("All", &all), ("one value", &one)] {
                let mut vars = macros(q.source);
                for v in dashboard["templating"]["list"].as_array().unwrap() {
                    if v["type"] != "query" {
                        continue;
                    }
                    let name = v["name"].as_str().unwrap();
                    let value = values
                        .get(name)
                        .unwrap_or_else(|| panic!("{file}: a value for ${name}"));
                    vars.insert(name, (*value).to_owned());
                }
                let outcome = expand(&q.text, &vars).and_then(|text| {
                    ran += 1;
                    run(q, &text, &influx, &prom).map_err(|e| format!("{text}\n  {e}"))
                });
                if let Err(e) = outcome {
                    failures.push(format!(
                        "{} / {} (variables {label}): {}\n  {e}",
                        q.dashboard, q.panel, q.text
                    ));
                }
            }
        }
    }

    // The variables list what was sent.
    let hosts = prom
        .api(
            "/api/v1/label/host/values",
            &[("match[]", "qliksense_sessions_active")],
        )
        .unwrap();
    assert_eq!(
        hosts["data"],
        serde_json::json!(["sense-node1", "sense-node2"])
    );
    let users = influx
        .query("SHOW TAG VALUES FROM \"user_events\" WITH KEY = \"userFull\"")
        .to_string();
    assert!(users.contains(r#""LAB\\anna.berg""#), "{users}");
    assert!(!users.contains("sa_scheduler"), "blacklisted: {users}");

    assert!(
        failures.is_empty(),
        "{} of {ran} dashboard queries failed or returned no data:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "ran {ran} dashboard queries against InfluxDB and Prometheus; test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

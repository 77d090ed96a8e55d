//! The Grafana dashboards and provisioning files in `grafana/`.
//!
//! Every query of every panel and every template variable runs against real
//! servers fed by a real whosin: InfluxQL against InfluxDB 1.x (Debian's
//! `influxdb`, written to by whosin's InfluxDB sink) and PromQL against
//! Prometheus (Debian's `prometheus`, scraping whosin's `/metrics` every
//! second), and each must succeed and return data.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::influx::Influx;
use common::{DEADLINE, Daemon, free_port, http_get};
use serde_json::Value;

const INFLUX_UID: &str = "whosin-influxdb";
const PROM_UID: &str = "whosin-prometheus";

/// Each dashboard file, its uid and the one datasource it uses.
const DASHBOARDS: [(&str, &str, &str); 3] = [
    ("who-is-logged-in.json", "whosin-who", PROM_UID),
    ("user-activity.json", "whosin-activity", INFLUX_UID),
    ("whosin-health.json", "whosin-health", PROM_UID),
];

/// The only panel types the dashboards may use (Grafana built-ins).
const PANEL_TYPES: [&str; 7] = [
    "row",
    "stat",
    "timeseries",
    "bargauge",
    "table",
    "piechart",
    "barchart",
];

/// The environment variables the datasource provisioning file expands.
const ENV_VARS: [&str; 4] = [
    "WHOSIN_INFLUXDB_URL",
    "WHOSIN_INFLUXDB_DB",
    "WHOSIN_INFLUXDB_TOKEN",
    "WHOSIN_PROMETHEUS_URL",
];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load_dashboard(file: &str) -> Value {
    let path = format!("grafana/dashboards/{file}");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

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

// ---------------------------------------------------------------- queries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Influx,
    Prom,
}

/// One query found in a dashboard.
#[derive(Debug)]
struct Query {
    dashboard: String,
    /// The panel title, or `variable NAME`.
    panel: String,
    source: Source,
    text: String,
    /// A Prometheus instant query (stat, bar gauge), not a range query.
    instant: bool,
}

/// Every panel, rows' nested panels included.
fn all_panels(panels: &[Value], out: &mut Vec<Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            all_panels(inner, out);
        }
    }
}

fn source_of(ds: &Value) -> Source {
    match (ds["type"].as_str(), ds["uid"].as_str()) {
        (Some("influxdb"), Some(INFLUX_UID)) => Source::Influx,
        (Some("prometheus"), Some(PROM_UID)) => Source::Prom,
        _ => panic!("unknown datasource {ds}"),
    }
}

/// Every query target of every panel and every template variable query.
fn queries(file: &str, d: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    let mut panels = Vec::new();
    all_panels(d["panels"].as_array().unwrap(), &mut panels);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = if t["datasource"].is_object() {
                &t["datasource"]
            } else {
                &p["datasource"]
            };
            let source = source_of(ds);
            let text = match source {
                Source::Influx => {
                    assert_eq!(
                        t["rawQuery"], true,
                        "{file} / {title}: InfluxQL targets must be raw queries"
                    );
                    t["query"].as_str()
                }
                Source::Prom => t["expr"].as_str(),
            };
            out.push(Query {
                dashboard: file.to_owned(),
                panel: title.clone(),
                source,
                text: text
                    .unwrap_or_else(|| panic!("{file} / {title}: a target without a query"))
                    .to_owned(),
                instant: t["instant"] == true,
            });
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let text = v["query"]
            .as_str()
            .or_else(|| v["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("{file}: variable {} has no query", v["name"]));
        out.push(Query {
            dashboard: file.to_owned(),
            panel: format!("variable {}", v["name"].as_str().unwrap()),
            source: source_of(&v["datasource"]),
            text: text.to_owned(),
            instant: true,
        });
    }
    out
}

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

// ---------------------------------------------------------------- tests

/// Walks every value of a JSON document.
fn walk<'a>(v: &'a Value, f: &mut impl FnMut(&'a Value)) {
    f(v);
    match v {
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk(x, f)),
        _ => {}
    }
}

#[test]
fn provisioning_files_and_dashboards_fit_together() {
    // Datasources: fixed uids, everything deployment-specific from the environment.
    let text = read("grafana/provisioning/datasources/whosin.yml");
    let ds: Value = serde_saphyr::from_str(&text).expect("datasources YAML parses");
    assert_eq!(ds["apiVersion"], 1);
    let list = ds["datasources"].as_array().expect("a datasources list");
    assert_eq!(list.len(), 2, "{ds}");
    let by_uid = |uid: &str| {
        list.iter()
            .find(|d| d["uid"] == uid)
            .unwrap_or_else(|| panic!("no datasource with uid {uid}"))
    };
    let influx = by_uid(INFLUX_UID);
    assert_eq!(influx["type"], "influxdb");
    assert_eq!(influx["url"], "${WHOSIN_INFLUXDB_URL}");
    assert_eq!(influx["database"], "${WHOSIN_INFLUXDB_DB}");
    assert_eq!(influx["jsonData"]["dbName"], "${WHOSIN_INFLUXDB_DB}");
    assert_eq!(influx["jsonData"]["version"], "InfluxQL");
    assert_eq!(influx["jsonData"]["httpHeaderName1"], "Authorization");
    assert_eq!(
        influx["secureJsonData"]["httpHeaderValue1"],
        "Token ${WHOSIN_INFLUXDB_TOKEN}"
    );
    let prom = by_uid(PROM_UID);
    assert_eq!(prom["type"], "prometheus");
    assert_eq!(prom["url"], "${WHOSIN_PROMETHEUS_URL}");
    // Exactly the documented variables are used, and each is documented in
    // the comment at the top.
    let used: BTreeSet<&str> = regex::Regex::new(r"\$\{(\w+)\}")
        .unwrap()
        .captures_iter(&text)
        .filter(|c| {
            // Only expansions in YAML values, not in the comments.
            let line_start = text[..c.get(0).unwrap().start()]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            !text[line_start..].trim_start().starts_with('#')
        })
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert_eq!(used, BTreeSet::from(ENV_VARS), "variables used");
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for var in ENV_VARS {
        assert!(header.contains(var), "{var} is not documented at the top");
    }

    // Dashboards: a file provider into the folder "whosin".
    let prov: Value = serde_saphyr::from_str(&read("grafana/provisioning/dashboards/whosin.yml"))
        .expect("dashboards YAML parses");
    assert_eq!(prov["apiVersion"], 1);
    let p = &prov["providers"][0];
    assert_eq!(p["type"], "file", "{prov}");
    assert_eq!(p["folder"], "whosin");
    assert_eq!(p["options"]["path"], "/var/lib/grafana/dashboards");

    let mut uids = BTreeSet::new();
    for (file, uid, datasource) in DASHBOARDS {
        let d = load_dashboard(file);
        assert_eq!(d["uid"], uid, "{file}");
        assert!(uids.insert(uid));
        assert_eq!(d["schemaVersion"], 39, "{file}");
        assert!(
            d["id"].is_null(),
            "{file}: provisioned dashboards have no id"
        );
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        // Only the two provisioned datasources, by uid; this one uses one of them.
        walk(&d, &mut |v| {
            if let Some(ds) = v.get("datasource") {
                assert!(ds.is_object(), "{file}: datasource by name: {ds}");
                assert_eq!(
                    ds["uid"], datasource,
                    "{file}: only {datasource} may be used: {ds}"
                );
                source_of(ds);
            }
        });
        let mut panels = Vec::new();
        all_panels(d["panels"].as_array().unwrap(), &mut panels);
        let mut ids = BTreeSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("");
            let kind = p["type"].as_str().unwrap_or("");
            assert!(
                PANEL_TYPES.contains(&kind),
                "{file} / {title}: panel type {kind} is not a built-in we use"
            );
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: duplicate id"
            );
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{file} / {title}");
            if kind == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{file}: a panel without title");
            assert!(
                p["description"].as_str().is_some_and(|s| s.len() > 20),
                "{file} / {title}: say what the panel answers"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{file} / {title}: no unit"
            );
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{file} / {title}: no query"
            );
        }
        let qs = queries(file, &d);
        assert!(qs.len() >= 10, "{file}: only {} queries", qs.len());
        for q in qs.iter().filter(|q| q.source == Source::Influx) {
            // Only what InfluxDB v1 and v2 writes share: no app fields.
            assert!(
                !q.text.contains("appName") && !q.text.contains("_field"),
                "{file} / {}: v1/v2-specific field in {}",
                q.panel,
                q.text
            );
            assert_eq!(
                q.text.matches("\"appId\"").count(),
                q.text.matches("\"appId\"::tag").count(),
                "{file} / {}: appId only as a tag: {}",
                q.panel,
                q.text
            );
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] != "query" {
                continue;
            }
            assert_eq!(v["multi"], true, "{file}: {v}");
            assert_eq!(v["includeAll"], true, "{file}: {v}");
            assert_eq!(v["allValue"], ".*", "{file}: {v}");
        }
    }
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

/// The user-activity dashboard for InfluxDB 3: the same panels with the v3
/// field names (InfluxDB 3 refuses a tag and a field of one name, so the
/// `userFull` and `userId` fields are `userFull_field` and `userId_field`
/// there; the tags keep their names).
fn v3_variant(v1: &str) -> String {
    let mut text = v1.to_owned();
    for name in ["userFull", "userId"] {
        let field = format!("\\\"{name}\\\"");
        let tag = format!("\\\"{name}\\\"::tag");
        let key = format!("KEY = \\\"{name}\\\"");
        text = text
            .replace(&tag, "\u{1}TAG\u{1}")
            .replace(&key, "\u{1}KEY\u{1}")
            .replace(&field, &format!("\\\"{name}_field\\\""))
            .replace("\u{1}TAG\u{1}", &tag)
            .replace("\u{1}KEY\u{1}", &key);
    }
    text.replace(
        "\"title\": \"whosin: user activity (InfluxDB)\"",
        "\"title\": \"whosin: user activity (InfluxDB 3)\"",
    )
    .replace(
        "\"uid\": \"whosin-activity\"",
        "\"uid\": \"whosin-activity-v3\"",
    )
}

#[test]
fn the_influxdb_3_dashboard_is_the_user_activity_one_with_v3_field_names() {
    let v1 = read("grafana/dashboards/user-activity.json");
    let want = v3_variant(&v1);
    let path = "grafana/influxdb3/user-activity.json";
    if std::env::var_os("WHOSIN_WRITE_V3_DASHBOARD").is_some() {
        std::fs::write(repo_file(path), &want).unwrap();
    }
    let got = read(path);
    assert!(
        got == want,
        "{path} is not the v3 variant of grafana/dashboards/user-activity.json: run WHOSIN_WRITE_V3_DASHBOARD=1 cargo test --test dashboards the_influxdb_3"
    );
    let v: Value = serde_json::from_str(&got).unwrap();
    let queries = v.to_string();
    assert!(queries.contains("count(distinct(\\\"userFull_field\\\"))"));
    assert!(!queries.contains("count(distinct(\\\"userFull\\\"))"));
    assert!(
        queries.contains("WITH KEY = \\\"userFull\\\""),
        "tags keep their names"
    );
}

/// Every panel of sessions, users or connections over time links to the
/// page at the clicked instant (a Grafana data link: `${__value.time}` is
/// Unix milliseconds, which the page takes for `at`; tests/page_views.rs
/// opens the page that way), with the node when the series has one.
#[test]
fn session_panels_link_to_the_page_at_the_clicked_instant() {
    let files = [
        "grafana/dashboards/who-is-logged-in.json",
        "grafana/dashboards/user-activity.json",
        "grafana/influxdb3/user-activity.json",
    ];
    for file in files {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let url_var = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "whosin_url")
            .unwrap_or_else(|| panic!("{file}: no whosin_url variable"));
        assert_eq!(url_var["type"], "textbox", "{file}");
        assert_eq!(url_var["query"], "http://localhost:9842", "{file}");
        let mut linked = 0;
        let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
        while let Some(p) = panels.pop() {
            panels.extend(p["panels"].as_array().into_iter().flatten());
            let title = p["title"].as_str().unwrap_or("");
            let about_sessions = ["Sessions", "sessions", "Users", "users", "Connections"]
                .iter()
                .any(|w| title.contains(w));
            if p["type"] != "timeseries" || !about_sessions {
                continue;
            }
            let links = p["fieldConfig"]["defaults"]["links"].as_array();
            let url = links
                .and_then(|l| l.first())
                .and_then(|l| l["url"].as_str())
                .unwrap_or_else(|| panic!("{file} / {title}: no data link to the page"));
            assert!(
                url.starts_with("${whosin_url}/?view=incident&at=${__value.time}"),
                "{file} / {title}: {url}"
            );
            if file.contains("who-is-logged-in") && title.contains("per node") {
                assert!(
                    url.ends_with("&host=${__field.labels.host}"),
                    "{file} / {title}: {url}"
                );
            }
            linked += 1;
        }
        assert!(linked >= 3, "{file}: only {linked} panels link to the page");
    }
}

//! The Grafana dashboards and provisioning files in `grafana/`.
//!
//! Every query of every panel and every template variable runs against real
//! servers fed by a real whosin: InfluxQL against InfluxDB 1.x (Debian's
//! `influxdb`, written to by whosin's InfluxDB sink) and PromQL against
//! Prometheus (Debian's `prometheus`, scraping whosin's `/metrics` every
//! second), and each must succeed and return data.

//!
//! `real_servers` runs the queries; `files` checks the files themselves.

#[path = "../common/mod.rs"]
mod common;
mod files;
mod real_servers;

use std::path::{Path, PathBuf};

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

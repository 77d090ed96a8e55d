//! The files themselves: provisioning and dashboards, the InfluxDB 3 variant, page links.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::{
    DASHBOARDS, ENV_VARS, INFLUX_UID, PANEL_TYPES, PROM_UID, Source, all_panels, load_dashboard,
    queries, read, repo_file, source_of,
};

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

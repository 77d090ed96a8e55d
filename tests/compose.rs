//! The deployment files: `docker-compose.yml` (through Debian's
//! `docker-compose config`, which needs no Docker daemon), the container
//! config `deploy/docker/whosin.yaml`, the Dockerfile's build context and the
//! systemd unit `deploy/whosin.service`.

mod common;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const SERVICES: [&str; 5] = ["whosin", "influxdb", "prometheus", "grafana", "mosquitto"];

/// The variables compose passes to whosin for the `${NAME}`s of its config.
const CONTAINER_ENV: [(&str, &str); 3] = [
    ("INFLUXDB_ORG", "senseops"),
    ("INFLUXDB_BUCKET", "senseops"),
    ("INFLUXDB_TOKEN", "a-token"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `docker-compose config` of the repository's compose file, parsed; `None`
/// (skip) when docker-compose is not installed outside CI.
fn compose_config() -> Option<Value> {
    let tool = common::tool("docker-compose", "docker-compose")?;
    let out = Command::new(tool)
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root())
        // The compose file must work without a .env file or any variable set.
        .env_remove("INFLUXDB_TOKEN")
        .env_remove("INFLUXDB_ORG")
        .env_remove("INFLUXDB_BUCKET")
        .output()
        .expect("docker-compose runs");
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        text(&out)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_saphyr::from_str::<Value>(&yaml)
            .unwrap_or_else(|e| panic!("docker-compose config printed no YAML ({e}):\n{yaml}")),
    )
}

fn service<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["services"]
        .get(name)
        .unwrap_or_else(|| panic!("service {name} missing from {config:#}"))
}

/// A service's volume entries as (source, target), from `SRC:DST[:MODE]`
/// or the long syntax.
fn volumes(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_array()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let src = parts.next().unwrap().to_owned();
                let dst = parts.next().unwrap_or_default().to_owned();
                (src, dst)
            }
            other => (
                other["source"].as_str().unwrap_or_default().to_owned(),
                other["target"].as_str().unwrap_or_default().to_owned(),
            ),
        })
        .collect()
}

/// The bind mount of a service onto `target`: its source, relative to the
/// repository.
fn bind_source(config: &Value, name: &str, target: &str) -> PathBuf {
    let svc = service(config, name);
    let (src, _) = volumes(svc)
        .into_iter()
        .find(|(_, dst)| dst == target)
        .unwrap_or_else(|| panic!("{name} mounts nothing at {target}: {svc:#}"));
    let src = PathBuf::from(src);
    assert!(
        src.is_absolute(),
        "{name}:{target} is not a bind mount: {src:?}"
    );
    src.strip_prefix(root())
        .unwrap_or_else(|_| panic!("{name} mounts {src:?}, outside the repository"))
        .to_owned()
}

fn port_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

#[test]
fn compose_stack_has_every_service_and_publishes_udp() {
    let Some(config) = compose_config() else {
        return;
    };
    for name in SERVICES {
        service(&config, name);
    }

    // The Qlik appender sends UDP: the port must be published as UDP (Butler
    // SOS's compose files publish it as TCP, and nothing arrives).
    let ports = service(&config, "whosin")["ports"]
        .as_array()
        .expect("whosin publishes ports");
    let published = |number: u64, protocol: &str| {
        ports.iter().any(|p| {
            port_number(&p["target"]) == Some(number)
                && port_number(&p["published"]) == Some(number)
                && p["protocol"].as_str().unwrap_or("tcp") == protocol
        })
    };
    assert!(published(9997, "udp"), "9997/udp not published: {ports:#?}");
    assert!(!published(9997, "tcp"), "9997 published as TCP: {ports:#?}");
    assert!(published(9842, "tcp"), "9842/tcp not published: {ports:#?}");

    let whosin = service(&config, "whosin");
    assert_eq!(whosin["restart"], "unless-stopped");
    assert!(whosin["build"].is_object(), "whosin is built: {whosin:#}");
    let deps = &whosin["depends_on"];
    for dep in ["influxdb", "mosquitto"] {
        let listed = match deps {
            Value::Object(m) => m.contains_key(dep),
            Value::Array(a) => a.iter().any(|d| d == dep),
            _ => false,
        };
        assert!(listed, "whosin does not depend on {dep}: {deps:#}");
    }
    let data = volumes(whosin)
        .into_iter()
        .find(|(_, dst)| dst == "/data")
        .expect("whosin's /data is a volume");
    assert!(
        config["volumes"].get(&data.0).is_some(),
        "/data is not a named volume: {data:?}"
    );
}

#[test]
fn compose_mounts_exist_in_the_repository() {
    let Some(config) = compose_config() else {
        return;
    };
    assert_eq!(
        bind_source(&config, "prometheus", "/etc/prometheus/alerts.yml"),
        Path::new("config/prometheus/alerts.yml")
    );
    assert_eq!(
        bind_source(&config, "prometheus", "/etc/prometheus/prometheus.yml"),
        Path::new("deploy/docker/prometheus.yml")
    );
    assert_eq!(
        bind_source(&config, "grafana", "/etc/grafana/provisioning"),
        Path::new("grafana/provisioning")
    );
    assert_eq!(
        bind_source(&config, "grafana", "/var/lib/grafana/dashboards"),
        Path::new("grafana/dashboards")
    );
    assert_eq!(
        bind_source(&config, "mosquitto", "/mosquitto/config/mosquitto.conf"),
        Path::new("deploy/docker/mosquitto.conf")
    );
    let dbrp = bind_source(
        &config,
        "influxdb",
        "/docker-entrypoint-initdb.d/influxdb-dbrp.sh",
    );
    assert_eq!(dbrp, Path::new("deploy/docker/influxdb-dbrp.sh"));
    // The influxdb image runs only executable scripts (run-parts).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root().join(&dbrp))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{dbrp:?} is not executable");
    }

    // Every bind mount of every service is a file or folder of the repository.
    let services = config["services"].as_object().unwrap();
    for (name, svc) in services {
        for (src, dst) in volumes(svc) {
            let src = Path::new(&src);
            if !src.is_absolute() {
                continue; // a named volume
            }
            assert!(
                src.starts_with(root()),
                "{name}:{dst} mounts {src:?}, outside the repository"
            );
            assert!(
                src.exists(),
                "{name}:{dst} mounts {src:?}, which is missing"
            );
        }
    }

    // Every named volume used is declared.
    let declared = config["volumes"].as_object().expect("named volumes");
    for (name, svc) in services {
        for (src, dst) in volumes(svc) {
            if !src.starts_with('/') && !src.starts_with('.') {
                assert!(
                    declared.contains_key(&src),
                    "{name}:{dst} uses undeclared volume {src}"
                );
            }
        }
    }
}

#[test]
fn compose_gives_whosin_and_grafana_their_variables() {
    let Some(config) = compose_config() else {
        return;
    };
    // Each ${NAME} of the container config is set on the whosin service.
    let env = &service(&config, "whosin")["environment"];
    let yaml = read("deploy/docker/whosin.yaml");
    let names = env_references(&yaml);
    assert!(!names.is_empty());
    for name in &names {
        let value = env[name.as_str()].as_str().unwrap_or_default();
        assert!(
            !value.is_empty(),
            "deploy/docker/whosin.yaml uses ${{{name}}}, which the whosin service does not set: {env:#}"
        );
    }

    // whosin writes with the token InfluxDB was set up with, into its org and bucket.
    let influx = &service(&config, "influxdb")["environment"];
    assert_eq!(influx["DOCKER_INFLUXDB_INIT_MODE"], "setup");
    assert_eq!(
        env["INFLUXDB_TOKEN"],
        influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    );
    assert_eq!(env["INFLUXDB_ORG"], influx["DOCKER_INFLUXDB_INIT_ORG"]);
    assert_eq!(
        env["INFLUXDB_BUCKET"],
        influx["DOCKER_INFLUXDB_INIT_BUCKET"]
    );

    // The variables grafana/provisioning/datasources expands.
    let grafana = &service(&config, "grafana")["environment"];
    assert_eq!(grafana["WHOSIN_INFLUXDB_URL"], "http://influxdb:8086");
    assert_eq!(grafana["WHOSIN_INFLUXDB_DB"], "senseops");
    assert_eq!(grafana["WHOSIN_PROMETHEUS_URL"], "http://prometheus:9090");
    assert_eq!(
        grafana["WHOSIN_INFLUXDB_TOKEN"],
        influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    );
}

/// The `${NAME}`s of a YAML text, comments left out.
fn env_references(yaml: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in yaml.lines() {
        let line = line.split(" #").next().unwrap();
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let end = after.find('}').expect("closing }");
            names.push(after[..end].to_owned());
            rest = &after[end + 1..];
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn prometheus_config_scrapes_whosin_and_loads_the_alerts() {
    let prom: Value = serde_saphyr::from_str(&read("deploy/docker/prometheus.yml")).unwrap();
    assert_eq!(prom["rule_files"][0], "/etc/prometheus/alerts.yml");
    let jobs = prom["scrape_configs"].as_array().unwrap();
    let whosin = jobs
        .iter()
        .find(|j| {
            j["static_configs"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|t| t == "whosin:9842")
                })
        })
        .expect("a job scrapes whosin:9842");
    let interval = whosin["scrape_interval"]
        .as_str()
        .or(prom["global"]["scrape_interval"].as_str());
    assert_eq!(interval, Some("15s"));

    let mosquitto = read("deploy/docker/mosquitto.conf");
    for line in [
        "listener 1883",
        "allow_anonymous true",
        "persistence true",
        "persistence_location /mosquitto/data/",
    ] {
        assert!(
            mosquitto.lines().any(|l| l.trim() == line),
            "mosquitto.conf lacks {line:?}"
        );
    }
}

#[test]
fn container_config_is_valid_with_its_variables() {
    let config = root().join("deploy/docker/whosin.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_whosin"));
    cmd.arg("check-config").arg("-c").arg(&config);
    for (name, value) in CONTAINER_ENV {
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "check-config refused deploy/docker/whosin.yaml:\n{}",
        text(&out)
    );

    // And each secret really comes from the environment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_whosin"));
    cmd.arg("check-config").arg("-c").arg(&config);
    for (name, _) in CONTAINER_ENV {
        cmd.env_remove(name);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    for key in ["org", "bucket", "token"] {
        assert!(
            msg.contains(&format!("sinks.influxdb.{key}")),
            "sinks.influxdb.{key} does not come from the environment:\n{msg}"
        );
    }
    for name in env_references(&read("deploy/docker/whosin.yaml")) {
        assert!(
            CONTAINER_ENV.iter().any(|(n, _)| *n == name),
            "{name} is not in CONTAINER_ENV"
        );
    }

    // What a container needs: every interface, the volume, the compose hosts.
    let yaml: Value = serde_saphyr::from_str(&read("deploy/docker/whosin.yaml")).unwrap();
    assert_eq!(yaml["udp"]["listen"], "0.0.0.0:9997");
    assert_eq!(yaml["http"]["listen"], "0.0.0.0:9842");
    assert_eq!(yaml["data_dir"], "/data");
    assert_eq!(yaml["sinks"]["influxdb"]["url"], "http://influxdb:8086");
    assert_eq!(yaml["sinks"]["influxdb"]["version"], 2);
    assert_eq!(yaml["sinks"]["mqtt"]["url"], "mqtt://mosquitto:1883");
    assert_eq!(yaml["tags"]["qs_env"], "docker");
}

/// `path` as written in `include_str!("...")` in `file`, relative to the
/// repository root.
fn resolve(file: &Path, path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in file.parent().unwrap().join(path).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dockerfile_copies_what_the_build_needs() {
    let dockerfile = read("Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    let ignored = read(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();

    // The files the binary embeds, and the bench the manifest declares.
    let mut needed = vec![PathBuf::from("Cargo.toml"), PathBuf::from("Cargo.lock")];
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for file in files {
        let rel = file.strip_prefix(root()).unwrap().to_owned();
        let source = std::fs::read_to_string(&file).unwrap();
        for macro_ in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in source.match_indices(macro_) {
                let rest = &source[i + macro_.len()..];
                let path = &rest[..rest.find('"').unwrap()];
                needed.push(resolve(&rel, path));
            }
        }
    }
    let manifest = read("Cargo.toml");
    if manifest.contains("[[bench]]") {
        needed.push(PathBuf::from("benches"));
    }
    for path in needed {
        let top = path
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        assert!(
            copied
                .iter()
                .any(|c| c.trim_end_matches('/').trim_start_matches("./") == top),
            "the Dockerfile does not COPY {top} (needed for {path:?}); it copies {copied:?}"
        );
        assert!(
            !ignored.contains(&top),
            ".dockerignore leaves out {top}, which the build needs"
        );
    }
    for line in [
        "FROM rust:1-bookworm AS build",
        "FROM debian:bookworm-slim",
        "EXPOSE 9997/udp 9842/tcp",
        "USER whosin",
        "ENTRYPOINT [\"whosin\"]",
        "CMD [\"run\", \"-c\", \"/etc/whosin/whosin.yaml\"]",
        "COPY deploy/docker/whosin.yaml /etc/whosin/whosin.yaml",
    ] {
        assert!(
            dockerfile.lines().any(|l| l.trim() == line),
            "the Dockerfile lacks {line:?}"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("--uid 10001"));
}

/// `[section] -> key -> values` of a systemd unit file.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: a key before any [section]", n + 1));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(!line.ends_with('\\'), "line {}: continued line", n + 1);
        sections
            .get_mut(section)
            .unwrap()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[test]
fn systemd_unit_has_what_it_needs() {
    let text = read("deploy/whosin.service");
    let unit = parse_unit(&text);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] lacks {key}"));
        values.last().unwrap()
    };
    assert_eq!(one("User"), "whosin");
    assert_eq!(
        one("ExecStart"),
        "/usr/local/bin/whosin run -c /etc/whosin/whosin.yaml"
    );
    assert_eq!(one("WorkingDirectory"), "/var/lib/whosin");
    assert_eq!(one("StateDirectory"), "whosin");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("EnvironmentFile"), "-/etc/whosin/whosin.env");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("ReadWritePaths"), "/var/lib/whosin");
    assert!(one("AmbientCapabilities").contains("CAP_NET_ADMIN"));
    assert!(one("LimitNOFILE").parse::<u64>().is_ok());
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);
    assert!(unit.contains_key("Unit"));
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // Often missing in containers; then the test above is all there is.
    let Some(analyze) = common::which("systemd-analyze") else {
        eprintln!("skipping: systemd-analyze not installed");
        return;
    };
    // verify insists that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("whosin.service");
    let unit_text = read("deploy/whosin.service")
        .replace("/usr/local/bin/whosin", env!("CARGO_BIN_EXE_whosin"));
    std::fs::write(&unit, unit_text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    // Unknown keys and bad values are only warnings, with the file's path.
    let msg = text(&out);
    let ours: Vec<&str> = msg
        .lines()
        .filter(|l| l.contains("whosin.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{msg}"
    );
}

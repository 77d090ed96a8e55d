//! `whosin import-butler-sos FILE [-o OUT]`: a commented whosin config from a
//! Butler SOS config, so that switching takes minutes: the same UDP port, the
//! same excluded users, tags, InfluxDB and MQTT destinations, the same
//! Prometheus port, and the proxy API certificates.
//!
//! Settings whosin has no use for are listed at the end, each with why.
//! Secrets (InfluxDB token and password) go into the output file only; when
//! the config is printed to the terminal they become `${NAME}` references
//! to the environment instead.

use std::fmt::Write as _;

use serde_json::Value;

/// A secret found in the Butler SOS file.
pub struct Secret {
    /// The environment variable the printed config refers to.
    pub env: String,
    /// The value.
    pub value: String,
}

/// The converted config.
pub struct Imported {
    /// The whosin config, commented.
    pub yaml: String,
    /// Secrets; in `yaml` as values or, with `inline_secrets` off, as `${env}`.
    pub secrets: Vec<Secret>,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not YAML, or not a Butler SOS config.
    #[error("{0}")]
    NotButlerSos(String),
}

fn get<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .filter(|v| !v.is_null())
}

fn text(v: &Value, path: &str) -> Option<String> {
    match get(v, path)? {
        Value::String(s) => {
            let s = s.trim();
            // Butler SOS's template writes placeholders like <IP or FQDN>.
            let placeholder = s.starts_with('<') && s.ends_with('>');
            (!s.is_empty() && !placeholder).then(|| s.to_owned())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn flag(v: &Value, path: &str) -> bool {
    match get(v, path) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn list<'v>(v: &'v Value, path: &str) -> &'v [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// A YAML scalar that means exactly `s` (a JSON string is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Converts the Butler SOS config in `source` (its text). With
/// `inline_secrets`, secrets are written as values; else as `${NAME}`.
pub fn convert(
    source: &str,
    file_name: &str,
    inline_secrets: bool,
) -> Result<Imported, ImportError> {
    let root: Value = serde_saphyr::from_str(source)
        .map_err(|e| ImportError::NotButlerSos(format!("{file_name} is not valid YAML: {e}")))?;
    let b = root.get("Butler-SOS").ok_or_else(|| {
        ImportError::NotButlerSos(format!(
            "{file_name} has no Butler-SOS: section; is it a Butler SOS config file (Butler-SOS.*.yaml)?"
        ))
    })?;
    let mut secrets = Vec::new();
    let mut secret = |env: &str, value: String| -> String {
        let shown = if inline_secrets {
            q(&value)
        } else {
            q(&format!("${{{env}}}"))
        };
        secrets.push(Secret {
            env: env.to_owned(),
            value,
        });
        shown
    };
    let mut y = String::new();
    let mut notes: Vec<String> = Vec::new();
    let w = &mut y;
    let _ = writeln!(
        w,
        "# whosin configuration imported from the Butler SOS config {file_name}\n\
         # by `whosin import-butler-sos`. Check it with `whosin check-config -c FILE`;\n\
         # every key is explained in docs/configuration.md. Settings that do not\n\
         # carry over are listed at the end, each with why.\n"
    );

    // UDP: Butler SOS's user event server.
    let port = text(b, "userEvents.udpServerConfig.portUserActivityEvents")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(9997);
    let host = text(b, "userEvents.udpServerConfig.serverHost");
    let ip = host
        .as_deref()
        .and_then(|h| h.parse::<std::net::IpAddr>().ok());
    let listen = match ip {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => format!("0.0.0.0:{port}"),
    };
    let _ = writeln!(w, "udp:");
    match (&host, ip) {
        (Some(h), None) => {
            let _ = writeln!(
                w,
                "  # Butler SOS listened on {h}; whosin binds to an address, and 0.0.0.0 is all of them."
            );
        }
        _ => {
            let _ = writeln!(
                w,
                "  # The port the Qlik proxies' log4net appender sends to: unchanged."
            );
        }
    }
    let _ = writeln!(w, "  listen: {}", q(&listen));
    if flag(b, "userEvents.udpServerConfig.enableSourceValidation") {
        let (ips, names): (Vec<String>, Vec<String>) =
            list(b, "userEvents.udpServerConfig.allowedSources")
                .iter()
                .filter_map(|v| v.as_str().map(str::trim).map(str::to_owned))
                .filter(|s| !s.is_empty())
                .partition(|s| {
                    s.parse::<ipnet::IpNet>().is_ok() || s.parse::<std::net::IpAddr>().is_ok()
                });
        if !ips.is_empty() {
            let _ = writeln!(
                w,
                "  allowed_sources: [{}]",
                ips.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            );
        }
        if !names.is_empty() {
            notes.push(format!(
                "userEvents.udpServerConfig.allowedSources {}: whosin takes IP addresses and networks, not host names; add the proxies' addresses to udp.allowed_sources",
                names.join(", ")
            ));
        }
    }

    // HTTP: Butler SOS's Prometheus endpoint becomes whosin's /metrics (and page and API).
    let _ = writeln!(w, "\nhttp:");
    if flag(b, "prometheus.enable") {
        let p_port = text(b, "prometheus.port")
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(9842);
        let p_host = text(b, "prometheus.host")
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .map_or_else(|| "0.0.0.0".to_owned(), |a| a.to_string());
        let addr = if p_host.contains(':') {
            format!("[{p_host}]:{p_port}")
        } else {
            format!("{p_host}:{p_port}")
        };
        let _ = writeln!(
            w,
            "  # Butler SOS served Prometheus here: whosin serves /metrics (and its page and API)\n  # on the same address, so the scrape target stays. The metric names differ:\n  # see docs/migrating-from-butler-sos.md. Set auth_token before exposing the API."
        );
        let _ = writeln!(w, "  listen: {}", q(&addr));
    } else {
        let _ = writeln!(
            w,
            "  listen: \"127.0.0.1:9842\"    # the page, the API and /metrics"
        );
    }

    // Blacklist.
    let excluded: Vec<(String, String)> = list(b, "userEvents.excludeUser")
        .iter()
        .filter_map(|e| Some((text(e, "directory")?, text(e, "userId")?)))
        .collect();
    let _ = writeln!(
        w,
        "\n# Butler SOS's userEvents.excludeUser. whosin matches case-insensitively\n# (Butler SOS did not), and can also drop a whole directory or match a regex."
    );
    if excluded.is_empty() {
        let _ = writeln!(w, "blacklist: []");
    } else {
        let _ = writeln!(w, "blacklist:");
        for (dir, id) in &excluded {
            let _ = writeln!(w, "  - directory: {}\n    user_id: {}", q(dir), q(id));
        }
    }

    // Tags.
    let tags: Vec<(String, String)> = list(b, "userEvents.tags")
        .iter()
        .filter_map(|t| Some((text(t, "name")?, text(t, "value").unwrap_or_default())))
        .collect();
    let _ = writeln!(
        w,
        "\n# Butler SOS's userEvents.tags: on every InfluxDB point and MQTT message."
    );
    if tags.is_empty() {
        let _ = writeln!(w, "tags: {{}}");
    } else {
        let _ = writeln!(w, "tags:");
        for (k, v) in &tags {
            let _ = writeln!(w, "  {}: {}", q(k), q(v));
        }
    }

    let _ = writeln!(w, "\nsinks:");
    // InfluxDB.
    let influx_on = flag(b, "influxdbConfig.enable")
        && get(b, "userEvents.sendToInfluxdb.enable").is_none_or(|v| v.as_bool() == Some(true));
    let version = text(b, "influxdbConfig.version").unwrap_or_else(|| "1".into());
    let ihost = text(b, "influxdbConfig.host").unwrap_or_else(|| "127.0.0.1".into());
    let iport = text(b, "influxdbConfig.port").unwrap_or_else(|| "8086".into());
    let _ = writeln!(w, "  influxdb:");
    let _ = writeln!(w, "    enabled: {influx_on}");
    let _ = writeln!(w, "    url: {}", q(&format!("http://{ihost}:{iport}")));
    match version.as_str() {
        "2" => {
            let _ = writeln!(w, "    version: 2");
            let _ = writeln!(
                w,
                "    org: {}",
                q(&text(b, "influxdbConfig.v2Config.org").unwrap_or_default())
            );
            let _ = writeln!(
                w,
                "    bucket: {}",
                q(&text(b, "influxdbConfig.v2Config.bucket").unwrap_or_default())
            );
            let token = text(b, "influxdbConfig.v2Config.token").unwrap_or_default();
            let _ = writeln!(w, "    token: {}", secret("WHOSIN_INFLUXDB_TOKEN", token));
        }
        "3" => {
            let _ = writeln!(w, "    version: 3");
            let _ = writeln!(
                w,
                "    database: {}",
                q(&text(b, "influxdbConfig.v3Config.database").unwrap_or_default())
            );
            let token = text(b, "influxdbConfig.v3Config.token").unwrap_or_default();
            let _ = writeln!(w, "    token: {}", secret("WHOSIN_INFLUXDB_TOKEN", token));
            if get(b, "influxdbConfig.v3Config.retentionDuration").is_some() {
                notes.push(
                    "influxdbConfig.v3Config.retentionDuration: whosin writes to the database Butler SOS created and does not create it".into(),
                );
            }
        }
        _ => {
            let _ = writeln!(w, "    version: 1");
            let _ = writeln!(
                w,
                "    database: {}",
                q(&text(b, "influxdbConfig.v1Config.dbName").unwrap_or_else(|| "senseops".into()))
            );
            if flag(b, "influxdbConfig.v1Config.auth.enable") {
                let _ = writeln!(
                    w,
                    "    username: {}",
                    q(&text(b, "influxdbConfig.v1Config.auth.username").unwrap_or_default())
                );
                let pw = text(b, "influxdbConfig.v1Config.auth.password").unwrap_or_default();
                let _ = writeln!(
                    w,
                    "    password: {}",
                    secret("WHOSIN_INFLUXDB_PASSWORD", pw)
                );
            }
            if let Some(rp) = text(b, "influxdbConfig.v1Config.retentionPolicy.name") {
                let _ = writeln!(w, "    retention_policy: {}", q(&rp));
                notes.push(
                    "influxdbConfig.v1Config.retentionPolicy.duration: whosin writes to the retention policy but does not create it (Butler SOS's database and policy are there already)".into(),
                );
            }
        }
    }

    // MQTT.
    let mqtt_on = flag(b, "mqttConfig.enable") && flag(b, "userEvents.sendToMQTT.enable");
    let mhost = text(b, "mqttConfig.brokerHost").unwrap_or_else(|| "127.0.0.1".into());
    let mport = text(b, "mqttConfig.brokerPort").unwrap_or_else(|| "1883".into());
    let _ = writeln!(w, "  mqtt:");
    let _ = writeln!(w, "    enabled: {mqtt_on}");
    let _ = writeln!(w, "    url: {}", q(&format!("mqtt://{mhost}:{mport}")));
    let _ = writeln!(
        w,
        "    qos: 1                       # Butler SOS published at QoS 0 and lost messages on broker restarts"
    );
    let _ = writeln!(
        w,
        "    topics:                      # userEvents.sendToMQTT.postTo; null: switched off"
    );
    for (key, butler) in [
        ("all", "everythingTopic"),
        ("session_start", "sessionStartTopic"),
        ("session_stop", "sessionStopTopic"),
        ("connection_open", "connectionOpenTopic"),
        ("connection_close", "connectionCloseTopic"),
    ] {
        let path = format!("userEvents.sendToMQTT.postTo.{butler}");
        let value = match (get(b, &path), text(b, &format!("{path}.topic"))) {
            (Some(_), Some(topic)) if flag(b, &format!("{path}.enable")) => q(&topic),
            (Some(_), _) => "null".into(),
            // Not in the file: Butler SOS's default.
            (None, _) => q(&crate::config::MqttTopics::default()
                .topic(key)
                .unwrap_or_default()),
        };
        let _ = writeln!(w, "      {key}: {value}");
    }
    // New Relic: userEvents.sendToNewRelic, the accounts it names.
    let nr_on = flag(b, "userEvents.sendToNewRelic.enable");
    let _ = writeln!(w, "  new_relic:");
    let _ = writeln!(w, "    enabled: {nr_on}");
    if let Some(url) = text(b, "newRelic.event.url") {
        let _ = writeln!(w, "    url: {}", q(url.trim_end_matches('/')));
    }
    let names: Vec<String> = list(b, "userEvents.sendToNewRelic.destinationAccount")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let creds = list(b, "thirdPartyToolsCredentials.newRelic");
    let mut accounts = Vec::new();
    for name in &names {
        let found = creds
            .iter()
            .find(|c| c.get("accountName").and_then(Value::as_str) == Some(name.as_str()));
        match found {
            Some(c) => accounts.push((
                name.clone(),
                text(c, "accountId").unwrap_or_default(),
                text(c, "insertApiKey").unwrap_or_default(),
            )),
            None => notes.push(format!(
                "userEvents.sendToNewRelic.destinationAccount: {name:?} is not in thirdPartyToolsCredentials.newRelic (Butler SOS skipped it too)"
            )),
        }
    }
    if accounts.is_empty() {
        let _ = writeln!(w, "    accounts: []");
    } else {
        let _ = writeln!(w, "    accounts:");
        for (i, (name, id, key)) in accounts.into_iter().enumerate() {
            let env = if i == 0 {
                "WHOSIN_NEW_RELIC_INSERT_KEY".to_owned()
            } else {
                format!("WHOSIN_NEW_RELIC_INSERT_KEY_{}", i + 1)
            };
            let _ = writeln!(w, "      - account_id: {}   # {name}", q(&id));
            let _ = writeln!(w, "        insert_key: {}", secret(&env, key));
        }
    }
    let _ = writeln!(
        w,
        "    scramble: {}",
        flag(b, "userEvents.sendToNewRelic.scramble")
    );
    if !list(b, "newRelic.event.header").is_empty() {
        notes.push("newRelic.event.header: whosin sends the Event API's own headers only".into());
    }
    let _ = writeln!(
        w,
        "  prometheus:\n    enabled: true                # /metrics on http.listen"
    );

    // The proxy API: Butler SOS's certificates and user session polling.
    let certs = (
        text(b, "cert.clientCert"),
        text(b, "cert.clientCertKey"),
        text(b, "cert.clientCertCA"),
    );
    let mut proxies: Vec<(String, u16, Vec<String>)> = Vec::new();
    for s in list(b, "serversToMonitor.servers") {
        if !flag(s, "userSessions.enable") {
            continue;
        }
        let Some(h) = text(s, "userSessions.host") else {
            continue;
        };
        let (host, port) = match h.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(4243)),
            _ => (h, 4243),
        };
        let vps: Vec<String> = list(s, "userSessions.virtualProxies")
            .iter()
            .filter_map(|v| text(v, "virtualProxy"))
            .map(|v| v.trim_matches('/').to_owned())
            .collect();
        proxies.push((
            host,
            port,
            if vps.is_empty() {
                vec![String::new()]
            } else {
                vps
            },
        ));
    }
    // App names: Butler SOS's appNames (the QRS on hostIP, every extractInterval ms).
    let app_names_on = flag(b, "appNames.enableAppNameExtract");
    let app_host = text(b, "appNames.hostIP").filter(|_| app_names_on);
    let app_every = get(b, "appNames.extractInterval")
        .and_then(Value::as_u64)
        .filter(|ms| *ms >= 1000)
        .map_or_else(|| "5m".to_owned(), |ms| format!("{}s", ms / 1000));
    match (certs, proxies.is_empty() && app_host.is_none()) {
        ((Some(client), Some(key), Some(root)), false) => {
            let _ = writeln!(
                w,
                "\n# The proxy API, from Butler SOS's cert and serversToMonitor.servers[].userSessions:\n# `whosin sessions list|end`, and reconciliation of whosin's picture with the\n# proxies' every reconcile_interval (docs/configuration.md); app names from\n# the repository service as Butler SOS's appNames read them."
            );
            if proxies.is_empty() {
                let _ = writeln!(w, "qlik:\n  proxies: []");
            } else {
                let _ = writeln!(w, "qlik:\n  proxies:");
            }
            for (host, port, vps) in &proxies {
                let _ = writeln!(
                    w,
                    "    - host: {}\n      port: {port}\n      virtual_proxies: [{}]",
                    q(host),
                    vps.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ")
                );
            }
            let _ = writeln!(
                w,
                "  certificates:\n    client: {}\n    client_key: {}\n    root: {}\n  reconcile_interval: \"5m\"",
                q(&client),
                q(&key),
                q(&root)
            );
            match (&app_host, app_names_on) {
                (Some(host), _) => {
                    let _ = writeln!(
                        w,
                        "  repository:               # appNames.hostIP\n    host: {}\n  app_names_interval: {}     # appNames.extractInterval",
                        q(host),
                        q(&app_every)
                    );
                }
                (None, true) => {
                    let _ = writeln!(w, "  app_names_interval: {}     # appNames.extractInterval", q(&app_every));
                }
                (None, false) => {
                    let _ = writeln!(w, "  app_names_interval: null   # appNames.enableAppNameExtract was off");
                }
            }
            if text(b, "cert.clientCertPassphrase").is_some() {
                notes.push(
                    "cert.clientCertPassphrase: whosin reads unencrypted PEM keys; export the certificates again from the QMC without a password".into(),
                );
            }
        }
        (_, false) => notes.push(
            "serversToMonitor.servers[].userSessions: the proxy API needs the QMC certificates (cert.*), which are not set; see docs/qlik-setup.md".into(),
        ),
        _ => {}
    }

    // What does not carry over.
    for (path, why) in [
        (
            "logEvents",
            "Qlik log events (warnings, errors, performance) are not user events; keep Butler SOS for them",
        ),
        (
            "serversToMonitor",
            "engine health checks are Butler SOS's; whosin only tracks who is logged in",
        ),
        (
            "userSessions",
            "session polling is replaced by events plus reconciliation with the proxy API (qlik:)",
        ),
        (
            "newRelic.metric",
            "whosin sends user events to New Relic, not Butler SOS's engine metrics",
        ),
        ("heartbeat", "use /healthz from your monitoring instead"),
        (
            "dockerHealthCheck",
            "the whosin image checks /readyz itself",
        ),
        (
            "uptimeMonitor",
            "whosin's own health is in /metrics and /readyz",
        ),
        (
            "qlikSenseEvents",
            "whosin always writes event_count with the InfluxDB sink and counts rejects in /metrics",
        ),
        (
            "userEvents.udpServerConfig.messageQueue",
            "whosin has no queue to size: it reads the socket in batches and counts what the kernel drops",
        ),
        (
            "userEvents.udpServerConfig.rateLimit",
            "not needed: whosin keeps up with far more than a Qlik site sends",
        ),
        (
            "errorTracking",
            "whosin counts errors in /metrics (whosin_sink_errors_total, rejects by reason)",
        ),
        (
            "configVisualisation",
            "whosin has no config web view; `whosin check-config` validates",
        ),
        ("logLevel", "set RUST_LOG (e.g. RUST_LOG=warn) instead"),
        (
            "fileLogging",
            "whosin logs to standard error (the systemd journal or docker logs)",
        ),
        ("anonTelemetry", "whosin sends no telemetry"),
        ("systemInfo", "whosin collects no system information"),
        ("crashFile", "not needed"),
        (
            "mqttConfig.baseTopic",
            "user events go to the topics above; baseTopic was for Butler SOS's other messages",
        ),
        (
            "influxdbConfig.includeFields",
            "engine metrics are Butler SOS's",
        ),
        (
            "influxdbConfig.maxBatchSize",
            "whosin sends up to sinks.influxdb.batch_size points per write and isolates a bad point by itself",
        ),
    ] {
        if get(b, path).is_some() {
            notes.push(format!("{path}: {why}"));
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(w, "\n# Not carried over from {file_name}:");
        for n in &notes {
            let _ = writeln!(w, "#   - {n}");
        }
    }
    Ok(Imported { yaml: y, secrets })
}

#[cfg(test)]
mod tests;

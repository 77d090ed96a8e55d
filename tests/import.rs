//! `whosin import-butler-sos` on realistic Butler SOS configs (tests/data/
//! butler-sos/): InfluxDB v1, v2 and v3, MQTT on and off, null and empty
//! `excludeUser` and `tags` (which crash Butler SOS itself). Every output
//! passes `whosin check-config`, and each value lands in its key.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/butler-sos")
        .join(name)
}

fn whosin(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(common::bin())
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Imports `name` into a file, checks it with `check-config`, and returns it parsed.
fn import(name: &str) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("whosin.yaml");
    let o = whosin(
        &[
            "import-butler-sos",
            data(name).to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the file holds secrets: owner only");
    }
    let check = whosin(&["check-config", "-c", out.to_str().unwrap()], &[]);
    assert!(
        check.status.success(),
        "check-config refused the import of {name}:\n{}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
    (serde_saphyr::from_str(&text).unwrap(), text)
}

#[test]
fn influxdb_v1_with_auth_mqtt_prometheus_and_the_proxy_api() {
    let (c, text) = import("v1-mqtt.yaml");
    assert_eq!(c["udp"]["listen"], "0.0.0.0:9997");
    assert_eq!(
        c["udp"]["allowed_sources"],
        json!(["10.1.2.3", "10.1.3.0/24"])
    );
    assert!(
        text.contains("sense-node3.example.com: whosin takes IP addresses"),
        "{text}"
    );
    assert_eq!(c["http"]["listen"], "0.0.0.0:9842");
    assert_eq!(
        c["blacklist"],
        json!([
            {"directory": "INTERNAL", "user_id": "sa_scheduler"},
            {"directory": "LAB", "user_id": "svc reload"}
        ])
    );
    assert_eq!(
        c["tags"],
        json!({"qs_env": "prod", "site": "Stockholm, HQ"})
    );
    let i = &c["sinks"]["influxdb"];
    assert_eq!(i["enabled"], true);
    assert_eq!(i["url"], "http://influx.example.com:8086");
    assert_eq!(i["version"], 1);
    assert_eq!(i["database"], "senseops");
    assert_eq!(i["username"], "butler");
    assert_eq!(i["password"], "p@ss word!");
    assert_eq!(i["retention_policy"], "10d");
    let m = &c["sinks"]["mqtt"];
    assert_eq!(m["enabled"], true);
    assert_eq!(m["url"], "mqtt://mqtt.example.com:1884");
    assert_eq!(
        m["topics"],
        json!({
            "all": "qliksense/userevent",
            "session_start": "sense/login",
            "session_stop": null,
            "connection_open": "qliksense/userevent/connection/open",
            "connection_close": "qliksense/userevent/connection/close"
        })
    );
    // Butler SOS's certificates and session polling become the proxy API.
    let q = &c["qlik"];
    assert_eq!(
        q["proxies"],
        json!([{"host": "sense-node1.example.com", "port": 4243, "virtual_proxies": ["", "hdr"]}])
    );
    assert_eq!(
        q["certificates"]["client_key"],
        "/opt/butler-sos/config/certificate/client_key.pem"
    );
    // appNames: every extractInterval (60 s), from the first proxy's host.
    assert_eq!(q["app_names_interval"], "60s");
    assert!(q.get("repository").is_none(), "no hostIP: the proxy's host");
    // What does not carry over is listed, each with why.
    for not_carried in [
        "#   - logEvents: ",
        "#   - heartbeat: ",
        "#   - userEvents.udpServerConfig.messageQueue: ",
        "#   - mqttConfig.baseTopic: ",
        "#   - qlikSenseEvents: ",
    ] {
        assert!(text.contains(not_carried), "{not_carried} missing:\n{text}");
    }
}

#[test]
fn influxdb_v2_mqtt_off_and_null_lists() {
    let (c, text) = import("v2-null-lists.yaml");
    // A host name cannot be bound: all addresses, the same port.
    assert_eq!(c["udp"]["listen"], "0.0.0.0:9998");
    assert!(text.contains("Butler SOS listened on butler.example.com"));
    assert_eq!(c["http"]["listen"], "127.0.0.1:9842");
    assert_eq!(c["blacklist"], json!([]));
    assert_eq!(c["tags"], json!({}));
    let i = &c["sinks"]["influxdb"];
    assert_eq!(i["version"], 2);
    assert_eq!(i["url"], "http://influx2.example.com:8086");
    assert_eq!(i["org"], "qlik-org");
    assert_eq!(i["bucket"], "butler-sos");
    assert_eq!(i["token"], "v2-T0ken==");
    assert_eq!(c["sinks"]["mqtt"]["enabled"], false);
    assert!(c.get("qlik").is_none());
}

#[test]
fn influxdb_v3_and_empty_lists() {
    let (c, _) = import("v3-empty-lists.yaml");
    assert_eq!(c["udp"]["listen"], "0.0.0.0:9997");
    assert_eq!(c["blacklist"], json!([]));
    assert_eq!(c["tags"], json!({}));
    let i = &c["sinks"]["influxdb"];
    assert_eq!(i["version"], 3);
    assert_eq!(i["url"], "http://influx3.example.com:8181");
    assert_eq!(i["database"], "senseops3");
    assert_eq!(i["token"], "apiv3_secret");
    // MQTT was off in mqttConfig, whatever userEvents said.
    assert_eq!(c["sinks"]["mqtt"]["enabled"], false);
}

#[test]
fn printed_to_the_terminal_the_secrets_are_references() {
    let o = whosin(
        &["import-butler-sos", data("v1-mqtt.yaml").to_str().unwrap()],
        &[],
    );
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stdout.contains("p@ss word!") && !stderr.contains("p@ss word!"));
    assert!(
        stdout.contains("password: \"${WHOSIN_INFLUXDB_PASSWORD}\""),
        "{stdout}"
    );
    assert!(stderr.contains("WHOSIN_INFLUXDB_PASSWORD"), "{stderr}");
    // With the variable set, the printed config is valid too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("printed.yaml");
    std::fs::write(&file, stdout.as_bytes()).unwrap();
    let check = whosin(
        &["check-config", "-c", file.to_str().unwrap()],
        &[("WHOSIN_INFLUXDB_PASSWORD", "x")],
    );
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Not a Butler SOS file: exit 2, saying so.
    let o = whosin(
        &["import-butler-sos", file.to_str().unwrap()],
        &[("WHOSIN_INFLUXDB_PASSWORD", "x")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no Butler-SOS: section"));
}

#[test]
fn new_relic_accounts_scramble_and_url_carry_over() {
    let (c, text) = import("new-relic.yaml");
    let nr = &c["sinks"]["new_relic"];
    assert_eq!(nr["enabled"], true);
    assert_eq!(nr["url"], "https://insights-collector.eu01.nr-data.net");
    assert_eq!(nr["scramble"], true);
    assert_eq!(
        nr["accounts"],
        json!([
            {"account_id": "1234567", "insert_key": "NRII-first-secret-key"},
            {"account_id": "7654321", "insert_key": "NRII-second-secret-key"},
        ])
    );
    assert!(
        text.contains("\"Forgotten account\" is not in thirdPartyToolsCredentials.newRelic"),
        "{text}"
    );
    assert!(text.contains("newRelic.event.header"), "{text}");
    assert_eq!(c["tags"], json!({"qs_env": "prod"}));
    // appNames without polled proxies: the repository on hostIP.
    assert_eq!(c["qlik"]["proxies"], json!([]));
    assert_eq!(c["qlik"]["repository"]["host"], "qs-central.example.com");
    assert_eq!(c["qlik"]["app_names_interval"], "120s");

    // Printed, the keys are environment references.
    let o = whosin(
        &[
            "import-butler-sos",
            data("new-relic.yaml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success());
    let printed = String::from_utf8(o.stdout).unwrap();
    assert!(!printed.contains("NRII-"), "{printed}");
    assert!(
        printed.contains("${WHOSIN_NEW_RELIC_INSERT_KEY}"),
        "{printed}"
    );
    assert!(
        printed.contains("${WHOSIN_NEW_RELIC_INSERT_KEY_2}"),
        "{printed}"
    );
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("WHOSIN_NEW_RELIC_INSERT_KEY_2"), "{err}");
}

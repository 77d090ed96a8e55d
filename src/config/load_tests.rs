//! Loading and validating: every problem by key path, secrets never shown.
use super::*;
use std::time::Duration;

fn no_env(_: &str) -> Option<String> {
    None
}

fn problems(yaml: &str) -> Vec<String> {
    match load_str(yaml, &no_env) {
        Ok(_) => vec![],
        Err(e) => e.lines(),
    }
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let c = load_str("", &no_env).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.udp.listen.to_string(), "0.0.0.0:9997");
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:9842");
    assert_eq!(c.sessions.idle_timeout.get(), Duration::from_secs(1800));
    assert_eq!(c.retention.get(), Duration::from_secs(90 * 86_400));
    assert!(c.sinks.prometheus.enabled);
    assert_eq!(
        c.sinks.mqtt.topics.all.as_deref(),
        Some("qliksense/userevent")
    );
}

#[test]
fn the_shipped_config_file_validates() {
    let text = super::super::EMBEDDED;
    let c = load_str(text, &no_env).unwrap();
    assert_eq!(c.udp.listen.to_string(), "0.0.0.0:9997");
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:9842");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    // It documents the defaults: every section but the blacklist is them.
    let d = Config::default();
    assert_eq!(
        (&c.udp, &c.http, &c.journal, &c.sessions, &c.sinks),
        (&d.udp, &d.http, &d.journal, &d.sessions, &d.sinks)
    );
}

#[test]
fn limits_out_of_range_are_named() {
    let p = problems(
        "udp: {rate_limit_per_source: 0}\nhttp: {max_connections: 0, max_header_bytes: 100, \
             header_timeout: 0s}\nsessions: {max_tracked: 5}\njournal: {max_uncommitted: 10}\n",
    );
    for key in [
        "udp.rate_limit_per_source",
        "http.max_connections",
        "http.max_header_bytes",
        "http.header_timeout",
        "sessions.max_tracked",
        "journal.max_uncommitted",
    ] {
        assert!(
            p.iter().any(|l| l.starts_with(&format!("{key}:"))),
            "{key} not named in {p:?}"
        );
    }
}

#[test]
fn a_syntax_error_on_a_secret_line_does_not_quote_the_secret() {
    let yaml = "sinks:\n  influxdb:\n    password: 'hunter2-secret\n    url: x\n";
    let msg = load_str(yaml, &no_env).unwrap_err().to_string();
    assert!(msg.starts_with("not valid YAML"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn a_quoted_line_of_a_secret_is_not_shown_even_cut_short() {
    // Found by the fuzzer: the error quotes the line from its middle on,
    // without the key, and NUL bytes shown as blanks.
    let yaml = format!(
        "sinks:\n  influxdb:\n    token: null {}# e.g. \"S3CRET\0\0\0 tail\n    url: x\n",
        " ".repeat(60)
    );
    let msg = load_str(&yaml, &no_env).unwrap_err().to_string();
    assert!(msg.starts_with("not valid YAML"), "{msg}");
    assert!(!msg.contains("S3CRET"), "{msg}");
    assert!(msg.contains("a secret's line, not shown"), "{msg}");
    // A value continued on the next, deeper-indented line is hidden too.
    let yaml = "http:\n  auth_token: \"abc\n    S3CRET\n  listen: [\n";
    let msg = load_str(yaml, &no_env).unwrap_err().to_string();
    assert!(!msg.contains("S3CRET"), "{msg}");
}

#[test]
fn passwords_in_urls_are_redacted_for_logs() {
    use crate::config::redact_url;
    assert_eq!(
        redact_url("http://butler:s3cret@influx:8086"),
        "http://butler:***@influx:8086/"
    );
    assert_eq!(redact_url("mqtt://broker:1883"), "mqtt://broker:1883");
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn secrets_are_never_quoted_in_problems() {
    let got = problems(
        "http:\n  auth_token: 918273645\nsinks:\n  influxdb:\n    password: [4711, 1174]\n    token: 55667788\n  mqtt:\n    password: 99887766\n",
    );
    let all = got.join("\n");
    for secret in ["918273645", "4711", "55667788", "99887766"] {
        assert!(!all.contains(secret), "{secret} shown in:\n{all}");
    }
    assert!(
        all.contains("http.auth_token: is not a string (the value is not shown"),
        "{all}"
    );
}

#[test]
fn every_problem_is_named_by_key_path() {
    let got = problems(
        r#"
udp:
  listen: "x"
http:
  lisen: "127.0.0.1:1"
retention: 30
blacklist:
  - regex: '^LAB\\(test'
  - directory: LAB
    regex: x
  - user_id: bob
sessions:
  idle_timeout: "5 minutes"
colour: blue
"#,
    );
    let want_prefixes = [
        "udp.listen: \"x\" is not an address like 0.0.0.0:9997",
        "http.lisen: unknown field `lisen`",
        "retention: 30 has no unit",
        "blacklist[0].regex:",
        "blacklist[1]: give either directory",
        "blacklist[2].user_id: needs a directory",
        "sessions.idle_timeout: \"5 minutes\" is not a duration",
        "colour: unknown key",
    ];
    for want in want_prefixes {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in {got:#?}"
        );
    }
    assert!(got.iter().any(|g| g.contains("unclosed group")), "{got:#?}");
}

#[test]
fn one_run_names_every_problem_of_five_sections() {
    // Read at run time: the Docker build context has no tests/.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/config/five-sections.yaml"
    );
    let got = problems(&std::fs::read_to_string(path).unwrap());
    let want = [
        "udp.listen:",
        "udp.colour: unknown field",
        "udp.max_datagram_bytes: 0 is out of range",
        "http.max_connections: invalid type",
        "http.auth_token: is empty",
        "blacklist[0].regex:",
        "blacklist[1].directory: is empty",
        "sessions.idle_timeout:",
        "sinks.influxdb.version: 7 is not 1, 2 or 3",
        "sinks.influxdb.batch_size:",
        "sinks.mqtt.qos:",
        "sinks.mqtt.url:",
        "sinks.new_relic.scramble: invalid type",
        "sinks.new_relic.accounts[0].account_id:",
        "sinks.new_relic.accounts[0].insert_key: is empty",
        "qlik.certificates.client_key: is required",
        "qlik.certificates.root: is required",
        "qlik.proxies[0].host: is empty",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), want.len(), "nothing named twice: {got:#?}");
}

#[test]
fn a_semantic_problem_of_a_key_already_named_is_not_repeated() {
    // `version: "two"` is a type error; the default standing in for it
    // must not add "database is required" or a second version problem.
    let got = problems(
        "sinks:\n  influxdb:\n    enabled: true\n    version: \"two\"\n    database: null\n",
    );
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(
        got[0].starts_with("sinks.influxdb.version: invalid type"),
        "{got:#?}"
    );
    assert!(
        got[1].starts_with("sinks.influxdb.database: is required"),
        "{got:#?}"
    );
}

#[test]
fn sinks_need_their_keys_when_enabled() {
    let got = problems(
        r#"
sinks:
  influxdb:
    enabled: true
    url: "localhost:8086"
    version: 2
  mqtt:
    enabled: true
    url: "tcp://x"
    qos: 3
    topics:
      all: "a/#"
"#,
    );
    for want in [
        "sinks.influxdb.url:",
        "sinks.influxdb.org: is required with version: 2",
        "sinks.influxdb.bucket:",
        "sinks.influxdb.token:",
        "sinks.mqtt.url:",
        "sinks.mqtt.qos: 3 is not 0, 1 or 2",
        "sinks.mqtt.topics.all:",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in {got:#?}"
        );
    }
}

#[test]
fn mqtt_tls_files_are_checked() {
    let got = problems(
        r#"
sinks:
  mqtt:
    enabled: true
    url: "mqtt://broker"
    keepalive: "0s"
    ca_file: /etc/hostname
    client_cert: /etc/hostname
    topics:
      state: "qliksense/+"
"#,
    );
    for want in [
        "sinks.mqtt.keepalive: must be at least 1s",
        "sinks.mqtt.ca_file: is only used with an mqtts:// url",
        "sinks.mqtt.client_key: client_cert and client_key go together",
        "sinks.mqtt.topics.state:",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in {got:#?}"
        );
    }
    let got = problems(
        "sinks:\n  mqtt:\n    enabled: true\n    url: \"mqtts://broker\"\n    ca_file: /nonexistent/ca.pem\n",
    );
    assert!(
        got.iter()
            .any(|g| g.starts_with("sinks.mqtt.ca_file: cannot read /nonexistent/ca.pem")),
        "{got:#?}"
    );
}

#[test]
fn environment_references_are_replaced_or_named() {
    let env = |n: &str| (n == "TOKEN").then(|| "s3cret".to_owned());
    let c = load_str("http:\n  auth_token: \"Bearer-${TOKEN}\"\n", &env).unwrap();
    assert_eq!(c.http.auth_token.as_deref(), Some("Bearer-s3cret"));
    let err = load_str("sinks:\n  influxdb:\n    password: \"${NOPE}\"\n", &env).unwrap_err();
    assert_eq!(
        err.lines(),
        vec!["sinks.influxdb.password: environment variable NOPE is not set"]
    );
}

#[test]
fn numbers_are_text_where_text_is_expected() {
    let c = load_str(
        "tags:\n  site: 1\n  prod: true\nblacklist:\n  - directory: 42\n    user_id: 12345\n",
        &no_env,
    )
    .unwrap();
    assert_eq!(c.tags["site"], "1");
    assert_eq!(c.tags["prod"], "true");
    assert_eq!(c.blacklist[0].user_id.as_deref(), Some("12345"));
}

#[test]
fn sources_accept_ips_and_cidrs() {
    let c = load_str(
            "udp:\n  listen: \"[::]:9997\"\n  allowed_sources: [\"10.0.0.5\", \"192.168.1.0/24\", \"::1\"]\n",
            &no_env,
        )
        .unwrap();
    assert_eq!(c.udp.allowed_sources.len(), 3);
    assert_eq!(c.udp.allowed_sources[0].to_string(), "10.0.0.5/32");
    let got = problems("udp:\n  allowed_sources: [\"10.0.0.300\"]\n");
    assert!(
        got[0].starts_with("udp.allowed_sources: [0]: \"10.0.0.300\""),
        "{got:?}"
    );
}

#[test]
fn null_topics_switch_off_and_null_reconcile_too() {
    let c = load_str(
            "sinks:\n  mqtt:\n    topics:\n      all: null\nqlik:\n  proxies: [{host: qs1}]\n  certificates: {client: a, client_key: b, root: c}\n  reconcile_interval: null\n",
            &no_env,
        )
        .unwrap();
    assert_eq!(c.sinks.mqtt.topics.all, None);
    assert!(c.sinks.mqtt.topics.session_start.is_some());
    let q = c.qlik.unwrap();
    assert_eq!(q.reconcile_interval, None);
    assert_eq!(q.proxies[0].port, 4243);
    assert_eq!(q.proxies[0].virtual_proxies, vec![String::new()]);
}

#[test]
fn yaml_syntax_errors_are_reported() {
    let err = load_str("udp: [\n", &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::Yaml(_)));
    assert!(problems("- a\n- b\n")[0].contains("must be a mapping"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    /// Any text is a config or a list of problems, each naming a key or
    /// the file; a secret's value never appears in them.
    #[test]
    fn any_text_loads_or_names_its_problems(text in "(?s).{0,300}") {
        if let Err(e) = load_str(&text, &no_env) {
            proptest::prop_assert!(!e.lines().is_empty());
        }
    }

    #[test]
    fn keys_with_arbitrary_values_never_leak_secrets(
        value in "[a-zA-Z0-9 :,\\[\\]{}-]{1,30}",
    ) {
        let secret = format!("S3CRET{value}");
        for key in ["http:\n  auth_token", "sinks:\n  influxdb:\n    token", "sinks:\n  mqtt:\n    password"] {
            let yaml = format!("{key}: [{secret}]\n");
            if let Err(e) = load_str(&yaml, &no_env) {
                for line in e.lines() {
                    proptest::prop_assert!(!line.contains("S3CRET"), "{}", line);
                }
            }
        }
    }
}

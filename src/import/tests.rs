//! Unit tests of the Butler SOS import.

use super::*;

const BUTLER: &str = r#"
Butler-SOS:
  logLevel: info
  userEvents:
    enable: true
    excludeUser:
      - directory: INTERNAL
        userId: sa_scheduler
    udpServerConfig:
      serverHost: 10.0.0.5
      portUserActivityEvents: 9997
    tags:
      - name: qs_env
        value: prod
    sendToMQTT:
      enable: false
  influxdbConfig:
    enable: true
    host: influx.example.com
    port: 8086
    version: 2
    v2Config:
      org: qlik
      bucket: senseops
      token: "s3cr3t-token"
"#;

#[test]
fn secrets_stay_out_of_the_printed_config() {
    let out = convert(BUTLER, "Butler-SOS.yaml", false).unwrap();
    assert!(!out.yaml.contains("s3cr3t-token"), "{}", out.yaml);
    assert!(out.yaml.contains("${WHOSIN_INFLUXDB_TOKEN}"));
    assert_eq!(out.secrets[0].value, "s3cr3t-token");
    let inline = convert(BUTLER, "Butler-SOS.yaml", true).unwrap();
    assert!(inline.yaml.contains("token: \"s3cr3t-token\""));
    // Valid for whosin with the reference set.
    let env = |n: &str| (n == "WHOSIN_INFLUXDB_TOKEN").then(|| "x".to_owned());
    let c = crate::config::load_str(&out.yaml, &env).unwrap();
    assert_eq!(c.udp.listen.to_string(), "10.0.0.5:9997");
    assert!(out.yaml.contains("#   - logLevel: set RUST_LOG"));
}

#[test]
fn not_a_butler_sos_file_is_named() {
    let e = convert("foo: 1\n", "x.yaml", true).err().unwrap();
    assert!(e.to_string().contains("no Butler-SOS: section"));
}

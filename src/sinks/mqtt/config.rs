//! `sinks.mqtt`: the broker, the topics, and how the sink publishes.

use std::path::PathBuf;

use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::problems::Scope;
use crate::sinks::{Env, SinkConfig};

/// `sinks.mqtt:` Butler SOS-compatible messages.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Publish to MQTT.
    pub enabled: bool,
    /// `mqtt://host:port`, or `mqtts://` for TLS.
    pub url: String,
    /// MQTT client id.
    pub client_id: String,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password.
    pub password: Option<String>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// How often the connection is checked with a ping when idle.
    pub keepalive: HumanDuration,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`);
    /// without it the system's trust store is used.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (`mqtts://`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Topics; any can be `null` to switch it off.
    pub topics: MqttTopics,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "whosin".into(),
            username: None,
            password: None,
            qos: 1,
            keepalive: HumanDuration::from_secs(30),
            ca_file: None,
            client_cert: None,
            client_key: None,
            topics: MqttTopics::default(),
        }
    }
}

/// `sinks.mqtt.topics:` Butler SOS's defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttTopics {
    /// Every event.
    pub all: Option<String>,
    /// `Start session` events.
    pub session_start: Option<String>,
    /// `Stop session` events.
    pub session_stop: Option<String>,
    /// `Open connection` events.
    pub connection_open: Option<String>,
    /// `Close connection` events.
    pub connection_close: Option<String>,
    /// Prefix of the retained per-host state topic: `<state>/<host>`.
    pub state: Option<String>,
}

impl MqttTopics {
    /// The topic under `key` (`all`, `session_start`, ..., `state`).
    pub fn topic(&self, key: &str) -> Option<String> {
        match key {
            "all" => self.all.clone(),
            "session_start" => self.session_start.clone(),
            "session_stop" => self.session_stop.clone(),
            "connection_open" => self.connection_open.clone(),
            "connection_close" => self.connection_close.clone(),
            "state" => self.state.clone(),
            _ => None,
        }
    }
}

impl Default for MqttTopics {
    fn default() -> Self {
        Self {
            all: Some("qliksense/userevent".into()),
            session_start: Some("qliksense/userevent/session/start".into()),
            session_stop: Some("qliksense/userevent/session/stop".into()),
            connection_open: Some("qliksense/userevent/connection/open".into()),
            connection_close: Some("qliksense/userevent/connection/close".into()),
            state: Some("qliksense/sessions".into()),
        }
    }
}

impl SinkConfig for MqttConfig {
    type Sink = super::MqttSink;
    const NAME: &'static str = "mqtt";

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, p: &mut Scope<'_>) {
        if self.qos > 2 {
            p.add("qos", format!("{} is not 0, 1 or 2", self.qos));
        }
        let t = &self.topics;
        for (key, topic) in [
            ("all", &t.all),
            ("session_start", &t.session_start),
            ("session_stop", &t.session_stop),
            ("connection_open", &t.connection_open),
            ("connection_close", &t.connection_close),
            ("state", &t.state),
        ] {
            if let Some(topic) = topic
                && (topic.is_empty() || topic.contains(['+', '#']))
            {
                p.nested("topics").add(
                    key,
                    format!(
                        "{topic:?} is not a topic to publish to (empty, or has + or #); use null to switch it off"
                    ),
                );
            }
        }
        if !self.enabled {
            return;
        }
        p.url("url", &self.url, &["mqtt", "mqtts"]);
        if self.client_id.trim().is_empty() {
            p.add("client_id", "is empty");
        }
        if self.keepalive.get() < std::time::Duration::from_secs(1) {
            p.add("keepalive", "must be at least 1s");
        }
        let tls = self.url.starts_with("mqtts://");
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            let Some(file) = file else { continue };
            if !tls {
                p.add(key, "is only used with an mqtts:// url");
            } else if let Err(e) = std::fs::metadata(file) {
                p.add(key, format!("cannot read {}: {e}", file.display()));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.add(
                "client_key",
                "client_cert and client_key go together: set both or neither",
            );
        }
    }

    fn build(&self, env: &Env) -> anyhow::Result<Vec<(String, Self::Sink)>> {
        Ok(vec![(
            Self::NAME.to_owned(),
            super::MqttSink::new(self.clone(), env),
        )])
    }
}

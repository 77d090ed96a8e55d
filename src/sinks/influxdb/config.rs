//! `sinks.influxdb`: where and how the InfluxDB sink writes.

use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::problems::Scope;
use crate::sinks::{Env, SinkConfig};

/// `sinks.influxdb:` Butler SOS-compatible points for InfluxDB 1.x, 2.x and 3.x.
///
/// Which `version` to pick: the API the server speaks. InfluxDB 1.x (and
/// 1.x-compatible servers): 1. InfluxDB 2.x and Cloud (TSM): 2. InfluxDB 3
/// (Core, Enterprise, Cloud Serverless/Dedicated): 3, which writes Butler
/// SOS's v3 field names (InfluxDB 3 refuses a tag and a field of one name).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxConfig {
    /// Send to InfluxDB.
    pub enabled: bool,
    /// Base URL of the server.
    pub url: String,
    /// Write API: 1 (`/write` with database), 2 (`/api/v2/write` with org,
    /// bucket, token) or 3 (`/api/v3/write_lp?db=<database>` with token).
    pub version: u8,
    /// v1 and v3: database.
    pub database: Option<String>,
    /// v1: user name.
    pub username: Option<String>,
    /// v1: password.
    pub password: Option<String>,
    /// v1: retention policy (the database default when unset).
    pub retention_policy: Option<String>,
    /// v1: `CREATE DATABASE` when the server says the database is missing
    /// (as Butler SOS does at start); the user needs admin rights for it.
    pub create_database: bool,
    /// v2: organisation.
    pub org: Option<String>,
    /// v2: bucket.
    pub bucket: Option<String>,
    /// v2 and v3: API token.
    pub token: Option<String>,
    /// Most points in one write.
    pub batch_size: usize,
    /// Longest wait before a partial batch is written.
    pub flush_interval: HumanDuration,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "http://127.0.0.1:8086".into(),
            version: 1,
            database: Some("senseops".into()),
            username: None,
            password: None,
            retention_policy: None,
            create_database: true,
            org: None,
            bucket: None,
            token: None,
            batch_size: 5000,
            flush_interval: HumanDuration::from_secs(1),
        }
    }
}

impl SinkConfig for InfluxConfig {
    type Sink = super::InfluxSink;
    const NAME: &'static str = "influxdb";

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, p: &mut Scope<'_>) {
        if !(1..=3).contains(&self.version) {
            p.add("version", format!("{} is not 1, 2 or 3", self.version));
        }
        if !self.enabled {
            return;
        }
        p.url("url", &self.url, &["http", "https"]);
        match self.version {
            1 => p.required("database", self.database.as_deref(), "with version: 1"),
            2 => {
                for (key, val) in [
                    ("org", &self.org),
                    ("bucket", &self.bucket),
                    ("token", &self.token),
                ] {
                    p.required(key, val.as_deref(), "with version: 2");
                }
            }
            3 => {
                p.required("database", self.database.as_deref(), "with version: 3");
                p.required("token", self.token.as_deref(), "with version: 3");
            }
            _ => {}
        }
        if self.batch_size == 0 {
            p.add("batch_size", "must be at least 1");
        }
        p.positive("flush_interval", self.flush_interval);
    }

    fn build(&self, env: &Env) -> anyhow::Result<Vec<(String, Self::Sink)>> {
        Ok(vec![(
            Self::NAME.to_owned(),
            super::InfluxSink::new(self.clone(), env)?,
        )])
    }
}

//! Where events go: InfluxDB (and, in later work, MQTT). Prometheus is served
//! from the metrics registry at `/metrics`.

pub mod influxdb;

use std::sync::Mutex;

/// What a sink tells `/readyz` (a sink never makes whosin unready).
#[derive(Default)]
pub struct SinkStatus {
    /// Since when writes fail, and the last error; `None` while writing works.
    pub failing: Mutex<Option<(jiff::Timestamp, String)>>,
}

impl SinkStatus {
    /// Records a failed attempt (keeping when the failures began).
    pub fn failed(&self, error: &str) {
        let mut f = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let since = f.as_ref().map_or_else(jiff::Timestamp::now, |(t, _)| *t);
        *f = Some((since, error.to_owned()));
    }

    /// Records a successful write.
    pub fn ok(&self) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `("ok", detail)` or `("retrying", "since ...: error")`.
    pub fn describe(&self) -> (&'static str, String) {
        match &*self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            None => ("ok", "writing".to_owned()),
            Some((since, e)) => ("retrying", format!("retrying since {since}: {e}")),
        }
    }
}

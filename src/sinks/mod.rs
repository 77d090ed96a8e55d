//! Where events go: InfluxDB and MQTT, each a task reading the journal after
//! its own cursor. Prometheus is served from the metrics registry at `/metrics`.
//!
//! The [`supervise`] task owns the sink tasks: it starts the enabled ones, and
//! when the config file changes it restarts exactly the sinks whose settings
//! (or the tags, which every sink writes) changed. A restart loses nothing: the
//! old task stops, and the new one begins at the same journal cursor.

pub mod influxdb;
pub mod mqtt;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::sessions::journal::SinkReader;

/// Every sink whosin has, by its name in metrics, `/readyz` and the journal.
pub const NAMES: [&str; 2] = [influxdb::writer::SINK, mqtt::SINK];

/// What a sink tells `/readyz` (a sink never makes whosin unready).
#[derive(Default)]
pub struct SinkStatus {
    /// The sink is switched on in the config.
    pub enabled: AtomicBool,
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

    /// `("ok", detail)`, `("retrying", "since ...: error")` or `("disabled", ...)`.
    pub fn describe(&self) -> (&'static str, String) {
        if !self.enabled.load(Ordering::Relaxed) {
            return ("disabled", "switched off in the config".to_owned());
        }
        match &*self.failing.lock().unwrap_or_else(|p| p.into_inner()) {
            None => ("ok", "writing".to_owned()),
            Some((since, e)) => ("retrying", format!("retrying since {since}: {e}")),
        }
    }
}

/// The status of each sink in [`NAMES`], shared with `/readyz`.
pub type Statuses = BTreeMap<&'static str, Arc<SinkStatus>>;

/// One status per sink, all disabled until [`supervise`] starts them.
pub fn statuses() -> Statuses {
    NAMES.iter().map(|n| (*n, Arc::default())).collect()
}

/// A sink's settings as far as they concern it: equal settings, no restart.
#[derive(Clone, Debug, PartialEq)]
enum Spec {
    Influx(influxdb::writer::Settings),
    Mqtt(mqtt::Settings),
}

fn tags(c: &Config) -> Vec<(String, String)> {
    c.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn wanted(c: &Config, name: &str) -> Option<Spec> {
    match name {
        influxdb::writer::SINK if c.sinks.influxdb.enabled => {
            Some(Spec::Influx(influxdb::writer::Settings {
                influx: c.sinks.influxdb.clone(),
                tags: tags(c),
            }))
        }
        mqtt::SINK if c.sinks.mqtt.enabled => Some(Spec::Mqtt(mqtt::Settings {
            mqtt: c.sinks.mqtt.clone(),
            tags: tags(c),
        })),
        _ => None,
    }
}

/// What every sink task is given.
#[derive(Clone)]
pub struct Context {
    /// The journal file the sinks read.
    pub journal_path: PathBuf,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The statuses `/readyz` shows.
    pub statuses: Arc<Statuses>,
    /// The live state's per-host summary, for MQTT's retained state topic.
    pub live: Option<mqtt::LiveFeed>,
}

struct Running {
    spec: Spec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

fn start(ctx: &Context, name: &'static str, spec: Spec) -> anyhow::Result<Running> {
    use anyhow::Context as _;
    let reader = SinkReader::open(&ctx.journal_path, name, &ctx.metrics)
        .with_context(|| format!("opening the journal for the {name} sink"))?;
    let status = ctx.statuses[name].clone();
    status.ok();
    status.enabled.store(true, Ordering::Relaxed);
    let stop = CancellationToken::new();
    let metrics = ctx.metrics.clone();
    let task = match spec.clone() {
        Spec::Influx(s) => {
            tracing::info!(
                "influxdb: writing to {}",
                crate::config::redact_url(&s.influx.url)
            );
            tokio::spawn(influxdb::writer::run(
                s,
                reader,
                metrics,
                status,
                stop.clone(),
            ))
        }
        Spec::Mqtt(s) => {
            tracing::info!(
                "mqtt: publishing to {}",
                crate::config::redact_url(&s.mqtt.url)
            );
            tokio::spawn(mqtt::run(
                s,
                reader,
                metrics,
                status,
                ctx.live.clone(),
                stop.clone(),
            ))
        }
    };
    Ok(Running { spec, stop, task })
}

async fn halt(ctx: &Context, name: &str, r: Running) {
    r.stop.cancel();
    let _ = r.task.await;
    ctx.statuses[name].enabled.store(false, Ordering::Relaxed);
}

/// Starts the sinks `initial` enables (failing if one cannot open the
/// journal), then returns the task that follows config changes from `updates`
/// until `stop`, and stops every sink before it ends.
pub fn supervise(
    initial: &Config,
    mut updates: tokio::sync::watch::Receiver<Arc<Config>>,
    ctx: Context,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut running: BTreeMap<&'static str, Running> = BTreeMap::new();
    for name in NAMES {
        if let Some(spec) = wanted(initial, name) {
            running.insert(name, start(&ctx, name, spec)?);
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = updates.changed() => if changed.is_err() { break },
            }
            let config = updates.borrow_and_update().clone();
            for name in NAMES {
                let want = wanted(&config, name);
                if running.get(name).map(|r| &r.spec) == want.as_ref() {
                    continue;
                }
                if let Some(old) = running.remove(name) {
                    tracing::info!("{name}: settings changed, restarting the sink");
                    halt(&ctx, name, old).await;
                }
                if let Some(spec) = want {
                    match start(&ctx, name, spec) {
                        Ok(r) => {
                            running.insert(name, r);
                        }
                        Err(e) => tracing::error!("{name}: cannot start: {e:#}"),
                    }
                }
            }
        }
        for (name, r) in std::mem::take(&mut running) {
            halt(&ctx, name, r).await;
        }
    }))
}

/// `d` plus up to a quarter more, so that many whosins (or a restart of one)
/// do not retry against a recovering InfluxDB in lockstep.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

pub(crate) async fn wait(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(d) => {}
    }
}

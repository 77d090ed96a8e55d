//! Where events go: InfluxDB, MQTT and New Relic, each reading the journal
//! after its own cursor. Prometheus is served from the metrics registry at
//! `/metrics`.
//!
//! A sink is a folder (`influxdb/`, `mqtt/`, `new_relic/`): its config struct
//! (whose doc comments are its documentation and whose `validate` names every
//! problem), its encoder and its delivery, behind the small [`Sink`] trait.
//! What every sink would otherwise repeat lives once, in [`driver`]: reading
//! after the cursor, confirming, backoff with jitter, the status `/readyz`
//! shows and the shared counters. The [`registry`] lists the sinks once; the
//! supervisor starts the enabled ones and restarts exactly those whose
//! settings changed when the config file changes, at the same cursor.
//!
//! Adding a sink: a folder with a config type implementing [`SinkConfig`] and
//! a sink implementing [`Sink`], and one line in the list below.

pub mod driver;
pub mod registry;
mod split;
pub mod status;
mod supervisor;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::problems::Scope;
use crate::storage::StoredEvent;

pub use driver::Journal;
pub use registry::PrometheusConfig;

// The one list of sinks: `name: its config type` (in its folder, `name/`).
registry::registry! {
    influxdb: InfluxConfig,
    mqtt: MqttConfig,
    new_relic: NewRelicConfig,
}
pub use split::{Post, deliver_split};
pub use status::{SinkStatus, Statuses};
pub use supervisor::{Context, SinkSettings, supervise};

/// Events read from the journal, oldest first, in sequence order.
pub type Batch = Arc<[StoredEvent]>;

/// Points a server refused for good: they are dropped, counted in
/// `whosin_sink_points_refused_total` and shown as `degraded` in `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// How many points (events, for a batch of events).
    pub points: u64,
    /// The server's reason for the last of them.
    pub reason: String,
}

impl Refused {
    /// Adds `other` to `self` (`None` stays `None` only if both are).
    pub fn merge(a: Option<Refused>, b: Option<Refused>) -> Option<Refused> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Refused {
                points: a.points + b.points,
                reason: b.reason,
            }),
            (a, b) => a.or(b),
        }
    }
}

/// What a sink did with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The destination has it (less what it refused for good).
    Done(Option<Refused>),
    /// Handed over, not yet confirmed: [`Sink::settled`] says when it is.
    Pending,
}

/// Batches whose delivery the destination has now confirmed.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    /// How many of the oldest pending batches are done.
    pub batches: usize,
    /// What of them was refused for good.
    pub refused: Option<Refused>,
}

/// A delivery failed, and may work later: the driver backs off, calls
/// [`Sink::reset`] and sends everything after the cursor again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A destination. The driver calls it from one task; nothing here needs to
/// be thread-safe beyond `Send`.
pub trait Sink: Send + 'static {
    /// Most events per batch.
    fn batch_size(&self) -> usize;

    /// Most batches handed over and not yet confirmed (1: each batch is
    /// [`Delivered::Done`] before the next is read).
    fn pipeline(&self) -> usize {
        1
    }

    /// How long to wait, once caught up, before looking at the journal again.
    fn idle_interval(&self) -> Duration;

    /// Sends one batch.
    fn deliver(
        &mut self,
        batch: Batch,
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send;

    /// Waits until pending batches are confirmed, oldest first. Called only
    /// while some are pending.
    fn settled(&mut self) -> impl Future<Output = Result<Settled, SinkError>> + Send {
        std::future::pending()
    }

    /// Work of the sink's own while it is caught up (InfluxDB's periodic
    /// summaries, MQTT's retained states), with the journal at hand.
    fn idle(
        &mut self,
        journal: &Journal,
    ) -> impl Future<Output = Result<Option<Refused>, SinkError>> + Send {
        let _ = journal;
        std::future::ready(Ok(None))
    }

    /// Forgets everything pending (after an error, or when stopping): what
    /// was not confirmed is sent again from the cursor.
    fn reset(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// What a sink's config type tells the registry.
pub trait SinkConfig:
    serde::de::DeserializeOwned + Default + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The sink it builds.
    type Sink: Sink;
    /// The sink's name: its `sinks.<name>` key, its `sink` label in metrics,
    /// its entry in `/readyz`, and its cursor in the journal.
    const NAME: &'static str;
    /// Whether the config switches it on.
    fn enabled(&self) -> bool;
    /// Every problem of the section, by key path within `p`.
    fn validate(&self, p: &mut Scope<'_>);
    /// The sinks to run, each with its own cursor id: one, named
    /// [`Self::NAME`], or one per destination (`new_relic:<account>`).
    fn build(&self, env: &Env) -> anyhow::Result<Vec<(String, Self::Sink)>>;
}

/// What a sink may need beyond its own section.
#[derive(Clone, Default)]
pub struct Env {
    /// The configured `tags`.
    pub tags: BTreeMap<String, String>,
    /// The live state's per-host summary (MQTT's retained state topic).
    pub live: Option<Arc<crate::sessions::feed::Feed>>,
    /// App names, looked up when a point is made.
    pub apps: Arc<crate::apps::Apps>,
}

impl Env {
    /// The tags as pairs, in name order.
    pub fn tag_pairs(&self) -> Vec<(String, String)> {
        self.tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// What a sink writes as an event's app name: the name the repository gave,
/// or Butler SOS's `<unknown app name>`; `None` when the event names no app.
pub fn app_name(apps: &crate::apps::Apps, ev: &StoredEvent) -> Option<String> {
    let id = ev.app_id.as_deref()?;
    Some(
        apps.name(id)
            .unwrap_or_else(|| influxdb::schema::UNKNOWN_APP_NAME.to_owned()),
    )
}

/// `d` plus up to a quarter more, so that many whosins (or a restart of one)
/// do not retry against a recovering server in lockstep.
pub(crate) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// reqwest's error text names the URL, which may hold a password.
pub(crate) fn redact_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    // The source chain says what went wrong (connection refused, ...).
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = s.source();
    }
    match e.url() {
        Some(u) => text.replace(u.as_str(), &crate::problems::redact_url(u.as_str())),
        None => text,
    }
}

/// Gzips `body` (fast: the servers are on the LAN, the CPU is the cost).
pub(crate) fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(body)?;
    gz.finish()
}

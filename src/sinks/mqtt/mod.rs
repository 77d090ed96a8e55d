//! Publishing journaled events to MQTT, losing none across broker restarts.
//!
//! Events are read from the journal after the sink's cursor, in batches; a
//! batch is published (every event to `topics.all` and to its command's
//! topic) and the cursor moves only when the broker has acknowledged every
//! message of it: PUBACK at QoS 1, PUBCOMP at QoS 2, the send at QoS 0.
//!
//! rumqttc keeps unacknowledged messages in its own memory and throws them
//! away when it reconnects to a broker that has no session for it (a clean
//! session, or a broker restarted without persistence). So whosin does not
//! rely on it: on any connection error the client is dropped whole, and a new
//! one publishes again from the cursor. Delivery is at least once; a message
//! sent again after an outage is byte-identical to the first (it carries the
//! journal's `seq`), so consumers can drop duplicates.
//!
//! The retained state topic `<topics.state>/<host>` carries each host's
//! counts and users, published when they change (the core refreshes them at
//! most once per second) and again after every reconnect.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::sessions::feed::{Feed, HostSnapshot};
use crate::sessions::journal::{SinkReader, StoredEvent};
use crate::sinks::SinkStatus;

mod client;
mod flight;
mod payload;

pub use client::options;
use client::qos;
use flight::{InFlight, PIPELINE};
pub use payload::{micros, payload, state_payload, topics};

/// The sink's name in metrics and in the journal's cursors.
pub const SINK: &str = "mqtt";

/// Events per batch; each is one or two messages.
const BATCH: usize = 500;

/// Most host states published between two batches.
const MAX_STATES_PER_ROUND: usize = 256;

/// rumqttc's request channel holds every batch in flight and a round of
/// states, so publishing never waits.
const CHANNEL: usize = PIPELINE * (2 * BATCH + MAX_STATES_PER_ROUND) + 16;

/// How often an idle sink looks for new events in the journal.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// On shutdown, how long to wait for the acknowledgements of what was sent.
const DRAIN: Duration = Duration::from_secs(2);

/// Everything the sink needs, from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The `sinks.mqtt` section.
    pub mqtt: MqttConfig,
    /// The configured tags.
    pub tags: Vec<(String, String)>,
}

/// The live state's per-host summary, for the state topic.
pub type LiveFeed = Arc<Feed>;

/// Why a connection ended.
struct Failure {
    /// The broker had accepted the connection before it failed.
    connected: bool,
    error: String,
}

struct Sink {
    settings: Settings,
    tags: BTreeMap<String, String>,
    qos: QoS,
    reader: Arc<Mutex<SinkReader>>,
    written: prometheus::IntCounter,
    status: Arc<SinkStatus>,
    feed: Option<LiveFeed>,
}

/// Runs until `stop` is cancelled.
pub async fn run(
    settings: Settings,
    reader: SinkReader,
    metrics: Arc<Metrics>,
    status: Arc<SinkStatus>,
    feed: Option<LiveFeed>,
    stop: CancellationToken,
) {
    let errors = metrics.sink_errors.with_label_values(&[SINK]);
    let mut sink = Sink {
        tags: settings.tags.iter().cloned().collect(),
        qos: qos(settings.mqtt.qos),
        settings,
        reader: Arc::new(Mutex::new(reader)),
        written: metrics.sink_written.with_label_values(&[SINK]),
        status,
        feed,
    };
    let mut backoff = Duration::from_millis(250);
    let mut failing = false;
    loop {
        match sink.connection(&stop, failing).await {
            Ok(()) => return,
            Err(f) => {
                sink.status.failed(&f.error);
                errors.inc();
                if !failing {
                    tracing::warn!(
                        "mqtt: {}; reconnecting with backoff (nothing is lost: what the broker did not acknowledge is sent again)",
                        f.error
                    );
                    failing = true;
                }
                if f.connected {
                    backoff = Duration::from_millis(250);
                }
                // The backlog grows while the broker is away: show it.
                let r = sink.reader.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    r.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .refresh_backlog()
                })
                .await;
            }
        }
        super::wait(&stop, super::jitter(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if stop.is_cancelled() {
            return;
        }
    }
}

impl Sink {
    async fn confirm(&self, seq: u64) {
        let r = self.reader.clone();
        let done = tokio::task::spawn_blocking(move || {
            r.lock().unwrap_or_else(|p| p.into_inner()).confirm(seq)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!("mqtt: cannot record progress in the journal: {e}");
        }
    }

    /// Publishes the host states that differ from what this connection has
    /// published; returns how many messages were handed to the client.
    fn publish_states(
        &self,
        client: &AsyncClient,
        published: &mut HashMap<String, HostSnapshot>,
    ) -> u64 {
        let (Some(feed), Some(prefix)) = (&self.feed, &self.settings.mqtt.topics.state) else {
            return 0;
        };
        let mut sent = 0;
        for (host, snap, at) in feed.snapshot() {
            if sent as usize >= MAX_STATES_PER_ROUND {
                break;
            }
            if published.get(&host) == Some(&snap) {
                continue;
            }
            let topic = format!("{}/{host}", prefix.trim_end_matches('/'));
            let body = state_payload(&host, &snap, at, &self.tags);
            if client.try_publish(topic, self.qos, true, body).is_ok() {
                sent += 1;
                published.insert(host, snap);
            }
        }
        sent
    }

    /// One connection: connects, then publishes batches until an error or
    /// `stop`. `Ok` only when stopped.
    async fn connection(&mut self, stop: &CancellationToken, failing: bool) -> Result<(), Failure> {
        let options = options(&self.settings.mqtt).map_err(|error| Failure {
            connected: false,
            error,
        })?;
        let url = crate::config::redact_url(&self.settings.mqtt.url);
        let (client, mut eventloop) = AsyncClient::new(options, CHANNEL);
        let mut net = rumqttc::NetworkOptions::new();
        // Acknowledgements are what the sink waits for: send at once.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        loop {
            let ev = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code == ConnectReturnCode::Success {
                        break;
                    }
                    return Err(Failure {
                        connected: false,
                        error: format!("{url} refused the connection: {:?}", ack.code),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Failure {
                        connected: false,
                        error: format!("cannot connect to {url}: {e}"),
                    });
                }
            }
        }
        self.status.ok();
        if failing {
            tracing::info!("mqtt: connected to {url} again; publishing from where it stopped");
        } else {
            tracing::info!("mqtt: connected to {url}");
        }
        let lost = |e: rumqttc::ConnectionError| Failure {
            connected: true,
            error: format!("lost the connection to {url}: {e}"),
        };
        let mut feed_rx = self.feed.as_ref().map(|f| f.subscribe());
        let mut published: HashMap<String, HostSnapshot> = HashMap::new();
        let mut flight = InFlight::default();
        // Where the next read starts: batches are read ahead of what the
        // broker has acknowledged, so reading overlaps with waiting.
        let mut read_from = {
            let r = self.reader.clone();
            tokio::task::spawn_blocking(move || {
                r.lock().unwrap_or_else(|p| p.into_inner()).cursor()
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|c| c.map_err(|e| e.to_string()))
            .map_err(|e| Failure {
                connected: true,
                error: format!("cannot read the journal: {e}"),
            })?
        };
        let mut reading: Option<tokio::task::JoinHandle<Result<Vec<StoredEvent>, String>>> = None;
        let mut idle_until: Option<tokio::time::Instant> = None;
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if reading.is_none()
                && idle_until.is_none()
                && stopping.is_none()
                && flight.open_batches() < PIPELINE
            {
                for _ in 0..self.publish_states(&client, &mut published) {
                    flight.queue(None);
                }
                let r = self.reader.clone();
                let from = read_from;
                reading = Some(tokio::task::spawn_blocking(move || {
                    r.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .batch_after(from, BATCH)
                        .map_err(|e| format!("cannot read the journal: {e}"))
                }));
            }
            if let Some(last) = flight.confirmable() {
                let n = flight.take_confirmed();
                self.confirm(last).await;
                self.written.inc_by(n);
            }
            if let Some(deadline) = stopping
                && (flight.is_empty() || tokio::time::Instant::now() >= deadline)
            {
                let _ = client.try_disconnect();
                return Ok(());
            }
            let idle = idle_until.unwrap_or_else(tokio::time::Instant::now);
            let drain = stopping.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                () = stop.cancelled(), if stopping.is_none() => {
                    // Wait a moment for the acknowledgements of what is out,
                    // so that a restart sends as little as possible again.
                    stopping = Some(tokio::time::Instant::now() + DRAIN);
                }
                () = tokio::time::sleep_until(drain), if stopping.is_some() => {}
                read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                    reading = None;
                    let events = match read {
                        Ok(Ok(e)) => e,
                        Ok(Err(e)) => {
                            tracing::warn!("mqtt: {e}");
                            Vec::new()
                        }
                        Err(e) => return Err(Failure { connected: true, error: e.to_string() }),
                    };
                    let Some(last) = events.last().map(|e| e.seq) else {
                        idle_until = Some(tokio::time::Instant::now() + IDLE_POLL);
                        continue;
                    };
                    let id = flight.open(last, events.len() as u64);
                    for ev in &events {
                        let body = payload(ev, &self.tags);
                        for topic in topics(ev, &self.settings.mqtt.topics) {
                            // The channel holds PIPELINE batches: never full.
                            client
                                .try_publish(topic, self.qos, false, body.clone())
                                .map_err(|e| Failure {
                                    connected: true,
                                    error: format!("cannot queue a message: {e}"),
                                })?;
                            flight.queue(Some(id));
                        }
                    }
                    read_from = last;
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flight.sent(pkid, self.qos),
                    Ok(Event::Incoming(Packet::PubAck(ack))) if self.qos == QoS::AtLeastOnce => {
                        flight.acked(ack.pkid);
                    }
                    Ok(Event::Incoming(Packet::PubComp(ack))) if self.qos == QoS::ExactlyOnce => {
                        flight.acked(ack.pkid);
                    }
                    Ok(_) => {}
                    Err(_) if stopping.is_some() => return Ok(()),
                    Err(e) => return Err(lost(e)),
                },
                () = tokio::time::sleep_until(idle), if idle_until.is_some() => idle_until = None,
                _ = async { feed_rx.as_mut().expect("guarded").changed().await }, if idle_until.is_some() && feed_rx.is_some() => {
                    idle_until = None;
                }
            }
        }
    }
}

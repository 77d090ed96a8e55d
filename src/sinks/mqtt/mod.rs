//! Publishing journaled events to MQTT, losing none across broker restarts.
//!
//! A batch is published (every event to `topics.all` and to its command's
//! topic) and is done when the broker has acknowledged every message of it:
//! PUBACK at QoS 1, PUBCOMP at QoS 2, the send at QoS 0. Several batches are
//! in flight at once ([`PIPELINE`]); the driver moves the cursor over the
//! done ones, oldest first.
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
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Outgoing, Packet, QoS};
use tokio::sync::mpsc;

use crate::sessions::feed::{Feed, HostSnapshot};
use crate::sinks::{Batch, Delivered, Env, Journal, Refused, Settled, Sink, SinkError};

mod client;
mod config;
mod flight;
mod payload;

pub use client::options;
use client::qos;
pub use config::{MqttConfig, MqttTopics};
use flight::InFlight;
pub use payload::{micros, payload, state_payload, topics};

/// Batches in flight at once: reading the journal overlaps with waiting for
/// acknowledgements.
pub const PIPELINE: usize = 3;

/// Events per batch; each is one or two messages.
const BATCH: usize = 2000;

/// Most host states published at a time.
const MAX_STATES_PER_ROUND: usize = 256;

/// rumqttc's request channel holds every batch in flight and a round of
/// states, so publishing never waits.
const CHANNEL: usize = PIPELINE * (2 * BATCH + MAX_STATES_PER_ROUND) + 16;

/// How often an idle sink looks for new events (and changed states).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What the connection task reports.
enum Note {
    /// The client sent the next queued message as this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The connection ended.
    Lost(String),
}

/// One connection to the broker: the client, and the task polling its event
/// loop (which must run all the time, for keep-alive pings and acks).
struct Connection {
    client: AsyncClient,
    notes: mpsc::UnboundedReceiver<Note>,
    task: tokio::task::JoinHandle<()>,
    flight: InFlight,
    /// The states this connection has published (all again after a reconnect).
    published: HashMap<String, HostSnapshot>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.task.abort();
    }
}

/// The MQTT sink.
pub struct MqttSink {
    config: MqttConfig,
    tags: BTreeMap<String, String>,
    qos: QoS,
    feed: Option<Arc<Feed>>,
    apps: Arc<crate::apps::Apps>,
    conn: Option<Connection>,
    /// The url for messages, never with a password.
    shown: String,
}

impl MqttSink {
    /// The sink for `config`.
    pub fn new(config: MqttConfig, env: &Env) -> Self {
        let shown = crate::problems::redact_url(&config.url);
        tracing::info!("mqtt: publishing to {shown}");
        Self {
            qos: qos(config.qos),
            tags: env.tags.clone(),
            feed: env.live.clone(),
            apps: env.apps.clone(),
            conn: None,
            shown,
            config,
        }
    }

    /// The connection, made when there is none.
    async fn connected(&mut self) -> Result<&mut Connection, SinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        Ok(self.conn.as_mut().expect("just made"))
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let options = options(&self.config).map_err(SinkError)?;
        let (client, mut eventloop) = AsyncClient::new(options, CHANNEL);
        let mut net = rumqttc::NetworkOptions::new();
        // Acknowledgements are what the sink waits for: send at once.
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code == ConnectReturnCode::Success {
                        break;
                    }
                    return Err(SinkError(format!(
                        "{} refused the connection: {:?}",
                        self.shown, ack.code
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(SinkError(format!("cannot connect to {}: {e}", self.shown)));
                }
            }
        }
        tracing::info!("mqtt: connected to {}", self.shown);
        let (tx, notes) = mpsc::unbounded_channel();
        let qos = self.qos;
        let shown = self.shown.clone();
        let task = tokio::spawn(async move {
            loop {
                let note = match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(a))) if qos == QoS::AtLeastOnce => {
                        Note::Acked(a.pkid)
                    }
                    Ok(Event::Incoming(Packet::PubComp(a))) if qos == QoS::ExactlyOnce => {
                        Note::Acked(a.pkid)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Note::Lost(format!("lost the connection to {shown}: {e}")));
                        return;
                    }
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        Ok(Connection {
            client,
            notes,
            task,
            flight: InFlight::default(),
            published: HashMap::new(),
        })
    }

    /// Publishes the host states that differ from what this connection has
    /// published.
    fn publish_states(&mut self) -> Result<(), SinkError> {
        let (Some(feed), Some(prefix), Some(conn)) =
            (&self.feed, &self.config.topics.state, self.conn.as_mut())
        else {
            return Ok(());
        };
        let mut sent = 0;
        for (host, snap, at) in feed.snapshot() {
            if sent >= MAX_STATES_PER_ROUND {
                break;
            }
            if conn.published.get(&host) == Some(&snap) {
                continue;
            }
            let topic = format!("{}/{host}", prefix.trim_end_matches('/'));
            let body = state_payload(&host, &snap, at, &self.tags);
            conn.client
                .try_publish(topic, self.qos, true, body)
                .map_err(|e| SinkError(format!("cannot queue a message: {e}")))?;
            conn.flight.queue(None);
            conn.published.insert(host, snap);
            sent += 1;
        }
        Ok(())
    }
}

impl Connection {
    fn note(&mut self, note: Note, qos: QoS) -> Result<(), SinkError> {
        match note {
            Note::Sent(pkid) => self.flight.sent(pkid, qos),
            Note::Acked(pkid) => self.flight.acked(pkid),
            Note::Lost(e) => return Err(SinkError(e)),
        }
        Ok(())
    }
}

impl Sink for MqttSink {
    fn batch_size(&self) -> usize {
        BATCH
    }

    fn pipeline(&self) -> usize {
        PIPELINE
    }

    fn idle_interval(&self) -> Duration {
        IDLE_POLL
    }

    async fn deliver(&mut self, batch: Batch) -> Result<Delivered, SinkError> {
        self.connected().await?;
        self.publish_states()?;
        let (qos, topics_cfg) = (self.qos, &self.config.topics);
        let conn = self.conn.as_mut().expect("connected");
        let id = conn.flight.open();
        for ev in batch.iter() {
            let app = crate::sinks::app_name(&self.apps, ev);
            let body = payload(ev, &self.tags, app.as_deref());
            for topic in topics(ev, topics_cfg) {
                // The channel holds PIPELINE batches: never full.
                conn.client
                    .try_publish(topic, qos, false, body.clone())
                    .map_err(|e| SinkError(format!("cannot queue a message: {e}")))?;
                conn.flight.queue(Some(id));
            }
        }
        Ok(Delivered::Pending)
    }

    async fn settled(&mut self) -> Result<Settled, SinkError> {
        let qos = self.qos;
        let Some(conn) = self.conn.as_mut() else {
            return Err(SinkError("not connected".into()));
        };
        loop {
            let done = conn.flight.take_done();
            if done > 0 {
                return Ok(Settled {
                    batches: done,
                    refused: None,
                });
            }
            let note = conn
                .notes
                .recv()
                .await
                .ok_or_else(|| SinkError("the connection ended".into()))?;
            conn.note(note, qos)?;
        }
    }

    async fn idle(&mut self, _journal: &Journal) -> Result<Option<Refused>, SinkError> {
        let qos = self.qos;
        let conn = self.connected().await?;
        // Acknowledgements of states, and news of a lost connection.
        while let Ok(note) = conn.notes.try_recv() {
            conn.note(note, qos)?;
        }
        self.publish_states()?;
        Ok(None)
    }

    async fn reset(&mut self) {
        self.conn = None;
    }
}

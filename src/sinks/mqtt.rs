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

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{MqttConfig, MqttTopics};
use crate::metrics::Metrics;
use crate::sessions::feed::{Feed, HostSnapshot};
use crate::sessions::journal::{SinkReader, StoredEvent};
use crate::sinks::SinkStatus;
use crate::sinks::influxdb::schema::event_action;

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

/// Butler SOS's user event payload, plus `userFull`, `seq` and `timestamp`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    message_type: &'a str,
    host: &'a str,
    command: &'a str,
    user_dir: &'a str,
    user_id: &'a str,
    origin: &'a str,
    context: &'a str,
    message: &'a str,
    tags: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ua_browser_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ua_browser_major_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ua_os_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ua_os_version: Option<&'a str>,
    user_full: &'a str,
    seq: u64,
    timestamp: String,
}

/// RFC 3339 in UTC with exactly six fractional digits.
pub fn micros(t: jiff::Timestamp) -> String {
    let mut s = String::with_capacity(27);
    let _ = jiff::fmt::temporal::DateTimePrinter::new()
        .precision(Some(6))
        .print_timestamp(&t, &mut s);
    s
}

/// The JSON payload of `ev`. The same event always gives the same bytes.
pub fn payload(ev: &StoredEvent, tags: &BTreeMap<String, String>) -> String {
    let d = &ev.detail;
    serde_json::to_string(&Payload {
        message_type: &d.message_type,
        host: &ev.host,
        command: event_action(&ev.event),
        user_dir: &ev.user_directory,
        user_id: &ev.user_id,
        origin: &ev.origin,
        context: &ev.context,
        message: &ev.message,
        tags,
        app_id: ev.app_id.as_deref(),
        app_name: None,
        ua_browser_name: d.browser_name.as_deref(),
        ua_browser_major_version: d.browser_major.as_deref(),
        ua_os_name: d.os_name.as_deref(),
        ua_os_version: d.os_version.as_deref(),
        user_full: &ev.user,
        seq: ev.seq,
        timestamp: micros(ev.time),
    })
    .unwrap_or_default()
}

/// The topics `ev` goes to: `all`, then its command's (each unless `null`).
pub fn topics<'t>(ev: &StoredEvent, t: &'t MqttTopics) -> impl Iterator<Item = &'t str> {
    let own = match ev.event.as_str() {
        "session_start" => &t.session_start,
        "session_stop" => &t.session_stop,
        "connection_open" => &t.connection_open,
        "connection_close" => &t.connection_close,
        _ => &None,
    };
    [t.all.as_deref(), own.as_deref()].into_iter().flatten()
}

/// The retained state of one host.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatePayload<'a> {
    host: &'a str,
    sessions: usize,
    connections: usize,
    users: usize,
    user_list: &'a [String],
    timestamp: String,
    tags: &'a BTreeMap<String, String>,
}

/// The JSON of a host's retained state topic.
pub fn state_payload(
    host: &str,
    s: &HostSnapshot,
    at: jiff::Timestamp,
    tags: &BTreeMap<String, String>,
) -> String {
    serde_json::to_string(&StatePayload {
        host,
        sessions: s.sessions,
        connections: s.connections,
        users: s.users,
        user_list: &s.user_list,
        timestamp: micros(at),
        tags,
    })
    .unwrap_or_default()
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The client options from the config; errors name the key at fault.
pub fn options(c: &MqttConfig) -> Result<MqttOptions, String> {
    let url = reqwest::Url::parse(&c.url)
        .map_err(|e| format!("sinks.mqtt.url: {:?} is not a URL ({e})", c.url))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => {
            return Err(format!(
                "sinks.mqtt.url: {other}:// is not mqtt:// or mqtts://"
            ));
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| format!("sinks.mqtt.url: {:?} names no host", c.url))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = MqttOptions::new(&c.client_id, host, port);
    o.set_keep_alive(c.keepalive.get())
        // whosin resends from its journal; a broker-side session for the
        // publisher would only add a second, uncoordinated resend.
        .set_clean_session(true)
        // The state topic of a big site carries thousands of user names.
        .set_max_packet_size(1 << 20, 256 << 20)
        .set_inflight(100);
    if let Some(user) = &c.username {
        o.set_credentials(user, c.password.clone().unwrap_or_default());
    }
    if tls {
        let config = tls_config(c)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(o)
}

fn tls_config(c: &MqttConfig) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("sinks.mqtt: TLS: {e}"))?;
    let certs =
        |key: &str, path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sinks.mqtt.{key}: cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "sinks.mqtt.{key}: {} holds no PEM certificate",
                    path.display()
                ));
            }
            Ok(certs)
        };
    let builder = match &c.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs("ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sinks.mqtt.ca_file: {}: {e}", ca.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("sinks.mqtt: the system's trust store: {e}"))?
        }
    };
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs("client_cert", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!("sinks.mqtt.client_key: cannot read {}: {e}", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sinks.mqtt.client_cert: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

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
        let url = self.settings.mqtt.url.clone();
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
                && flight.batches.len() < PIPELINE
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

/// Batches read ahead of the cursor.
const PIPELINE: usize = 3;

/// What this connection has handed to the client and what the broker has
/// acknowledged, by packet id: a batch is done when every message of it is
/// sent and acknowledged, and the cursor moves over done batches in order.
#[derive(Default)]
struct InFlight {
    /// Open batches, oldest first.
    batches: std::collections::VecDeque<Batch>,
    next_id: u64,
    /// The batch of each message handed to the client and not yet sent, in
    /// order (the client sends in order); `None` for state messages.
    queued: std::collections::VecDeque<Option<u64>>,
    /// The batch of each sent message awaiting its acknowledgement.
    by_pkid: HashMap<u16, Option<u64>>,
    /// Done batches not yet confirmed: last seq and events.
    done: Option<(u64, u64)>,
}

struct Batch {
    id: u64,
    last: u64,
    events: u64,
    unsent: u64,
    unacked: u64,
}

impl InFlight {
    fn open(&mut self, last: u64, events: u64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.batches.push_back(Batch {
            id,
            last,
            events,
            unsent: 0,
            unacked: 0,
        });
        id
    }

    fn batch(&mut self, id: Option<u64>) -> Option<&mut Batch> {
        let id = id?;
        let first = self.batches.front()?.id;
        self.batches.get_mut(id.checked_sub(first)? as usize)
    }

    /// A message of `batch` was handed to the client.
    fn queue(&mut self, batch: Option<u64>) {
        if let Some(b) = self.batch(batch) {
            b.unsent += 1;
        }
        self.queued.push_back(batch);
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.done.is_none()
    }

    /// The client sent the next queued message as `pkid`.
    fn sent(&mut self, pkid: u16, qos: QoS) {
        let Some(batch) = self.queued.pop_front() else {
            return;
        };
        // QoS 0 has no acknowledgement: sent is delivered.
        let acked = qos == QoS::AtMostOnce;
        if let Some(b) = self.batch(batch) {
            b.unsent -= 1;
            if !acked {
                b.unacked += 1;
            }
        }
        if !acked {
            self.by_pkid.insert(pkid, batch);
        }
    }

    /// The broker acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) {
        if let Some(batch) = self.by_pkid.remove(&pkid)
            && let Some(b) = self.batch(batch)
        {
            b.unacked = b.unacked.saturating_sub(1);
        }
    }

    /// The seq the cursor can move to, if batches are done (the oldest open
    /// ones with nothing left to send or acknowledge).
    fn confirmable(&mut self) -> Option<u64> {
        while let Some(b) = self.batches.front() {
            if b.unsent > 0 || b.unacked > 0 {
                break;
            }
            let (last, events) = (b.last, b.events);
            self.batches.pop_front();
            let (_, n) = self.done.unwrap_or((0, 0));
            self.done = Some((last, n + events));
        }
        self.done.map(|(last, _)| last)
    }

    /// Takes the done batches' event count, once confirmed.
    fn take_confirmed(&mut self) -> u64 {
        self.done.take().map_or(0, |(_, n)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::journal::EventDetail;

    fn event() -> StoredEvent {
        StoredEvent {
            seq: 42,
            time: "2026-11-21T10:42:00.1234567Z".parse().unwrap(),
            received_at: "2026-11-21T10:42:00.2Z".parse().unwrap(),
            host: "sense-node1".into(),
            event: "connection_open".into(),
            user: "LAB\\anna".into(),
            user_directory: "LAB".into(),
            user_id: "anna".into(),
            origin: "AppAccess".into(),
            context: "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c".into(),
            app_id: Some("3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c".into()),
            browser: Some("Chrome 131".into()),
            os: Some("Windows 10".into()),
            message: "Open connection \"quote\"".into(),
            detail: EventDetail {
                source_time: None,
                message_type: "qseow-proxy-connection".into(),
                browser_name: Some("Chrome".into()),
                browser_major: Some("131".into()),
                os_name: Some("Windows".into()),
                os_version: Some("10".into()),
                proxy_session_id: None,
            },
        }
    }

    #[test]
    fn the_payload_is_butler_sos_s_plus_user_full_seq_and_timestamp() {
        let tags = BTreeMap::from([("qs_env".to_owned(), "prod".to_owned())]);
        let body = payload(&event(), &tags);
        assert_eq!(
            body,
            r#"{"messageType":"qseow-proxy-connection","host":"sense-node1","command":"Open connection","userDir":"LAB","userId":"anna","origin":"AppAccess","context":"/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c","message":"Open connection \"quote\"","tags":{"qs_env":"prod"},"appId":"3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c","uaBrowserName":"Chrome","uaBrowserMajorVersion":"131","uaOsName":"Windows","uaOsVersion":"10","userFull":"LAB\\anna","seq":42,"timestamp":"2026-11-21T10:42:00.123456Z"}"#
        );
        // The same event gives the same bytes (a redelivery is identical).
        assert_eq!(body, payload(&event(), &tags));
    }

    #[test]
    fn optional_fields_are_left_out_and_times_keep_six_digits() {
        let mut ev = event();
        ev.app_id = None;
        ev.detail = EventDetail {
            message_type: "qseow-proxy-session".into(),
            ..Default::default()
        };
        ev.time = "2026-11-21T10:42:00Z".parse().unwrap();
        let v: serde_json::Value = serde_json::from_str(&payload(&ev, &BTreeMap::new())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for absent in ["appId", "appName", "uaBrowserName", "uaOsName"] {
            assert!(!keys.contains(&absent), "{absent} in {v}");
        }
        assert_eq!(v["timestamp"], "2026-11-21T10:42:00.000000Z");
        assert_eq!(v["tags"], serde_json::json!({}));
    }

    #[test]
    fn every_event_goes_to_all_and_its_command_topic_unless_null() {
        let mut t = MqttTopics::default();
        let ev = event();
        assert_eq!(
            topics(&ev, &t).collect::<Vec<_>>(),
            ["qliksense/userevent", "qliksense/userevent/connection/open"]
        );
        t.all = None;
        assert_eq!(
            topics(&ev, &t).collect::<Vec<_>>(),
            ["qliksense/userevent/connection/open"]
        );
        t.connection_open = None;
        assert_eq!(topics(&ev, &t).count(), 0);
    }

    #[test]
    fn the_cursor_moves_only_over_batches_sent_and_acknowledged_in_full() {
        let mut f = InFlight::default();
        let a = f.open(10, 5);
        f.queue(Some(a));
        f.queue(None); // a state message between the batches
        let b = f.open(20, 10);
        f.queue(Some(b));
        f.queue(Some(b));
        assert_eq!(f.confirmable(), None);
        f.sent(1, QoS::AtLeastOnce);
        f.sent(2, QoS::AtLeastOnce);
        f.sent(3, QoS::AtLeastOnce);
        f.sent(4, QoS::AtLeastOnce);
        // Acknowledgements out of order: b's first, then the state's.
        f.acked(3);
        f.acked(4);
        f.acked(2);
        assert_eq!(f.confirmable(), None, "a is not acknowledged yet");
        f.acked(1);
        assert_eq!(f.confirmable(), Some(20));
        assert_eq!(f.take_confirmed(), 15);
        assert!(f.is_empty());
        // An unknown or repeated acknowledgement changes nothing.
        let c = f.open(30, 1);
        f.queue(Some(c));
        f.acked(1);
        assert_eq!(f.confirmable(), None, "c is not even sent");
        f.sent(5, QoS::AtLeastOnce);
        assert_eq!(f.confirmable(), None);
        f.acked(5);
        assert_eq!(f.confirmable(), Some(30));
    }

    #[test]
    fn at_qos_0_sent_is_delivered() {
        let mut f = InFlight::default();
        let a = f.open(7, 2);
        f.queue(Some(a));
        f.queue(Some(a));
        f.sent(0, QoS::AtMostOnce);
        assert_eq!(f.confirmable(), None);
        f.sent(0, QoS::AtMostOnce);
        assert_eq!(f.confirmable(), Some(7));
        // A batch whose events go to no topic is done at once.
        f.take_confirmed();
        f.open(9, 3);
        assert_eq!(f.confirmable(), Some(9));
    }

    #[test]
    fn options_come_from_the_url() {
        let mut c = MqttConfig {
            url: "mqtt://[::1]".into(),
            ..Default::default()
        };
        assert_eq!(options(&c).unwrap().broker_address(), ("::1".into(), 1883));
        c.url = "mqtt://broker.example.com:2883".into();
        assert_eq!(
            options(&c).unwrap().broker_address(),
            ("broker.example.com".into(), 2883)
        );
        c.url = "mqtts://broker.example.com".into();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let e = options(&c).unwrap_err();
        assert!(
            e.starts_with("sinks.mqtt.ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
    }
}

//! Typed configuration, loaded from YAML and validated with key paths.
//!
//! Every option is documented once, here, on its field; `docs/configuration.md`
//! and `config/whosin.yaml` say the same thing. Loading ([`load`]) reports every
//! problem it can find by key path, so an administrator fixes a file in one go.

mod load;
mod validate;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::duration::{DurationError, HumanDuration};
pub use crate::problems::{Problem, redact_url};
pub use crate::sinks::influxdb::InfluxConfig;
pub use crate::sinks::mqtt::{MqttConfig, MqttTopics};
pub use crate::sinks::new_relic::{NewRelicAccount, NewRelicConfig};
pub use crate::sinks::{PrometheusConfig, SinksConfig};
pub use load::{ConfigError, load, load_env, load_str, read};

/// Where the configuration is read from when `-c` is not given.
pub const DEFAULT_PATH: &str = "config/whosin.yaml";

/// The shipped `config/whosin.yaml`, built into the binary: used when `-c` is
/// not given and there is no `config/whosin.yaml` in the working directory, so
/// the binary alone runs with the documented defaults.
pub const EMBEDDED: &str = include_str!("../../config/whosin.yaml");

/// Where a configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file (watched for changes while the daemon runs).
    File(std::path::PathBuf),
    /// The built-in default ([`EMBEDDED`]).
    Embedded,
}

impl Source {
    /// `-c FILE` when given; else `config/whosin.yaml` when it exists; else the built-in default.
    pub fn resolve(explicit: Option<std::path::PathBuf>) -> Self {
        match explicit {
            Some(p) => Source::File(p),
            None if std::path::Path::new(DEFAULT_PATH).exists() => {
                Source::File(DEFAULT_PATH.into())
            }
            None => Source::Embedded,
        }
    }

    /// Loads and validates the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            Source::File(p) => load(p),
            Source::Embedded => load_env(EMBEDDED),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => write!(f, "the built-in default configuration"),
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the Qlik proxy's log appender sends its datagrams.
    pub udp: UdpConfig,
    /// The web page, JSON API and `/metrics`.
    pub http: HttpConfig,
    /// The folder of the embedded journal.
    pub data_dir: PathBuf,
    /// How long the journal keeps events and sessions.
    pub retention: HumanDuration,
    /// How the journal writes.
    pub journal: JournalConfig,
    /// How sessions are tracked.
    pub sessions: SessionsConfig,
    /// Users whose events are dropped everywhere (service accounts).
    pub blacklist: Vec<BlacklistEntry>,
    /// Tags added to every InfluxDB point and MQTT payload.
    pub tags: BTreeMap<String, String>,
    /// Where events go.
    pub sinks: SinksConfig,
    /// The Qlik proxy service API (optional).
    pub qlik: Option<QlikConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            udp: UdpConfig::default(),
            http: HttpConfig::default(),
            data_dir: PathBuf::from("./data"),
            retention: HumanDuration::from_secs(90 * 86_400),
            journal: JournalConfig::default(),
            sessions: SessionsConfig::default(),
            blacklist: Vec::new(),
            tags: BTreeMap::new(),
            sinks: SinksConfig::default(),
            qlik: None,
        }
    }
}

/// `udp:` the listening socket.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Address and port to listen on, IPv4 or IPv6 (`[::]:9997`).
    #[serde(deserialize_with = "load::socket_addr")]
    pub listen: SocketAddr,
    /// Source IPs or CIDRs allowed to send; empty accepts every source.
    #[serde(deserialize_with = "load::nets")]
    pub allowed_sources: Vec<ipnet::IpNet>,
    /// Datagrams longer than this are rejected as `too_large`.
    pub max_datagram_bytes: usize,
    /// Most datagrams per second taken from one source IP; the rest are
    /// rejected as `rate_limited`. `None`: no limit.
    pub rate_limit_per_source: Option<u32>,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9997)),
            allowed_sources: Vec::new(),
            max_datagram_bytes: 65_507,
            rate_limit_per_source: None,
        }
    }
}

/// `http:` the web page, API and metrics endpoint.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on; loopback by default.
    #[serde(deserialize_with = "load::socket_addr")]
    pub listen: SocketAddr,
    /// When set, `/api/*` requires `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also how
    /// long an idle keep-alive connection stays open).
    pub header_timeout: HumanDuration,
    /// How long a request may take to answer (the event stream excepted).
    pub request_timeout: HumanDuration,
    /// Largest request head (request line and headers); more is answered 431.
    pub max_header_bytes: usize,
    /// Largest request body; more is answered 413 (every route is a GET).
    pub max_body_bytes: usize,
    /// A certificate and key: the page, API, stream and `/metrics` are then
    /// served over HTTPS only.
    pub tls: TlsFiles,
}

/// `http.tls:` PEM files for HTTPS; both null (the default) serves plain HTTP.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether HTTPS is asked for (either file named).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9842)),
            auth_token: None,
            max_connections: 256,
            header_timeout: HumanDuration::from_secs(10),
            request_timeout: HumanDuration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 16 * 1024,
            tls: TlsFiles::default(),
        }
    }
}

/// `journal:` how the journal writes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// An accepted event is committed within this long (what a crash can lose).
    pub commit_window: HumanDuration,
    /// While the disk refuses writes, at most this many rows wait in memory;
    /// beyond it the oldest are dropped (and counted).
    pub max_uncommitted: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            commit_window: HumanDuration::from_millis(100),
            max_uncommitted: 1_000_000,
        }
    }
}

/// `sessions:` how sessions are tracked.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session with no open connection and no event for this long ends as expired.
    pub idle_timeout: HumanDuration,
    /// Most sessions plus connections tracked at once; beyond it the session
    /// idle the longest ends as evicted (and is counted).
    pub max_tracked: usize,
    /// Qlik's parallel sessions per user (5 by default, across the site):
    /// users at or over it are reported (the next login is refused).
    pub per_user_limit: usize,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: HumanDuration::from_secs(30 * 60),
            max_tracked: 1_000_000,
            per_user_limit: 5,
        }
    }
}

/// One `blacklist:` entry: a whole directory, one user, or a regex.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BlacklistEntry {
    /// A user directory (alone: the whole directory; with `user_id`: one user).
    #[serde(default, deserialize_with = "load::opt_scalar_string")]
    pub directory: Option<String>,
    /// A user id within `directory`.
    #[serde(default, deserialize_with = "load::opt_scalar_string")]
    pub user_id: Option<String>,
    /// A regex on `DIRECTORY\userid`, case-insensitive.
    #[serde(default)]
    pub regex: Option<String>,
}

/// `qlik:` the proxy service API.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QlikConfig {
    /// The proxy nodes.
    #[serde(default)]
    pub proxies: Vec<QlikProxy>,
    /// Certificates exported from the QMC (required; checked by validation,
    /// so that a missing one does not hide the section's other problems).
    #[serde(default)]
    pub certificates: QlikCertificates,
    /// Accept a proxy certificate whose name does not match the host.
    #[serde(default)]
    pub accept_invalid_hostnames: bool,
    /// How often whosin compares its sessions with the proxy's; `null` switches it off.
    #[serde(default = "default_reconcile")]
    pub reconcile_interval: Option<HumanDuration>,
    /// Timeout of one request to the proxy.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Extended format: a sequence gap on a host reconciles its proxies
    /// within seconds instead of at the next interval.
    #[serde(default = "default_true")]
    pub reconcile_on_gap: bool,
    /// The repository service API (QRS), with the same certificates.
    #[serde(default)]
    pub repository: QrsConfig,
    /// How often app names (and streams) are read from the QRS; `null`
    /// switches app names off.
    #[serde(default = "default_app_names")]
    pub app_names_interval: Option<HumanDuration>,
    /// Proxies and virtual proxies come from the QRS (as Ctrl-Q finds them);
    /// `proxies` may then be empty.
    #[serde(default)]
    pub discover: bool,
}

/// `qlik.repository:` the QRS.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QrsConfig {
    /// Host of the repository service; default: the first proxy's host.
    pub host: Option<String>,
    /// QRS API port.
    pub port: u16,
}

impl Default for QrsConfig {
    fn default() -> Self {
        Self {
            host: None,
            port: 4242,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_app_names() -> Option<HumanDuration> {
    Some(HumanDuration::from_secs(300))
}

fn default_reconcile() -> Option<HumanDuration> {
    Some(HumanDuration::from_secs(300))
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// One proxy node under `qlik.proxies`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QlikProxy {
    /// Host name of the proxy node (required).
    #[serde(default)]
    pub host: String,
    /// Proxy API port.
    #[serde(default = "default_qps_port")]
    pub port: u16,
    /// Virtual proxy prefixes; `""` is the default virtual proxy.
    #[serde(default = "default_virtual_proxies")]
    pub virtual_proxies: Vec<String>,
    /// The node name Qlik writes in events, when it differs from `host`.
    #[serde(default)]
    pub node_name: Option<String>,
}

fn default_qps_port() -> u16 {
    4243
}

fn default_virtual_proxies() -> Vec<String> {
    vec![String::new()]
}

/// `qlik.certificates:` PEM files exported from the QMC (all three required).
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct QlikCertificates {
    /// `client.pem`
    pub client: PathBuf,
    /// `client_key.pem`
    pub client_key: PathBuf,
    /// `root.pem`
    pub root: PathBuf,
}

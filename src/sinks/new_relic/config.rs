//! `sinks.new_relic`: Butler SOS's New Relic user events (Event API).

use serde::Deserialize;

use crate::duration::HumanDuration;
use crate::problems::Scope;
use crate::sinks::{Env, SinkConfig};

/// `sinks.new_relic:` every event as a `qs_userEvent` to each account.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NewRelicConfig {
    /// Send to New Relic.
    pub enabled: bool,
    /// The Event API's base URL: `https://insights-collector.newrelic.com`
    /// (US), `https://insights-collector.eu01.nr-data.net` (EU).
    pub url: String,
    /// The accounts; every event goes to each, with its own cursor.
    pub accounts: Vec<NewRelicAccount>,
    /// As Butler SOS: `qs_userFull`, `qs_userDirectory` and `qs_userId` are
    /// the hex of a shake256 hash (8 bytes) instead of the names.
    pub scramble: bool,
    /// Most events in one request.
    pub batch_size: usize,
    /// Longest wait before new events are looked for again.
    pub flush_interval: HumanDuration,
}

impl Default for NewRelicConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: "https://insights-collector.newrelic.com".into(),
            accounts: Vec::new(),
            scramble: false,
            batch_size: 1000,
            flush_interval: HumanDuration::from_secs(1),
        }
    }
}

/// One `sinks.new_relic.accounts` entry (both keys required).
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NewRelicAccount {
    /// The account id (digits; quoted or not).
    #[serde(deserialize_with = "crate::problems::scalar_string")]
    pub account_id: String,
    /// A license (ingest) or insert key of the account; write `${ENV}`.
    pub insert_key: String,
}

impl SinkConfig for NewRelicConfig {
    type Sink = super::NewRelicSink;
    const NAME: &'static str = "new_relic";

    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self, p: &mut Scope<'_>) {
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let mut at = p.nested(&format!("accounts[{i}]"));
            if a.account_id.is_empty() || !a.account_id.bytes().all(|b| b.is_ascii_digit()) {
                at.add(
                    "account_id",
                    format!(
                        "{:?} is not an account id (digits, as in New Relic's URL)",
                        a.account_id
                    ),
                );
            } else if !seen.insert(a.account_id.as_str()) {
                at.add("account_id", "is listed twice");
            }
            if a.insert_key.trim().is_empty() {
                at.add("insert_key", "is empty");
            }
        }
        if !self.enabled {
            return;
        }
        p.url("url", &self.url, &["http", "https"]);
        if self.accounts.is_empty() {
            p.add("accounts", "needs at least one account when enabled");
        }
        p.range("batch_size", self.batch_size, 1, 10_000);
        p.positive("flush_interval", self.flush_interval);
    }

    fn build(&self, env: &Env) -> anyhow::Result<Vec<(String, Self::Sink)>> {
        self.accounts
            .iter()
            .map(|a| {
                let id = format!("{}:{}", Self::NAME, a.account_id);
                Ok((id.clone(), super::NewRelicSink::new(self, a, id, env)?))
            })
            .collect()
    }
}

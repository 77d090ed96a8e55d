//! FakeNewRelic: an in-process stand-in for New Relic's Event API, since the
//! real one is on the internet. It is not New Relic: it serves only
//! `POST /v1/accounts/{id}/events`, as strict as the Event API's
//! documentation says: the account's key in `Api-Key` (else 403), a JSON
//! array of objects each with a string `eventType` (else 400), gzip with
//! `Content-Encoding: gzip`, at most 1 MB (10^6 bytes) of payload (else 413),
//! at most 255 attributes per event, names up to 255 and string values up
//! to 4,096 characters. It answers 200 `{"success":true,"uuid":...}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

#[derive(Default)]
pub struct State {
    /// Events accepted, per account id.
    pub events: HashMap<String, Vec<Value>>,
    pub requests: usize,
    /// While set, every request is answered 503.
    pub down: bool,
    /// Events whose `qs_userId` is this are refused (400), as if invalid.
    pub refuse_user: Option<String>,
}

#[derive(Clone)]
pub struct FakeNewRelic {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

impl FakeNewRelic {
    /// Starts on a free loopback port; `keys` maps account ids to insert keys.
    pub fn start(keys: &[(&str, &str)]) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let keys: HashMap<String, String> = keys
            .iter()
            .map(|(a, k)| ((*a).to_owned(), (*k).to_owned()))
            .collect();
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/v1/accounts/{account}/events",
            axum::routing::post(
                move |axum::extract::Path(account): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: axum::body::Bytes| {
                    let state = shared.clone();
                    let keys = keys.clone();
                    async move { post(&state, &keys, &account, &headers, &body) }
                },
            ),
        );
        FakeNewRelic {
            port: super::serve(app),
            state,
        }
    }

    /// The base URL to configure.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The events accepted for `account`.
    pub fn events(&self, account: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .events
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// An outage (503) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}

fn answer(code: StatusCode, msg: &str) -> (StatusCode, String) {
    (code, serde_json::json!({"error": msg}).to_string())
}

fn post(
    state: &Mutex<State>,
    keys: &HashMap<String, String>,
    account: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    if s.down {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let key = headers.get("api-key").and_then(|v| v.to_str().ok());
    if key.is_none() || keys.get(account).map(String::as_str) != key {
        return answer(StatusCode::FORBIDDEN, "invalid license or insert key");
    }
    if body.len() > 1_000_000 {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    let Some(text) = super::body_text(headers, body) else {
        return answer(StatusCode::BAD_REQUEST, "invalid gzip");
    };
    let Ok(Value::Array(events)) = serde_json::from_str::<Value>(&text) else {
        return answer(StatusCode::BAD_REQUEST, "the body is not a JSON array");
    };
    for ev in &events {
        let Some(obj) = ev.as_object() else {
            return answer(StatusCode::BAD_REQUEST, "an event is not an object");
        };
        if !obj.get("eventType").is_some_and(Value::is_string) {
            return answer(StatusCode::BAD_REQUEST, "an event has no eventType");
        }
        if obj.len() > 255
            || obj.keys().any(|k| k.len() > 255)
            || obj
                .values()
                .any(|v| v.as_str().is_some_and(|s| s.len() > 4096))
        {
            return answer(StatusCode::BAD_REQUEST, "attribute limits exceeded");
        }
        if let Some(bad) = &s.refuse_user
            && obj.get("qs_userId").and_then(Value::as_str) == Some(bad)
        {
            return answer(StatusCode::BAD_REQUEST, "invalid event");
        }
    }
    s.events
        .entry(account.to_owned())
        .or_default()
        .extend(events);
    (
        StatusCode::OK,
        r#"{"success":true,"uuid":"00000000-0000-0000-0000-000000000000"}"#.to_owned(),
    )
}

//! The messages: Butler SOS's user event payload and topics, and the
//! retained per-host state.

use std::collections::BTreeMap;

use serde::Serialize;

use super::MqttTopics;
use crate::sessions::feed::HostSnapshot;
use crate::storage::StoredEvent;
use crate::sinks::influxdb::schema::{UNKNOWN_APP_NAME, event_action};

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
pub fn payload(
    ev: &StoredEvent,
    tags: &BTreeMap<String, String>,
    app_name: Option<&str>,
) -> String {
    let d = &ev.detail;
    let ua = d.bowser();
    serde_json::to_string(&Payload {
        message_type: d.message_type(),
        host: &ev.host,
        command: event_action(&ev.event),
        user_dir: &ev.user_directory,
        user_id: &ev.user_id,
        origin: &ev.origin,
        context: &ev.context,
        message: &ev.message,
        tags,
        app_id: ev.app_id.as_deref(),
        app_name: ev
            .app_id
            .as_ref()
            .map(|_| app_name.unwrap_or(UNKNOWN_APP_NAME)),
        ua_browser_name: ua.browser_name.as_deref(),
        ua_browser_major_version: ua.browser_major.as_deref(),
        ua_os_name: ua.os_name.as_deref(),
        ua_os_version: ua.os_version.as_deref(),
        user_full: &ev.user,
        seq: ev.seq,
        timestamp: micros(ev.time),
    })
    .unwrap_or_default()
}

/// The topics `ev` goes to: `all`, then its command's (each unless `null`).
pub fn topics<'t>(ev: &StoredEvent, t: &'t MqttTopics) -> impl Iterator<Item = &'t str> {
    use crate::event::Command;
    let own = match ev.event {
        Command::SessionStart => &t.session_start,
        Command::SessionStop => &t.session_stop,
        Command::ConnectionOpen => &t.connection_open,
        Command::ConnectionClose => &t.connection_close,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EventDetail;

    fn event() -> StoredEvent {
        StoredEvent {
            seq: 42,
            time: "2026-11-21T10:42:00.1234567Z".parse().unwrap(),
            received_at: "2026-11-21T10:42:00.2Z".parse().unwrap(),
            host: "sense-node1".into(),
            event: crate::event::Command::ConnectionOpen,
            user: "LAB\\anna".into(),
            user_directory: "LAB".into(),
            user_id: "anna".into(),
            origin: "AppAccess".into(),
            context: "/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c".into(),
            app_id: Some("3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c".into()),
            app_name: None,
            browser: Some("Chrome 131".into()),
            os: Some("Windows 10".into()),
            message: "Open connection \"quote\"".into(),
            detail: EventDetail {
                source_time: None,
                stream: crate::event::Stream::Connection,
                browser_name: Some("Chrome".into()),
                browser_major: Some("131".into()),
                os_name: Some("Windows".into()),
                os_version: Some("10".into()),
                proxy_session_id: None,
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_payload_is_butler_sos_s_plus_user_full_seq_and_timestamp() {
        let tags = BTreeMap::from([("qs_env".to_owned(), "prod".to_owned())]);
        let body = payload(&event(), &tags, None);
        assert_eq!(
            body,
            r#"{"messageType":"qseow-proxy-connection","host":"sense-node1","command":"Open connection","userDir":"LAB","userId":"anna","origin":"AppAccess","context":"/app/3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c","message":"Open connection \"quote\"","tags":{"qs_env":"prod"},"appId":"3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c","appName":"<unknown app name>","uaBrowserName":"Chrome","uaBrowserMajorVersion":"131","uaOsName":"Windows","uaOsVersion":"NT 10.0","userFull":"LAB\\anna","seq":42,"timestamp":"2026-11-21T10:42:00.123456Z"}"#
        );
        // The same event gives the same bytes (a redelivery is identical).
        assert_eq!(body, payload(&event(), &tags, None));
    }

    #[test]
    fn optional_fields_are_left_out_and_times_keep_six_digits() {
        let mut ev = event();
        ev.app_id = None;
        ev.detail = EventDetail {
            stream: crate::event::Stream::Session,
            ..Default::default()
        };
        ev.time = "2026-11-21T10:42:00Z".parse().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&payload(&ev, &BTreeMap::new(), None)).unwrap();
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
}

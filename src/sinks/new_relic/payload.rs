//! Butler SOS's `qs_userEvent`, plus `qs_seq`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha3::digest::{ExtendableOutput, Update, XofReader};

use crate::storage::StoredEvent;
use crate::sinks::influxdb::schema::{UNKNOWN_APP_NAME, event_action};

/// The hex of a shake256 hash with 8 bytes of output, as Butler SOS's
/// `crypto.createHash('shake256', { outputLength: 8 }).digest('hex')`.
pub fn scramble(s: &str) -> String {
    let mut h = sha3::Shake256::default();
    h.update(s.as_bytes());
    let mut out = [0u8; 8];
    h.finalize_xof().read(&mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON of one event. The same event always gives the same bytes.
pub fn event(
    ev: &StoredEvent,
    tags: &BTreeMap<String, String>,
    scrambled: bool,
    app_name: Option<&str>,
) -> String {
    let mut m = Map::new();
    let ms = ev.time.as_millisecond();
    m.insert("timestamp".into(), ms.into());
    m.insert("qs_host".into(), ev.host.clone().into());
    m.insert(
        "qs_event_action".into(),
        event_action(&ev.event).to_owned().into(),
    );
    let user = |s: &str| -> Value {
        if scrambled {
            scramble(s).into()
        } else {
            s.to_owned().into()
        }
    };
    m.insert("qs_userFull".into(), user(&ev.user));
    m.insert("qs_userDirectory".into(), user(&ev.user_directory));
    m.insert("qs_userId".into(), user(&ev.user_id));
    m.insert("qs_origin".into(), ev.origin.clone().into());
    let ua = ev.detail.bowser();
    let optional = [
        ("qs_appId", ev.app_id.as_deref()),
        (
            "qs_appName",
            ev.app_id
                .as_ref()
                .map(|_| app_name.unwrap_or(UNKNOWN_APP_NAME)),
        ),
        ("qs_uaBrowserName", ua.browser_name.as_deref()),
        ("qs_uaBrowserMajorVersion", ua.browser_major.as_deref()),
        ("qs_uaOsName", ua.os_name.as_deref()),
        ("qs_uaOsVersion", ua.os_version.as_deref()),
    ];
    for (k, v) in optional {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            m.insert(k.into(), v.to_owned().into());
        }
    }
    // Configured tags, by their own names, never replacing an event's own.
    for (k, v) in tags {
        m.entry(k.clone()).or_insert_with(|| v.clone().into());
    }
    m.insert("qs_seq".into(), ev.seq.into());
    m.insert("eventType".into(), "qs_userEvent".into());
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EventDetail;

    #[test]
    fn scrambling_matches_butler_sos() {
        // Vectors from Node's crypto, as Butler SOS computes them.
        assert_eq!(scramble("LAB\\goran"), "ab4d299d22eb1b8e");
        assert_eq!(scramble("LAB"), "e917621682605938");
        assert_eq!(scramble("goran"), "76b784e6533bb670");
    }

    #[test]
    fn the_event_carries_butler_sos_s_attributes() {
        let t: jiff::Timestamp = "2026-11-21T10:42:00.123456Z".parse().unwrap();
        let ev = StoredEvent {
            seq: 9,
            time: t,
            received_at: t,
            host: "pro2-win1".into(),
            event: crate::event::Command::ConnectionOpen,
            user: "LAB\\goran".into(),
            user_directory: "LAB".into(),
            user_id: "goran".into(),
            origin: "AppAccess".into(),
            context: "/app/a421f4a2-c311-4ef4-ba41-fe2e6a2b0d69".into(),
            app_id: Some("a421f4a2-c311-4ef4-ba41-fe2e6a2b0d69".into()),
            app_name: None,
            browser: None,
            os: None,
            message: "m".into(),
            detail: EventDetail {
                browser_name: Some("Chrome".into()),
                browser_major: Some("124".into()),
                os_name: Some("Windows".into()),
                os_version: Some("10".into()),
                ..Default::default()
            },
        };
        let tags = BTreeMap::from([("qs_env".to_owned(), "dev".to_owned())]);
        let v: Value = serde_json::from_str(&event(&ev, &tags, true, None)).unwrap();
        let want = serde_json::json!({"timestamp":1_795_257_720_123_i64,"qs_host":"pro2-win1","qs_event_action":"Open connection","qs_userFull":"ab4d299d22eb1b8e","qs_userDirectory":"e917621682605938","qs_userId":"76b784e6533bb670","qs_origin":"AppAccess","qs_appId":"a421f4a2-c311-4ef4-ba41-fe2e6a2b0d69","qs_appName":"<unknown app name>","qs_uaBrowserName":"Chrome","qs_uaBrowserMajorVersion":"124","qs_uaOsName":"Windows","qs_uaOsVersion":"NT 10.0","qs_env":"dev","qs_seq":9,"eventType":"qs_userEvent"});
        assert_eq!(v, want);
        let v: Value = serde_json::from_str(&event(&ev, &tags, false, None)).unwrap();
        assert_eq!(v["qs_userFull"], "LAB\\goran");
        assert_eq!(v["qs_userId"], "goran");
    }
}

//! Butler SOS's measurements, so existing SenseOps dashboards keep working.
//!
//! `user_events`, one point per event: tags `host`, `event_action` (Qlik's
//! command), `userFull`, `userDirectory`, `userId`, `origin`, and when known
//! `appId`, `appName`, `uaBrowserName`, `uaBrowserMajorVersion`, `uaOsName`,
//! `uaOsVersion`, plus the configured tags; fields `userFull`, `userId`, and
//! `appId`/`appName` (v1) or `appId_field`/`appName_field` (v2). Dashboards
//! should use only what both versions share (the tags, `userFull`, `userId`).

use super::line::{Field, write_point};
use crate::sessions::journal::{StoredEvent, nanos};

/// Which field names the app id and name get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// InfluxDB 1.x: `appId`, `appName`.
    V1,
    /// InfluxDB 2.x and 3.x (v2 write API): `appId_field`, `appName_field`.
    V2,
}

/// The point time of an event: its time (source time or receive time) to the
/// microsecond, plus its journal sequence number modulo 1000 in the last three
/// digits. Two events of one series (same tags) then never share an instant,
/// so neither overwrites the other, and writing the same event again gives
/// the same time, so a retry after an outage cannot duplicate it.
pub fn point_time(ev: &StoredEvent) -> i64 {
    let t = nanos(ev.time);
    t - t.rem_euclid(1000) + (ev.seq % 1000) as i64
}

/// The Qlik command as Qlik writes it, from the event label.
pub fn event_action(label: &str) -> &str {
    match label {
        "session_start" => "Start session",
        "session_stop" => "Stop session",
        "connection_open" => "Open connection",
        "connection_close" => "Close connection",
        other => other,
    }
}

/// Appends the `user_events` point of `ev` to `out`.
pub fn user_event(
    out: &mut String,
    ev: &StoredEvent,
    version: Version,
    extra_tags: &[(&str, &str)],
) {
    let d = &ev.detail;
    let mut tags: Vec<(&str, &str)> = vec![
        ("host", &ev.host),
        ("event_action", event_action(&ev.event)),
        ("userFull", &ev.user),
        ("userDirectory", &ev.user_directory),
        ("userId", &ev.user_id),
        ("origin", &ev.origin),
    ];
    let optional = [
        ("appId", ev.app_id.as_deref()),
        ("uaBrowserName", d.browser_name.as_deref()),
        ("uaBrowserMajorVersion", d.browser_major.as_deref()),
        ("uaOsName", d.os_name.as_deref()),
        ("uaOsVersion", d.os_version.as_deref()),
    ];
    tags.extend(optional.iter().filter_map(|(k, v)| v.map(|v| (*k, v))));
    // Configured tags never replace an event's own.
    for (k, v) in extra_tags {
        if !tags.iter().any(|(t, _)| t == k) {
            tags.push((k, v));
        }
    }
    let mut fields = vec![
        ("userFull", Field::Str(&ev.user)),
        ("userId", Field::Str(&ev.user_id)),
    ];
    if let Some(app) = ev.app_id.as_deref() {
        let key = match version {
            Version::V1 => "appId",
            Version::V2 => "appId_field",
        };
        fields.push((key, Field::Str(app)));
    }
    write_point(out, "user_events", &tags, &fields, Some(point_time(ev)));
}

/// Appends the `user_session_summary` points of one host at `time_ns`: one
/// per virtual proxy once the proxy API has told which sessions belong to
/// which (tag `user_session_virtual_proxy`), else one for the host. The
/// default virtual proxy is `""`, which InfluxDB cannot store as a tag value:
/// its sessions share the untagged point with those whose virtual proxy is
/// not known, so that two points never overwrite each other.
pub fn session_summary(
    out: &mut String,
    host: &str,
    sessions: &[&crate::sessions::query::SessionView],
    time_ns: i64,
    extra_tags: &[(&str, &str)],
) {
    let mut groups: std::collections::BTreeMap<&str, Vec<&crate::sessions::query::SessionView>> =
        std::collections::BTreeMap::new();
    for s in sessions {
        groups
            .entry(s.virtual_proxy.as_deref().unwrap_or(""))
            .or_default()
            .push(s);
    }
    if groups.is_empty() {
        // A host with nobody left still gets its zero point.
        groups.insert("", Vec::new());
    }
    for (vp, sessions) in groups {
        let mut users: Vec<&str> = sessions.iter().map(|s| s.user.as_str()).collect();
        users.sort_unstable_by_key(|u| u.to_lowercase());
        users.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        let list = users.join(",");
        let connections: usize = sessions.iter().map(|s| s.connections).sum();
        let mut tags = vec![("user_session_host", host)];
        if !vp.is_empty() {
            tags.push(("user_session_virtual_proxy", vp));
        }
        tags.extend(
            extra_tags
                .iter()
                .filter(|(k, _)| *k != "user_session_host" && *k != "user_session_virtual_proxy"),
        );
        write_point(
            out,
            "user_session_summary",
            &tags,
            &[
                ("session_count", Field::Int(sessions.len() as i64)),
                ("connection_count", Field::Int(connections as i64)),
                ("user_count", Field::Int(users.len() as i64)),
                ("session_user_id_list", Field::Str(&list)),
            ],
            Some(time_ns),
        );
    }
}

/// Appends an `event_count` point: how many events of one source, host and
/// subsystem arrived in the interval ending at `time_ns`.
pub fn event_count(
    out: &mut String,
    source: &str,
    host: &str,
    subsystem: &str,
    counter: i64,
    time_ns: i64,
    extra_tags: &[(&str, &str)],
) {
    let mut tags = vec![
        ("event_type", "user"),
        ("source", source),
        ("host", host),
        ("subsystem", subsystem),
    ];
    for t in extra_tags {
        if !tags.iter().any(|(k, _)| k == &t.0) {
            tags.push(*t);
        }
    }
    write_point(
        out,
        "event_count",
        &tags,
        &[("counter", Field::Int(counter))],
        Some(time_ns),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::journal::EventDetail;
    use influxdb_line_protocol::{FieldValue, parse_lines};
    use jiff::Timestamp;

    fn event(origin: &str, app: Option<&str>, seq: u64) -> StoredEvent {
        let t: Timestamp = "2026-11-21T09:00:00.123456789Z".parse().unwrap();
        StoredEvent {
            seq,
            time: t,
            received_at: t,
            host: "sense-node1".into(),
            event: "connection_open".into(),
            user: "LAB\\anna".into(),
            user_directory: "LAB".into(),
            user_id: "anna".into(),
            origin: origin.into(),
            context: "/app/x".into(),
            app_id: app.map(Into::into),
            browser: Some("Chrome 131".into()),
            os: Some("Windows 10".into()),
            message: "m".into(),
            detail: EventDetail {
                browser_name: Some("Chrome".into()),
                browser_major: Some("131".into()),
                os_name: Some("Windows".into()),
                os_version: Some("10".into()),
                message_type: "qseow-proxy-connection".into(),
                ..Default::default()
            },
        }
    }

    type Pairs = Vec<(String, String)>;

    /// Tags, fields and time as the reference parser reads them.
    fn parse(line: &str) -> (Pairs, Pairs, i64) {
        let p = parse_lines(line).next().unwrap().unwrap();
        let tags = p
            .series
            .tag_set
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let fields = p
            .field_set
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::String(s) => s.to_string(),
                    other => other.to_string(),
                };
                (k.to_string(), v)
            })
            .collect();
        (tags, fields, p.timestamp.unwrap())
    }

    #[test]
    fn summaries_split_by_virtual_proxy_once_known() {
        use crate::sessions::query::SessionView;
        let view = |user: &str, vp: Option<&str>| SessionView {
            host: "n1".into(),
            user_directory: "LAB".into(),
            user_id: user.into(),
            user: format!("LAB\\{user}"),
            started_at: "2026-11-21T09:00:00Z".parse().unwrap(),
            connections: 1,
            apps: vec![],
            browser: None,
            os: None,
            virtual_proxy: vp.map(str::to_owned),
            reconciled: false,
        };
        let (a, b, c) = (
            view("anna", None),
            view("bob", Some("")),
            view("carl", Some("finance")),
        );
        let mut out = String::new();
        session_summary(&mut out, "n1", &[&a, &b, &c], 1_000, &[("qs_env", "prod")]);
        let points: Vec<_> = out.lines().map(parse).collect();
        assert_eq!(points.len(), 2, "{out}");
        // Unknown and the default virtual proxy share the untagged point.
        let (tags, fields, _) = &points[0];
        assert!(!tags.iter().any(|(k, _)| k == "user_session_virtual_proxy"));
        assert!(fields.contains(&("session_count".into(), "2i".into())));
        assert!(fields.contains(&("session_user_id_list".into(), "LAB\\anna,LAB\\bob".into())));
        let (tags, fields, _) = &points[1];
        assert!(tags.contains(&("user_session_virtual_proxy".into(), "finance".into())));
        assert!(tags.contains(&("qs_env".into(), "prod".into())));
        assert!(fields.contains(&("session_count".into(), "1i".into())));
        // A host with nobody still gets its zero point.
        let mut out = String::new();
        session_summary(&mut out, "n1", &[], 1_000, &[]);
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn v1_and_v2_points_carry_butlers_tags_and_fields() {
        let app = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
        for (version, app_field) in [(Version::V1, "appId"), (Version::V2, "appId_field")] {
            let mut out = String::new();
            user_event(
                &mut out,
                &event("AppAccess", Some(app), 7),
                version,
                &[("qs_env", "prod"), ("host", "ignored")],
            );
            assert!(out.starts_with("user_events,"), "{out}");
            let (tags, fields, _) = parse(&out);
            let tag = |k: &str| tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.as_str());
            assert_eq!(tag("host"), Some("sense-node1"));
            assert_eq!(tag("event_action"), Some("Open connection"));
            assert_eq!(tag("userFull"), Some("LAB\\anna"));
            assert_eq!(tag("userDirectory"), Some("LAB"));
            assert_eq!(tag("userId"), Some("anna"));
            assert_eq!(tag("origin"), Some("AppAccess"));
            assert_eq!(tag("appId"), Some(app));
            assert_eq!(tag("uaBrowserName"), Some("Chrome"));
            assert_eq!(tag("uaBrowserMajorVersion"), Some("131"));
            assert_eq!(tag("uaOsName"), Some("Windows"));
            assert_eq!(tag("uaOsVersion"), Some("10"));
            assert_eq!(tag("qs_env"), Some("prod"));
            assert_eq!(tags.iter().filter(|(k, _)| k == "host").count(), 1);
            assert_eq!(
                fields,
                vec![
                    ("userFull".to_owned(), "LAB\\anna".to_owned()),
                    ("userId".to_owned(), "anna".to_owned()),
                    (app_field.to_owned(), app.to_owned()),
                ]
            );
        }
    }

    #[test]
    fn empty_origin_and_unknown_app_are_left_out() {
        let mut out = String::new();
        user_event(&mut out, &event("", None, 1), Version::V1, &[]);
        let (tags, fields, _) = parse(&out);
        assert!(!tags.iter().any(|(k, _)| k == "origin" || k == "appId"));
        assert_eq!(fields.len(), 2);
    }

    #[test]
    fn point_times_are_unique_per_sequence_and_stable() {
        let a = point_time(&event("x", None, 1001));
        let b = point_time(&event("x", None, 1002));
        assert_ne!(a, b, "same instant, different events");
        assert_eq!(
            a,
            point_time(&event("x", None, 1001)),
            "a rewrite lands on the same point"
        );
        // Within the microsecond of the event time.
        let t = nanos("2026-11-21T09:00:00.123456789Z".parse().unwrap());
        assert!((a - t).abs() < 1000);
    }
}

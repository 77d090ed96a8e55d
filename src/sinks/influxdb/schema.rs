//! Butler SOS's measurements, so existing SenseOps dashboards keep working.
//!
//! `user_events`, one point per event: tags `host`, `event_action` (Qlik's
//! command), `userFull`, `userDirectory`, `userId`, `origin`, and when known
//! `appId`, `appName`, `uaBrowserName`, `uaBrowserMajorVersion`, `uaOsName`,
//! `uaOsVersion`, plus the configured tags; fields `userFull`, `userId`, and
//! `appId`/`appName` (v1) or `appId_field`/`appName_field` (v2); v3 (which
//! refuses a tag and a field of one name) `userFull_field`, `userId_field`,
//! `appId_field`, `appName_field`, as Butler SOS writes them. Dashboards for
//! v1 and v2 use only what both share (the tags, `userFull`, `userId`).
//! Browser and OS values are Bowser's, as Butler SOS writes them.

use super::line::{Field, write_point};
use crate::storage::{StoredEvent, nanos};

/// Which field names a version gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// InfluxDB 1.x: `userFull`, `userId`, `appId`, `appName`.
    V1,
    /// InfluxDB 2.x: `userFull`, `userId`, `appId_field`, `appName_field`.
    V2,
    /// InfluxDB 3: `userFull_field`, `userId_field`, `appId_field`, `appName_field`.
    V3,
}

impl Version {
    /// The version of `sinks.influxdb.version`.
    pub fn of(n: u8) -> Self {
        match n {
            2 => Version::V2,
            3 => Version::V3,
            _ => Version::V1,
        }
    }

    /// The field names of user, user id, app id and app name.
    fn fields(self) -> [&'static str; 4] {
        match self {
            Version::V1 => ["userFull", "userId", "appId", "appName"],
            Version::V2 => ["userFull", "userId", "appId_field", "appName_field"],
            Version::V3 => [
                "userFull_field",
                "userId_field",
                "appId_field",
                "appName_field",
            ],
        }
    }
}

/// What Butler SOS writes as the name of an app it has no name for.
pub const UNKNOWN_APP_NAME: &str = "<unknown app name>";

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
pub fn event_action(c: &crate::event::Command) -> &'static str {
    c.qlik_name()
}

/// Appends the `user_events` point of `ev` to `out`.
pub fn user_event(
    out: &mut String,
    ev: &StoredEvent,
    version: Version,
    extra_tags: &[(&str, &str)],
    app_name: Option<&str>,
) {
    let ua = ev.detail.bowser();
    let app_name = ev
        .app_id
        .as_ref()
        .map(|_| app_name.unwrap_or(UNKNOWN_APP_NAME));
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
        ("appName", app_name),
        ("uaBrowserName", ua.browser_name.as_deref()),
        ("uaBrowserMajorVersion", ua.browser_major.as_deref()),
        ("uaOsName", ua.os_name.as_deref()),
        ("uaOsVersion", ua.os_version.as_deref()),
    ];
    tags.extend(optional.iter().filter_map(|(k, v)| v.map(|v| (*k, v))));
    // Configured tags never replace an event's own.
    for (k, v) in extra_tags {
        if !tags.iter().any(|(t, _)| t == k) {
            tags.push((k, v));
        }
    }
    let cleaned: Vec<(String, String)>;
    let tags: Vec<(&str, &str)> = if version == Version::V3 {
        cleaned = tags
            .iter()
            .map(|(k, v)| match *k {
                "userFull" => ((*k).to_owned(), (*v).to_owned()),
                _ => (v3_clean(k), v3_clean(v)),
            })
            .collect();
        cleaned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    } else {
        tags
    };
    // InfluxDB keys a series by its tags in key order and sorts every point
    // that comes unsorted; points sent in order spare the server that work
    // (its documentation's first advice for write performance).
    let mut tags = tags;
    tags.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let [user_f, id_f, app_f, name_f] = version.fields();
    let mut fields = vec![
        (user_f, Field::Str(&ev.user)),
        (id_f, Field::Str(&ev.user_id)),
    ];
    if let (Some(app), Some(name)) = (ev.app_id.as_deref(), app_name) {
        fields.push((app_f, Field::Str(app)));
        fields.push((name_f, Field::Str(name)));
    }
    write_point(out, "user_events", &tags, &fields, Some(point_time(ev)));
}

/// Butler SOS's v3 writer strips `<`, `>`, `\\` and line breaks from every tag
/// value but `userFull` (and from the configured tags' names), so an
/// unknown app's `appName` tag reads `unknown app name` there.
fn v3_clean(v: &str) -> String {
    v.replace(['<', '>', '\\', '\n', '\r'], "")
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
    sessions: &[&crate::queries::SessionView],
    time_ns: i64,
    extra_tags: &[(&str, &str)],
) {
    let mut groups: std::collections::BTreeMap<&str, Vec<&crate::queries::SessionView>> =
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
/// subsystem arrived in the interval ending at `time_ns`. The counter has the
/// type Butler SOS gives it, since InfluxDB refuses another one for good in a
/// database Butler SOS has written ("field type conflict"): a float for v1
/// (its client has no schema for it), an integer for v2 and v3.
#[allow(clippy::too_many_arguments)] // one per tag and field: a struct would only rename them
pub fn event_count(
    out: &mut String,
    source: &str,
    host: &str,
    subsystem: &str,
    counter: u64,
    time_ns: i64,
    extra_tags: &[(&str, &str)],
    version: Version,
) {
    let counter = match version {
        Version::V1 => Field::Float(counter as f64),
        Version::V2 | Version::V3 => Field::Int(counter as i64),
    };
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
        &[("counter", counter)],
        Some(time_ns),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EventDetail;
    use influxdb_line_protocol::{FieldValue, parse_lines};
    use jiff::Timestamp;

    fn event(origin: &str, app: Option<&str>, seq: u64) -> StoredEvent {
        let t: Timestamp = "2026-11-21T09:00:00.123456789Z".parse().unwrap();
        StoredEvent {
            seq,
            time: t,
            received_at: t,
            host: "sense-node1".into(),
            event: crate::event::Command::ConnectionOpen,
            user: "LAB\\anna".into(),
            user_directory: "LAB".into(),
            user_id: "anna".into(),
            origin: origin.into(),
            context: "/app/x".into(),
            app_id: app.map(Into::into),
            app_name: None,
            browser: Some("Chrome 131".into()),
            os: Some("Windows 10".into()),
            message: "m".into(),
            detail: EventDetail {
                browser_name: Some("Chrome".into()),
                browser_major: Some("131".into()),
                os_name: Some("Windows".into()),
                os_version: Some("10".into()),
                stream: crate::event::Stream::Connection,
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
        use crate::queries::SessionView;
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
    fn each_version_carries_butlers_tags_and_fields() {
        let app = "3f2a1c9e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
        let v12 = ["userFull", "userId"];
        for (version, names, app_name_tag) in [
            (
                Version::V1,
                [v12[0], v12[1], "appId", "appName"],
                "<unknown app name>",
            ),
            (
                Version::V2,
                [v12[0], v12[1], "appId_field", "appName_field"],
                "<unknown app name>",
            ),
            // Butler SOS's v3 writer strips <, > and \ from tag values.
            (
                Version::V3,
                [
                    "userFull_field",
                    "userId_field",
                    "appId_field",
                    "appName_field",
                ],
                "unknown app name",
            ),
        ] {
            let mut out = String::new();
            user_event(
                &mut out,
                &event("AppAccess", Some(app), 7),
                version,
                &[("qs_env", "prod"), ("host", "ignored")],
                None,
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
            assert_eq!(tag("appName"), Some(app_name_tag));
            assert_eq!(tag("uaBrowserName"), Some("Chrome"));
            assert_eq!(tag("uaBrowserMajorVersion"), Some("131"));
            assert_eq!(tag("uaOsName"), Some("Windows"));
            assert_eq!(
                tag("uaOsVersion"),
                Some("NT 10.0"),
                "Bowser's, as Butler SOS"
            );
            assert_eq!(tag("qs_env"), Some("prod"));
            assert_eq!(tags.iter().filter(|(k, _)| k == "host").count(), 1);
            let mut want = vec![
                (names[0].to_owned(), "LAB\\anna".to_owned()),
                (names[1].to_owned(), "anna".to_owned()),
                (names[2].to_owned(), app.to_owned()),
                (names[3].to_owned(), "<unknown app name>".to_owned()),
            ];
            let mut fields = fields;
            fields.sort();
            want.sort();
            assert_eq!(fields, want, "{version:?}");
            if version == Version::V3 {
                for (k, _) in &fields {
                    assert!(
                        !tags.iter().any(|(t, _)| t == k),
                        "{k} is a tag and a field"
                    );
                }
            }
        }
    }

    #[test]
    fn event_count_has_butler_sos_s_type_per_version() {
        let mut out = String::new();
        event_count(
            &mut out,
            "qseow-proxy-session",
            "n1",
            "AppAccess",
            3,
            10,
            &[],
            Version::V1,
        );
        assert!(out.contains(" counter=3.0 "), "{out}");
        let mut out = String::new();
        event_count(
            &mut out,
            "qseow-proxy-session",
            "n1",
            "",
            3,
            10,
            &[],
            Version::V2,
        );
        assert!(out.contains(" counter=3i "), "{out}");
        assert!(
            !out.contains("subsystem"),
            "empty subsystem left out: {out}"
        );
    }

    #[test]
    fn empty_origin_and_unknown_app_are_left_out() {
        let mut out = String::new();
        user_event(&mut out, &event("", None, 1), Version::V1, &[], None);
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

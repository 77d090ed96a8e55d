//! FakeInfluxDb3: an in-process stand-in for InfluxDB 3's write API, since no
//! InfluxDB 3 runs here. It is not InfluxDB: it serves only
//! `POST /api/v3/write_lp`, but is as strict as InfluxDB 3's documentation
//! says the real one is:
//! - `Authorization: Bearer <token>` or 401; `db` required, else 400;
//!   `precision` one of `auto`, `nanosecond`, `microsecond`, `millisecond`,
//!   `second`, else 400;
//! - each line is parsed by the reference line-protocol parser; a line with
//!   a tag and a field of one name, an empty tag value, or a column whose
//!   kind (tag, or a field's type) differs from what the table already has,
//!   is refused;
//! - `accept_partial=false` (whosin's): any refused line refuses the whole
//!   request (400, nothing written); otherwise the good lines are written and
//!   the answer is still 400, naming the refused lines;
//! - a gzip body with `Content-Encoding: gzip`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use influxdb_line_protocol::{FieldValue, parse_lines};

/// A column's kind, fixed by the first write to its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Tag,
    Field(&'static str),
}

/// One point written.
#[derive(Clone, Debug)]
pub struct Row {
    pub table: String,
    pub tags: BTreeMap<String, String>,
    /// Field values as text; integers end in `i`, strings are bare.
    pub fields: BTreeMap<String, String>,
    pub time: i64,
}

#[derive(Default)]
pub struct State {
    pub rows: Vec<Row>,
    pub requests: usize,
    /// Columns per table.
    pub schema: HashMap<String, HashMap<String, Kind>>,
    /// While set, every write is answered 503.
    pub down: bool,
}

#[derive(Clone)]
pub struct FakeInfluxDb3 {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

fn kind_of(v: &FieldValue<'_>) -> &'static str {
    match v {
        FieldValue::I64(_) => "integer",
        FieldValue::U64(_) => "uinteger",
        FieldValue::F64(_) => "float",
        FieldValue::String(_) => "string",
        FieldValue::Boolean(_) => "boolean",
    }
}

fn text_of(v: &FieldValue<'_>) -> String {
    match v {
        FieldValue::I64(n) => format!("{n}i"),
        FieldValue::U64(n) => format!("{n}u"),
        FieldValue::F64(f) => format!("{f:?}"),
        FieldValue::String(s) => s.to_string(),
        FieldValue::Boolean(b) => b.to_string(),
    }
}

impl FakeInfluxDb3 {
    /// Starts on a free loopback port, accepting `token` for database `db`.
    pub fn start(token: &str, db: &str) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (token, db) = (token.to_owned(), db.to_owned());
        let app = axum::Router::new().route(
            "/api/v3/write_lp",
            axum::routing::post(
                move |axum::extract::RawQuery(q): axum::extract::RawQuery,
                      headers: HeaderMap,
                      body: axum::body::Bytes| {
                    let state = shared.clone();
                    let (token, db) = (token.clone(), db.clone());
                    async move { write(&state, &token, &db, q.unwrap_or_default(), &headers, &body) }
                },
            ),
        );
        FakeInfluxDb3 {
            port: super::serve(app),
            state,
        }
    }

    /// The rows of `table`.
    pub fn rows(&self, table: &str) -> Vec<Row> {
        let s = self.state.lock().unwrap();
        s.rows
            .iter()
            .filter(|r| r.table == table)
            .cloned()
            .collect()
    }

    /// An outage (503) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> (StatusCode, String) {
    (code, serde_json::json!({"error": msg.into()}).to_string())
}

fn write(
    state: &Mutex<State>,
    token: &str,
    db: &str,
    query: String,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    if s.down {
        return error(StatusCode::SERVICE_UNAVAILABLE, "service unavailable");
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {token}") {
        return error(StatusCode::UNAUTHORIZED, "unauthorized access");
    }
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match params.get("db") {
        None => return error(StatusCode::BAD_REQUEST, "missing query parameter: db"),
        Some(d) if d != db => {
            return error(StatusCode::NOT_FOUND, format!("database not found: {d}"));
        }
        Some(_) => {}
    }
    let precision = params.get("precision").map_or("auto", String::as_str);
    if !["auto", "nanosecond", "microsecond", "millisecond", "second"].contains(&precision) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid precision: {precision}"),
        );
    }
    let accept_partial = params.get("accept_partial").is_none_or(|v| v != "false");
    let Some(text) = super::body_text(headers, body) else {
        return error(StatusCode::BAD_REQUEST, "invalid gzip body");
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    // The schema as it would be after this request's good lines.
    let mut schema = s.schema.clone();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let refuse = |why: String| serde_json::json!({"original_line": line, "line_number": i + 1, "error_message": why});
        let parsed = match parse_lines(line).next() {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                bad.push(refuse(format!("parse error: {e}")));
                continue;
            }
            None => continue,
        };
        let table = parsed.series.measurement.to_string();
        let tags: BTreeMap<String, String> = parsed
            .series
            .tag_set
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let fields: Vec<(String, &'static str, String)> = parsed
            .field_set
            .iter()
            .map(|(k, v)| (k.to_string(), kind_of(v), text_of(v)))
            .collect();
        if let Some((k, _, _)) = fields.iter().find(|(k, _, _)| tags.contains_key(k)) {
            bad.push(refuse(format!(
                "invalid column: {k} is a tag and a field in one line (InfluxDB 3 refuses a tag and a field of one name)"
            )));
            continue;
        }
        if let Some((k, _)) = tags.iter().find(|(_, v)| v.is_empty()) {
            bad.push(refuse(format!("empty tag value for {k}")));
            continue;
        }
        let cols = schema.entry(table.clone()).or_default();
        let mut conflict = None;
        for k in tags.keys() {
            if let Some(old) = cols.get(k)
                && *old != Kind::Tag
            {
                conflict = Some(format!("column {k} is a field ({old:?}), not a tag"));
            }
        }
        for (k, t, _) in &fields {
            match cols.get(k) {
                Some(Kind::Field(old)) if old != t => {
                    conflict = Some(format!("field type conflict: {k} is {old}, not {t}"));
                }
                Some(Kind::Tag) => conflict = Some(format!("column {k} is a tag, not a field")),
                _ => {}
            }
        }
        if let Some(why) = conflict {
            bad.push(refuse(why));
            continue;
        }
        for k in tags.keys() {
            cols.insert(k.clone(), Kind::Tag);
        }
        for (k, t, _) in &fields {
            cols.insert(k.clone(), Kind::Field(t));
        }
        good.push(Row {
            table,
            tags,
            fields: fields.into_iter().map(|(k, _, v)| (k, v)).collect(),
            time: parsed.timestamp.unwrap_or(0),
        });
    }
    if bad.is_empty() || accept_partial {
        s.schema = schema;
        s.rows.extend(good);
    }
    if bad.is_empty() {
        return (StatusCode::NO_CONTENT, String::new());
    }
    let msg = if accept_partial {
        "partial write of line protocol occurred"
    } else {
        "parsing failed for write_lp endpoint"
    };
    (
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": msg, "data": bad}).to_string(),
    )
}

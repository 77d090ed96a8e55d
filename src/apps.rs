//! What whosin knows of Qlik apps: the name and stream of each app id, as the
//! repository service (QRS) last told them.
//!
//! Events carry only an app's GUID; administrators think in names. The names
//! are looked up when an answer or a point is made, never when an event
//! arrives, so they never hold an event back, and a renamed app shows its new
//! name everywhere (an app is its id). An app the QRS no longer lists keeps
//! its last name: past events still name it. The catalogue is kept in the
//! journal (`apps` table), so a restart has the names before the QRS answers.

use std::collections::HashMap;
use std::sync::RwLock;

use rusqlite::{Connection, params};
use serde::Serialize;

/// One app's name and stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppInfo {
    /// The app's name.
    pub name: String,
    /// The stream it is published to; `None` while unpublished.
    pub stream: Option<String>,
}

/// The catalogue, shared by the API, the sinks and the refresher.
#[derive(Default)]
pub struct Apps {
    by_id: RwLock<HashMap<String, AppInfo>>,
}

fn key(id: &str) -> String {
    id.trim().to_ascii_lowercase()
}

impl Apps {
    /// The name and stream of app `id`, when known.
    pub fn get(&self, id: &str) -> Option<AppInfo> {
        self.read().get(&key(id)).cloned()
    }

    /// The name of app `id`, when known.
    pub fn name(&self, id: &str) -> Option<String> {
        self.get(id).map(|a| a.name)
    }

    /// Whether app `id` has a name.
    pub fn knows(&self, id: &str) -> bool {
        self.read().contains_key(&key(id))
    }

    /// How many apps have a name.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no app has a name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or renames apps (a refresh): apps not listed keep their names.
    /// Returns how many were new or changed.
    pub fn update(&self, apps: impl IntoIterator<Item = (String, AppInfo)>) -> usize {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = 0;
        for (id, info) in apps {
            let k = key(&id);
            if map.get(&k) != Some(&info) {
                map.insert(k, info);
                changed += 1;
            }
        }
        changed
    }

    /// Whether app `id` is what `query` names: its id, or its name, in any case.
    pub fn matches(&self, id: &str, query: &str) -> bool {
        id.eq_ignore_ascii_case(query.trim())
            || self
                .name(id)
                .is_some_and(|n| n.eq_ignore_ascii_case(query.trim()))
    }

    /// The ids `query` names: itself when it looks like an id, and every app
    /// whose name it is (names are not unique in Qlik).
    pub fn ids_named(&self, query: &str) -> Vec<String> {
        let q = query.trim();
        let mut ids: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, a)| a.name.eq_ignore_ascii_case(q))
            .map(|(id, _)| id.clone())
            .collect();
        let k = key(q);
        if !ids.contains(&k) {
            ids.push(k);
        }
        ids.sort();
        ids
    }

    /// Every known app, for the journal.
    pub fn all(&self) -> Vec<(String, AppInfo)> {
        let mut v: Vec<_> = self
            .read()
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, AppInfo>> {
        self.by_id.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The apps the journal remembers.
pub fn load(conn: &Connection) -> rusqlite::Result<Vec<(String, AppInfo)>> {
    let mut stmt = conn.prepare("SELECT id, name, stream FROM apps")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>("id")?,
            AppInfo {
                name: r.get("name")?,
                stream: r.get("stream")?,
            },
        ))
    })?;
    rows.collect()
}

/// Remembers `apps` in the journal (in one transaction).
pub fn save(conn: &mut Connection, apps: &[(String, AppInfo)]) -> rusqlite::Result<()> {
    let now = crate::storage::nanos(jiff::Timestamp::now());
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO apps (id, name, stream, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, stream = excluded.stream,
               updated_at = excluded.updated_at
             WHERE name IS NOT excluded.name OR stream IS NOT excluded.stream",
        )?;
        for (id, a) in apps {
            stmt.execute(params![key(id), a.name, a.stream, now])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, stream: Option<&str>) -> AppInfo {
        AppInfo {
            name: name.into(),
            stream: stream.map(Into::into),
        }
    }

    #[test]
    fn names_are_found_by_id_in_any_case_and_renames_replace_them() {
        let apps = Apps::default();
        let id = "3F2A1C9E-8B7D-4E6F-A5C4-1D2E3F4A5B6C";
        assert_eq!(
            apps.update([(id.into(), info("Sales", Some("Everyone")))]),
            1
        );
        assert_eq!(apps.name(&id.to_lowercase()).as_deref(), Some("Sales"));
        assert!(apps.matches(&id.to_lowercase(), "sales"));
        assert!(apps.matches(id, id));
        assert_eq!(
            apps.update([(id.into(), info("Sales", Some("Everyone")))]),
            0
        );
        apps.update([(id.into(), info("Sales 2027", None))]);
        assert_eq!(apps.get(id).unwrap(), info("Sales 2027", None));
        // An app no longer listed keeps its name.
        apps.update([("other".into(), info("Finance", None))]);
        assert_eq!(apps.name(id).as_deref(), Some("Sales 2027"));
        // A name names its apps; the query itself is tried as an id too.
        assert_eq!(apps.ids_named("FINANCE"), ["finance", "other"]);
    }

    #[test]
    fn the_journal_keeps_the_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::storage::path_in(dir.path());
        let mut conn = crate::storage::open(&path).unwrap();
        let apps = vec![
            ("a".to_owned(), info("One", Some("Everyone"))),
            ("b".to_owned(), info("Two", None)),
        ];
        save(&mut conn, &apps).unwrap();
        save(&mut conn, &[("b".to_owned(), info("Two, renamed", None))]).unwrap();
        let mut got = load(&conn).unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got[0], apps[0]);
        assert_eq!(got[1].1.name, "Two, renamed");
    }
}

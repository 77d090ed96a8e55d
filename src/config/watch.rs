//! Reloading the configuration when its file changes.
//!
//! Editors save by writing a temporary file and renaming it over the original,
//! which replaces the file's inode: a watch on the file itself goes deaf after the
//! first save. So we watch the file's *directory* and react to any event naming
//! the file, debounced so that one save is one reload.
//!
//! A file saved in place is truncated first and written after: a reload can
//! see it empty. At start an empty file means "all defaults", but applying
//! that while running would silently drop the blacklist and switch the sinks
//! off, so a reload refuses a file without a single setting ([`reload`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::{Config, ConfigError};

/// How long file events are gathered before one reload.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Watches `path` and calls `on_change` with the freshly loaded config (or why
/// it could not be loaded) after each change to the file.
pub fn watch(
    path: &Path,
    on_change: impl Fn(Result<Config, ConfigError>) + Send + 'static,
) -> notify::Result<Watch> {
    let file: PathBuf = std::path::absolute(path)?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_owned());
    let target = file.clone();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
        let Ok(events) = res else { return };
        let touched = events.iter().any(|e| {
            !e.kind.is_access() && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if touched {
            on_change(reload(&target));
        }
    })?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// Loads `path` for a reload: like [`super::load`], except that a file with no
/// settings at all (empty, or only blanks and comments) is refused with
/// [`ConfigError::Empty`], because mid-save is far likelier than an
/// administrator wanting every default while whosin runs.
pub fn reload(path: &Path) -> Result<Config, ConfigError> {
    let text = super::read(path)?;
    if has_no_settings(&text) {
        return Err(ConfigError::Empty {
            path: path.to_owned(),
        });
    }
    super::load_env(&text)
}

/// Only blank lines, comments and YAML document markers.
fn has_no_settings(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_refuses_a_file_without_settings_that_start_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("whosin.yaml");
        for text in ["", "  \n\t\n", "# whosin\n\n# more\n", "---\n# x\n"] {
            std::fs::write(&file, text).unwrap();
            match reload(&file) {
                Err(e @ ConfigError::Empty { .. }) => assert!(
                    e.to_string().contains(
                        "is empty; keeping the running settings — probably saved halfway"
                    ),
                    "{e}"
                ),
                other => panic!("{text:?}: {other:?}"),
            }
            // At start the same file is valid: all defaults.
            assert_eq!(super::super::load(&file).unwrap(), Config::default());
        }
        std::fs::write(&file, "# blacklist only\nblacklist:\n  - directory: LAB\n").unwrap();
        assert_eq!(reload(&file).unwrap().blacklist.len(), 1);
        // An explicit empty mapping is a deliberate choice, not a half save.
        std::fs::write(&file, "{}\n").unwrap();
        assert_eq!(reload(&file).unwrap(), Config::default());
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(reload(&file), Err(ConfigError::Read { .. })));
    }
}

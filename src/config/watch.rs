//! Reloading the configuration when its file changes.
//!
//! Editors save by writing a temporary file and renaming it over the original,
//! which replaces the file's inode: a watch on the file itself goes deaf after the
//! first save. So we watch the file's *directory* and react to any event naming
//! the file, debounced so that one save is one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::{Config, ConfigError, load};

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
            on_change(load(&target));
        }
    })?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(Watch {
        _debouncer: debouncer,
    })
}

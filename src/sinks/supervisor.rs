//! Starts the enabled sinks and, when the config file changes, restarts
//! exactly those whose settings (or the tags, which every sink writes)
//! changed. A restart loses nothing: the old task stops, and the new one
//! begins at the same journal cursor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::driver::{self, Journal, Report};
use super::plugins;
use super::registry::Plugin;
use super::{Env, SinkConfig, SinksConfig, Statuses};
use crate::metrics::Metrics;
use crate::storage::SinkReader;

/// What the sinks take from the config: their sections and the tags.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkSettings {
    /// `sinks:`.
    pub sinks: SinksConfig,
    /// `tags:`.
    pub tags: BTreeMap<String, String>,
}

/// What every sink task is given.
#[derive(Clone)]
pub struct Context {
    /// The journal file the sinks read.
    pub journal_path: PathBuf,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The statuses `/readyz` shows.
    pub statuses: Arc<Statuses>,
    /// The live state's per-host summary, for MQTT's retained state topic.
    pub live: Option<Arc<crate::sessions::feed::Feed>>,
    /// App names.
    pub apps: Arc<crate::apps::Apps>,
}

/// One running sink task.
pub struct Started {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Builds the sinks of `c` and starts a driver for each.
pub(super) fn start_instances<C: SinkConfig>(
    c: &C,
    env: &Env,
    ctx: &Context,
) -> anyhow::Result<Vec<Started>> {
    let mut out = Vec::new();
    for (id, sink) in c.build(env)? {
        let reader = SinkReader::open(&ctx.journal_path, &id)
            .with_context(|| format!("opening the journal for the {id} sink"))?;
        let report = Report::new(C::NAME, &id, &ctx.metrics, ctx.statuses.clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(driver::run(
            sink,
            Journal::new(reader),
            report,
            stop.clone(),
        ));
        out.push(Started { stop, task });
    }
    Ok(out)
}

struct Running {
    wanted: Box<dyn std::any::Any + Send + Sync>,
    tasks: Vec<Started>,
}

async fn halt(r: Running) {
    for t in &r.tasks {
        t.stop.cancel();
    }
    for t in r.tasks {
        let _ = t.task.await;
    }
}

fn env(s: &SinkSettings, ctx: &Context) -> Env {
    Env {
        tags: s.tags.clone(),
        live: ctx.live.clone(),
        apps: ctx.apps.clone(),
    }
}

/// Starts the sinks `initial` enables (failing if one cannot start), then
/// returns the task that follows changes from `updates` until `stop`, and
/// stops every sink before it ends.
pub fn supervise(
    initial: &SinkSettings,
    mut updates: tokio::sync::watch::Receiver<SinkSettings>,
    ctx: Context,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let plugins: Vec<Box<dyn Plugin>> = plugins();
    let mut running: BTreeMap<&'static str, Running> = BTreeMap::new();
    for p in &plugins {
        if let Some(wanted) = p.wanted(&initial.sinks, &env(initial, &ctx)) {
            let tasks = p.start(wanted.as_ref(), &ctx)?;
            running.insert(p.name(), Running { wanted, tasks });
        }
    }
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                changed = updates.changed() => if changed.is_err() { break },
            }
            let settings = updates.borrow_and_update().clone();
            for p in &plugins {
                let name = p.name();
                let want = p.wanted(&settings.sinks, &env(&settings, &ctx));
                let unchanged = match (running.get(name), &want) {
                    (Some(r), Some(w)) => p.same(r.wanted.as_ref(), w.as_ref()),
                    (None, None) => true,
                    _ => false,
                };
                if unchanged {
                    continue;
                }
                if let Some(old) = running.remove(name) {
                    tracing::info!("{name}: settings changed, restarting the sink");
                    halt(old).await;
                }
                if let Some(wanted) = want {
                    match p.start(wanted.as_ref(), &ctx) {
                        Ok(tasks) => {
                            running.insert(name, Running { wanted, tasks });
                        }
                        Err(e) => tracing::error!("{name}: cannot start: {e:#}"),
                    }
                }
            }
        }
        for (_, r) in std::mem::take(&mut running) {
            halt(r).await;
        }
    }))
}

//! The one loop every sink runs in: read after the cursor, deliver, confirm,
//! back off, report.
//!
//! The cursor moves only over batches the destination has confirmed, oldest
//! first, so whatever was not confirmed when a delivery fails (or whosin
//! stops) is read and sent again: nothing is lost, and a sink that pipelines
//! (MQTT keeps several batches in flight) confirms in order all the same.
//! Refused points (the server will never take them) are not failures: they
//! are counted, shown as `degraded`, and the cursor moves on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Delivered, Refused, Settled, Sink, SinkError, SinkStatus, Statuses};
use crate::storage::{SinkReader, StoredEvent};

/// First wait after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);

/// Longest wait between two attempts while a destination fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// On shutdown, how long to wait for the confirmations of what is out, so
/// that a restart sends as little as possible again.
const DRAIN: Duration = Duration::from_secs(2);

/// The journal as one sink reads it; every call runs on the blocking pool.
#[derive(Clone)]
pub struct Journal(Arc<Mutex<SinkReader>>);

impl Journal {
    /// Wraps a reader.
    pub fn new(reader: SinkReader) -> Self {
        Self(Arc::new(Mutex::new(reader)))
    }

    /// Runs `f` with the reader, off the async threads.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&SinkReader) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R, String> {
        let r = self.0.clone();
        tokio::task::spawn_blocking(move || f(&r.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the journal: {e}"))
    }

    async fn batch_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, String> {
        self.with(move |r| r.batch_after(after, limit)).await
    }
}

/// The counters and status one sink reports to.
pub struct Report {
    /// The sink's kind (`sink` label).
    pub name: &'static str,
    /// Its id (cursor, `/readyz`).
    pub id: String,
    /// Its entry in `/readyz`.
    pub status: Arc<SinkStatus>,
    /// Every sink's status, for the shared backlog gauge.
    pub statuses: Arc<Statuses>,
    /// `whosin_sink_events_written_total{sink}`.
    pub written: prometheus::IntCounter,
    /// `whosin_sink_errors_total{sink}`.
    pub errors: prometheus::IntCounter,
    /// `whosin_sink_points_refused_total{sink}`.
    pub refused: prometheus::IntCounter,
    /// `whosin_sink_backlog_events{sink}`.
    pub backlog: prometheus::IntGauge,
}

impl Report {
    /// The report of sink `id` of kind `name`, registered in `statuses`.
    pub fn new(
        name: &'static str,
        id: &str,
        metrics: &crate::metrics::Metrics,
        statuses: Arc<Statuses>,
    ) -> Self {
        Self {
            name,
            id: id.to_owned(),
            status: statuses.register(name, id),
            statuses,
            written: metrics.sink_written.with_label_values(&[name]),
            errors: metrics.sink_errors.with_label_values(&[name]),
            refused: metrics.sink_refused.with_label_values(&[name]),
            backlog: metrics.sink_backlog.with_label_values(&[name]),
        }
    }

    fn refused(&self, r: Option<&Refused>) {
        // The status first: whoever sees the counter move sees the status.
        self.status.wrote(r.map(|r| r.reason.as_str()));
        if let Some(r) = r {
            self.refused.inc_by(r.points);
        }
    }

    async fn refresh_backlog(&self, journal: &Journal) {
        if let Ok(n) = journal.with(|r| r.backlog()).await {
            self.status.set_backlog(n);
            self.backlog.set(self.statuses.backlog_of(self.name) as i64);
        }
    }
}

/// Batches handed over and not yet confirmed: last seq and events of each.
#[derive(Default)]
struct Flight(VecDeque<(u64, u64)>);

/// Runs `sink` until `stop`, then waits a moment for what is in flight.
pub async fn run<S: Sink>(mut sink: S, journal: Journal, report: Report, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    report.refresh_backlog(&journal).await;
    loop {
        let outcome = round(&mut sink, &journal, &report, &stop, &mut backoff, failing).await;
        match outcome {
            Ok(()) => break,
            Err(SinkError(e)) => {
                report.status.failed(&e);
                report.errors.inc();
                if !failing {
                    tracing::warn!(
                        "{}: {e}; retrying with backoff (nothing is lost: what was not confirmed is sent again)",
                        report.id
                    );
                    failing = true;
                }
                sink.reset().await;
                report.refresh_backlog(&journal).await;
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(super::jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    sink.reset().await;
    report.statuses.remove(&report.id);
}

/// From the cursor until an error (`Err`) or `stop` (`Ok`).
async fn round<S: Sink>(
    sink: &mut S,
    journal: &Journal,
    report: &Report,
    stop: &CancellationToken,
    backoff: &mut Duration,
    failing: bool,
) -> Result<(), SinkError> {
    let mut read_from = loop {
        match journal.with(|r| r.cursor()).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("{}: cannot read its cursor: {e}", report.id);
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut flight = Flight::default();
    let mut recovered = !failing;
    let settle = async |flight: &mut Flight, s: Settled| {
        let mut last = None;
        let mut events = 0;
        for _ in 0..s.batches {
            if let Some((seq, n)) = flight.0.pop_front() {
                last = Some(seq);
                events += n;
            }
        }
        if let Some(last) = last {
            // The status first, the counters last: whoever sees a counter
            // move sees the status and the cursor that go with it.
            report.refused(s.refused.as_ref());
            if let Err(e) = journal.with(move |r| r.confirm(last)).await {
                tracing::warn!("{}: cannot record its progress: {e}", report.id);
            }
            report.refresh_backlog(journal).await;
            let refused = s.refused.as_ref().map_or(0, |r| r.points);
            report.written.inc_by(events.saturating_sub(refused));
        }
    };
    loop {
        if stop.is_cancelled() {
            // Wait a moment for the confirmations of what is out.
            let deadline = tokio::time::Instant::now() + DRAIN;
            while !flight.0.is_empty() {
                match tokio::time::timeout_at(deadline, sink.settled()).await {
                    Ok(Ok(s)) => settle(&mut flight, s).await,
                    _ => break,
                }
            }
            return Ok(());
        }
        if flight.0.len() < sink.pipeline().max(1) {
            let batch = match journal.batch_after(read_from, sink.batch_size()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("{}: {e}", report.id);
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            if let Some(last) = batch.last().map(|e| e.seq) {
                let n = batch.len() as u64;
                read_from = last;
                flight.0.push_back((last, n));
                // A stop cancels a delivery in progress (a server that
                // stalls must not hold a restart); it is sent again later.
                let delivered = tokio::select! {
                    () = stop.cancelled() => {
                        flight.0.pop_back();
                        continue;
                    }
                    d = sink.deliver(batch.into()) => d?,
                };
                match delivered {
                    Delivered::Done(refused) => {
                        settle(
                            &mut flight,
                            Settled {
                                batches: 1,
                                refused,
                            },
                        )
                        .await;
                        if !recovered {
                            tracing::info!("{}: delivering again", report.id);
                            recovered = true;
                        }
                        *backoff = MIN_BACKOFF;
                    }
                    Delivered::Pending => {}
                }
                continue;
            }
            if flight.0.is_empty() {
                // Caught up: the sink's own work, then rest.
                let refused = tokio::select! {
                    () = stop.cancelled() => continue,
                    r = sink.idle(journal) => r?,
                };
                if refused.is_some() {
                    report.refused(refused.as_ref());
                }
                report.status.ok();
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(sink.idle_interval()) => {}
                }
                continue;
            }
            // Caught up with batches out: their confirmation, or a new look.
            let idle = sink.idle_interval();
            tokio::select! {
                () = stop.cancelled() => {}
                s = sink.settled() => settle(&mut flight, s?).await,
                () = tokio::time::sleep(idle) => {}
            }
        } else {
            tokio::select! {
                () = stop.cancelled() => {}
                s = sink.settled() => {
                    settle(&mut flight, s?).await;
                    if !recovered {
                        tracing::info!("{}: delivering again", report.id);
                        recovered = true;
                    }
                    *backoff = MIN_BACKOFF;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;

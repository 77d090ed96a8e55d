//! The driver against an in-process sink that fails, stalls, refuses and
//! pipelines on command, over a real journal file.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::ingest::parse::Parser;
use crate::sinks::{Batch, Delivered, Refused, Settled, Sink, SinkError, Statuses};
use crate::storage::{self, Write};

/// What the test sink does with the next batch.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Accept,
    Fail,
    Stall,
    /// Refuse this many points of every batch.
    Refuse(u64),
    /// Hand over and wait for the test to settle.
    Pending,
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    /// Every seq handed to the sink, in order (with repeats).
    seen: Vec<u64>,
    /// Batches handed over and not settled, as (first, last).
    outstanding: usize,
    most_outstanding: usize,
}

struct TestSink {
    shared: Arc<Mutex<Shared>>,
    pipeline: usize,
    settle_rx: mpsc::UnboundedReceiver<usize>,
}

impl TestSink {
    fn mode(&self) -> Mode {
        self.shared
            .lock()
            .unwrap()
            .mode
            .clone()
            .unwrap_or(Mode::Accept)
    }
}

impl Sink for TestSink {
    fn batch_size(&self) -> usize {
        10
    }

    fn pipeline(&self) -> usize {
        self.pipeline
    }

    fn idle_interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    async fn deliver(&mut self, batch: Batch) -> Result<Delivered, SinkError> {
        let mode = self.mode();
        if mode == Mode::Stall {
            std::future::pending::<()>().await;
        }
        let mut s = self.shared.lock().unwrap();
        s.seen.extend(batch.iter().map(|e| e.seq));
        match mode {
            Mode::Fail => Err(SinkError("the test says no".into())),
            Mode::Refuse(n) => Ok(Delivered::Done(Some(Refused {
                points: n,
                reason: "type conflict".into(),
            }))),
            Mode::Pending => {
                s.outstanding += 1;
                s.most_outstanding = s.most_outstanding.max(s.outstanding);
                Ok(Delivered::Pending)
            }
            Mode::Accept | Mode::Stall => Ok(Delivered::Done(None)),
        }
    }

    async fn settled(&mut self) -> Result<Settled, SinkError> {
        let n = self.settle_rx.recv().await.unwrap_or(0);
        if self.mode() == Mode::Fail {
            return Err(SinkError("lost the connection".into()));
        }
        self.shared.lock().unwrap().outstanding -= n;
        Ok(Settled {
            batches: n,
            refused: None,
        })
    }

    async fn reset(&mut self) {
        self.shared.lock().unwrap().outstanding = 0;
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    shared: Arc<Mutex<Shared>>,
    settle: mpsc::UnboundedSender<usize>,
    metrics: Arc<crate::metrics::Metrics>,
    statuses: Arc<Statuses>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const LINE: &str = "/qseow-proxy-session/;n1;Start session;LAB;anna;AppAccess;/hub/;Start";

fn add_events(path: &std::path::Path, from: u64, n: u64) {
    let mut conn = storage::open(path).unwrap();
    let ev = Parser::new()
        .parse(LINE.as_bytes(), jiff::Timestamp::now())
        .unwrap();
    let rows: Vec<Write> = (from..from + n)
        .map(|seq| Write::Event(seq, Box::new(ev.clone())))
        .collect();
    storage::write_batch(&mut conn, &rows).unwrap();
}

fn rig(events: u64, pipeline: usize, mode: Mode) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = storage::path_in(dir.path());
    add_events(&path, 1, events);
    let shared = Arc::new(Mutex::new(Shared {
        mode: Some(mode),
        ..Default::default()
    }));
    let (settle, settle_rx) = mpsc::unbounded_channel();
    let metrics = crate::metrics::Metrics::new(&["test"]);
    let statuses = Arc::new(Statuses::default());
    let stop = CancellationToken::new();
    let sink = TestSink {
        shared: shared.clone(),
        pipeline,
        settle_rx,
    };
    let reader = storage::SinkReader::open(&path, "test").unwrap();
    let report = Report::new("test", "test", &metrics, statuses.clone());
    let task = tokio::spawn(run(sink, Journal::new(reader), report, stop.clone()));
    Rig {
        _dir: dir,
        path,
        shared,
        settle,
        metrics,
        statuses,
        stop,
        task,
    }
}

impl Rig {
    fn cursor(&self) -> u64 {
        storage::SinkReader::open(&self.path, "test")
            .unwrap()
            .cursor()
            .unwrap()
    }
    fn set(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = Some(mode);
    }
    fn state(&self) -> &'static str {
        self.statuses
            .reports()
            .into_iter()
            .find(|r| r.id == "test")
            .map_or("gone", |r| r.state)
    }
    fn counter(&self, c: &prometheus::IntCounterVec) -> u64 {
        c.with_label_values(&["test"]).get()
    }
    async fn until(&self, what: &str, f: impl Fn(&Rig) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the driver stops")
            .unwrap();
    }
}

#[tokio::test]
async fn everything_is_delivered_once_in_order_and_confirmed() {
    let r = rig(35, 1, Mode::Accept);
    r.until("all confirmed", |r| r.cursor() == 35).await;
    assert_eq!(r.shared.lock().unwrap().seen, (1..=35).collect::<Vec<_>>());
    // The counter follows the cursor.
    r.until("written", |r| r.counter(&r.metrics.sink_written) == 35)
        .await;
    r.until("backlog 0", |r| {
        r.metrics.sink_backlog.with_label_values(&["test"]).get() == 0
    })
    .await;
    // New events are picked up while idle.
    add_events(&r.path, 36, 5);
    r.until("new ones confirmed", |r| r.cursor() == 40).await;
    assert_eq!(r.state(), "ok");
    r.stop().await;
}

#[tokio::test]
async fn a_failing_sink_is_retried_and_loses_nothing() {
    let r = rig(25, 1, Mode::Fail);
    r.until("errors counted", |r| r.counter(&r.metrics.sink_errors) >= 2)
        .await;
    assert_eq!(r.state(), "retrying");
    assert_eq!(r.cursor(), 0, "nothing confirmed while failing");
    assert!(
        r.metrics.sink_backlog.with_label_values(&["test"]).get() == 25,
        "the backlog shows while failing"
    );
    r.set(Mode::Accept);
    r.until("caught up", |r| r.cursor() == 25).await;
    r.until("written", |r| r.counter(&r.metrics.sink_written) == 25)
        .await;
    let seen = r.shared.lock().unwrap().seen.clone();
    let mut once = seen.clone();
    once.dedup();
    once.sort_unstable();
    once.dedup();
    assert_eq!(once, (1..=25).collect::<Vec<_>>(), "every event, {seen:?}");
    assert_eq!(r.counter(&r.metrics.sink_written), 25);
    r.until("ok again", |r| r.state() == "ok").await;
    r.stop().await;
}

#[tokio::test]
async fn refused_points_are_counted_shown_and_passed() {
    let r = rig(20, 1, Mode::Refuse(1));
    r.until("passed", |r| r.cursor() == 20).await;
    r.until("counted", |r| r.counter(&r.metrics.sink_refused) == 2)
        .await;
    r.until("written", |r| r.counter(&r.metrics.sink_written) == 18)
        .await;
    assert_eq!(r.state(), "degraded");
    r.set(Mode::Accept);
    add_events(&r.path, 21, 3);
    r.until("clean write", |r| r.cursor() == 23).await;
    // A write without refusals clears it.
    r.until("ok again", |r| r.state() == "ok").await;
    r.stop().await;
}

#[tokio::test]
async fn a_stalled_sink_holds_the_cursor_and_still_stops() {
    let r = rig(5, 1, Mode::Stall);
    // The stall is in deliver; the cursor must not move meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.cursor(), 0);
    assert!(r.shared.lock().unwrap().seen.is_empty());
    r.stop().await;
}

#[tokio::test]
async fn pipelined_batches_are_confirmed_in_order_within_the_pipeline() {
    let r = rig(50, 3, Mode::Pending);
    r.until("three out", |r| r.shared.lock().unwrap().outstanding == 3)
        .await;
    // The pipeline is full: nothing more is read until one settles.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.shared.lock().unwrap().seen.len(), 30);
    assert_eq!(r.cursor(), 0);
    r.settle.send(1).unwrap();
    r.until("first confirmed", |r| r.cursor() == 10).await;
    r.until("refilled", |r| r.shared.lock().unwrap().seen.len() == 40)
        .await;
    r.settle.send(2).unwrap();
    r.until("two more", |r| r.cursor() == 30).await;
    r.settle.send(2).unwrap();
    r.until("all", |r| r.cursor() == 50).await;
    r.until("written", |r| r.counter(&r.metrics.sink_written) == 50)
        .await;
    assert_eq!(r.shared.lock().unwrap().most_outstanding, 3);
    assert_eq!(r.counter(&r.metrics.sink_written), 50);
    r.stop().await;
}

#[tokio::test]
async fn after_a_failure_pending_batches_are_sent_again_from_the_cursor() {
    let r = rig(30, 3, Mode::Pending);
    r.until("three out", |r| r.shared.lock().unwrap().outstanding == 3)
        .await;
    r.settle.send(1).unwrap();
    r.until("first confirmed", |r| r.cursor() == 10).await;
    r.set(Mode::Fail);
    // The settled batch is done; the failure makes the rest go again.
    r.settle.send(0).unwrap();
    r.until("error", |r| r.counter(&r.metrics.sink_errors) >= 1)
        .await;
    r.set(Mode::Accept);
    r.until("all", |r| r.cursor() == 30).await;
    let seen = r.shared.lock().unwrap().seen.clone();
    assert!(!seen[30..].contains(&5), "confirmed events are not resent");
    assert!(seen[30..].contains(&11), "unconfirmed ones are: {seen:?}");
    r.stop().await;
}

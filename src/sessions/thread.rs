//! The core's thread: inputs in order, a tick every second, and the rows
//! handed to the journal in few messages.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use jiff::Timestamp;

use super::{Core, EXPIRE_EVERY, Input};

/// Rows the core gathers before it hands them to the journal writer (for
/// at most [`Core::outbox_hold`]): each message wakes the writer, and
/// waking it for every batch of datagrams (1,500 times a second at 70,000
/// events/s) cost the core more than the handing over.
const OUTBOX_ROWS: usize = 4096;

/// Runs the core on its own thread until every sender is gone.
pub fn spawn(mut core: Core, rx: Receiver<Input>) -> std::io::Result<JoinHandle<Core>> {
    std::thread::Builder::new()
        .name("whosin-core".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + EXPIRE_EVERY;
            // When the oldest row not yet sent to the journal was made.
            let mut outbox_since: Option<Instant> = None;
            let hold = core.outbox_hold();
            loop {
                let deadline = match outbox_since {
                    Some(t) => next_tick.min(t + hold),
                    None => next_tick,
                };
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Input::Events(events)) => {
                        for ev in events {
                            core.handle(ev);
                        }
                    }
                    Ok(Input::Reload(settings)) => core.reconfigure(settings),
                    Ok(Input::Flush(reply)) => core.flush(reply),
                    Ok(Input::Reconcile(r)) => {
                        let fixes = core.reconcile(&r);
                        let _ = r.reply.send(fixes);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        core.send_outbox();
                        break;
                    }
                }
                if Instant::now() >= next_tick {
                    core.tick(Timestamp::now());
                    next_tick = Instant::now() + EXPIRE_EVERY;
                }
                match core.outbox_len() {
                    0 => outbox_since = None,
                    n => {
                        let since = *outbox_since.get_or_insert_with(Instant::now);
                        if n >= OUTBOX_ROWS || since.elapsed() >= hold {
                            core.send_outbox();
                            outbox_since = None;
                        }
                    }
                }
            }
            core
        })
}

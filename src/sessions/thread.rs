//! The core's thread: inputs in order, a tick every second, and after each
//! input the rows it made handed to the journal in one message.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use jiff::Timestamp;

use super::{Core, EXPIRE_EVERY, Input};

/// Runs the core on its own thread until every sender is gone.
pub fn spawn(mut core: Core, rx: Receiver<Input>) -> std::io::Result<JoinHandle<Core>> {
    std::thread::Builder::new()
        .name("whosin-core".into())
        .spawn(move || {
            let mut next_tick = Instant::now() + EXPIRE_EVERY;
            loop {
                let wait = next_tick.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
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
                core.send_outbox();
            }
            core
        })
}

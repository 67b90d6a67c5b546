//! The connect and disconnect lines of PROTOCOL.md section 1: one info line
//! per client, as the seed's hub logs them, except during a storm: past a
//! few a second, the rest of that second is summed up in one line, so a
//! reconnect storm of 10,000 clients does not flood the journal.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::time::{Duration, Instant};

use log::info;

/// Lines of each kind logged one by one per second; the rest are counted.
const SHOWN_PER_SECOND: u32 = 5;

/// See the module docs.
#[derive(Debug)]
pub struct ConnLog {
    window: Instant,
    shown: [u32; 2],
    hidden: [u64; 2],
}

const CONNECTED: usize = 0;
const DISCONNECTED: usize = 1;

impl ConnLog {
    /// A log whose first window starts now.
    pub fn new(now: Instant) -> ConnLog {
        ConnLog { window: now, shown: [0; 2], hidden: [0; 2] }
    }

    /// A client connected; `line` is only formatted when it is shown.
    pub fn connected(&mut self, now: Instant, line: impl FnOnce() -> String) {
        self.note(CONNECTED, now, line);
    }

    /// A client disconnected.
    pub fn disconnected(&mut self, now: Instant, line: impl FnOnce() -> String) {
        self.note(DISCONNECTED, now, line);
    }

    fn note(&mut self, kind: usize, now: Instant, line: impl FnOnce() -> String) {
        self.roll(now);
        let (Some(shown), Some(hidden)) = (self.shown.get_mut(kind), self.hidden.get_mut(kind)) else { return };
        if *shown < SHOWN_PER_SECOND {
            *shown += 1;
            info!("{}", line());
        } else {
            *hidden += 1;
        }
    }

    /// Ends the window when a second has passed: one line for what was
    /// not shown. Call it every timer tick too.
    pub fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window) < Duration::from_secs(1) {
            return;
        }
        let [connected, disconnected] = self.hidden;
        if connected + disconnected > 0 {
            info!(
                "and {connected} more clients connected, {disconnected} more disconnected in {:.1} s",
                now.duration_since(self.window).as_secs_f32()
            );
        }
        *self = ConnLog::new(now);
    }
}

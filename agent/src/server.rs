//! One Minecraft server as the agent sees it: what is shared with the gRPC
//! service ([`Server`]: kept log entries, status changes, TPS, CPU samples)
//! and the worker thread that drives its [`Tailer`] and [`StatusMachine`].
//!
//! The worker wakes when `logs/` changes (inotify, [`LogWatch`]) and at
//! least every [`POLL`]: it reads what the log has (all of it,
//! chunk by chunk), publishes the entries (after the tailer saved the state),
//! completes an entry whose last line is 100 ms old, then looks at the
//! process and `crash-reports/` and publishes status changes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aymc_proto::agent::ServerMetrics;

use crate::config::ServerSettings;
use crate::metrics::{self, CpuTracker};
use crate::parse::{self, Entry};
use crate::ring::{self, Keyed, Ring};
use crate::status::{CrashReports, Observation, RunStatus, RunStatusChange, StatusMachine};
use crate::tail::{TailEvent, Tailer, FOLD_WAIT};
use crate::tenant::{TenantPath, WarnOnce};
use crate::watch::LogWatch;

/// How often the worker looks at the log (also without a change notice),
/// the process and crash reports.
pub const POLL: Duration = Duration::from_millis(50);
/// Status changes kept for `WatchStatus` subscribers that fall behind.
pub const STATUS_KEPT: usize = 64;
/// `crash-reports/` is listed at most this often.
const CRASH_SCAN: Duration = Duration::from_millis(250);

impl Keyed for Entry {
    fn key(&self) -> u64 {
        self.offset
    }

    fn weight(&self) -> usize {
        std::mem::size_of::<Entry>()
            + ring::SLOT_OVERHEAD
            + self.source.capacity()
            + self.message.capacity()
            + self.exception.capacity()
    }
}

/// What the service reads about one server.
pub struct Server {
    /// Its configuration.
    pub config: ServerSettings,
    /// Kept log entries (`history_lines`, `history_bytes`) and their subscribers.
    pub logs: Arc<Ring<Entry>>,
    /// Status changes; the newest is the current status.
    pub status: Arc<Ring<RunStatusChange>>,
    /// The newest TPS line's value and when it was seen (unix ms).
    tps: Mutex<Option<(f64, i64)>>,
    /// CPU samples for `GetMetrics`.
    pub cpu: CpuTracker,
}

impl Server {
    /// A server with nothing seen yet.
    pub fn new(config: ServerSettings, history_lines: usize, history_bytes: usize) -> Server {
        Server {
            config,
            logs: Arc::new(Ring::new(history_lines, history_bytes, 0)),
            status: Arc::new(Ring::new(STATUS_KEPT, usize::MAX, 0)),
            tps: Mutex::new(None),
            cpu: CpuTracker::default(),
        }
    }

    /// The newest TPS and when its line was seen (unix ms).
    pub fn tps(&self) -> Option<(f64, i64)> {
        *self.tps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GetMetrics`' answer for this server (may block up to
    /// [`metrics::SLP_TIMEOUT`] on the Server List Ping).
    pub fn metrics(&self, now_ms: i64) -> ServerMetrics {
        metrics::collect(&self.config, &self.cpu, self.tps(), now_ms)
    }

    /// The current status (none before the worker's first look).
    pub fn current_status(&self) -> Option<Arc<RunStatusChange>> {
        self.status.latest()
    }
}

/// Drives one server's tailer and status; runs on its own thread.
pub struct Worker {
    server: Arc<Server>,
    tailer: Tailer,
    machine: StatusMachine,
    crashes: CrashReports,
    last_crash_scan: Instant,
    seq: u64,
    /// The first look is done: status changes are published from now on
    /// (those replayed from an old log at start are not news).
    settled: bool,
    /// The last error logged, so a lasting problem is logged once.
    last_error: Option<String>,
    log_path: TenantPath,
    pid_path: Option<TenantPath>,
    /// The pid file is something the agent must not read (logged once).
    pid_refused: WarnOnce,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Worker {
    /// A worker for `server`, whose tailer is open.
    pub fn new(server: Arc<Server>, tailer: Tailer) -> Worker {
        let machine = StatusMachine::new(server.config.pid_file.is_some());
        let crashes = CrashReports::new(&server.config.id, server.config.crash_reports_path());
        Worker {
            log_path: server.config.log_path(),
            pid_path: server.config.pid_path(),
            pid_refused: WarnOnce::default(),
            server,
            tailer,
            machine,
            crashes,
            last_crash_scan: Instant::now(),
            seq: 0,
            settled: false,
            last_error: None,
        }
    }

    /// Reads the log to its end (refilling the ring), sets the first status,
    /// says so on `ready`, then polls until `stop` says stop (or is dropped).
    pub fn run(mut self, stop: Receiver<()>, ready: Sender<()>) {
        self.pump();
        // Let the last entry complete before the first status is taken (a
        // line written just now may still get continuation lines).
        let started = Instant::now();
        while self.tailer.has_pending() && started.elapsed() < 2 * FOLD_WAIT {
            if let Some(entry) = self.tailer.settle() {
                self.handle(vec![TailEvent::Entry(entry)]);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            self.pump();
        }
        self.observe(true);
        // Replayed markers settled the status; publish where it ended.
        self.settled = true;
        if let Some((status, reason)) = self.machine.current() {
            let reason = reason.to_string();
            self.publish_status(vec![(status, reason)]);
        }
        let _ = ready.send(());
        // Dropped now, so `Agent::start` sees a worker that died before its
        // `ready` as a closed channel rather than waiting forever.
        drop(ready);
        let mut watch = LogWatch::new(&self.server.config.dir.join("logs"));
        while let Err(TryRecvError::Empty) = stop.try_recv() {
            watch.wait(POLL);
            self.pump();
            self.observe(false);
        }
    }

    /// Reads everything the log has, then completes an idle waiting entry.
    fn pump(&mut self) {
        let mut events = Vec::new();
        loop {
            let more = match self.tailer.step(&mut events) {
                Ok(more) => {
                    self.last_error = None;
                    more
                }
                Err(e) => {
                    let text = e.to_string();
                    if self.last_error.as_ref() != Some(&text) {
                        log::warn!("server {}: {text}", self.server.config.id);
                        self.last_error = Some(text);
                    }
                    false
                }
            };
            self.handle(std::mem::take(&mut events));
            if !more {
                break;
            }
        }
        if let Some(entry) = self.tailer.flush_idle(Instant::now()) {
            self.handle(vec![TailEvent::Entry(entry)]);
        }
    }

    fn handle(&mut self, events: Vec<TailEvent>) {
        if events.is_empty() {
            return;
        }
        let now = now_ms();
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            match event {
                TailEvent::NewFile => self.machine.on_new_log(),
                TailEvent::Entry(entry) => {
                    // When the line was seen: now, for a live line (robust to a
                    // server logging in another time zone); its own time, for a
                    // line of the old log read again at start.
                    let at = if self.settled { now } else { entry.timestamp.min(now) };
                    if let Some(tps) = parse::tps(&entry.message) {
                        *self.server.tps.lock().unwrap_or_else(PoisonError::into_inner) = Some((tps, at));
                    }
                    self.machine.on_line(parse::marker(&entry.source, &entry.message), at);
                    entries.push(entry);
                }
            }
        }
        self.server.logs.push(entries);
        let changes = self.machine.take_changes();
        self.publish_status(changes);
    }

    fn observe(&mut self, first: bool) {
        let crash_report = if first || self.last_crash_scan.elapsed() >= CRASH_SCAN {
            self.last_crash_scan = Instant::now();
            self.crashes.poll()
        } else {
            None
        };
        let pid = self.pid_path.as_ref().map(metrics::read_pid);
        if let Some(result) = &pid {
            self.pid_refused.note(&self.server.config.id, result);
        }
        let pid = pid.and_then(|r| r.ok().flatten());
        let obs = Observation {
            process: pid.and_then(metrics::process).map(|(id, _)| id),
            // A link or FIFO there is no log (the tailer says so once).
            log_exists: self.log_path.inode().is_ok(),
            crash_report,
            now_ms: now_ms(),
        };
        self.machine.tick(&obs);
        let changes = self.machine.take_changes();
        self.publish_status(changes);
    }

    fn publish_status(&mut self, changes: Vec<(RunStatus, String)>) {
        if changes.is_empty() || !self.settled {
            return;
        }
        let timestamp = now_ms();
        let id = &self.server.config.id;
        let records: Vec<RunStatusChange> = changes
            .into_iter()
            .map(|(status, reason)| {
                self.seq += 1;
                log::info!("server {id}: {} ({reason})", status.as_str());
                RunStatusChange { seq: self.seq, status, reason, timestamp }
            })
            .collect();
        self.server.status.push(records);
    }
}

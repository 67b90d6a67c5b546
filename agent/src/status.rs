//! A server's status by DESIGN.md's rules, from what the worker observes:
//! marker lines of the log, a new latest.log, the Java process (through the
//! pid file) and new files in `crash-reports/`. [`StatusMachine`] is pure
//! (it is given times and observations); [`CrashReports`] lists a directory.
//!
//! Decisions where DESIGN.md is silent: `crashed` stays until the server
//! starts again (a crash is followed by the usual stopping lines, which must
//! not turn it into `stopped`); when the agent starts beside a dead process,
//! the log decides (`stopped` after a stopping line or with no log, else
//! `crashed`); the 5-second rule counts from when the newest line was seen.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashSet;
use std::ffi::OsString;

use crate::metrics::ProcId;
use crate::parse::Marker;
use crate::ring::Keyed;
use crate::tenant::{TenantPath, WarnOnce};

/// A server status (PROTOCOL.md section 5; `unreachable` and `unknown` are the hub's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// From the process's start (or a new latest.log) until `Done (`.
    Starting,
    /// After `Done (`.
    Running,
    /// After a stopping line.
    Stopping,
    /// Stopped cleanly, or not running.
    Stopped,
    /// Gone without a stopping line, or a new crash report.
    Crashed,
}

impl RunStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Stopping => "stopping",
            RunStatus::Stopped => "stopped",
            RunStatus::Crashed => "crashed",
        }
    }
}

/// One status change as published (`WatchStatus`, `GetStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStatusChange {
    /// Per server, from 1, one more per change.
    pub seq: u64,
    /// The new status.
    pub status: RunStatus,
    /// Why, for people.
    pub reason: String,
    /// Unix milliseconds.
    pub timestamp: i64,
}

impl Keyed for RunStatusChange {
    fn key(&self) -> u64 {
        self.seq
    }
}

/// What the worker saw on one poll.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// The running process named by the pid file (ignored without a pid file).
    pub process: Option<ProcId>,
    /// Whether latest.log exists.
    pub log_exists: bool,
    /// A file that appeared in `crash-reports/` since the last poll.
    pub crash_report: Option<String>,
    /// Unix milliseconds.
    pub now_ms: i64,
}

/// Log-only mode: `stopped` this long after a stopping line with no further line.
pub const QUIET_AFTER_STOP_MS: i64 = 5_000;

/// The rules. Feed it lines and observations in order; take the changes.
#[derive(Debug)]
pub struct StatusMachine {
    /// A pid file is configured: the process decides `stopped`/`crashed`.
    tracks_process: bool,
    current: Option<(RunStatus, String)>,
    changes: Vec<(RunStatus, String)>,
    /// A stopping line was seen since the server last started.
    stop_seen: bool,
    process: Option<ProcId>,
    ticked: bool,
    /// The current latest.log has had a line.
    log_has_lines: bool,
    last_line_ms: i64,
}

impl StatusMachine {
    /// A machine with no status yet (the first [`StatusMachine::tick`] sets one).
    pub fn new(tracks_process: bool) -> StatusMachine {
        StatusMachine {
            tracks_process,
            current: None,
            changes: Vec::new(),
            stop_seen: false,
            process: None,
            ticked: false,
            log_has_lines: false,
            last_line_ms: 0,
        }
    }

    /// The current status and its reason.
    pub fn current(&self) -> Option<(RunStatus, &str)> {
        self.current.as_ref().map(|(s, r)| (*s, r.as_str()))
    }

    /// The changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<(RunStatus, String)> {
        std::mem::take(&mut self.changes)
    }

    fn is(&self, status: RunStatus) -> bool {
        self.current.as_ref().is_some_and(|(s, _)| *s == status)
    }

    fn set(&mut self, status: RunStatus, reason: impl Into<String>) {
        if !self.is(status) {
            let reason = reason.into();
            self.changes.push((status, reason.clone()));
            self.current = Some((status, reason));
        }
    }

    /// A log entry, with the marker its message carries and its time (unix ms).
    pub fn on_line(&mut self, marker: Option<Marker>, at_ms: i64) {
        self.log_has_lines = true;
        self.last_line_ms = self.last_line_ms.max(at_ms);
        let Some(marker) = marker else { return };
        if self.is(RunStatus::Crashed) && marker != Marker::Starting {
            return;
        }
        match marker {
            Marker::Starting => {
                self.stop_seen = false;
                self.set(RunStatus::Starting, "Starting minecraft server");
            }
            Marker::Done if !self.stop_seen => self.set(RunStatus::Running, "Done"),
            Marker::Done => {}
            Marker::Stopping => {
                self.stop_seen = true;
                self.set(RunStatus::Stopping, "stopping line");
            }
            Marker::AllSaved if !self.tracks_process => self.set(RunStatus::Stopped, "All dimensions are saved"),
            Marker::AllSaved => {}
        }
    }

    /// A new latest.log began.
    pub fn on_new_log(&mut self) {
        self.stop_seen = false;
        self.log_has_lines = false;
        if !self.tracks_process || self.process.is_some() {
            self.set(RunStatus::Starting, "new latest.log");
        }
    }

    /// One poll's observation.
    pub fn tick(&mut self, obs: &Observation) {
        let first = !self.ticked;
        self.ticked = true;
        if let Some(name) = &obs.crash_report {
            self.set(RunStatus::Crashed, format!("new crash report {name}"));
        }
        if self.tracks_process {
            let was = std::mem::replace(&mut self.process, obs.process);
            match (was, obs.process) {
                (_, Some(p)) if was != Some(p) => {
                    if !first {
                        self.stop_seen = false;
                        self.set(RunStatus::Starting, format!("process {} started", p.pid));
                    } else if matches!(self.current(), None | Some((RunStatus::Stopped | RunStatus::Crashed, _))) {
                        self.set(RunStatus::Starting, format!("process {} is running", p.pid));
                    }
                }
                (Some(_), None) if !self.is(RunStatus::Crashed) => {
                    if self.stop_seen {
                        self.set(RunStatus::Stopped, "process exited after a stopping line");
                    } else {
                        self.set(RunStatus::Crashed, "process exited without a stopping line");
                    }
                }
                (None, None) if first && !self.is(RunStatus::Crashed) => {
                    if self.stop_seen || !self.log_has_lines {
                        self.set(RunStatus::Stopped, "process not running");
                    } else {
                        self.set(RunStatus::Crashed, "process not running and the log has no stopping line");
                    }
                }
                _ => {}
            }
        } else if !obs.log_exists {
            if !self.is(RunStatus::Crashed) {
                self.set(RunStatus::Stopped, "no latest.log");
            }
        } else if self.is(RunStatus::Stopping) && obs.now_ms - self.last_line_ms >= QUIET_AFTER_STOP_MS {
            self.set(RunStatus::Stopped, "no line for 5 s after a stopping line");
        } else if self.current.is_none() {
            self.set(RunStatus::Starting, "latest.log has no marker line yet");
        }
    }
}

/// New files in a server's `crash-reports/`: the names present when the
/// agent starts are old; any other name that appears is new, once. Only
/// regular files count, and nothing is followed: a link (the directory
/// itself or an entry), a FIFO or a socket there is no crash report.
#[derive(Debug)]
pub struct CrashReports {
    server_id: String,
    dir: TenantPath,
    known: HashSet<OsString>,
    refused: WarnOnce,
}

impl CrashReports {
    /// Remembers what `dir` holds now (nothing when it does not exist).
    pub fn new(server_id: &str, dir: TenantPath) -> CrashReports {
        let mut reports =
            CrashReports { server_id: server_id.to_string(), dir, known: HashSet::new(), refused: WarnOnce::default() };
        reports.poll();
        reports
    }

    /// The newest name (by sort order) among files that appeared since the last call.
    pub fn poll(&mut self) -> Option<String> {
        let listed = self.dir.regular_files();
        self.refused.note(&self.server_id, &listed);
        let mut newest: Option<OsString> = None;
        for name in listed.ok()? {
            if self.known.insert(name.clone()) && newest.as_ref().is_none_or(|n| name > *n) {
                newest = Some(name);
            }
        }
        newest.map(|n| n.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(process: Option<i32>, now_ms: i64) -> Observation {
        Observation {
            process: process.map(|pid| ProcId { pid, start_ticks: 1 }),
            log_exists: true,
            crash_report: None,
            now_ms,
        }
    }

    fn statuses(m: &mut StatusMachine) -> Vec<&'static str> {
        m.take_changes().into_iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn with_a_process_starting_running_stopping_stopped() {
        let mut m = StatusMachine::new(true);
        m.tick(&obs(None, 0));
        assert_eq!(statuses(&mut m), ["stopped"]);
        m.tick(&obs(Some(10), 1));
        m.on_new_log();
        m.on_line(Some(Marker::Starting), 2);
        m.on_line(None, 3);
        assert_eq!(statuses(&mut m), ["starting"]);
        m.on_line(Some(Marker::Done), 4);
        m.tick(&obs(Some(10), 5));
        m.on_line(Some(Marker::Stopping), 6);
        m.on_line(Some(Marker::AllSaved), 7);
        assert_eq!(statuses(&mut m), ["running", "stopping"]);
        m.tick(&obs(None, 8));
        assert_eq!(statuses(&mut m), ["stopped"]);
    }

    #[test]
    fn a_process_gone_without_a_stopping_line_crashed() {
        let mut m = StatusMachine::new(true);
        m.on_line(Some(Marker::Done), 1);
        m.tick(&obs(Some(10), 2));
        assert_eq!(statuses(&mut m), ["running"]);
        m.tick(&obs(None, 3));
        assert_eq!(statuses(&mut m), ["crashed"]);
        // A new process starts the cycle again.
        m.tick(&obs(Some(11), 4));
        assert_eq!(statuses(&mut m), ["starting"]);
    }

    #[test]
    fn a_crash_report_wins_over_the_stopping_lines_that_follow() {
        let mut m = StatusMachine::new(true);
        m.on_line(Some(Marker::Done), 1);
        m.tick(&obs(Some(10), 2));
        m.take_changes();
        m.tick(&Observation { crash_report: Some("crash-1.txt".into()), ..obs(Some(10), 3) });
        m.on_line(Some(Marker::Stopping), 4);
        m.tick(&obs(None, 5));
        let changes = m.take_changes();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, RunStatus::Crashed);
        assert!(changes[0].1.contains("crash-1.txt"));
    }

    #[test]
    fn agent_starting_beside_a_dead_server_reads_the_log() {
        let mut m = StatusMachine::new(true);
        m.on_line(Some(Marker::Done), 1);
        m.tick(&obs(None, 2));
        assert_eq!(statuses(&mut m), ["running", "crashed"]);
        let mut m = StatusMachine::new(true);
        m.on_line(Some(Marker::Stopping), 1);
        m.tick(&obs(None, 2));
        assert_eq!(statuses(&mut m), ["stopping", "stopped"]);
        let mut m = StatusMachine::new(true);
        m.on_line(Some(Marker::Done), 1);
        m.tick(&obs(Some(3), 2));
        assert_eq!(statuses(&mut m), ["running"]);
    }

    #[test]
    fn log_only_rules() {
        let mut m = StatusMachine::new(false);
        m.tick(&Observation { log_exists: false, ..obs(None, 0) });
        assert_eq!(statuses(&mut m), ["stopped"]);
        m.on_new_log();
        m.on_line(None, 1_000);
        m.tick(&obs(None, 1_000));
        m.on_line(Some(Marker::Done), 2_000);
        m.on_line(Some(Marker::Stopping), 3_000);
        m.on_line(None, 4_000);
        m.tick(&obs(None, 8_999));
        assert_eq!(statuses(&mut m), ["starting", "running", "stopping"]);
        m.tick(&obs(None, 9_000));
        assert_eq!(statuses(&mut m), ["stopped"]);
        m.on_new_log();
        m.on_line(Some(Marker::Done), 10_000);
        m.on_line(Some(Marker::Stopping), 11_000);
        m.on_line(Some(Marker::AllSaved), 11_500);
        assert_eq!(statuses(&mut m), ["starting", "running", "stopping", "stopped"]);
        m.tick(&obs(None, 12_000));
        m.tick(&Observation { crash_report: Some("c.txt".into()), ..obs(None, 12_000) });
        m.tick(&Observation { log_exists: false, ..obs(None, 13_000) });
        assert_eq!(statuses(&mut m), ["crashed"]);
    }

    #[test]
    fn first_look_at_a_log_without_markers_is_starting() {
        let mut m = StatusMachine::new(false);
        m.on_line(None, 1);
        m.tick(&obs(None, 2));
        assert_eq!(statuses(&mut m), ["starting"]);
    }

    #[test]
    fn crash_reports_are_new_once() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("crash-reports");
        let path = TenantPath::new(root.path(), "crash-reports");
        let mut reports = CrashReports::new("s", path.clone());
        assert_eq!(reports.poll(), None);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("crash-old.txt"), "x").unwrap();
        assert_eq!(reports.poll().as_deref(), Some("crash-old.txt"));
        assert_eq!(reports.poll(), None);
        let again = CrashReports::new("s", path);
        assert!(again.known.contains(&OsString::from("crash-old.txt")));
    }
}

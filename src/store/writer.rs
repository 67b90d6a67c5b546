//! The writer thread: the only connection that writes. It takes entries
//! from the channel (and the counters the handles saved, and metrics
//! points) into a bounded in-memory queue, commits them in
//! batches (every [`COMMIT_INTERVAL`] or [`BATCH`] entries, whichever comes
//! first), runs retention every [`RETENTION_INTERVAL`] in bounded steps, and
//! survives every database error: it logs it, counts it, keeps the batch
//! and retries every [`RETRY_INTERVAL`], reopening the file (and moving it
//! aside when it is broken).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use uuid::Uuid;

use super::batch;
use super::db::{self, ServerRow};
use super::retention::{self, Retention, RETENTION_INTERVAL};
use super::{MetricPoint, Shared, StoredLog, MAX_PENDING_METRICS};

/// Entries per transaction at most; a full batch is committed at once.
pub const BATCH: usize = 1000;
/// The oldest uncommitted entry waits at most this long.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// After a failed write, the next attempt comes this much later.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Entries kept in memory while writes fail; over it the oldest is dropped,
/// counted in `dropped`, and its server's stored offset stays below it.
pub const MAX_PENDING: usize = 100_000;
/// Bytes (of envelopes) kept in memory while writes fail; same policy.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Commands taken from the channel per turn at most, so commits keep their
/// cadence under a flood (the queue cap then drops the oldest).
const DRAIN_PER_TURN: usize = 10_000;
/// How long the shutdown flush may take; `Store::shutdown` waits a bit
/// longer than this for the thread.
pub(super) const SHUTDOWN_BUDGET: Duration = Duration::from_millis(2500);
/// A failure that goes on is logged again every this many attempts.
const LOG_EVERY_FAILURES: u64 = 60;

/// What the [`Store`](super::Store) handles send.
pub(super) enum Cmd {
    /// One entry to store.
    Append(StoredLog),
    /// One metrics point to store.
    Metric(MetricPoint),
    /// Seq counters were saved (`Shared::take_counters`; the highest of
    /// stored and given wins).
    Counters,
    /// Flush, save these counters, mark clean, stop; answers whether the
    /// clean flag was written.
    Shutdown {
        /// Every channel's counter.
        seqs: Vec<(String, u64)>,
        /// Gets the outcome.
        done: Sender<bool>,
    },
}

/// Caps of the channel and of the in-memory queue (tests make them small).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    /// Entries in the queue at most.
    pub max_pending: usize,
    /// Envelope bytes in the queue at most.
    pub max_pending_bytes: usize,
    /// Entries in the channel at most.
    pub max_queued: usize,
    /// Envelope bytes in the channel at most.
    pub max_queued_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_pending: MAX_PENDING,
            max_pending_bytes: MAX_PENDING_BYTES,
            max_queued: super::MAX_QUEUED,
            max_queued_bytes: super::MAX_QUEUED_BYTES,
        }
    }
}

/// A shutdown's counters and where to answer.
type ShutdownRequest = (Vec<(String, u64)>, Sender<bool>);

/// The writer's state. See the module docs.
pub(super) struct Writer {
    path: PathBuf,
    epoch: String,
    retention: Retention,
    tuning: Tuning,
    conn: Option<Connection>,
    /// The meta row (this epoch, not clean) is written on `conn`.
    marked: bool,
    pending: VecDeque<(Instant, StoredLog)>,
    pending_bytes: usize,
    counters: HashMap<String, u64>,
    counters_at: Option<Instant>,
    /// Metrics points not committed yet (at most [`MAX_PENDING_METRICS`]),
    /// and when the oldest came.
    metrics: VecDeque<MetricPoint>,
    metrics_at: Option<Instant>,
    metrics_dropped: u64,
    /// While failing: no write before this.
    retry_at: Option<Instant>,
    /// Consecutive failed attempts.
    failures: u64,
    next_retention: Instant,
    retention_more: bool,
    servers: HashMap<Uuid, ServerRow>,
    /// Some entry of this run never reached the file (dropped, or the file
    /// was moved aside): the next start must not keep the epoch.
    lost: bool,
    shared: Arc<Shared>,
}

impl Writer {
    /// A writer for `path` in `epoch`; `conn` is the connection `open`
    /// prepared (already marked), or `None` when the file could not be used
    /// yet (the writer retries).
    pub(super) fn new(
        path: PathBuf,
        epoch: String,
        retention: Retention,
        tuning: Tuning,
        conn: Option<Connection>,
        servers: HashMap<Uuid, ServerRow>,
        shared: Arc<Shared>,
    ) -> Writer {
        let now = Instant::now();
        let marked = conn.is_some();
        let writer = Writer {
            path,
            epoch,
            retention,
            tuning,
            conn,
            marked,
            pending: VecDeque::new(),
            pending_bytes: 0,
            counters: HashMap::new(),
            counters_at: None,
            metrics: VecDeque::new(),
            metrics_at: None,
            metrics_dropped: 0,
            retry_at: if marked { None } else { Some(now + RETRY_INTERVAL) },
            failures: 0,
            next_retention: now,
            retention_more: false,
            servers,
            lost: false,
            shared,
        };
        writer.publish_sizes();
        writer
    }

    /// The thread's body: until `Shutdown`, or until every handle is gone
    /// (then everything pending is flushed, but the clean flag stays unset).
    pub(super) fn run(mut self, rx: Receiver<Cmd>) {
        loop {
            let now = Instant::now();
            let timeout = self.next_wake(now).saturating_duration_since(now);
            let mut shutdown = None;
            match rx.recv_timeout(timeout) {
                Ok(cmd) => {
                    shutdown = self.take(cmd);
                    let mut n = 1;
                    while shutdown.is_none() && n < DRAIN_PER_TURN {
                        match rx.try_recv() {
                            Ok(cmd) => shutdown = self.take(cmd),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    log::debug!("history: every store handle is gone; flushing and stopping (not clean)");
                    self.finish(Vec::new(), false);
                    return;
                }
            }
            if let Some((seqs, done)) = shutdown {
                let clean = self.finish(seqs, true);
                let _ = done.send(clean);
                return;
            }
            let now = Instant::now();
            if self.flush_due(now) {
                self.flush(now);
            } else if self.retention_due(now) {
                self.retention(now);
            }
        }
    }

    /// Takes one command; returns the shutdown request, if it is one.
    fn take(&mut self, cmd: Cmd) -> Option<ShutdownRequest> {
        match cmd {
            Cmd::Append(log) => {
                let bytes = log.envelope.len();
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.pending_bytes += bytes;
                self.pending.push_back((Instant::now(), log));
                self.enforce_cap();
                None
            }
            Cmd::Metric(point) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics_at.get_or_insert_with(Instant::now);
                self.metrics.push_back(point);
                if self.metrics.len() > MAX_PENDING_METRICS {
                    self.metrics.pop_front();
                    self.metrics_dropped += 1;
                    if self.metrics_dropped.is_power_of_two() {
                        log::warn!(
                            "history: {MAX_PENDING_METRICS} metrics points waiting for the database; dropping the \
                             oldest ({} dropped so far)",
                            self.metrics_dropped
                        );
                    }
                }
                None
            }
            Cmd::Counters => {
                let saved = self.shared.take_counters();
                self.merge_counters(saved);
                None
            }
            Cmd::Shutdown { seqs, done } => Some((seqs, done)),
        }
    }

    fn merge_counters(&mut self, seqs: impl IntoIterator<Item = (String, u64)>) {
        let mut seqs = seqs.into_iter().peekable();
        if seqs.peek().is_none() {
            return;
        }
        for (channel, seq) in seqs {
            let slot = self.counters.entry(channel).or_insert(0);
            *slot = (*slot).max(seq);
        }
        self.counters_at.get_or_insert_with(Instant::now);
    }

    /// Drops the oldest pending entries over [`MAX_PENDING`] /
    /// [`MAX_PENDING_BYTES`]; their servers' stored offsets stay below them.
    fn enforce_cap(&mut self) {
        let Tuning { max_pending, max_pending_bytes, .. } = self.tuning;
        while self.pending.len() > max_pending || (self.pending_bytes > max_pending_bytes && self.pending.len() > 1) {
            let Some((_, old)) = self.pending.pop_front() else { break };
            self.pending_bytes -= old.envelope.len();
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            let dropped = self.shared.lose(&old);
            if !self.lost || dropped.is_power_of_two() {
                log::warn!(
                    "history: {} entries waiting for the database; dropping the oldest ({dropped} dropped so far)",
                    self.pending.len()
                );
            }
            self.lost = true;
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.counters.is_empty() || !self.metrics.is_empty()
    }

    /// When the oldest uncommitted thing must be committed.
    fn commit_deadline(&self) -> Option<Instant> {
        [self.pending.front().map(|(t, _)| *t), self.counters_at, self.metrics_at]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t + COMMIT_INTERVAL)
    }

    /// When the loop must look again: the commit deadline, the next
    /// retention step, each no earlier than the retry time while failing;
    /// at most [`RETRY_INTERVAL`] away.
    fn next_wake(&self, now: Instant) -> Instant {
        let gate = |t: Instant| self.retry_at.map_or(t, |r| t.max(r));
        let retention = if self.retention_more { now } else { self.next_retention };
        let mut wake = (now + RETRY_INTERVAL).min(gate(retention));
        if self.has_work() {
            let due = if self.pending.len() >= BATCH { Some(now) } else { self.commit_deadline() };
            if let Some(d) = due {
                wake = wake.min(gate(d));
            }
        }
        wake.max(now)
    }

    fn flush_due(&self, now: Instant) -> bool {
        self.has_work()
            && self.retry_at.is_none_or(|r| now >= r)
            && (self.pending.len() >= BATCH || self.commit_deadline().is_some_and(|d| now >= d))
    }

    fn retention_due(&self, now: Instant) -> bool {
        (self.retention_more || now >= self.next_retention) && self.retry_at.is_none_or(|r| now >= r)
    }

    /// Opens the file when there is no connection: moves a broken one aside
    /// and starts fresh.
    fn ensure_conn(&mut self) -> rusqlite::Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let conn = match db::connect(&self.path) {
            Ok(conn) => conn,
            Err(e) if db::is_corrupt(&e) => {
                self.move_aside(&e);
                db::connect(&self.path)?
            }
            Err(e) => return Err(e),
        };
        self.servers = db::load_servers(&conn)?;
        self.publish_sizes();
        self.conn = Some(conn);
        self.marked = false;
        Ok(())
    }

    fn move_aside(&mut self, e: &rusqlite::Error) {
        self.conn = None;
        self.marked = false;
        match db::move_aside(&self.path) {
            Ok(to) => {
                let text = format!("database was broken ({e}); moved to {} and started a fresh one", to.display());
                log::error!("history: {}: {text}", self.path.display());
                self.shared.set_error(text);
                self.servers.clear();
                self.publish_sizes();
                self.lost = true;
            }
            Err(io) => {
                log::error!("history: {} is broken ({e}) and cannot be moved aside: {io}", self.path.display());
                self.shared.set_error(format!("database is broken ({e}) and cannot be moved aside: {io}"));
            }
        }
    }

    /// Commits the first `n` pending entries, the counters, and (when
    /// `clean`) the clean flag, in one transaction.
    fn write(&mut self, n: usize, clean: bool) -> rusqlite::Result<()> {
        self.ensure_conn()?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(rusqlite::Error::InvalidPath(self.path.clone()));
        };
        let batch = batch::Batch {
            epoch: &self.epoch,
            marked: self.marked,
            counters: &self.counters,
            held_offsets: &self.shared.held_offsets(),
            clean,
            metrics: &self.metrics,
        };
        let deltas = batch::write(conn, &batch, self.pending.iter().take(n))?;
        self.marked = true;
        for _ in 0..n {
            if let Some((_, log)) = self.pending.pop_front() {
                self.pending_bytes -= log.envelope.len();
            }
        }
        self.counters.clear();
        self.counters_at = None;
        self.metrics.clear();
        self.metrics_at = None;
        for (server, d) in deltas {
            let row = self.servers.entry(server).or_default();
            row.entries += d.entries;
            row.bytes += d.bytes;
            if d.last_offset != 0 {
                row.last_offset = d.last_offset;
            }
        }
        self.shared.pending.fetch_sub(n as u64, Ordering::Relaxed);
        self.publish_sizes();
        Ok(())
    }

    fn flush(&mut self, now: Instant) {
        let n = self.pending.len().min(BATCH);
        match self.write(n, false) {
            Ok(()) => self.succeeded(),
            Err(e) => self.failed(&e, now),
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            log::info!("history: writes to {} work again after {} failed attempts", self.path.display(), self.failures);
        }
        self.failures = 0;
        self.retry_at = None;
        self.shared.failing.store(false, Ordering::Relaxed);
    }

    /// Counts and logs a failed write; the pending entries stay. A broken
    /// file is moved aside (the next attempt starts a fresh one); any other
    /// error drops the connection and retries in [`RETRY_INTERVAL`].
    fn failed(&mut self, e: &rusqlite::Error, now: Instant) {
        self.failures += 1;
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.failing.store(true, Ordering::Relaxed);
        self.retry_at = Some(now + RETRY_INTERVAL);
        if db::is_fts_corrupt(e) {
            log::error!("history: the search index of {} is inconsistent ({e}); rebuilding it", self.path.display());
            self.shared.set_error(format!("search index inconsistent ({e}); rebuilt"));
            if let Some(conn) = &self.conn {
                if let Err(e) = db::rebuild_fts(conn) {
                    log::error!("history: rebuilding the search index failed: {e}");
                    self.move_aside(&e);
                }
            }
            return;
        }
        if db::is_corrupt(e) {
            self.move_aside(e);
            return;
        }
        let text = db::describe(e);
        if self.failures == 1 {
            log::error!(
                "history: writing to {} failed: {text}; keeping {} entries in memory and retrying every second",
                self.path.display(),
                self.pending.len()
            );
        } else if self.failures.is_multiple_of(LOG_EVERY_FAILURES) {
            log::warn!(
                "history: writing to {} still fails after {} attempts ({} waiting, {} dropped): {text}",
                self.path.display(),
                self.failures,
                self.pending.len(),
                self.shared.dropped.load(Ordering::Relaxed)
            );
        }
        self.shared.set_error(text);
        self.conn = None;
        self.marked = false;
    }

    /// One retention step ([`retention::step`]); after the last one of a
    /// pass, index upkeep and the next pass in [`RETENTION_INTERVAL`].
    fn retention(&mut self, now: Instant) {
        let result = self.ensure_conn().and_then(|()| match self.conn.as_mut() {
            Some(conn) => retention::step(conn, self.retention, &mut self.servers),
            None => Ok(false),
        });
        match result {
            Ok(more) => {
                self.publish_sizes();
                self.succeeded();
                self.retention_more = more;
                if !more {
                    self.next_retention = now + RETENTION_INTERVAL;
                    if let Some(conn) = &self.conn {
                        retention::upkeep(conn);
                    }
                }
            }
            Err(e) => {
                self.retention_more = false;
                self.next_retention = now + RETENTION_INTERVAL;
                self.failed(&e, now);
            }
        }
    }

    /// Shutdown (or every handle gone): writes everything pending within
    /// [`SHUTDOWN_BUDGET`], then the counters and, when `clean` is asked and
    /// nothing of this run was lost, the clean flag, all in the last
    /// transaction. Returns whether the clean flag was written.
    fn finish(&mut self, seqs: Vec<(String, u64)>, clean: bool) -> bool {
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        self.merge_counters(seqs);
        let saved = self.shared.take_counters();
        self.merge_counters(saved);
        // An entry dropped anywhere (channel, queue) is a hole in this epoch.
        let lost = self.lost || self.shared.dropped.load(Ordering::Relaxed) > 0;
        loop {
            let n = self.pending.len().min(BATCH);
            let last = n == self.pending.len();
            let mark_clean = clean && last && !lost;
            if n == 0 && self.counters.is_empty() && self.metrics.is_empty() && !mark_clean {
                break;
            }
            let now = Instant::now();
            if self.retry_at.is_some_and(|r| r > now) {
                // Failing: one more try now, there is no later.
                self.retry_at = None;
            }
            match self.write(n, mark_clean) {
                Ok(()) => {
                    self.succeeded();
                    if last {
                        if mark_clean {
                            self.checkpoint();
                            return true;
                        }
                        break;
                    }
                }
                Err(e) => {
                    self.failed(&e, now);
                    if Instant::now() >= deadline || self.failures >= 3 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if !self.pending.is_empty() {
            let n = self.pending.len() as u64;
            log::error!("history: {n} entries could not be written before stopping; they are lost");
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
            self.shared.pending.fetch_sub(n, Ordering::Relaxed);
            self.pending.clear();
        }
        if clean {
            log::warn!("history: not marked clean; the next start begins a new epoch");
        }
        false
    }

    fn checkpoint(&mut self) {
        if let Some(conn) = &self.conn {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                log::debug!("history: checkpoint at shutdown: {e}");
            }
        }
    }

    fn publish_sizes(&self) {
        let (entries, bytes) = self.servers.values().fold((0, 0), |(e, b), r| (e + r.entries, b + r.bytes));
        self.shared.stored_entries.store(entries, Ordering::Relaxed);
        self.shared.stored_bytes.store(bytes, Ordering::Relaxed);
    }
}

//! On-disk log history (`history.db_path`): every `log_entry` also goes to
//! an embedded SQLite database, so `since` recovery and the epoch survive a
//! hub restart and `GET /api/v1/servers/{id}/logs` can page through days of
//! logs (PROTOCOL.md 5, 5a, 9); and every `metrics` message's figures
//! ([`MetricPoint`], for `GET /api/v1/servers/{id}/metrics`).
//!
//! The reactor never waits on the disk: [`Store::append`] only sends to a
//! bounded channel ([`MAX_QUEUED`], [`MAX_QUEUED_BYTES`]; when it is full the
//! entry is dropped and counted). A dedicated writer thread owns the one writing connection (WAL,
//! `synchronous=NORMAL`), commits in batches (at least every 200 ms or 1,000
//! entries), applies retention by age and by bytes per server every 60 s,
//! and survives a full disk or a broken file: it logs, counts (see
//! [`StoreStats`]), keeps a bounded queue and retries every second, while the
//! hub goes on streaming from memory. Queries run on their own read-only
//! connections ([`Reader`]).
//!
//! Epochs: the `meta` table holds the epoch and a clean-shutdown flag. A
//! start keeps the stored epoch only when the flag is set (the last run
//! flushed everything, saved every channel's counter and lost nothing);
//! otherwise it begins a new one (16 hex chars), and the hub continues each
//! channel at the highest seq the store knows + 1 ([`Recovered::seqs`]).
//! Each start clears the flag (committed) before the hub issues any seq, so a
//! SIGKILL always leads to a new epoch and a seq is never issued twice in
//! one epoch.
//!
//! Offsets: the stored agent offset of a server is where its `StreamLogs`
//! resumes after a restart. Once an entry of a server was dropped (full
//! channel, full queue while writes fail), its stored offset stays below
//! that entry's offset until the next start, so the agent sends the line
//! again rather than the store skipping it for good.
//!
//! This module must not touch the hub or any socket; the reactor feeds it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod batch;
mod db;
mod metrics;
mod query;
mod retention;
mod writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

use crate::config::HistoryConfig;
use crate::protocol::Level;

pub use metrics::{MetricPoint, MAX_PENDING_METRICS};
pub use query::{
    fts_query, memory_page, parse_time, render_text, search_words, LogQuery, Page, Reader, DEFAULT_LIMIT, MAX_LIMIT,
    MAX_WORDS, QUERY_TIMEOUT,
};
pub use retention::RETENTION_INTERVAL;
pub use writer::{BATCH, COMMIT_INTERVAL, MAX_PENDING, MAX_PENDING_BYTES, RETRY_INTERVAL};

/// How long [`Store::shutdown`] waits for the writer before giving up.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// Entries in the channel to the writer at most (it drains the channel
/// into its own queue, so this only fills while the writer is stuck in a
/// slow write); over it [`Store::append`] drops the new entry and counts it
/// in [`StoreStats::dropped`].
pub const MAX_QUEUED: usize = 50_000;
/// Envelope bytes in the channel at most; same policy (an entry alone in
/// the channel always fits).
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// One stored log entry: what the hub published on `server:{id}:logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLog {
    /// The server.
    pub server: Uuid,
    /// Its seq on the server's logs channel.
    pub seq: u64,
    /// The epoch that seq belongs to.
    pub epoch: String,
    /// The line's time (`data.timestamp`), unix ms; `from`/`to` and
    /// retention by age use it.
    pub ts_ms: i64,
    /// Severity.
    pub level: Level,
    /// `server` or a plugin/mod name (`data.source` of the envelope).
    pub source: String,
    /// The line (`data.message`), indexed for search.
    pub message: String,
    /// The folded stack trace (`data.exception`), empty if none, indexed
    /// for search.
    pub exception: String,
    /// The exact JSON envelope sent to clients, stored and returned
    /// verbatim; its length is what retention by size counts. It is the
    /// only stored copy of `source`, `message` and `exception`: a
    /// [`Reader`] takes them back from its `data`, so they must agree with it.
    pub envelope: String,
    /// The agent's offset of the line; 0 when published through the API.
    pub offset: u64,
}

/// What a start recovers from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The epoch to use now: the stored one after a clean shutdown, else a
    /// new one.
    pub epoch: String,
    /// `epoch` is new (the hub should treat every `since` of before as
    /// unrecoverable, which the epoch check already does).
    pub new_epoch: bool,
    /// The highest seq known per channel name (saved counters and stored
    /// logs); the hub's next seq on a channel is this + 1.
    pub seqs: HashMap<String, u64>,
    /// The last agent offset stored per server (resume `StreamLogs` after
    /// it); servers whose lines all came through the API are absent.
    pub offsets: HashMap<Uuid, u64>,
    /// Per server, the last `history.log_lines` stored messages of the
    /// current epoch, oldest first, as `(seq, envelope)`, to refill the
    /// memory rings. Empty after a new epoch.
    pub recent: HashMap<Uuid, Vec<(u64, String)>>,
    /// Servers of `recent` whose refilled ring does not start at the
    /// channel's first message of this epoch (older ones are on disk, or
    /// were deleted): set the ring's "evicted" state, so a `history` reply
    /// does not claim `complete` (PROTOCOL.md 5a).
    pub evicted: HashSet<Uuid>,
}

/// Counters for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries in the database.
    pub stored_entries: u64,
    /// Sum of their envelopes' bytes.
    pub stored_bytes: u64,
    /// Entries appended but not committed yet (in the channel or the
    /// writer's queue).
    pub pending: u64,
    /// Failed write attempts (each retry counts).
    pub write_errors: u64,
    /// Entries that never reached the file: dropped at [`Store::append`]
    /// while the channel to the writer was full ([`MAX_QUEUED`]), dropped
    /// from the writer's full queue while writes failed ([`MAX_PENDING`]),
    /// or still pending when the writer stopped.
    pub dropped: u64,
    /// Writes are failing right now (the hub streams from memory).
    pub failing: bool,
    /// The last error, also after recovery (e.g. a broken file moved aside).
    pub last_error: Option<String>,
}

/// Errors of this module. None of them may stop live streaming.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `history.db_path` is not set: the hub runs without on-disk history.
    #[error("on-disk history is not configured (history.db_path)")]
    NotConfigured,
    /// The writer thread could not be started: the hub runs without on-disk
    /// history (logged at start).
    #[error("cannot start the history writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A database error while reading (the file is missing, locked or
    /// broken): the endpoint answers `503` or falls back to memory; open a
    /// new [`Reader`] for the next request.
    #[error("history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A query the endpoint should answer with `400`.
    #[error("{0}")]
    InvalidQuery(String),
    /// A query ran past [`QUERY_TIMEOUT`] and was stopped: the endpoint
    /// answers `503` with `Retry-After`; the [`Reader`] stays usable.
    #[error("the query ran longer than {0:?} and was stopped")]
    Timeout(Duration),
}

/// State the writer updates and the handles read.
#[derive(Default)]
struct Shared {
    stored_entries: AtomicU64,
    stored_bytes: AtomicU64,
    pending: AtomicU64,
    write_errors: AtomicU64,
    dropped: AtomicU64,
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Entries in the channel (the writer takes them off).
    queued: AtomicUsize,
    /// Their envelope bytes.
    queued_bytes: AtomicUsize,
    /// Per server, the lowest agent offset of an entry dropped in this run:
    /// the stored offset stays below it. Locked only briefly (never across
    /// a disk write), so the reactor never waits on it for long.
    held_offsets: Mutex<HashMap<Uuid, u64>>,
    /// Counters the writer has not taken yet (highest per channel).
    counters: Mutex<HashMap<String, u64>>,
    /// A `Cmd::Counters` is in the channel: the next save only merges.
    counters_sent: AtomicBool,
}

impl Shared {
    fn set_error(&self, text: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    /// Counts an entry that will never reach the file and holds its
    /// server's stored offset below it. Returns the drops so far.
    fn lose(&self, log: &StoredLog) -> u64 {
        if log.offset != 0 {
            let mut held = self.held_offsets.lock().unwrap_or_else(|e| e.into_inner());
            let h = held.entry(log.server).or_insert(log.offset);
            *h = (*h).min(log.offset);
        }
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The offsets held back so far (see [`Shared::lose`]).
    fn held_offsets(&self) -> HashMap<Uuid, u64> {
        self.held_offsets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the counters saved since the writer last looked.
    fn take_counters(&self) -> HashMap<String, u64> {
        self.counters_sent.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A cheap, cloneable handle to the writer thread (`Clone + Send`).
#[derive(Clone)]
pub struct Store {
    tx: Sender<writer::Cmd>,
    tuning: writer::Tuning,
    shared: Arc<Shared>,
    path: Arc<PathBuf>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

fn level_to_sql(level: Level) -> i64 {
    match level {
        Level::Debug => 0,
        Level::Info => 1,
        Level::Warn => 2,
        Level::Error => 3,
    }
}

fn level_from_sql(v: i64) -> Option<Level> {
    match v {
        0 => Some(Level::Debug),
        1 => Some(Level::Info),
        2 => Some(Level::Warn),
        3 => Some(Level::Error),
        _ => None,
    }
}

/// A fresh epoch: 16 lower-case hex characters from a random UUID.
pub fn new_epoch() -> String {
    format!("{:016x}", Uuid::new_v4().as_u64_pair().0)
}

/// What [`start`] prepared.
struct Started {
    conn: rusqlite::Connection,
    recovered: Recovered,
    servers: HashMap<Uuid, db::ServerRow>,
}

/// Why [`start`] failed: a broken file, or an unusable place (with what
/// could still be read).
enum StartError {
    Corrupt(rusqlite::Error),
    Other(rusqlite::Error, Option<Box<db::Snapshot>>),
}

fn classify(e: rusqlite::Error, snapshot: Option<Box<db::Snapshot>>) -> StartError {
    if db::is_corrupt(&e) {
        StartError::Corrupt(e)
    } else {
        StartError::Other(e, snapshot)
    }
}

fn recovered_from(snapshot: &db::Snapshot, epoch: String, new_epoch: bool) -> Recovered {
    Recovered {
        epoch,
        new_epoch,
        seqs: snapshot.seqs.clone(),
        offsets: snapshot
            .servers
            .iter()
            .filter(|(_, r)| r.last_offset != 0)
            .map(|(id, r)| (*id, r.last_offset))
            .collect(),
        recent: HashMap::new(),
        evicted: HashSet::new(),
    }
}

/// Opens the file, reads what it holds, decides the epoch and marks the file
/// in use (not clean), committed.
fn start(path: &Path, log_lines: usize) -> Result<Started, StartError> {
    let conn = db::connect(path).map_err(|e| classify(e, None))?;
    let snapshot = db::snapshot(&conn).map_err(|e| classify(e, None))?;
    let kept = snapshot.epoch.clone().filter(|_| snapshot.clean);
    let new = kept.is_none();
    let epoch = kept.unwrap_or_else(new_epoch);
    let mut recovered = recovered_from(&snapshot, epoch, new);
    if !new {
        match db::recent(&conn, &recovered.epoch, log_lines, snapshot.servers.keys().copied()) {
            Ok(recent) => {
                for (server, r) in recent {
                    if r.evicted {
                        recovered.evicted.insert(server);
                    }
                    recovered.recent.insert(server, r.entries);
                }
            }
            Err(e) => return Err(classify(e, Some(Box::new(snapshot)))),
        }
    }
    let marked = conn.unchecked_transaction().and_then(|tx| {
        db::mark(&tx, &recovered.epoch, false)?;
        tx.commit()
    });
    if let Err(e) = marked {
        return Err(classify(e, Some(Box::new(snapshot))));
    }
    Ok(Started { conn, recovered, servers: snapshot.servers })
}

/// Opens (creating if needed) the on-disk history at start-up, before the
/// hub issues any seq: decides the epoch (the stored one after a clean
/// shutdown, else a new one), marks the file "in use" (committed), reads
/// what the hub needs to go on ([`Recovered`]) and starts the writer thread.
///
/// A broken file (not a database, malformed) is logged, moved aside as
/// `<path>.corrupt-<unix time>` and replaced by a fresh one
/// ([`StoreStats::last_error`] says so). A file that cannot be used at all
/// (unwritable directory, full disk, missing mount) still gives a working
/// [`Store`] in a new epoch: appends queue in memory (bounded) and the writer
/// retries every second, while the hub streams from memory.
///
/// Retention (at start, then every [`RETENTION_INTERVAL`]): entries whose
/// time is older than `retention_days` are deleted, then per server the
/// oldest (by seq) while the sum of its envelopes' bytes exceeds
/// `retention_mb_per_server` MiB; 0 turns either off. The file is about 1.6x
/// the envelope bytes it holds (indexes and the search index), and does not
/// shrink: SQLite reuses the freed pages.
///
/// # Errors
/// [`StoreError::NotConfigured`] without `db_path`; [`StoreError::Spawn`]
/// when the thread cannot start.
pub fn open(cfg: &HistoryConfig) -> Result<(Store, Recovered), StoreError> {
    open_with(cfg, writer::Tuning::default())
}

fn open_with(cfg: &HistoryConfig, tuning: writer::Tuning) -> Result<(Store, Recovered), StoreError> {
    let (store, recovered, writer) = prepare(cfg, tuning)?;
    writer.start()?;
    Ok((store, recovered))
}

/// A writer thread ready to start, and where its handle goes.
struct Unstarted {
    writer: writer::Writer,
    rx: Receiver<writer::Cmd>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Unstarted {
    /// Starts the thread.
    fn start(self) -> Result<(), StoreError> {
        let Unstarted { writer, rx, thread } = self;
        let handle = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::Spawn)?;
        *thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }
}

/// [`open`] up to the writer thread, which the caller starts (tests append
/// before it runs, as if it were stuck on a slow disk).
fn prepare(cfg: &HistoryConfig, tuning: writer::Tuning) -> Result<(Store, Recovered, Unstarted), StoreError> {
    let path = cfg.db_path.clone().ok_or(StoreError::NotConfigured)?;
    let shared = Arc::new(Shared::default());
    let mut attempt = start(&path, cfg.log_lines);
    if let Err(StartError::Corrupt(e)) = &attempt {
        match db::move_aside(&path) {
            Ok(to) => {
                let text = format!("database was broken ({e}); moved to {} and started a fresh one", to.display());
                log::error!("history: {}: {text}", path.display());
                shared.set_error(text);
                attempt = start(&path, cfg.log_lines);
            }
            Err(io) => {
                log::error!("history: {} is broken ({e}) and cannot be moved aside: {io}", path.display());
                shared.set_error(format!("database is broken ({e}) and cannot be moved aside: {io}"));
            }
        }
    }
    let (conn, recovered, servers) = match attempt {
        Ok(s) => {
            log::info!(
                "history: {} open, epoch {} ({}), {} servers",
                path.display(),
                s.recovered.epoch,
                if s.recovered.new_epoch { "new" } else { "kept after a clean shutdown" },
                s.servers.len()
            );
            (Some(s.conn), s.recovered, s.servers)
        }
        Err(StartError::Corrupt(e) | StartError::Other(e, None)) => {
            let (epoch, e) = (new_epoch(), db::describe(&e));
            log::error!(
                "history: cannot use {}: {e}; streaming from memory in new epoch {epoch}, retrying every second",
                path.display()
            );
            shared.set_error(e.clone());
            shared.failing.store(true, Ordering::Relaxed);
            let recovered = Recovered { epoch, new_epoch: true, ..Recovered::default() };
            (None, recovered, HashMap::new())
        }
        Err(StartError::Other(e, Some(snapshot))) => {
            let (epoch, e) = (new_epoch(), db::describe(&e));
            log::error!(
                "history: cannot write to {}: {e}; new epoch {epoch}, streaming from memory, retrying every second",
                path.display()
            );
            shared.set_error(e.clone());
            shared.failing.store(true, Ordering::Relaxed);
            (None, recovered_from(&snapshot, epoch, true), snapshot.servers)
        }
    };
    let retention = retention::Retention {
        max_age_ms: i64::try_from(cfg.retention_days.saturating_mul(86_400_000)).unwrap_or(i64::MAX),
        max_bytes: cfg.retention_mb_per_server.saturating_mul(1024 * 1024),
    };
    let w = writer::Writer::new(
        path.clone(),
        recovered.epoch.clone(),
        retention,
        tuning,
        conn,
        servers,
        Arc::clone(&shared),
    );
    let (tx, rx) = mpsc::channel();
    let thread = Arc::new(Mutex::new(None));
    let store = Store { tx, tuning, shared, path: Arc::new(path), thread: Arc::clone(&thread) };
    Ok((store, recovered, Unstarted { writer: w, rx, thread }))
}

impl Store {
    /// Queues one entry for the writer; never blocks. When the channel to
    /// the writer is full ([`MAX_QUEUED`] entries or [`MAX_QUEUED_BYTES`])
    /// or the writer is gone (after [`shutdown`](Store::shutdown)), the entry
    /// is dropped and counted in `dropped`, and its server's stored offset
    /// stays below the entry's from then on (see the module docs).
    pub fn append(&self, log: StoredLog) {
        let s = &self.shared;
        let bytes = log.envelope.len();
        let queued = s.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let queued_bytes = s.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let full = queued > self.tuning.max_queued || (queued_bytes > self.tuning.max_queued_bytes && queued > 1);
        let log = if full {
            log
        } else {
            s.pending.fetch_add(1, Ordering::Relaxed);
            match self.tx.send(writer::Cmd::Append(log)) {
                Ok(()) => return,
                Err(mpsc::SendError(cmd)) => {
                    s.pending.fetch_sub(1, Ordering::Relaxed);
                    let writer::Cmd::Append(log) = cmd else { return };
                    log
                }
            }
        };
        s.queued.fetch_sub(1, Ordering::Relaxed);
        s.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let dropped = s.lose(&log);
        if full && (dropped == 1 || dropped.is_power_of_two()) {
            log::warn!(
                "history: the writer is behind ({queued} entries, {queued_bytes} bytes waiting for it); \
                 dropping new entries ({dropped} dropped so far)"
            );
        }
    }

    /// Hands a metrics point to the writer (committed with the next batch).
    /// Over [`MAX_QUEUED`] commands waiting in the channel the point is
    /// dropped (the charts get a gap; no log entry is affected).
    pub fn append_metric(&self, point: MetricPoint) {
        let s = &self.shared;
        if s.queued.fetch_add(1, Ordering::Relaxed) >= self.tuning.max_queued
            || self.tx.send(writer::Cmd::Metric(point)).is_err()
        {
            s.queued.fetch_sub(1, Ordering::Relaxed);
            log::debug!("history: a metrics point of server {} was not stored (writer behind)", point.server);
        }
    }

    /// Saves seq counters (all channels: also metrics, status,
    /// notifications) with the next batch; a stored counter only grows.
    /// Never blocks; saves the writer has not taken yet are merged (the
    /// highest seq per channel), so they never pile up.
    pub fn save_counters(&self, seqs: Vec<(String, u64)>) {
        let s = &self.shared;
        {
            let mut counters = s.counters.lock().unwrap_or_else(|e| e.into_inner());
            for (channel, seq) in seqs {
                let slot = counters.entry(channel).or_insert(0);
                *slot = (*slot).max(seq);
            }
        }
        if !s.counters_sent.swap(true, Ordering::SeqCst) {
            let _ = self.tx.send(writer::Cmd::Counters);
        }
    }

    /// Stops the writer: flushes everything, saves `seqs` (every channel's
    /// counter) and sets the clean flag in the last transaction, then joins
    /// the thread. Waits at most [`SHUTDOWN_WAIT`]. Returns whether the file
    /// was marked clean (then the next start keeps the epoch). Other clones
    /// of this handle stop working (their appends count as dropped).
    pub fn shutdown(self, seqs: Vec<(String, u64)>) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send(writer::Cmd::Shutdown { seqs, done: done_tx }).is_err() {
            log::warn!("history: the writer had already stopped");
            return false;
        }
        match done_rx.recv_timeout(SHUTDOWN_WAIT) {
            Ok(clean) => {
                let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(handle) = handle {
                    let _ = handle.join();
                }
                if clean {
                    log::info!("history: {} closed cleanly", self.path.display());
                }
                clean
            }
            Err(_) => {
                log::warn!("history: the writer did not finish within {SHUTDOWN_WAIT:?}; not waiting longer");
                false
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            stored_entries: s.stored_entries.load(Ordering::Relaxed),
            stored_bytes: s.stored_bytes.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            failing: s.failing.load(Ordering::Relaxed),
            last_error: s.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// A new read-only connection for queries (use it on one thread).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] when the file cannot be opened (e.g. the
    /// writer has not been able to create it yet).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::open(&self.path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;

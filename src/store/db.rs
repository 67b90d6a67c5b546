//! The database file: schema, pragmas, what a start-up reads back from it,
//! the meta row (epoch, clean flag), and moving a broken file aside. Shared by
//! [`open`](super::open) and the writer thread, which reopens the file the
//! same way after an error.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use uuid::Uuid;

/// The schema this code writes; a file with a newer one is left alone.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Tables:
/// - `meta`: `schema`, `epoch`, `clean` (`1` only between a clean shutdown
///   and the next start);
/// - `counters`: the highest seq known per channel (logs channels are raised
///   with every batch; the hub saves the others);
/// - `servers`: per server, the stored entries and bytes (kept in step with
///   `logs`, so neither retention nor stats scan the table) and the last
///   agent offset stored;
/// - `logs`: the entries, `id` is the insertion order; `bytes` is the
///   envelope's length (what retention by size adds up). The envelope is the
///   only copy of `source`, `message` and `exception` (read back from it), so
///   a line's text is stored once;
/// - `logs_fts`: FTS5 over `message` and `exception`, contentless with
///   `contentless_delete` (the writer inserts the words, a trigger deletes
///   them with their row). Merging is tuned for a write-heavy table
///   (`automerge` 16, `crisismerge` 64); the writer merges a little more
///   after each retention pass.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (channel TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS servers (
    server BLOB PRIMARY KEY,
    entries INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    last_offset INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    server BLOB NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    level INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    agent_offset INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_server_seq ON logs(server, seq);
CREATE INDEX IF NOT EXISTS logs_server_ts ON logs(server, ts);
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
    message, exception, content='', contentless_delete=1, tokenize='unicode61 remove_diacritics 2'
);
INSERT INTO logs_fts(logs_fts, rank) VALUES ('automerge', 16);
INSERT INTO logs_fts(logs_fts, rank) VALUES ('crisismerge', 64);
CREATE TRIGGER IF NOT EXISTS logs_fts_delete AFTER DELETE ON logs BEGIN
    DELETE FROM logs_fts WHERE rowid = old.id;
END;
";

/// Inserts a row's words into the index (the writer, after the row).
pub(super) const FTS_INSERT: &str = "INSERT INTO logs_fts (rowid, message, exception) VALUES (?1, ?2, ?3)";

/// The WAL is truncated back to this after a checkpoint.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// How long a statement waits for a lock (only the writer writes; readers
/// never block it in WAL mode, so this only covers checkpoints).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An error for logs and `StoreStats::last_error`: SQLite's text plus its
/// extended result code (e.g. 778 `SQLITE_IOERR_WRITE`, 13 `SQLITE_FULL`),
/// which tells a full disk from a refused write.
pub(super) fn describe(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => format!("{e} (SQLite code {})", f.extended_code),
        _ => e.to_string(),
    }
}

/// True for errors that mean the file itself is broken (not a database, or
/// a malformed page): the file is moved aside, retrying cannot help.
pub(super) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}

/// The FTS index disagrees with the table (`SQLITE_CORRUPT_VTAB`): rebuilt
/// from the table instead of giving up the whole file.
pub(super) fn is_fts_corrupt(e: &rusqlite::Error) -> bool {
    const SQLITE_CORRUPT_VTAB: i32 = 267;
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == SQLITE_CORRUPT_VTAB)
}

/// Rebuilds the FTS index from the stored envelopes.
pub(super) fn rebuild_fts(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute("INSERT INTO logs_fts(logs_fts) VALUES ('delete-all')", [])?;
    tx.execute(
        "INSERT INTO logs_fts (rowid, message, exception) SELECT id, \
         coalesce(json_extract(envelope, '$.data.message'), ''), \
         coalesce(json_extract(envelope, '$.data.exception'), '') FROM logs",
        [],
    )?;
    tx.commit()
}

/// Some incremental FTS merge work (bounded), to keep searches quick with
/// the lazy `automerge` setting.
pub(super) fn merge_fts(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO logs_fts(logs_fts, rank) VALUES ('merge', 500)", []).map(drop)
}

/// Opens (creating if needed) the database read-write: WAL mode,
/// `synchronous=NORMAL`, the schema. Creates the parent directory if it is
/// missing.
///
/// # Errors
/// Any SQLite error; [`is_corrupt`] tells a broken file from an unusable
/// place (permissions, full disk, missing mount).
pub(super) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A failure shows up as the open's error below.
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("history: {} stays in journal mode {mode}, not WAL", path.display());
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    let version: Option<i64> = {
        let exists: bool =
            conn.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'", [], |r| {
                r.get(0)
            })?;
        if exists {
            conn.query_row("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'schema'", [], |r| r.get(0))
                .optional()?
        } else {
            None
        }
    };
    if let Some(v) = version.filter(|&v| v > SCHEMA_VERSION) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("schema version {v} is newer than this hub's ({SCHEMA_VERSION})")),
        ));
    }
    if version.is_none() {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?1)", [SCHEMA_VERSION.to_string()])?;
        tx.commit()?;
    }
    conn.execute_batch(super::metrics::SCHEMA)?;
    Ok(conn)
}

/// Stored size and last offset of one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ServerRow {
    /// Stored entries.
    pub entries: u64,
    /// Sum of their envelopes' bytes.
    pub bytes: u64,
    /// The last agent offset stored (0: none).
    pub last_offset: u64,
}

/// What a start-up reads back.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// The stored epoch.
    pub epoch: Option<String>,
    /// The clean-shutdown flag.
    pub clean: bool,
    /// Highest seq per channel (counters, and the highest stored seq of each
    /// logs channel).
    pub seqs: HashMap<String, u64>,
    /// Per server: stored size and last offset.
    pub servers: HashMap<Uuid, ServerRow>,
}

/// Seqs, offsets and sizes are `INTEGER`s: u64 values are stored bit for bit
/// as i64 (seqs and offsets stay far below 2^63 in practice).
pub(super) fn to_sql_u64(v: u64) -> i64 {
    v as i64
}

/// The inverse of [`to_sql_u64`].
pub(super) fn from_sql_u64(v: i64) -> u64 {
    v as u64
}

/// A server id from its 16-byte blob; `None` for anything else.
pub(super) fn uuid_from_blob(blob: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(blob).ok()
}

/// The logs channel name of a server, as the hub writes it.
pub(super) fn logs_channel(server: Uuid) -> String {
    crate::protocol::Channel::logs(server).to_string()
}

/// Per-server rows of `servers`.
pub(super) fn load_servers(conn: &Connection) -> rusqlite::Result<HashMap<Uuid, ServerRow>> {
    let mut stmt = conn.prepare("SELECT server, entries, bytes, last_offset FROM servers")?;
    let rows = stmt.query_map([], |r| {
        let blob: Vec<u8> = r.get(0)?;
        let row = ServerRow {
            entries: from_sql_u64(r.get(1)?),
            bytes: from_sql_u64(r.get(2)?),
            last_offset: from_sql_u64(r.get(3)?),
        };
        Ok((blob, row))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (blob, row) = row?;
        if let Some(id) = uuid_from_blob(&blob) {
            out.insert(id, row);
        }
    }
    Ok(out)
}

/// Reads the meta row, the counters, the servers and each server's highest
/// stored seq (an index probe per server).
pub(super) fn snapshot(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let meta = |key: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
    };
    let epoch = meta("epoch")?.filter(|e| !e.is_empty());
    let clean = meta("clean")?.as_deref() == Some("1");
    let mut seqs = HashMap::new();
    {
        let mut stmt = conn.prepare("SELECT channel, seq FROM counters")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, from_sql_u64(r.get(1)?))))?;
        for row in rows {
            let (channel, seq) = row?;
            seqs.insert(channel, seq);
        }
    }
    let servers = load_servers(conn)?;
    {
        let mut stmt = conn.prepare("SELECT max(seq) FROM logs WHERE server = ?1")?;
        for id in servers.keys() {
            let max: Option<i64> = stmt.query_row([&id.as_bytes()[..]], |r| r.get(0))?;
            if let Some(max) = max {
                let seq = seqs.entry(logs_channel(*id)).or_insert(0);
                *seq = (*seq).max(from_sql_u64(max));
            }
        }
    }
    Ok(Snapshot { epoch, clean, seqs, servers })
}

/// The stored messages of one server's current epoch that refill its ring.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// `(seq, envelope)`, oldest first.
    pub entries: Vec<(u64, String)>,
    /// The first entry is not known to be the channel's first in this
    /// epoch (older ones are stored, or may have been deleted).
    pub evicted: bool,
}

/// The last `n` stored messages of each server that belong to `epoch`,
/// oldest first. Seqs only grow per server (a new epoch continues above the
/// highest known seq), so these are the current epoch's entries among the
/// last `n` stored ones: an index walk of at most `n + 1` rows per server.
/// The row before them says whether they start the epoch: none and seq 1,
/// or one of another epoch with the seq just below.
pub(super) fn recent(
    conn: &Connection,
    epoch: &str,
    n: usize,
    servers: impl Iterator<Item = Uuid>,
) -> rusqlite::Result<HashMap<Uuid, Recent>> {
    let mut out = HashMap::new();
    if n == 0 {
        return Ok(out);
    }
    let mut stmt =
        conn.prepare("SELECT seq, epoch, envelope FROM logs WHERE server = ?1 ORDER BY seq DESC, id DESC LIMIT ?2")?;
    let limit = i64::try_from(n).unwrap_or(i64::MAX).saturating_add(1);
    for id in servers {
        let mut rows = stmt.query(params![&id.as_bytes()[..], limit])?;
        let mut kept = Vec::new();
        let mut before: Option<(u64, bool)> = None;
        while let Some(row) = rows.next()? {
            let seq = from_sql_u64(row.get(0)?);
            let same = row.get_ref(1)?.as_str()? == epoch;
            if same && kept.len() < n {
                kept.push((seq, row.get::<_, String>(2)?));
            } else {
                before = Some((seq, same));
                break;
            }
        }
        let Some(&(first, _)) = kept.last() else { continue };
        let evicted = match before {
            None => first != 1,
            Some((_, true)) => true,
            Some((seq, false)) => first != seq + 1,
        };
        kept.reverse();
        out.insert(id, Recent { entries: kept, evicted });
    }
    Ok(out)
}

/// Writes the meta row: the epoch in use and the clean flag (`false` while
/// the hub runs, `true` only in the last transaction of a clean shutdown).
pub(super) fn mark(conn: &Connection, epoch: &str, clean: bool) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    stmt.execute(["epoch", epoch])?;
    stmt.execute(["clean", if clean { "1" } else { "0" }])?;
    Ok(())
}

/// Moves a broken database (and its `-wal` / `-shm` files) aside as
/// `<path>.corrupt-<unix time>` (`-wal`, `-shm` appended as SQLite names
/// them, so the set can still be opened for forensics). Returns the new name.
///
/// # Errors
/// The rename of the main file failed.
pub(super) fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut base = path.as_os_str().to_owned();
    base.push(format!(".corrupt-{now}"));
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        let mut other = base.clone();
        other.push(format!(".{n}"));
        target = PathBuf::from(other);
        n += 1;
    }
    std::fs::rename(path, &target)?;
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = target.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("history: cannot move {} aside: {e}", PathBuf::from(from).display()),
        }
    }
    Ok(target)
}

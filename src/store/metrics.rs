//! Metrics points on disk (issue 12, part 3): the CPU, memory, players and
//! TPS of every `metrics` message, one row each, so that a week of charts
//! survives a restart (`GET /api/v1/servers/{id}/metrics`, PROTOCOL.md
//! 11.8). The writer commits them with the log batches; retention deletes
//! them by age (`history.retention_days`) only: a point is a few dozen
//! bytes (a week at the default 30 s interval is about 20,000 rows, 1 MB,
//! per server) and does not count toward `history.retention_mb_per_server`.
//!
//! What a publisher can store is bounded by time, not by its rate: one
//! point per server per 5 s of its time (the first one stays; the unique
//! index `metrics_server_slot`), and no time more than a minute ahead
//! ([`crate::metrics_api::point`]), so at most `retention_days` × 17,280
//! rows per server (about 10 MB for the default 14 days).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::{db, Reader, StoreError};

/// The table, created (if missing) on every connect, so a database of an
/// earlier build gains it; an earlier build ignores it.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS metrics (
    server BLOB NOT NULL,
    ts INTEGER NOT NULL,
    cpu REAL NOT NULL,
    ram INTEGER NOT NULL,
    players INTEGER NOT NULL,
    tps REAL
);
CREATE INDEX IF NOT EXISTS metrics_server_ts ON metrics(server, ts);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_server_slot ON metrics(server, ts / 5000);
";

/// Points waiting in the writer at most (while the file cannot be
/// written); over it the oldest are dropped (logged, not counted as lost
/// log entries: the epoch does not depend on them).
pub const MAX_PENDING_METRICS: usize = 20_000;

/// One measurement of a server, as stored and as charted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricPoint {
    /// The server.
    pub server: Uuid,
    /// When it was measured (`data.timestamp`), unix ms.
    pub ts_ms: i64,
    /// `cpu_percent`.
    pub cpu: f64,
    /// `memory_used`, bytes.
    pub ram: u64,
    /// `players_online`.
    pub players: i64,
    /// `tps`, when measured.
    pub tps: Option<f64>,
}

/// Inserts `points` in the writer's transaction.
pub(super) fn insert<'a>(conn: &Connection, points: impl Iterator<Item = &'a MetricPoint>) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO metrics (server, ts, cpu, ram, players, tps) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for p in points {
        insert.execute(params![&p.server.as_bytes()[..], p.ts_ms, p.cpu, db::to_sql_u64(p.ram), p.players, p.tps])?;
    }
    Ok(())
}

/// Deletes at most `limit` points older than `cutoff_ms`; returns how many.
pub(super) fn expire(conn: &Connection, cutoff_ms: i64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached("DELETE FROM metrics WHERE rowid IN (SELECT rowid FROM metrics WHERE ts < ?1 LIMIT ?2)")?
        .execute(params![cutoff_ms, i64::try_from(limit).unwrap_or(i64::MAX)])
}

impl Reader {
    /// Hands `each` the stored points of `server` with `from_ms <= ts <
    /// to_ms`, oldest first, within [`super::QUERY_TIMEOUT`].
    ///
    /// # Errors
    /// [`StoreError::Timeout`] when it ran past the deadline (this reader
    /// stays usable); [`StoreError::Sqlite`] when the database cannot be read.
    pub fn metrics(
        &self,
        server: Uuid,
        from_ms: i64,
        to_ms: i64,
        mut each: impl FnMut(&MetricPoint),
    ) -> Result<(), StoreError> {
        self.timed(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ts, cpu, ram, players, tps FROM metrics WHERE server = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts",
            )?;
            let mut rows = stmt.query(params![&server.as_bytes()[..], from_ms, to_ms])?;
            while let Some(r) = rows.next()? {
                each(&MetricPoint {
                    server,
                    ts_ms: r.get(0)?,
                    cpu: r.get(1)?,
                    ram: db::from_sql_u64(r.get(2)?),
                    players: r.get(3)?,
                    tps: r.get(4)?,
                });
            }
            Ok(())
        })
    }
}

//! Retention: what the writer deletes, by age (`history.retention_days`:
//! log entries and metrics points) and by stored bytes per server
//! (`history.retention_mb_per_server`: log entries),
//! oldest first, in bounded steps so a large clean-up never holds back
//! commits for long. The writer decides when a step runs and owns the
//! connection; this module only says what one step deletes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::db::{self, ServerRow};
use super::metrics;

/// Retention runs this often (and right after start).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Rows one retention step deletes at most.
const RETENTION_STEP_ROWS: usize = 5000;

/// Retention limits; 0 turns one off.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    /// Entries older than this (by their time) are deleted.
    pub max_age_ms: i64,
    /// Per server, oldest entries are deleted while its bytes exceed this.
    pub max_bytes: u64,
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Deletes at most [`RETENTION_STEP_ROWS`] rows that are too old or over
/// a server's byte budget, oldest first, in one transaction, and takes them
/// off `servers` (the writer's view of the `servers` table). Returns whether
/// more may be left.
pub(super) fn step(
    conn: &mut Connection,
    limits: Retention,
    servers: &mut HashMap<Uuid, ServerRow>,
) -> rusqlite::Result<bool> {
    let Retention { max_age_ms, max_bytes } = limits;
    let cutoff = now_unix_ms().saturating_sub(max_age_ms);
    let mut budget = RETENTION_STEP_ROWS;
    let mut changes: Vec<(Uuid, u64, u64)> = Vec::new();
    let tx = conn.transaction()?;
    {
        let mut by_age = tx.prepare_cached(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE server = ?1 AND ts < ?2 LIMIT ?3) \
             RETURNING bytes",
        )?;
        let mut oldest = tx.prepare_cached("SELECT seq, bytes FROM logs WHERE server = ?1 ORDER BY seq LIMIT ?2")?;
        let mut up_to = tx.prepare_cached("DELETE FROM logs WHERE server = ?1 AND seq <= ?2 RETURNING bytes")?;
        let sum = |rows: rusqlite::Rows<'_>| -> rusqlite::Result<(u64, u64)> {
            let mut rows = rows;
            let (mut n, mut bytes) = (0u64, 0u64);
            while let Some(row) = rows.next()? {
                n += 1;
                bytes += db::from_sql_u64(row.get(0)?);
            }
            Ok((n, bytes))
        };
        for (&server, row) in servers.iter() {
            if budget == 0 {
                break;
            }
            let key = &server.as_bytes()[..];
            let (mut n, mut bytes) = (0, 0);
            if max_age_ms > 0 && row.entries > 0 {
                (n, bytes) = sum(by_age.query(params![key, cutoff, budget as i64])?)?;
                budget -= n as usize;
            }
            let left = row.bytes.saturating_sub(bytes);
            if max_bytes > 0 && left > max_bytes && budget > 0 {
                let excess = left - max_bytes;
                let mut freed = 0;
                let mut last = None;
                let mut rows = oldest.query(params![key, budget as i64])?;
                while let Some(r) = rows.next()? {
                    last = Some(r.get::<_, i64>(0)?);
                    freed += db::from_sql_u64(r.get(1)?);
                    if freed >= excess {
                        break;
                    }
                }
                drop(rows);
                if let Some(last) = last {
                    let (n2, bytes2) = sum(up_to.query(params![key, last])?)?;
                    budget = budget.saturating_sub(n2 as usize);
                    n += n2;
                    bytes += bytes2;
                }
            }
            if n > 0 {
                changes.push((server, n, bytes));
            }
        }
        let mut update =
            tx.prepare_cached("UPDATE servers SET entries = entries - ?2, bytes = bytes - ?3 WHERE server = ?1")?;
        for (server, n, bytes) in &changes {
            update.execute(params![&server.as_bytes()[..], db::to_sql_u64(*n), db::to_sql_u64(*bytes)])?;
        }
    }
    if max_age_ms > 0 && budget > 0 {
        budget -= metrics::expire(&tx, cutoff, budget)?.min(budget);
    }
    tx.commit()?;
    for (server, n, bytes) in changes {
        if let Some(row) = servers.get_mut(&server) {
            row.entries = row.entries.saturating_sub(n);
            row.bytes = row.bytes.saturating_sub(bytes);
        }
        log::debug!("history: retention deleted {n} entries ({bytes} bytes) of server {server}");
    }
    Ok(budget == 0)
}

/// Index upkeep after a full retention pass: some FTS merge work and
/// `PRAGMA optimize`. Failures only cost speed, so they are only logged.
pub(super) fn upkeep(conn: &Connection) {
    if let Err(e) = db::merge_fts(conn).and_then(|()| conn.execute_batch("PRAGMA optimize")) {
        log::debug!("history: index upkeep: {e}");
    }
}

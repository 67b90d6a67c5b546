//! One commit of the writer: the entries of a batch, per server its size
//! and last agent offset, the seq counters, the metrics points, and the
//! meta row, in one transaction, so what a crash leaves behind is always a
//! whole batch.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rusqlite::{params, Connection};
use uuid::Uuid;

use super::db;
use super::{level_to_sql, MetricPoint, StoredLog};

/// Per-server changes of one batch.
#[derive(Default)]
pub(super) struct Delta {
    /// Entries written.
    pub entries: u64,
    /// Their envelope bytes.
    pub bytes: u64,
    /// The offset stored as the server's last (0: unchanged).
    pub last_offset: u64,
    /// The highest seq written.
    pub max_seq: u64,
}

/// What goes into one transaction besides the entries.
pub(super) struct Batch<'a> {
    /// The epoch in use.
    pub epoch: &'a str,
    /// The meta row is already written on this connection.
    pub marked: bool,
    /// Counters to save.
    pub counters: &'a HashMap<String, u64>,
    /// Per server, the lowest offset of an entry dropped in this run: the
    /// stored offset stays below it.
    pub held_offsets: &'a HashMap<Uuid, u64>,
    /// Set the clean flag.
    pub clean: bool,
    /// Metrics points to store.
    pub metrics: &'a VecDeque<MetricPoint>,
}

/// One transaction: the meta row (unless already written on this
/// connection), the entries, per server its size and last offset (the last
/// entry's, unless held back), the logs channels' counters (raised to the
/// batch's highest seq), the saved counters, and the clean flag when asked.
pub(super) fn write<'a>(
    conn: &mut Connection,
    batch: &Batch<'_>,
    entries: impl Iterator<Item = &'a (Instant, StoredLog)>,
) -> rusqlite::Result<HashMap<Uuid, Delta>> {
    let Batch { epoch, marked, counters, held_offsets, clean, metrics } = *batch;
    let tx = conn.transaction()?;
    if !marked {
        db::mark(&tx, epoch, false)?;
    }
    let mut deltas: HashMap<Uuid, Delta> = HashMap::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO logs (server, epoch, seq, ts, level, envelope, agent_offset, bytes) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut words = tx.prepare_cached(db::FTS_INSERT)?;
        for (_, log) in entries {
            let bytes = log.envelope.len() as u64;
            insert.execute(params![
                &log.server.as_bytes()[..],
                log.epoch,
                db::to_sql_u64(log.seq),
                log.ts_ms,
                level_to_sql(log.level),
                log.envelope,
                db::to_sql_u64(log.offset),
                db::to_sql_u64(bytes),
            ])?;
            words.execute(params![tx.last_insert_rowid(), log.message, log.exception])?;
            let d = deltas.entry(log.server).or_default();
            d.entries += 1;
            d.bytes += bytes;
            if log.offset != 0 && held_offsets.get(&log.server).is_none_or(|&held| log.offset < held) {
                d.last_offset = log.offset;
            }
            d.max_seq = d.max_seq.max(log.seq);
        }
    }
    {
        let mut server = tx.prepare_cached(
            "INSERT INTO servers (server, entries, bytes, last_offset) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(server) DO UPDATE SET entries = entries + excluded.entries, bytes = bytes + excluded.bytes, \
             last_offset = CASE WHEN excluded.last_offset != 0 THEN excluded.last_offset ELSE last_offset END",
        )?;
        let mut counter = tx.prepare_cached(
            "INSERT INTO counters (channel, seq) VALUES (?1, ?2) \
             ON CONFLICT(channel) DO UPDATE SET seq = max(seq, excluded.seq)",
        )?;
        for (id, d) in &deltas {
            server.execute(params![
                &id.as_bytes()[..],
                db::to_sql_u64(d.entries),
                db::to_sql_u64(d.bytes),
                db::to_sql_u64(d.last_offset)
            ])?;
            counter.execute(params![db::logs_channel(*id), db::to_sql_u64(d.max_seq)])?;
        }
        for (channel, seq) in counters {
            counter.execute(params![channel, db::to_sql_u64(*seq)])?;
        }
    }
    super::metrics::insert(&tx, metrics.iter())?;
    if clean {
        db::mark(&tx, epoch, true)?;
    }
    tx.commit()?;
    Ok(deltas)
}

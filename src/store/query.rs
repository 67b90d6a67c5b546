//! Reading stored logs for `GET /api/v1/servers/{id}/logs` (PROTOCOL.md
//! section 9): the query's parameters, paging by seq in both directions,
//! level, time and FTS5 filters, and the two answer formats (JSON with the
//! stored envelopes verbatim, and `text/plain`). A [`Reader`] is its own
//! read-only connection, used on whatever thread answers the request; it
//! never blocks the writer (WAL).
//!
//! One thread answers every user's queries, so no query may hold it for
//! long: `q` has at most [`MAX_WORDS`] different words (repeats count once),
//! and a query still running after [`QUERY_TIMEOUT`] is stopped
//! ([`StoreError::Timeout`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use uuid::Uuid;

use super::db::{from_sql_u64, uuid_from_blob};
use super::{level_from_sql, level_to_sql, StoreError, StoredLog};
use crate::protocol::{Level, Time};

/// Default `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`; larger requests are cut to it.
pub const MAX_LIMIT: usize = 1000;
/// Different words in `q` at most (case-insensitive; repeats count once);
/// more are refused (`400`).
pub const MAX_WORDS: usize = 16;
/// How long one query may run; then SQLite stops it, and the endpoint
/// answers `503` with `Retry-After`.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// SQLite virtual machine steps between two looks at the clock.
const PROGRESS_STEPS: i32 = 1000;

/// A query for one server's stored logs (section 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// The server.
    pub server: Uuid,
    /// Only entries with a lower seq; also selects paging backwards.
    pub before_seq: Option<u64>,
    /// Only entries with a higher seq; alone (without `before_seq`) it selects
    /// paging forwards.
    pub after_seq: Option<u64>,
    /// Only entries whose time (`data.timestamp`, unix ms) is at or after this.
    pub from_ms: Option<i64>,
    /// Only entries whose time is at or before this.
    pub to_ms: Option<i64>,
    /// Only this level or more severe (DEBUG < INFO < WARN < ERROR).
    pub min_level: Option<Level>,
    /// Plain words, all required, matched as whole words (case- and
    /// accent-insensitive) in `message` or `exception`. Each word is quoted
    /// for FTS5, so operators and punctuation in it are plain text; words
    /// without a letter or digit are ignored. At most [`MAX_WORDS`]
    /// different ones ([`search_words`]).
    pub q: Option<String>,
    /// Entries per page: 1..=[`MAX_LIMIT`] (larger is cut, 0 is refused).
    pub limit: usize,
}

impl LogQuery {
    /// All of a server's entries, newest [`DEFAULT_LIMIT`] first page.
    pub fn new(server: Uuid) -> LogQuery {
        LogQuery {
            server,
            before_seq: None,
            after_seq: None,
            from_ms: None,
            to_ms: None,
            min_level: None,
            q: None,
            limit: DEFAULT_LIMIT,
        }
    }

    /// Builds a query from the endpoint's query parameters; `param(name)`
    /// returns a parameter's percent-decoded value (as
    /// `http::Request::query_param` does). Unknown parameters are ignored;
    /// empty ones count as absent.
    ///
    /// `q` keeps each word once (the first spelling, case-insensitively).
    ///
    /// # Errors
    /// A sentence for the `400` answer naming the bad parameter.
    pub fn from_params(server: Uuid, param: impl Fn(&str) -> Option<String>) -> Result<LogQuery, String> {
        let get = |name: &str| param(name).filter(|v| !v.is_empty());
        let seq = |name: &str| -> Result<Option<u64>, String> {
            get(name)
                .map(|v| v.parse::<u64>().map_err(|_| format!("'{name}' must be a non-negative integer")))
                .transpose()
        };
        let time = |name: &str| -> Result<Option<i64>, String> {
            get(name).map(|v| parse_time(&v).ok_or_else(|| format!("'{name}' must be an RFC 3339 time"))).transpose()
        };
        let min_level = get("level")
            .map(|v| parse_level(&v).ok_or_else(|| "'level' must be one of DEBUG, INFO, WARN, ERROR".to_string()))
            .transpose()?;
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
                _ => return Err("'limit' must be an integer of at least 1".into()),
            },
        };
        let q = match get("q") {
            None => None,
            Some(q) => {
                let words = search_words(&q);
                if words.len() > MAX_WORDS {
                    return Err(too_many_words());
                }
                Some(words.join(" ")).filter(|q| !q.is_empty())
            }
        };
        Ok(LogQuery {
            server,
            before_seq: seq("before_seq")?,
            after_seq: seq("after_seq")?,
            from_ms: time("from")?,
            to_ms: time("to")?,
            min_level,
            q,
            limit,
        })
    }

    /// Pages forwards (oldest entries above `after_seq`) rather than
    /// backwards.
    pub fn is_forward(&self) -> bool {
        self.after_seq.is_some() && self.before_seq.is_none()
    }
}

/// An RFC 3339 time as unix ms. A `+` of the offset that a query string
/// turned into a space is put back.
pub fn parse_time(v: &str) -> Option<i64> {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis());
    parse(v).or_else(|| parse(&v.replace(' ', "+")))
}

fn parse_level(v: &str) -> Option<Level> {
    match v.to_ascii_uppercase().as_str() {
        "DEBUG" | "TRACE" => Some(Level::Debug),
        "INFO" => Some(Level::Info),
        "WARN" | "WARNING" => Some(Level::Warn),
        "ERROR" | "FATAL" => Some(Level::Error),
        _ => None,
    }
}

/// The words of `q`: split at whitespace, each kept once (the first
/// spelling; case-insensitive, as both searches are).
pub fn search_words(q: &str) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    q.split_whitespace().filter(|w| seen.insert(w.to_lowercase())).collect()
}

fn too_many_words() -> String {
    format!("'q' may have at most {MAX_WORDS} different words")
}

/// The FTS5 query for `q`: each word ([`search_words`]) that has a letter
/// or digit becomes a quoted string (`"` doubled), joined by spaces (FTS5's
/// implicit AND). `None` when no word is left.
pub fn fts_query(q: &str) -> Option<String> {
    let words: Vec<String> = search_words(q)
        .into_iter()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// One page of a query's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The entries, oldest first.
    pub messages: Vec<StoredLog>,
    /// The page was asked forwards (`after_seq` alone): the JSON answer
    /// carries `next_after_seq`, else `next_before_seq`.
    pub forward: bool,
    /// Paging backwards: the `before_seq` of the next (older) page; `None`
    /// when nothing older matches.
    pub next_before_seq: Option<u64>,
    /// Paging forwards: the `after_seq` of the next (newer) page; `None`
    /// when nothing newer matches yet.
    pub next_after_seq: Option<u64>,
}

impl Page {
    /// The JSON answer of section 9: `{"messages":[envelopes],
    /// "next_before_seq":N|null}` (forwards: `next_after_seq`). Envelopes
    /// are the stored bytes verbatim; one that is not valid JSON (never
    /// written by the hub) becomes `null` so the answer stays valid.
    pub fn to_json(&self) -> String {
        let bytes: usize = self.messages.iter().map(|m| m.envelope.len() + 1).sum();
        let mut out = String::with_capacity(bytes + 64);
        out.push_str("{\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if serde_json::from_str::<serde::de::IgnoredAny>(&m.envelope).is_ok() {
                out.push_str(&m.envelope);
            } else {
                out.push_str("null");
            }
        }
        let (key, next) = if self.forward {
            ("next_after_seq", self.next_after_seq)
        } else {
            ("next_before_seq", self.next_before_seq)
        };
        out.push_str(&format!("],\"{key}\":"));
        match next {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }
}

/// A page from entries kept in memory, for a hub without on-disk history:
/// the rules of [`Reader::query`], except that `q` matches each word as a
/// case-insensitive substring of `message` or `exception`. `kept` holds
/// `(seq, envelope)` oldest first, as the hub's ring keeps them.
pub fn memory_page<'a>(q: &LogQuery, kept: impl DoubleEndedIterator<Item = (u64, &'a [u8])>) -> Page {
    #[derive(serde::Deserialize)]
    struct Kept {
        data: crate::protocol::LogEntry,
        epoch: String,
    }
    let words: Vec<String> =
        search_words(q.q.as_deref().unwrap_or_default()).into_iter().map(str::to_lowercase).collect();
    let matching = move |(seq, envelope): (u64, &[u8])| -> Option<StoredLog> {
        if q.after_seq.is_some_and(|a| seq <= a) || q.before_seq.is_some_and(|b| seq >= b) {
            return None;
        }
        let kept: Kept = serde_json::from_slice(envelope).ok()?;
        let e = kept.data;
        let ts_ms = e.timestamp.map_or(0, |t| t.0.timestamp_millis());
        if q.from_ms.is_some_and(|f| ts_ms < f) || q.to_ms.is_some_and(|t| ts_ms > t) {
            return None;
        }
        if q.min_level.is_some_and(|l| e.level < l) {
            return None;
        }
        let (message, exception) = (e.message.to_lowercase(), e.exception.to_lowercase());
        if !words.iter().all(|w| message.contains(w.as_str()) || exception.contains(w.as_str())) {
            return None;
        }
        Some(StoredLog {
            server: e.server_id,
            seq,
            epoch: kept.epoch,
            ts_ms,
            level: e.level,
            source: e.source,
            message: e.message,
            exception: e.exception,
            envelope: String::from_utf8_lossy(envelope).into_owned(),
            offset: 0,
        })
    };
    let limit = q.limit.max(1);
    let forward = q.is_forward();
    let mut messages: Vec<StoredLog> = if forward {
        kept.filter_map(&matching).take(limit + 1).collect()
    } else {
        let mut newest: Vec<StoredLog> = kept.rev().filter_map(&matching).take(limit + 1).collect();
        newest.reverse();
        newest
    };
    let more = messages.len() > limit;
    if more {
        if forward {
            messages.truncate(limit);
        } else {
            messages.remove(0);
        }
    }
    let next_after_seq = (forward && more).then(|| messages.last().map(|m| m.seq)).flatten();
    let next_before_seq = (!forward && more).then(|| messages.first().map(|m| m.seq)).flatten();
    Page { messages, forward, next_before_seq, next_after_seq }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    }
}

/// The `text/plain` answer: one `TIMESTAMP LEVEL [source] message` line per
/// entry (RFC 3339 time with milliseconds), then each line of the exception
/// indented by a tab. Further lines of a multi-line message are indented the
/// same way, so every unindented line starts an entry.
pub fn render_text(page: &Page) -> String {
    let mut out = String::new();
    for m in &page.messages {
        let time = Time::from_unix_ms(m.ts_ms).map(|t| t.to_string()).unwrap_or_else(|| m.ts_ms.to_string());
        let mut lines = m.message.split('\n');
        let first = lines.next().unwrap_or_default();
        out.push_str(&format!("{time} {} [{}] {first}\n", level_name(m.level), m.source));
        for line in lines.chain(m.exception.split('\n').filter(|_| !m.exception.is_empty())) {
            out.push('\t');
            out.push_str(line.strip_suffix('\r').unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

/// A read-only connection for queries. `Send`, not `Sync`: one per thread.
/// Cheap to open; open a new one after an error (the writer may have moved a
/// broken file aside and started a fresh one at the same path), but not
/// after a [`StoreError::Timeout`].
pub struct Reader {
    conn: Connection,
    /// How long a query may run ([`QUERY_TIMEOUT`]).
    timeout: Duration,
    /// While a query runs: when SQLite's progress handler stops it.
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

const COLUMNS: &str = "l.server, l.seq, l.epoch, l.ts, l.level, l.envelope, l.agent_offset";

/// The fields of a stored envelope's `data` that are not columns.
#[derive(Default, serde::Deserialize)]
struct Text {
    #[serde(default)]
    source: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    exception: String,
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    data: Text,
}

impl Reader {
    pub(super) fn open(path: &Path) -> Result<Reader, StoreError> {
        let mut conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(Duration::from_secs(2))?;
        let deadline: Arc<Mutex<Option<Instant>>> = Arc::default();
        let watched = Arc::clone(&deadline);
        conn.progress_handler(
            PROGRESS_STEPS,
            Some(move || {
                let deadline = *watched.lock().unwrap_or_else(|e| e.into_inner());
                deadline.is_some_and(|d| Instant::now() >= d)
            }),
        )?;
        Ok(Reader { conn, timeout: QUERY_TIMEOUT, deadline })
    }

    /// Sets how long a query may run (tests make it short).
    #[cfg(test)]
    pub(super) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }

    /// Runs one query (section 9). With `after_seq` alone: the oldest
    /// `limit` matching entries above it and `next_after_seq` (the last
    /// returned seq when more match, else `None`). Otherwise: the newest
    /// `limit` matching entries below `before_seq` (and above `after_seq`,
    /// when both are given) and `next_before_seq` (the first returned seq
    /// when older ones match, else `None`). Entries come oldest first.
    ///
    /// Order is by seq, across epochs: a new epoch continues above the
    /// highest seq the store knows (PROTOCOL.md 5), so a server's stored
    /// seqs only grow, in insertion order (which a search with `q` walks).
    /// The one case that breaks this: a hub that could not read its
    /// database at start (it began again at seq 1) and wrote to it later;
    /// entries of the two runs then interleave by seq.
    ///
    /// # Errors
    /// [`StoreError::InvalidQuery`] for `limit` 0 or more than
    /// [`MAX_WORDS`] words; [`StoreError::Timeout`] when it ran past
    /// [`QUERY_TIMEOUT`] (this reader stays usable);
    /// [`StoreError::Sqlite`] when the database cannot be read.
    pub fn query(&self, q: &LogQuery) -> Result<Page, StoreError> {
        if q.limit == 0 {
            return Err(StoreError::InvalidQuery("'limit' must be at least 1".into()));
        }
        if q.q.as_deref().is_some_and(|q| search_words(q).len() > MAX_WORDS) {
            return Err(StoreError::InvalidQuery(too_many_words()));
        }
        self.timed(|_| self.run(q))
    }

    /// Runs `f` on the connection with the deadline ([`QUERY_TIMEOUT`]) set.
    pub(super) fn timed<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.set_deadline(Some(Instant::now() + self.timeout));
        let result = f(&self.conn);
        self.set_deadline(None);
        result.map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted) => StoreError::Timeout(self.timeout),
            _ => StoreError::Sqlite(e),
        })
    }

    fn run(&self, q: &LogQuery) -> rusqlite::Result<Page> {
        let limit = q.limit.min(MAX_LIMIT);
        let forward = q.is_forward();
        let server = Value::Blob(q.server.as_bytes().to_vec());
        let words = q.q.as_deref().and_then(fts_query);
        let mut args: Vec<Value> = Vec::new();
        // With words, the index drives: matches stream newest (or oldest)
        // first by rowid, each joined to its row and filtered, so a common
        // word stops after one page instead of collecting every match.
        let mut sql = match &words {
            Some(m) => {
                args.extend([Value::Text(m.clone()), server.clone()]);
                format!(
                    "SELECT {COLUMNS} FROM logs_fts CROSS JOIN logs l ON l.id = logs_fts.rowid \
                         WHERE logs_fts MATCH ? AND l.server = ?"
                )
            }
            None => {
                args.push(server.clone());
                format!("SELECT {COLUMNS} FROM logs l WHERE l.server = ?")
            }
        };
        let mut cond = |clause: &str, v: Vec<Value>| {
            sql.push_str(clause);
            args.extend(v);
        };
        if let Some(b) = q.before_seq {
            let b = Value::Integer(i64::try_from(b).unwrap_or(i64::MAX));
            cond(" AND l.seq < ?", vec![b.clone()]);
            if words.is_some() {
                // Rowids grow with seqs per server: skip the newer matches
                // at once instead of filtering them one by one.
                cond(
                    " AND logs_fts.rowid < coalesce((SELECT id FROM logs WHERE server = ? AND seq >= ? \
                     ORDER BY seq LIMIT 1), 9223372036854775807)",
                    vec![server.clone(), b],
                );
            }
        }
        if let Some(a) = q.after_seq {
            let Ok(a) = i64::try_from(a) else {
                return Ok(Page { messages: Vec::new(), forward, next_before_seq: None, next_after_seq: None });
            };
            cond(" AND l.seq > ?", vec![Value::Integer(a)]);
            if words.is_some() {
                cond(
                    " AND logs_fts.rowid > coalesce((SELECT id FROM logs WHERE server = ? AND seq <= ? \
                     ORDER BY seq DESC LIMIT 1), 0)",
                    vec![server.clone(), Value::Integer(a)],
                );
            }
        }
        if let Some(from) = q.from_ms {
            cond(" AND l.ts >= ?", vec![Value::Integer(from)]);
        }
        if let Some(to) = q.to_ms {
            cond(" AND l.ts <= ?", vec![Value::Integer(to)]);
        }
        if let Some(level) = q.min_level {
            cond(" AND l.level >= ?", vec![Value::Integer(level_to_sql(level))]);
        }
        let order = if forward { "ASC" } else { "DESC" };
        match words {
            Some(_) => sql.push_str(&format!(" ORDER BY logs_fts.rowid {order} LIMIT ?")),
            None => sql.push_str(&format!(" ORDER BY l.seq {order}, l.id {order} LIMIT ?")),
        }
        args.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_log)?;
        let mut messages = Vec::with_capacity(limit + 1);
        for row in rows {
            messages.push(row?);
        }
        let more = messages.len() > limit;
        messages.truncate(limit);
        let mut page = Page { messages, forward, next_before_seq: None, next_after_seq: None };
        if forward {
            page.next_after_seq = if more { page.messages.last().map(|m| m.seq) } else { None };
        } else {
            page.messages.reverse();
            page.next_before_seq = if more { page.messages.first().map(|m| m.seq) } else { None };
        }
        Ok(page)
    }
}

fn row_to_log(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredLog> {
    let blob: Vec<u8> = r.get(0)?;
    let server = uuid_from_blob(&blob).ok_or(rusqlite::Error::InvalidColumnType(
        0,
        "server".into(),
        rusqlite::types::Type::Blob,
    ))?;
    let level: i64 = r.get(4)?;
    let envelope: String = r.get(5)?;
    let text = serde_json::from_str::<Envelope>(&envelope).map(|e| e.data).unwrap_or_default();
    Ok(StoredLog {
        server,
        seq: from_sql_u64(r.get(1)?),
        epoch: r.get(2)?,
        ts_ms: r.get(3)?,
        level: level_from_sql(level).ok_or(rusqlite::Error::IntegralValueOutOfRange(4, level))?,
        source: text.source,
        message: text.message,
        exception: text.exception,
        envelope,
        offset: from_sql_u64(r.get(6)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fts_query_quotes_every_word_and_skips_punctuation() {
        assert_eq!(fts_query("player joined"), Some("\"player\" \"joined\"".into()));
        assert_eq!(
            fts_query("  say \"hi\" AND -x * NOT"),
            Some("\"say\" \"\"\"hi\"\"\" \"AND\" \"-x\" \"NOT\"".into())
        );
        assert_eq!(fts_query("* - \" ()"), None);
        assert_eq!(fts_query(""), None);
    }

    #[test]
    fn params_are_parsed_and_checked() {
        let server = Uuid::nil();
        let params = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let q = LogQuery::from_params(server, params(&[])).unwrap();
        assert_eq!(q, LogQuery::new(server));
        let q = LogQuery::from_params(
            server,
            params(&[
                ("before_seq", "10"),
                ("from", "2026-11-28T15:30:00 01:00"),
                ("to", "2026-11-28T15:30:00.500Z"),
                ("level", "warn"),
                ("q", "Can't keep up"),
                ("limit", "5000"),
                ("token", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(q.before_seq, Some(10));
        assert_eq!(q.from_ms, Some(1_795_879_800_000 - 3_600_000));
        assert_eq!(q.to_ms, Some(1_795_879_800_500));
        assert_eq!(q.min_level, Some(Level::Warn));
        assert_eq!(q.q.as_deref(), Some("Can't keep up"));
        assert_eq!(q.limit, MAX_LIMIT);
        assert!(!q.is_forward());
        assert!(LogQuery::from_params(server, params(&[("after_seq", "3")])).unwrap().is_forward());
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "-1")],
            &[("before_seq", "x")],
            &[("after_seq", "-2")],
            &[("from", "yesterday")],
            &[("level", "LOUD")],
        ] {
            assert!(LogQuery::from_params(server, params(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_words_are_kept_once_and_at_most_16() {
        let server = Uuid::nil();
        let q = |text: String| LogQuery::from_params(server, move |n| (n == "q").then(|| text.clone()));
        // 2,700 copies of a common word fit in a request head: one word.
        let repeated = "the ".repeat(2700);
        assert_eq!(q(repeated).unwrap().q.as_deref(), Some("the"));
        assert_eq!(q("Player joined PLAYER the player".into()).unwrap().q.as_deref(), Some("Player joined the"));
        let sixteen: Vec<String> = (1..=16).map(|i| format!("w{i}")).collect();
        assert_eq!(q(sixteen.join(" ")).unwrap().q, Some(sixteen.join(" ")));
        let seventeen = format!("{} w17", sixteen.join(" "));
        let e = q(seventeen.clone()).unwrap_err();
        assert_eq!(e, "'q' may have at most 16 different words");
        assert_eq!(fts_query("a A a b"), Some("\"a\" \"b\"".into()));
    }

    fn entry(seq: u64, message: &str, exception: &str) -> StoredLog {
        StoredLog {
            server: Uuid::nil(),
            seq,
            epoch: "e".into(),
            ts_ms: 1_795_879_800_123,
            level: Level::Error,
            source: "server".into(),
            message: message.into(),
            exception: exception.into(),
            envelope: format!("{{\"seq\":{seq}}}"),
            offset: 0,
        }
    }

    #[test]
    fn text_lines_indent_exceptions_with_tabs() {
        let page = Page {
            messages: vec![
                entry(1, "Ticking entity", "java.lang.NullPointerException\n\tat a.b(C.java:1)\n... 3 more"),
                entry(2, "two\nlines", ""),
            ],
            forward: false,
            next_before_seq: None,
            next_after_seq: None,
        };
        assert_eq!(
            render_text(&page),
            "2026-11-28T15:30:00.123Z ERROR [server] Ticking entity\n\
             \tjava.lang.NullPointerException\n\
             \t\tat a.b(C.java:1)\n\
             \t... 3 more\n\
             2026-11-28T15:30:00.123Z ERROR [server] two\n\
             \tlines\n"
        );
    }

    #[test]
    fn json_pages_carry_the_cursor_of_their_direction() {
        let mut page = Page {
            messages: vec![entry(4, "a", ""), entry(5, "b", "")],
            forward: false,
            next_before_seq: Some(4),
            next_after_seq: None,
        };
        assert_eq!(page.to_json(), r#"{"messages":[{"seq":4},{"seq":5}],"next_before_seq":4}"#);
        page.forward = true;
        page.messages[1].envelope = "{broken".into();
        assert_eq!(page.to_json(), r#"{"messages":[{"seq":4},null],"next_after_seq":null}"#);
        let v: serde_json::Value = serde_json::from_str(&page.to_json()).unwrap();
        assert!(v["next_after_seq"].is_null());
    }
}

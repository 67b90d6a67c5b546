//! Unit tests of the store against real files in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::{tempdir, TempDir};

use super::*;

/// The database file in a test's temporary directory.
fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("history.db")
}

fn config(path: PathBuf) -> HistoryConfig {
    HistoryConfig { db_path: Some(path), ..HistoryConfig::default() }
}

const SERVER: Uuid = Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440000);
const OTHER: Uuid = Uuid::from_u128(0x123e4567_e89b_12d3_a456_426614174000);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn entry(server: Uuid, epoch: &str, seq: u64, level: Level, message: &str) -> StoredLog {
    entry_at(server, epoch, seq, level, message, "", now_ms())
}

/// An entry whose envelope is the one the hub would send.
fn entry_at(
    server: Uuid,
    epoch: &str,
    seq: u64,
    level: Level,
    message: &str,
    exception: &str,
    ts_ms: i64,
) -> StoredLog {
    let time = crate::protocol::Time::from_unix_ms(ts_ms);
    let mut data =
        json!({"server_id": server, "timestamp": time, "level": level, "source": "server", "message": message});
    if !exception.is_empty() {
        data["exception"] = exception.into();
    }
    let envelope = json!({
        "type": "log_entry",
        "channel": format!("server:{server}:logs"),
        "data": data,
        "timestamp": time,
        "seq": seq,
        "epoch": epoch,
    })
    .to_string();
    StoredLog {
        server,
        seq,
        epoch: epoch.into(),
        ts_ms,
        level,
        source: "server".into(),
        message: message.into(),
        exception: exception.into(),
        envelope,
        offset: seq * 100,
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_flushed(store: &Store) {
    wait_until("the writer to commit", Duration::from_secs(10), || store.stats().pending == 0);
}

fn seqs(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

#[test]
fn missing_db_path_is_not_configured() {
    assert!(matches!(open(&HistoryConfig::default()), Err(StoreError::NotConfigured)));
}

#[test]
fn clean_shutdown_keeps_epoch_counters_offsets_and_recent() {
    let dir = tempdir().unwrap();
    let mut cfg = config(db(&dir));
    cfg.log_lines = 3;
    let (store, rec) = open(&cfg).unwrap();
    assert!(rec.new_epoch);
    assert_eq!(rec.epoch.len(), 16);
    assert!(rec.epoch.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(rec.seqs.is_empty() && rec.offsets.is_empty() && rec.recent.is_empty());
    for seq in 1..=5 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, &format!("line {seq}")));
    }
    let mut api = entry(OTHER, &rec.epoch, 1, Level::Info, "through the API");
    api.offset = 0;
    store.append(api);
    let metrics = format!("server:{SERVER}:metrics");
    assert!(store.shutdown(vec![(metrics.clone(), 42), (format!("server:{SERVER}:logs"), 5)]));

    let (store, again) = open(&cfg).unwrap();
    assert!(!again.new_epoch);
    assert_eq!(again.epoch, rec.epoch);
    assert_eq!(again.seqs.get(&metrics), Some(&42));
    assert_eq!(again.seqs.get(&format!("server:{SERVER}:logs")), Some(&5));
    assert_eq!(again.seqs.get(&format!("server:{OTHER}:logs")), Some(&1));
    assert_eq!(again.offsets.get(&SERVER), Some(&500));
    assert_eq!(again.offsets.get(&OTHER), None);
    let recent = &again.recent[&SERVER];
    assert_eq!(recent.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4, 5]);
    let v: serde_json::Value = serde_json::from_str(&recent[2].1).unwrap();
    assert_eq!(v["data"]["message"], "line 5");
    assert_eq!(again.recent[&OTHER].len(), 1);
    assert!(again.evicted.contains(&SERVER), "seqs 1 and 2 are older than the refill");
    assert!(!again.evicted.contains(&OTHER), "seq 1 starts the epoch");
    assert_eq!(store.stats().stored_entries, 6);
    drop(store);
}

#[test]
fn a_stop_without_shutdown_gives_a_new_epoch_and_seqs_continue() {
    let dir = tempdir().unwrap();
    let cfg = config(db(&dir));
    let (store, rec) = open(&cfg).unwrap();
    for seq in 1..=7 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "x"));
    }
    store.save_counters(vec![(format!("user:{OTHER}:notifications"), 3)]);
    wait_flushed(&store);
    std::thread::sleep(Duration::from_millis(400));
    drop(store);
    std::thread::sleep(Duration::from_millis(200));

    let (store, again) = open(&cfg).unwrap();
    assert!(again.new_epoch);
    assert_ne!(again.epoch, rec.epoch);
    assert_eq!(again.seqs.get(&format!("server:{SERVER}:logs")), Some(&7));
    assert_eq!(again.seqs.get(&format!("user:{OTHER}:notifications")), Some(&3));
    assert!(again.recent.is_empty(), "no recent entries of a new epoch");
    // The new epoch continues above; paging runs across both epochs by seq.
    for seq in 8..=9 {
        store.append(entry(SERVER, &again.epoch, seq, Level::Info, "y"));
    }
    wait_flushed(&store);
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(seqs(&page), (1..=9).collect::<Vec<_>>());
    assert_eq!(page.messages[0].epoch, rec.epoch);
    assert_eq!(page.messages[8].epoch, again.epoch);
    assert!(store.shutdown(Vec::new()));
    // The next clean start refills the second epoch's two lines, which start
    // that epoch (right after seq 7 of the first).
    let (_, third) = open(&cfg).unwrap();
    assert_eq!(third.epoch, again.epoch);
    assert_eq!(third.recent[&SERVER].iter().map(|(s, _)| *s).collect::<Vec<_>>(), [8, 9]);
    assert!(third.evicted.is_empty());
}

#[test]
fn an_appended_entry_is_readable_within_300_ms() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    let reader = store.reader().unwrap();
    // Let the start-up retention pass finish first.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    store.append(entry(SERVER, &rec.epoch, 1, Level::Info, "alone"));
    wait_until("the entry", Duration::from_secs(5), || {
        reader.query(&LogQuery::new(SERVER)).unwrap().messages.len() == 1
    });
    let took = start.elapsed();
    assert!(took < Duration::from_millis(300), "took {took:?}");
    store.shutdown(Vec::new());
}

#[test]
fn full_batches_commit_without_waiting() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    for seq in 1..=(BATCH as u64 * 3 + 10) {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "bulk"));
    }
    wait_flushed(&store);
    assert_eq!(store.stats().stored_entries, BATCH as u64 * 3 + 10);
    store.shutdown(Vec::new());
}

fn fill(store: &Store, epoch: &str) {
    let lines = [
        (Level::Info, "Player Steve joined the game", ""),
        (Level::Warn, "Can't keep up! Is the server overloaded?", ""),
        (
            Level::Error,
            "Exception ticking world",
            "java.lang.NullPointerException: boom\n\tat net.minecraft.World.tick",
        ),
        (Level::Debug, "Saving chunks for level 'world'", ""),
        (Level::Info, "Player Alex left the game", ""),
        (Level::Info, "say \"hello\" AND * -x", ""),
        (Level::Error, "Could not pass event to WorldEdit", "java.lang.IllegalStateException"),
    ];
    for (i, (level, message, exception)) in lines.iter().enumerate() {
        store.append(entry_at(SERVER, epoch, i as u64 + 1, *level, message, exception, now_ms()));
    }
    store.append(entry(OTHER, epoch, 1, Level::Error, "Player Steve joined the game"));
    wait_flushed(store);
}

fn search(reader: &Reader, q: &str) -> Vec<u64> {
    let mut query = LogQuery::new(SERVER);
    query.q = Some(q.into());
    seqs(&reader.query(&query).unwrap())
}

#[test]
fn search_requires_every_word_and_quotes_odd_input() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    fill(&store, &rec.epoch);
    let reader = store.reader().unwrap();
    assert_eq!(search(&reader, "player"), [1, 5]);
    assert_eq!(search(&reader, "Player joined"), [1]);
    assert_eq!(search(&reader, "joined steve"), [1]);
    assert_eq!(search(&reader, "player nobody"), Vec::<u64>::new());
    // Exceptions are searched too, by whole words.
    assert_eq!(search(&reader, "NullPointerException"), [3]);
    assert_eq!(search(&reader, "exception"), [3]);
    assert_eq!(search(&reader, "java.lang.IllegalStateException"), [7]);
    // FTS5 syntax is plain text.
    assert_eq!(search(&reader, "\"hello\""), [6]);
    assert_eq!(search(&reader, "say AND"), [6]);
    assert_eq!(search(&reader, "AND"), [6]);
    assert_eq!(search(&reader, "NOT hello"), Vec::<u64>::new());
    assert_eq!(search(&reader, "-x"), [6]);
    assert_eq!(search(&reader, "Can't keep up!"), [2]);
    assert_eq!(search(&reader, "pla*"), Vec::<u64>::new());
    assert_eq!(search(&reader, "\"unbalanced"), Vec::<u64>::new());
    assert_eq!(search(&reader, "( ) : ^ NEAR(a b)"), Vec::<u64>::new());
    // Only punctuation: no word to search, so no filter.
    assert_eq!(search(&reader, "* \" -"), (1..=7).collect::<Vec<_>>());
    store.shutdown(Vec::new());
}

#[test]
fn level_and_time_filters() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    fill(&store, &rec.epoch);
    let reader = store.reader().unwrap();
    let mut q = LogQuery::new(SERVER);
    q.min_level = Some(Level::Warn);
    assert_eq!(seqs(&reader.query(&q).unwrap()), [2, 3, 7]);
    q.min_level = Some(Level::Error);
    q.q = Some("WorldEdit".into());
    assert_eq!(seqs(&reader.query(&q).unwrap()), [7]);
    let mut q = LogQuery::new(SERVER);
    q.min_level = Some(Level::Debug);
    assert_eq!(reader.query(&q).unwrap().messages.len(), 7);
    q.to_ms = Some(0);
    assert!(reader.query(&q).unwrap().messages.is_empty());
    q.to_ms = None;
    q.from_ms = Some(now_ms() + 60_000);
    assert!(reader.query(&q).unwrap().messages.is_empty());
    q.from_ms = Some(now_ms() - 60_000);
    q.to_ms = Some(now_ms() + 60_000);
    assert_eq!(reader.query(&q).unwrap().messages.len(), 7);
    // The stored fields come back as appended.
    let m = &reader.query(&LogQuery::new(OTHER)).unwrap().messages[0];
    assert_eq!((m.server, m.seq, m.level, m.offset), (OTHER, 1, Level::Error, 100));
    assert_eq!(m.epoch, rec.epoch);
    let mut q = LogQuery::new(SERVER);
    q.q = Some("NullPointerException".into());
    let page = reader.query(&q).unwrap();
    let m = &page.messages[0];
    let appended = entry_at(SERVER, &rec.epoch, 3, Level::Error, &m.message, &m.exception, m.ts_ms);
    assert_eq!(m, &appended, "every field comes back as appended");
    assert_eq!(m.exception, "java.lang.NullPointerException: boom\n\tat net.minecraft.World.tick");
    assert!(matches!(reader.query(&LogQuery { limit: 0, ..LogQuery::new(SERVER) }), Err(StoreError::InvalidQuery(_))));
    store.shutdown(Vec::new());
}

#[test]
fn paging_backwards_and_forwards_with_cursors() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    for seq in 1..=25 {
        let level = if seq % 5 == 0 { Level::Error } else { Level::Info };
        store.append(entry(SERVER, &rec.epoch, seq, level, &format!("line {seq}")));
    }
    wait_flushed(&store);
    let reader = store.reader().unwrap();

    // Backwards from the newest.
    let mut q = LogQuery { limit: 10, ..LogQuery::new(SERVER) };
    let mut pages = Vec::new();
    loop {
        let page = reader.query(&q).unwrap();
        assert!(!page.forward && page.next_after_seq.is_none());
        pages.push(seqs(&page));
        match page.next_before_seq {
            Some(next) => q.before_seq = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [(16..=25).collect::<Vec<_>>(), (6..=15).collect(), (1..=5).collect()]);

    // Exactly `limit` left: no further page.
    let page = reader.query(&LogQuery { limit: 5, before_seq: Some(6), ..LogQuery::new(SERVER) }).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), ((1..=5).collect(), None));

    // Forwards from a seq.
    let mut q = LogQuery { limit: 10, after_seq: Some(3), ..LogQuery::new(SERVER) };
    let mut pages = Vec::new();
    loop {
        let page = reader.query(&q).unwrap();
        assert!(page.forward && page.next_before_seq.is_none());
        pages.push(seqs(&page));
        match page.next_after_seq {
            Some(next) => q.after_seq = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [(4..=13).collect::<Vec<_>>(), (14..=23).collect(), (24..=25).collect()]);
    let page = reader.query(&LogQuery { after_seq: Some(25), ..LogQuery::new(SERVER) }).unwrap();
    assert!(page.messages.is_empty() && page.next_after_seq.is_none());

    // Both bounds: the newest inside the range, paging backwards.
    let page = reader
        .query(&LogQuery { limit: 3, before_seq: Some(12), after_seq: Some(6), ..LogQuery::new(SERVER) })
        .unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![9, 10, 11], Some(9)));

    // Cursors follow the filtered set.
    let q = LogQuery { limit: 2, min_level: Some(Level::Error), ..LogQuery::new(SERVER) };
    let page = reader.query(&q).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![20, 25], Some(20)));
    let page = reader.query(&LogQuery { before_seq: Some(20), ..q.clone() }).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![10, 15], Some(10)));
    let page = reader.query(&LogQuery { before_seq: Some(10), ..q }).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![5], None));

    // The same pages with words: the search index drives, with the same
    // cursors; another server's matches never show.
    for seq in 1..=30 {
        store.append(entry(OTHER, &rec.epoch, seq, Level::Error, &format!("line {seq}")));
    }
    wait_flushed(&store);
    let words = |q: LogQuery| LogQuery { q: Some("LINE".into()), ..q };
    let mut q = words(LogQuery { limit: 10, ..LogQuery::new(SERVER) });
    let mut pages = Vec::new();
    loop {
        let page = reader.query(&q).unwrap();
        assert!(page.messages.iter().all(|m| m.server == SERVER));
        pages.push(seqs(&page));
        match page.next_before_seq {
            Some(next) => q.before_seq = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [(16..=25).collect::<Vec<_>>(), (6..=15).collect(), (1..=5).collect()]);
    let mut q = words(LogQuery { limit: 10, after_seq: Some(3), ..LogQuery::new(SERVER) });
    let mut pages = Vec::new();
    loop {
        let page = reader.query(&q).unwrap();
        pages.push(seqs(&page));
        match page.next_after_seq {
            Some(next) => q.after_seq = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, [(4..=13).collect::<Vec<_>>(), (14..=23).collect(), (24..=25).collect()]);
    let q = words(LogQuery { limit: 3, before_seq: Some(12), after_seq: Some(6), ..LogQuery::new(SERVER) });
    let page = reader.query(&q).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![9, 10, 11], Some(9)));
    let q = words(LogQuery { limit: 2, min_level: Some(Level::Error), before_seq: Some(20), ..LogQuery::new(SERVER) });
    let page = reader.query(&q).unwrap();
    assert_eq!((seqs(&page), page.next_before_seq), (vec![10, 15], Some(10)));
    // Cursors beyond what is stored.
    let page = reader.query(&words(LogQuery { before_seq: Some(1000), ..LogQuery::new(SERVER) })).unwrap();
    assert_eq!(page.messages.len(), 25);
    let page = reader.query(&words(LogQuery { after_seq: Some(0), ..LogQuery::new(SERVER) })).unwrap();
    assert_eq!(page.messages.len(), 25);
    let page = reader.query(&words(LogQuery { after_seq: Some(1000), ..LogQuery::new(SERVER) })).unwrap();
    assert!(page.messages.is_empty());

    // The text form of a page.
    let page = reader.query(&LogQuery { limit: 1, ..LogQuery::new(SERVER) }).unwrap();
    let text = render_text(&page);
    assert!(text.ends_with(" ERROR [server] line 25\n"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&page.to_json()).unwrap();
    assert_eq!(v["messages"][0]["seq"], 25);
    assert_eq!(v["next_before_seq"], 25);
    store.shutdown(Vec::new());
}

#[test]
fn retention_by_age_at_open() {
    let dir = tempdir().unwrap();
    let mut cfg = config(db(&dir));
    let (store, rec) = open(&cfg).unwrap();
    let day = 86_400_000;
    for (seq, age_days) in [(1, 20), (2, 15), (3, 13), (4, 0)] {
        store.append(entry_at(SERVER, &rec.epoch, seq, Level::Info, "aging", "", now_ms() - age_days * day));
    }
    assert!(store.shutdown(Vec::new()));
    cfg.retention_days = 14;
    let (store, _) = open(&cfg).unwrap();
    wait_until("retention", Duration::from_secs(10), || store.stats().stored_entries == 2);
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(seqs(&page), [3, 4]);
    // The search index follows the deletes.
    let mut q = LogQuery::new(SERVER);
    q.q = Some("aging".into());
    assert_eq!(seqs(&store.reader().unwrap().query(&q).unwrap()), [3, 4]);
    store.shutdown(Vec::new());
}

#[test]
fn retention_by_size_per_server() {
    let dir = tempdir().unwrap();
    let mut cfg = config(db(&dir));
    let (store, rec) = open(&cfg).unwrap();
    let big = "x".repeat(100 * 1024);
    for seq in 1..=30 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, &big));
    }
    store.append(entry(OTHER, &rec.epoch, 1, Level::Info, &big));
    wait_flushed(&store);
    let before = store.stats();
    assert_eq!(before.stored_entries, 31);
    assert!(before.stored_bytes > 31 * 100 * 1024);
    assert!(store.shutdown(Vec::new()));
    cfg.retention_mb_per_server = 1;
    let (store, _) = open(&cfg).unwrap();
    wait_until("retention", Duration::from_secs(10), || store.stats().stored_entries < 31);
    let reader = store.reader().unwrap();
    let page = reader.query(&LogQuery::new(SERVER)).unwrap();
    let kept: usize = page.messages.iter().map(|m| m.envelope.len()).sum();
    assert!(kept <= 1024 * 1024, "{kept}");
    assert!(kept > 1024 * 1024 - 110 * 1024, "deleted more than needed: {kept}");
    assert_eq!(page.messages.last().map(|m| m.seq), Some(30), "the newest stay");
    assert_eq!(reader.query(&LogQuery::new(OTHER)).unwrap().messages.len(), 1, "other servers untouched");
    let stats = store.stats();
    assert_eq!(stats.stored_entries, page.messages.len() as u64 + 1);
    assert!(stats.stored_bytes <= 1024 * 1024 + 110 * 1024);
    store.shutdown(Vec::new());
}

#[test]
fn a_garbage_file_is_moved_aside_and_a_fresh_one_works() {
    let dir = tempdir().unwrap();
    std::fs::write(db(&dir), vec![0x5a; 64 * 1024]).unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    assert!(rec.new_epoch);
    let stats = store.stats();
    let err = stats.last_error.unwrap();
    assert!(err.contains("moved to") && err.contains(".corrupt-"), "{err}");
    assert!(!stats.failing);
    let moved: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(std::fs::read(dir.path().join(&moved[0])).unwrap(), vec![0x5a; 64 * 1024], "moved as it was");
    store.append(entry(SERVER, &rec.epoch, 1, Level::Info, "fresh"));
    wait_flushed(&store);
    assert_eq!(store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap().messages.len(), 1);
    assert!(store.shutdown(Vec::new()));
    let (_, again) = open(&config(db(&dir))).unwrap();
    assert_eq!(again.epoch, rec.epoch);
}

#[test]
fn a_truncated_database_is_moved_aside() {
    let dir = tempdir().unwrap();
    let cfg = config(db(&dir));
    let (store, rec) = open(&cfg).unwrap();
    for seq in 1..=3000 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "some words to index"));
    }
    assert!(store.shutdown(Vec::new()));
    let len = std::fs::metadata(db(&dir)).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(db(&dir)).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let (store, again) = open(&cfg).unwrap();
    assert!(again.new_epoch);
    store.append(entry(SERVER, &again.epoch, 1, Level::Info, "fresh"));
    wait_flushed(&store);
    assert!(store.stats().last_error.is_some_and(|e| e.contains("moved to")));
    assert_eq!(store.stats().stored_entries, 1);
    store.shutdown(Vec::new());
}

#[test]
fn an_unusable_place_buffers_and_recovers_when_fixed() {
    let dir = tempdir().unwrap();
    // A file where the directory should be: the database cannot be created
    // (this works as root too, unlike permissions).
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let cfg = config(blocker.join("history.db"));
    let (store, rec) = open(&cfg).unwrap();
    assert!(rec.new_epoch);
    let stats = store.stats();
    assert!(stats.failing && stats.last_error.is_some());
    assert!(store.reader().is_err());
    for seq in 1..=50 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "waiting"));
    }
    wait_until("a failed attempt", Duration::from_secs(5), || store.stats().write_errors > 0);
    assert_eq!(store.stats().pending, 50);
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    wait_until("recovery", Duration::from_secs(10), || store.stats().stored_entries == 50);
    let stats = store.stats();
    assert!(!stats.failing);
    assert_eq!((stats.pending, stats.dropped), (0, 0));
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(page.messages.len(), 50);
    assert!(store.shutdown(Vec::new()));
    let (_, again) = open(&cfg).unwrap();
    assert_eq!(again.epoch, rec.epoch, "the writer marked its epoch when it got the file");
}

#[test]
fn appends_after_shutdown_are_counted_as_dropped() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    let other = store.clone();
    assert!(store.shutdown(Vec::new()));
    other.append(entry(SERVER, &rec.epoch, 1, Level::Info, "late"));
    let stats = other.stats();
    assert_eq!((stats.dropped, stats.pending), (1, 0));
}

#[test]
fn a_full_queue_drops_the_oldest_and_the_epoch_is_not_kept() {
    let dir = tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let cfg = config(blocker.join("history.db"));
    let tuning = writer::Tuning { max_pending: 10, ..writer::Tuning::default() };
    let (store, rec) = open_with(&cfg, tuning).unwrap();
    for seq in 1..=15 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "queued"));
    }
    wait_until("the drops", Duration::from_secs(5), || store.stats().dropped == 5);
    assert_eq!(store.stats().pending, 10);
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    wait_until("recovery", Duration::from_secs(10), || store.stats().stored_entries == 10);
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(seqs(&page), (6..=15).collect::<Vec<_>>(), "the oldest were dropped");
    // Lines were lost in this epoch: a kept epoch would refill the rings
    // with a hole, so the next start begins a new one.
    assert!(!store.shutdown(Vec::new()));
    let (_, again) = open(&cfg).unwrap();
    assert!(again.new_epoch);
    assert_eq!(again.seqs.get(&format!("server:{SERVER}:logs")), Some(&15));
}

#[test]
fn the_search_index_can_be_rebuilt_from_the_envelopes() {
    let dir = tempdir().unwrap();
    let cfg = config(db(&dir));
    let (store, rec) = open(&cfg).unwrap();
    fill(&store, &rec.epoch);
    assert!(store.shutdown(Vec::new()));
    let conn = rusqlite::Connection::open(db(&dir)).unwrap();
    conn.execute("INSERT INTO logs_fts(logs_fts) VALUES ('delete-all')", []).unwrap();
    drop(conn);
    let (store, _) = open(&cfg).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(search(&reader, "player"), Vec::<u64>::new(), "index emptied");
    store.shutdown(Vec::new());
    let conn = rusqlite::Connection::open(db(&dir)).unwrap();
    db::rebuild_fts(&conn).unwrap();
    drop(conn);
    let (store, _) = open(&cfg).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(search(&reader, "player"), [1, 5]);
    assert_eq!(search(&reader, "NullPointerException"), [3]);
    store.shutdown(Vec::new());
}

#[test]
fn handles_are_send_and_clone() {
    fn send<T: Send + 'static>() {}
    fn clone<T: Clone>() {}
    send::<Store>();
    clone::<Store>();
    send::<Reader>();
    send::<StoreError>();
}

/// The stored offset of `server` after a restart (where its agent stream
/// resumes).
fn stored_offset(cfg: &HistoryConfig, server: Uuid) -> Option<u64> {
    let (store, rec) = open(cfg).unwrap();
    store.shutdown(Vec::new());
    rec.offsets.get(&server).copied()
}

#[test]
fn a_full_channel_drops_new_entries_and_the_stored_offset_stays_below_them() {
    let dir = tempdir().unwrap();
    let cfg = config(db(&dir));
    let tuning = writer::Tuning { max_queued: 10, ..writer::Tuning::default() };
    // The writer does not run yet, as when it is stuck in a slow write:
    // appends must neither wait nor queue without bound.
    let (store, rec, writer) = prepare(&cfg, tuning).unwrap();
    let start = Instant::now();
    for seq in 1..=15 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "flood"));
    }
    assert!(start.elapsed() < Duration::from_secs(1), "append waited: {:?}", start.elapsed());
    let stats = store.stats();
    assert_eq!((stats.pending, stats.dropped), (10, 5), "the newest 5 are dropped: {stats:?}");
    writer.start().unwrap();
    wait_flushed(&store);
    // Lines after the drop are stored, but the server's offset does not
    // move past the first dropped line (seq 11, offset 1100): after a
    // restart the agent sends it again.
    for seq in 16..=20 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "after the flood"));
    }
    store.append(entry(OTHER, &rec.epoch, 1, Level::Info, "another server"));
    wait_flushed(&store);
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(seqs(&page), (1..=10).chain(16..=20).collect::<Vec<_>>());
    assert_eq!(store.stats().dropped, 5);
    assert!(!store.shutdown(Vec::new()), "lines were lost: not clean");
    assert_eq!(stored_offset(&cfg, SERVER), Some(1000), "the last line before the first dropped one");
    assert_eq!(stored_offset(&cfg, OTHER), Some(100), "other servers are not held back");
}

#[test]
fn a_full_queue_while_writes_fail_keeps_the_stored_offset_below_the_dropped() {
    let dir = tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = config(state.join("history.db"));
    let (store, rec) = open(&cfg).unwrap();
    for seq in 1..=5 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "stored"));
    }
    assert!(store.shutdown(Vec::new()));
    // The database's directory goes missing (a file in its place): writes
    // fail, and the writer's queue of 10 drops the oldest.
    let away = dir.path().join("away");
    std::fs::rename(&state, &away).unwrap();
    std::fs::write(&state, b"not a directory").unwrap();
    let tuning = writer::Tuning { max_pending: 10, ..writer::Tuning::default() };
    let (store, rec) = open_with(&cfg, tuning).unwrap();
    for seq in 6..=20 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "queued"));
    }
    wait_until("the drops", Duration::from_secs(5), || store.stats().dropped == 5);
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&away, &state).unwrap();
    wait_until("recovery", Duration::from_secs(10), || store.stats().stored_entries == 15);
    store.append(entry(SERVER, &rec.epoch, 21, Level::Info, "later"));
    wait_flushed(&store);
    let page = store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap();
    assert_eq!(seqs(&page), (1..=5).chain(11..=21).collect::<Vec<_>>(), "6..=10 were dropped");
    assert!(!store.shutdown(Vec::new()));
    assert_eq!(stored_offset(&cfg, SERVER), Some(500), "held below the first dropped line (offset 600)");
}

#[test]
fn a_query_past_its_deadline_is_stopped_and_the_reader_still_works() {
    let dir = tempdir().unwrap();
    let (store, rec) = open(&config(db(&dir))).unwrap();
    for seq in 1..=20_000 {
        store.append(entry(SERVER, &rec.epoch, seq, Level::Info, "a player joined a game on a server"));
        if seq % 5000 == 0 {
            wait_flushed(&store);
        }
    }
    wait_flushed(&store);
    let mut reader = store.reader().unwrap();
    reader.set_timeout(Duration::from_millis(100));
    // A phrase of 1,000 words that no line holds: FTS5 tries it on every
    // line with an "a", seconds of work.
    let slow = LogQuery { q: Some(vec!["a"; 1000].join(".")), ..LogQuery::new(SERVER) };
    match reader.query(&slow) {
        Err(StoreError::Timeout(t)) => assert_eq!(t, Duration::from_millis(100)),
        other => panic!("not stopped: {other:?}"),
    }
    let page = reader.query(&LogQuery { limit: 5, ..LogQuery::new(SERVER) }).unwrap();
    assert_eq!(seqs(&page), (19_996..=20_000).collect::<Vec<_>>(), "the same reader answers the next query");
    assert_eq!(search(&reader, "player").len(), 100);
    let too_many = LogQuery { q: Some((1..=17).map(|i| format!("w{i} ")).collect()), ..LogQuery::new(SERVER) };
    assert!(matches!(reader.query(&too_many), Err(StoreError::InvalidQuery(_))));
    store.shutdown(Vec::new());
}

fn point(server: Uuid, ts_ms: i64, tps: Option<f64>) -> MetricPoint {
    MetricPoint { server, ts_ms, cpu: 12.5, ram: 1 << 30, players: 4, tps }
}

/// The times of the stored points of `server`, oldest first (none while
/// the database cannot be read).
fn stored_points(store: &Store, server: Uuid) -> Vec<i64> {
    let mut times = Vec::new();
    let reader = match store.reader() {
        Ok(r) => r,
        Err(_) => return times,
    };
    // The file may exist before the writer has made its tables.
    match reader.metrics(server, 0, i64::MAX, |p| times.push(p.ts_ms)) {
        Ok(_) => times,
        Err(_) => Vec::new(),
    }
}

#[test]
fn metrics_points_wait_for_an_unusable_file_keep_the_epoch_and_expire_by_age() {
    let dir = tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let mut cfg = config(blocker.join("history.db"));
    cfg.retention_days = 0;
    let (store, rec) = open(&cfg).unwrap();
    let (now, day) = (now_ms(), 86_400_000);
    store.append_metric(point(SERVER, now - 20 * day, Some(19.0)));
    store.append_metric(point(SERVER, now - day, None));
    store.append_metric(point(SERVER, now, Some(20.0)));
    store.append_metric(point(OTHER, now, Some(5.0)));
    wait_until("a failed attempt", Duration::from_secs(5), || store.stats().write_errors > 0);
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    wait_until("the points", Duration::from_secs(10), || stored_points(&store, SERVER).len() == 3);
    assert_eq!(stored_points(&store, SERVER), [now - 20 * day, now - day, now]);
    let mut tps = Vec::new();
    store.reader().unwrap().metrics(SERVER, now - 2 * day, now + 1, |p| tps.push(p.tps)).unwrap();
    assert_eq!(tps, [None, Some(20.0)], "the range and a missing TPS are kept");
    assert!(store.shutdown(Vec::new()));
    cfg.retention_days = 14;
    let (store, again) = open(&cfg).unwrap();
    assert_eq!(again.epoch, rec.epoch, "metrics points do not spoil a clean shutdown");
    wait_until("retention", Duration::from_secs(10), || stored_points(&store, SERVER).len() == 2);
    assert_eq!(stored_points(&store, SERVER), [now - day, now]);
    assert_eq!(stored_points(&store, OTHER), [now]);
    store.shutdown(Vec::new());
}

#[test]
fn a_metrics_flood_stores_one_point_per_server_per_five_seconds() {
    let dir = tempdir().unwrap();
    let (store, _) = open(&config(dir.path().join("history.db"))).unwrap();
    let start = now_ms() / 5_000 * 5_000 - 3_600_000;
    // 1,000 points 100 ms apart: 100 s of one server's time, 20 slots.
    for i in 0..1_000 {
        store.append_metric(point(SERVER, start + i * 100, Some(20.0)));
    }
    store.append_metric(point(OTHER, start, Some(20.0)));
    let first_of_each_slot: Vec<i64> = (0..20).map(|k| start + k * 5_000).collect();
    wait_until("the points", Duration::from_secs(10), || stored_points(&store, OTHER).len() == 1);
    assert_eq!(stored_points(&store, SERVER), first_of_each_slot);
    store.shutdown(Vec::new());
}

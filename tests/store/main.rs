//! Integration tests of `aymc_hub::store` that need a process of their own:
//! a SIGKILL in the middle of writing, and a disk that refuses to grow
//! (`RLIMIT_FSIZE` with `SIGXFSZ` ignored, so writes fail with `EFBIG`). The
//! child is this test binary again, running one `child_*` test selected by
//! the `AYMC_STORE_CHILD` environment variable (without it those tests do
//! nothing). Plus an ignored benchmark of the writer's sustained ingest
//! rate:
//!
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/aymc-hub/target \
//!   cargo test --release --test store -- --ignored --nocapture ingest_rate
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aymc_hub::config::HistoryConfig;
use aymc_hub::protocol::{Level, Time};
use aymc_hub::store::{self, LogQuery, Store, StoredLog};
use tempfile::{tempdir, TempDir};
use uuid::Uuid;

const SERVER: Uuid = Uuid::from_u128(0x550e8400_e29b_41d4_a716_446655440000);
const CHILD_ENV: &str = "AYMC_STORE_CHILD";
const PATH_ENV: &str = "AYMC_STORE_PATH";

/// The database file in a test's temporary directory.
fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("history.db")
}

fn config(path: &Path) -> HistoryConfig {
    HistoryConfig { db_path: Some(path.to_path_buf()), ..HistoryConfig::default() }
}

/// A log entry shaped as the hub stores it.
fn entry(epoch: &str, seq: u64, message: &str, exception: &str) -> StoredLog {
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let time = Time::from_unix_ms(ts_ms).unwrap();
    let mut data = serde_json::json!({
        "server_id": SERVER, "timestamp": time, "level": "INFO", "source": "server", "message": message,
    });
    if !exception.is_empty() {
        data["exception"] = exception.into();
    }
    let envelope = serde_json::json!({
        "type": "log_entry", "channel": format!("server:{SERVER}:logs"), "data": data,
        "timestamp": time, "seq": seq, "epoch": epoch,
    });
    StoredLog {
        server: SERVER,
        seq,
        epoch: epoch.into(),
        ts_ms,
        level: Level::Info,
        source: "server".into(),
        message: message.into(),
        exception: exception.into(),
        envelope: envelope.to_string(),
        offset: (1 << 40) + seq * 80,
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs child test `name` of this binary with `path` and returns it.
fn spawn_child(name: &str, path: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env(PATH_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// In a child: the database path, or `None` when this is not the child.
fn child_path(name: &str) -> Option<PathBuf> {
    (std::env::var(CHILD_ENV).ok()? == name).then(|| PathBuf::from(std::env::var_os(PATH_ENV).unwrap()))
}

/// Child: writes entries 1..=500 and waits until they are committed, says
/// `READY <epoch>`, then keeps appending (unflushed ones are lost when it is
/// killed) until SIGKILL.
#[test]
fn child_killed_while_writing() {
    let Some(path) = child_path("child_killed_while_writing") else { return };
    let (store, rec) = store::open(&config(&path)).unwrap();
    for seq in 1..=500 {
        store.append(entry(&rec.epoch, seq, &format!("before the kill {seq}"), ""));
    }
    store.save_counters(vec![(format!("server:{SERVER}:metrics"), 77)]);
    wait_until("commit", Duration::from_secs(10), || store.stats().pending == 0);
    std::thread::sleep(Duration::from_millis(300));
    println!("READY {}", rec.epoch);
    // Until SIGKILL (or a minute, should the parent be gone).
    let mut seq = 500;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        seq += 1;
        store.append(entry(&rec.epoch, seq, "racing the kill", ""));
        if seq.is_multiple_of(100) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn sigkill_gives_a_new_epoch_and_nothing_is_issued_twice() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempdir().unwrap();
    let mut child = spawn_child("child_killed_while_writing", &db(&dir));
    // The harness prints `test NAME ... ` before the child's first line.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, epoch)) = line.split_once("READY ") {
                let _ = tx.send(epoch.trim().to_string());
            }
        }
    });
    let epoch = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(epoch) => epoch,
        Err(e) => {
            let _ = child.kill();
            panic!("the child never got ready: {e}");
        }
    };
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (store, rec) = store::open(&config(&db(&dir))).unwrap();
    assert!(rec.new_epoch, "a killed hub never keeps its epoch");
    assert_ne!(rec.epoch, epoch);
    let stored_max = rec.seqs[&format!("server:{SERVER}:logs")];
    assert!(stored_max >= 500, "{stored_max}");
    assert_eq!(rec.seqs[&format!("server:{SERVER}:metrics")], 77);
    assert_eq!(rec.offsets[&SERVER], (1 << 40) + stored_max * 80, "the offset of the last stored line");
    assert!(rec.recent.is_empty());

    // What was committed is a gap-free prefix: batches are atomic.
    let reader = store.reader().unwrap();
    let mut q = LogQuery { limit: 1000, ..LogQuery::new(SERVER) };
    let mut seqs = Vec::new();
    loop {
        let page = reader.query(&q).unwrap();
        seqs.splice(0..0, page.messages.iter().map(|m| m.seq));
        match page.next_before_seq {
            Some(n) => q.before_seq = Some(n),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=stored_max).collect::<Vec<_>>());
    assert_eq!(store.stats().stored_entries, stored_max);

    // The new epoch continues above everything stored.
    store.append(entry(&rec.epoch, stored_max + 1, "after the restart", ""));
    assert!(store.shutdown(vec![]));
    let (_, again) = store::open(&config(&db(&dir))).unwrap();
    assert_eq!(again.epoch, rec.epoch);
    assert_eq!(again.recent[&SERVER], vec![(stored_max + 1, again.recent[&SERVER][0].1.clone())]);
    assert!(again.evicted.is_empty(), "the line starts the new epoch");
}

fn set_fsize_limit(bytes: libc::rlim_t) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

/// Child: the file may not grow past 512 KiB (writes fail with EFBIG), so
/// the writer fails, counts, keeps appending in memory; then the limit is
/// lifted and everything is written.
#[test]
fn child_disk_full() {
    let Some(path) = child_path("child_disk_full") else { return };
    // SAFETY: ignoring a signal; no handler runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let (store, rec) = store::open(&config(&path)).unwrap();
    for seq in 1..=10 {
        store.append(entry(&rec.epoch, seq, "before the limit", ""));
    }
    wait_until("commit", Duration::from_secs(10), || store.stats().pending == 0);
    set_fsize_limit(512 * 1024);
    let body = "y".repeat(1024);
    let entries: Vec<StoredLog> = (11..=3010).map(|seq| entry(&rec.epoch, seq, &body, "")).collect();
    let start = Instant::now();
    for e in entries {
        store.append(e);
    }
    let took = start.elapsed();
    println!("APPEND 3000 took {took:?}");
    assert!(took < Duration::from_millis(500), "append must not wait on the disk: {took:?}");
    wait_until("a failed write", Duration::from_secs(10), || store.stats().write_errors > 0);
    std::thread::sleep(Duration::from_millis(2500));
    let stats = store.stats();
    println!("FAILING {stats:?}");
    assert!(stats.failing);
    assert!(stats.write_errors >= 2, "retried: {stats:?}");
    assert!(stats.last_error.is_some());
    assert!(stats.pending > 0 && stats.dropped == 0);
    // Reads still work meanwhile.
    assert!(store.reader().unwrap().query(&LogQuery::new(SERVER)).unwrap().messages.len() >= 10);

    set_fsize_limit(libc::RLIM_INFINITY);
    wait_until("recovery", Duration::from_secs(15), || store.stats().pending == 0);
    let stats = store.stats();
    println!("RECOVERED {stats:?}");
    assert!(!stats.failing);
    assert_eq!(stats.stored_entries, 3010);
    assert!(store.shutdown(vec![]), "nothing was lost, so the shutdown is clean");
    println!("CHILD OK");
}

#[test]
fn a_full_disk_is_survived_and_retried() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempdir().unwrap();
    let child = spawn_child("child_disk_full", &db(&dir));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("CHILD OK"));
    let (store, rec) = store::open(&config(&db(&dir))).unwrap();
    assert!(!rec.new_epoch);
    let page = store.reader().unwrap().query(&LogQuery { limit: 1000, ..LogQuery::new(SERVER) }).unwrap();
    assert_eq!(page.messages.last().map(|m| m.seq), Some(3010));
    assert_eq!(page.next_before_seq, Some(2011));
    store.shutdown(vec![]);
}

/// Realistic console lines from a small vocabulary (a fixed pseudo-random
/// sequence), one in 50 with a stack trace.
fn bench_line(i: u64) -> (String, String) {
    const WORDS: [&str; 24] = [
        "Player",
        "joined",
        "the",
        "game",
        "left",
        "Saving",
        "chunks",
        "for",
        "level",
        "world",
        "Can't",
        "keep",
        "up!",
        "Is",
        "server",
        "overloaded?",
        "Running",
        "behind",
        "ticks",
        "skipping",
        "entity",
        "villager",
        "moved",
        "wrongly!",
    ];
    let mut x = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut words = Vec::new();
    for _ in 0..(8 + (x >> 60)) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        words.push(WORDS[(x >> 59) as usize % WORDS.len()]);
    }
    let message = format!("{} #{i} at ({}, 64, {})", words.join(" "), (x >> 40) % 5000, (x >> 20) % 5000);
    let exception = if i.is_multiple_of(50) {
        "java.lang.IllegalStateException: Ticking entity\n\tat net.minecraft.world.level.Level.tick(Level.java:512)\n\t\
         at net.minecraft.server.MinecraftServer.tickChildren(MinecraftServer.java:1011)\n\t... 5 more"
            .to_string()
    } else {
        String::new()
    };
    (message, exception)
}

/// Appends `total` lines as fast as the writer takes them (keeping the queue
/// under its cap, so nothing is dropped) and returns lines/s until all were
/// committed.
fn ingest(store: &Store, epoch: &str, total: u64) -> f64 {
    let start = Instant::now();
    for seq in 1..=total {
        let (message, exception) = bench_line(seq);
        store.append(entry(epoch, seq, &message, &exception));
        if seq.is_multiple_of(1000) {
            while store.stats().pending > 40_000 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    wait_until("the writer", Duration::from_secs(600), || store.stats().pending == 0);
    total as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "benchmark: prints the sustained ingest rate"]
fn ingest_rate() {
    let dir = tempdir().unwrap();
    let total: u64 = std::env::var("AYMC_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let (store, rec) = store::open(&config(&db(&dir))).unwrap();
    let rate = ingest(&store, &rec.epoch, total);
    let stats = store.stats();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.stored_entries, total);
    let size = std::fs::metadata(db(&dir)).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.path().join("history.db-wal")).map(|m| m.len()).unwrap_or(0);
    println!(
        "ingest: {total} lines ({} envelope bytes, avg {} B) at {rate:.0} lines/s sustained; database {:.1} MB",
        stats.stored_bytes,
        stats.stored_bytes / total,
        size as f64 / 1e6
    );
    let reader = store.reader().unwrap();
    let start = Instant::now();
    let q = LogQuery { q: Some("villager moved".into()), limit: 100, ..LogQuery::new(SERVER) };
    let page = reader.query(&q).unwrap();
    println!("search 'villager moved': {} hits on the page in {:?}", page.messages.len(), start.elapsed());
    let start = Instant::now();
    let page = reader.query(&LogQuery { before_seq: Some(total / 2), limit: 1000, ..LogQuery::new(SERVER) }).unwrap();
    println!("page of {} in the middle in {:?}", page.messages.len(), start.elapsed());
    let mid = page.messages[0].ts_ms;
    let start = Instant::now();
    let q = LogQuery { from_ms: Some(mid), to_ms: Some(mid + 100), limit: 1000, ..LogQuery::new(SERVER) };
    let page = reader.query(&q).unwrap();
    println!("100 ms window in the middle: {} entries in {:?}", page.messages.len(), start.elapsed());
    let start = Instant::now();
    let q = LogQuery { q: Some("Ticking entity".into()), before_seq: Some(total / 10), ..LogQuery::new(SERVER) };
    let page = reader.query(&q).unwrap();
    println!(
        "search 'Ticking entity' deep (before {}): {} hits in {:?}",
        total / 10,
        page.messages.len(),
        start.elapsed()
    );
    store.shutdown(vec![]);
}

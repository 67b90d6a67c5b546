//! Extreme input through the real binary, which must neither hurt other
//! users nor the hub: stored-log queries crafted to be slow (PROTOCOL.md
//! 11.4), configuration values out of range (CONFIG.md), token times near
//! the ends of the integers (2.4).

use std::path::Path;
use std::time::{Duration, Instant};

use aymc_hub::config::HistoryConfig;
use aymc_hub::protocol::{Level, Time};
use aymc_hub::store::{self, StoredLog};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// Stores `lines` INFO lines of SERVER_A ("a player joined a game on a
/// server #N") with the hub's own store, as a hub would have, and closes
/// it cleanly.
fn big_history(db: &Path, lines: u64) {
    let cfg = HistoryConfig { db_path: Some(db.to_path_buf()), ..HistoryConfig::default() };
    let (store, rec) = store::open(&cfg).unwrap();
    let server = Uuid::parse_str(SERVER_A).unwrap();
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let time = Time::from_unix_ms(ts_ms).unwrap();
    for seq in 1..=lines {
        let message = format!("a player joined a game on a server #{seq}");
        let envelope = json!({
            "type": "log_entry", "channel": logs(SERVER_A),
            "data": {"server_id": SERVER_A, "timestamp": time, "level": "INFO", "source": "server", "message": message},
            "timestamp": time, "seq": seq, "epoch": rec.epoch,
        });
        store.append(StoredLog {
            server,
            seq,
            epoch: rec.epoch.clone(),
            ts_ms,
            level: Level::Info,
            source: "server".into(),
            message,
            exception: String::new(),
            envelope: envelope.to_string(),
            offset: 0,
        });
        // Stay well under the store's queue caps (nothing may be dropped).
        if seq.is_multiple_of(1000) {
            let start = Instant::now();
            while store.stats().pending > 10_000 {
                assert!(start.elapsed() < Duration::from_secs(60), "the store does not keep up");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert!(store.shutdown(Vec::new()), "the history closes cleanly");
}

fn logs_request(query: &str, close: bool) -> String {
    format!(
        "GET /api/v1/servers/{SERVER_A}/logs?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{}\r\n",
        admin_token(),
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_slow_stored_logs_query_is_stopped_with_503_and_the_next_query_is_answered() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    big_history(&db, 100_000);
    let hub = HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"", db.display())).start();

    // One word of 3,000 tokens is a phrase FTS5 tries on every stored
    // line: about a minute of work on this database without a deadline.
    let phrase = vec!["a"; 3000].join(".");
    let mut conn = HttpConn::connect(hub.addr);
    let start = Instant::now();
    conn.send(logs_request(&format!("q={phrase}"), false).as_bytes());
    let resp = conn.read_response(Duration::from_secs(20)).unwrap_or_else(|e| panic!("no answer: {e}"));
    let took = start.elapsed();
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after"), Some("5"), "{:?}", resp.headers);
    let message = resp.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("2 s"), "{message}");
    assert!(took >= Duration::from_millis(1500), "stopped at the deadline, not before: {took:?}");

    // The same connection and the query thread's same reader go on.
    let resp = conn.request(logs_request("q=player&limit=5", false).as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(seqs(&resp.json()), (99_996..=100_000).collect::<Vec<u64>>());

    // 2,700 copies of a common word (they fit in a request head) are one
    // word: with a level no line has, the search walks every line once,
    // not 2,700 times.
    let repeated = vec!["a"; 2700].join("+");
    let start = Instant::now();
    let resp = raw_http(hub.addr, logs_request(&format!("q={repeated}&level=ERROR"), true).as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"messages": [], "next_before_seq": null}));
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());

    let seventeen: Vec<String> = (1..=17).map(|i| format!("word{i}")).collect();
    let resp = raw_http(hub.addr, logs_request(&format!("q={}", seventeen.join("+")), true).as_bytes());
    assert_http_error(&resp, 400, "bad_request", Some("'q' may have at most 16 different words"));
}

/// Every duration and size key with its documented range (CONFIG.md 4).
const RANGES: &[(&str, &str, u64, u64)] = &[
    ("auth", "leeway_s", 0, 86_400),
    ("auth", "expiry_notice_s", 0, 86_400),
    ("limits", "ping_interval_s", 1, 86_400),
    ("limits", "pong_timeout_s", 1, 86_400),
    ("limits", "write_timeout_s", 1, 86_400),
    ("limits", "head_timeout_s", 1, 86_400),
    ("limits", "shutdown_grace_s", 0, 86_400),
    ("monitor", "health_interval_s", 1, 86_400),
    ("history", "retention_days", 0, 365),
    ("limits", "max_message_bytes", 1, 64 << 20),
    ("limits", "publish_max_bytes", 1, 64 << 20),
    ("limits", "head_max_bytes", 1, 1 << 20),
    ("limits", "head_max_headers", 1, 1024),
    ("limits", "client_queue", 1, 1_000_000),
    ("limits", "max_connections", 1, 1_000_000),
    ("limits", "max_connections_per_ip", 0, 1_000_000),
    ("limits", "max_subscriptions", 1, 1_000_000),
    ("limits", "compress_min_bytes", 0, 64 << 20),
    ("history", "log_lines", 0, 1_000_000),
    ("history", "max_bytes", 0, 16 << 30),
    ("history", "retention_mb_per_server", 0, 1 << 20),
];

/// A config that sets `[table] key = value`.
fn config_with(table: &str, key: &str, value: u64) -> String {
    let secret = format!("jwt_secret = \"{SECRET}\"\n");
    if table == "auth" {
        format!("[auth]\n{secret}{key} = {value}\n")
    } else {
        format!("[auth]\n{secret}\n[{table}]\n{key} = {value}\n")
    }
}

#[test]
fn check_config_refuses_durations_and_sizes_out_of_range() {
    let dir = temp_dir();
    let check = |name: &str, toml: String| {
        let path = write_file(&dir, name, &toml);
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[])
    };
    for &(table, key, min, max) in RANGES {
        let mut bad = vec![u64::MAX, i64::MAX as u64, max + 1];
        if min > 0 {
            bad.push(0);
        }
        for value in bad {
            let out = check(&format!("{key}-{value}.toml"), config_with(table, key, value));
            assert_eq!(out.code, Some(2), "{table}.{key} = {value}: {out:?}");
            let lines = out.stderr_lines();
            assert_eq!(lines.len(), 1, "{table}.{key} = {value}: one line: {:?}", out.stderr);
            assert!(lines[0].contains(&format!("{table}.{key}")), "names the key: {}", lines[0]);
            assert!(lines[0].contains(&format!("from {min} to {max}")), "says the range: {}", lines[0]);
        }
        for value in [min, max] {
            let out = check(&format!("{key}-{value}.toml"), config_with(table, key, value));
            assert_eq!(out.code, Some(0), "{table}.{key} = {value} is valid: {out:?}");
        }
    }
}

#[test]
fn the_longest_timeouts_allowed_run_without_overflow() {
    // Every duration at its maximum: each becomes a deadline of the
    // connection, the agent link or the shutdown, and none may overflow.
    // (`expiry_notice_s` at a day would only send TOKEN_EXPIRING at once.)
    let mut hub = HubConfig::new()
        .auth("leeway_s = 86400")
        .limits(
            "ping_interval_s = 86400\npong_timeout_s = 86400\nwrite_timeout_s = 86400\nhead_timeout_s = 86400\n\
             shutdown_grace_s = 86400",
        )
        .extra("[monitor]\nhealth_interval_s = 86400\n\n[history]\nretention_days = 365")
        .start();
    let mut c = hub.connect_admin();
    c.subscribe_ok(&[&logs(SERVER_A)]);
    hub.publish(&log_body(SERVER_A, "still here"));
    assert_eq!(c.recv_json()["data"]["message"], "still here");
    c.ping_pong();
    assert_eq!(http_get(hub.addr, "/healthz", None).status, 200);
    hub.signal(libc::SIGTERM);
    // The client answers the Close, so the day-long grace is not waited out.
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 1001);
    let status = hub.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "a clean exit within 10 s: {status:?}");
}

/// A signed token of admin `sub` whose `exp` and `nbf` are `exp` and `nbf`
/// (left out when `Null`).
fn token_with_times(sub: &str, exp: Value, nbf: Value) -> String {
    let mut claims = json!({"sub": sub, "role": "admin", "iat": now()});
    if !exp.is_null() {
        claims["exp"] = exp;
    }
    if !nbf.is_null() {
        claims["nbf"] = nbf;
    }
    sign(&claims)
}

#[test]
fn token_times_at_the_ends_of_the_integers_get_a_clean_answer() {
    // The largest leeway, so that `exp + leeway` and `now +- leeway` are
    // as large as they get.
    let mut hub = HubConfig::new().auth("leeway_s = 86400").start();
    let soon = json!(now() + 600);
    let far = [json!(i64::MAX), json!(u64::MAX), json!(1e19)];
    for exp in &far {
        let token = token_with_times(&new_id(), exp.clone(), Value::Null);
        let resp = raw_http(hub.addr, upgrade_request(&ws_path(&token), &[("Connection", "close")]).as_bytes());
        assert_upgraded(&resp);
        assert_eq!(http_get(hub.addr, "/api/v1/stats", Some(&token)).status, 200, "exp {exp}");
    }
    let refused = [
        (json!(i64::MIN), Value::Null, "invalid claims"),
        (json!(-1), Value::Null, "invalid claims"),
        (json!(1e300), Value::Null, "invalid claims"),
        (json!(0), Value::Null, "token expired"),
        (soon.clone(), json!(u64::MAX), "token not yet valid"),
        (soon.clone(), json!(i64::MAX), "token not yet valid"),
        (soon.clone(), json!(i64::MIN), "invalid claims"),
        (soon.clone(), json!(-1), "invalid claims"),
    ];
    for (exp, nbf, message) in refused {
        let token = token_with_times(&new_id(), exp.clone(), nbf.clone());
        let resp = raw_http(hub.addr, upgrade_request(&ws_path(&token), &[]).as_bytes());
        assert_http_error(&resp, 401, "unauthorized", Some(message));
        let resp = http_get(hub.addr, "/api/v1/stats", Some(&token));
        assert_http_error(&resp, 401, "unauthorized", Some(message));
    }

    // A session whose token never expires lives through the timers' ticks
    // (TOKEN_EXPIRING, the 4001 check) and can refresh to another one.
    let me = new_id();
    let mut client = hub.connect(&token_with_times(&me, json!(i64::MAX), Value::Null));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    client.expect_no_message(Duration::from_millis(600));
    let token = token_with_times(&me, json!(u64::MAX), json!(-0.0));
    client.send_json(&json!({"type": "auth", "data": {"token": token}}));
    let msg = client.recv_json();
    assert_eq!(msg["data"]["code"], "AUTHENTICATED", "{msg}");
    assert_eq!(msg["data"]["data"]["expires_at"], json!(i64::MAX), "{msg}");
    hub.publish(&log_body(SERVER_A, "still streaming"));
    assert_eq!(client.recv_json()["data"]["message"], "still streaming");
    assert!(hub.wait_exit(Duration::from_millis(100)).is_none(), "the hub is still running");
    hub.connect_admin().ping_pong();
}

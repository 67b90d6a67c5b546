//! On-disk history through the real binary: persistence and `since` across a
//! restart, the stored-logs endpoint (paging, filters, search, text), a
//! SIGKILL while logs flow, a full disk and a broken database file, and the
//! agent offset resumed after a hub restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake_agent::FakeAgent;
use crate::support::*;

/// A hub keeping its history in `db`.
fn hub_with_db(db: &std::path::Path) -> Hub {
    HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"\nlog_lines = 50", db.display())).start()
}

fn stop(mut hub: Hub) {
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(8)).is_some_and(|s| s.success()), "clean exit");
}

/// `GET /api/v1/servers/{SERVER_A}/logs?{query}` with an admin token.
fn stored(hub: &Hub, query: &str) -> Value {
    let resp = http_get(hub.addr, &format!("/api/v1/servers/{SERVER_A}/logs?{query}"), Some(&admin_token()));
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// Waits until the store holds `n` lines of SERVER_A (commits every 200 ms).
fn wait_stored(hub: &Hub, n: usize) -> Value {
    let mut page = Value::Null;
    let ok = wait_until(Duration::from_secs(5), || {
        page = stored(hub, "limit=1000");
        page["messages"].as_array().is_some_and(|m| m.len() >= n)
    });
    assert!(ok, "the store never held {n} lines: {page}");
    page
}

#[test]
fn epoch_seq_and_since_survive_a_restart() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let hub = hub_with_db(&db);
    for i in 0..30 {
        hub.publish(&log_body(SERVER_A, &format!("line {i}")));
    }
    hub.publish(&metrics_body(SERVER_A, 1, None));
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    stop(hub);

    let hub = hub_with_db(&db);
    assert_eq!(hub.stats()["epoch"], epoch.as_str(), "a clean restart keeps the epoch");
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "subscribe", "data": {"channels": [logs(SERVER_A)], "since": {logs(SERVER_A): {"seq": 25, "epoch": epoch}}}}));
    assert_eq!(c.recv_json()["data"]["recovered"], json!({logs(SERVER_A): true}));
    let replayed: Vec<u64> = (0..5).map(|_| c.recv_json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, [26, 27, 28, 29, 30]);
    hub.publish(&log_body(SERVER_A, "after restart"));
    let live = c.recv_json();
    assert_eq!((live["seq"].as_u64(), live["epoch"].as_str()), (Some(31), Some(epoch.as_str())));
    hub.publish(&metrics_body(SERVER_A, 2, None));
    let mut m = hub.connect_admin();
    m.subscribe_ok(&[&metrics(SERVER_A)]);
    assert_eq!(m.recv_json()["seq"], 2, "metrics seq continues too");
}

#[test]
fn stored_logs_page_filter_search_and_render_text() {
    let dir = temp_dir();
    let hub = hub_with_db(&dir.path().join("history.db"));
    for i in 1..=40 {
        let mut body = log_body(SERVER_A, &format!("line {i} {}", if i % 10 == 0 { "creeper exploded" } else { "ok" }));
        if i % 10 == 0 {
            body["data"]["level"] = json!("WARN");
            body["data"]["exception"] = json!("java.lang.Boom\n\tat x.y(Z.java:1)");
        }
        hub.publish(&body);
    }
    wait_stored(&hub, 40);
    let newest = stored(&hub, "limit=15");
    assert_eq!(seqs(&newest), (26..=40).collect::<Vec<u64>>());
    assert_eq!(newest["next_before_seq"], 26);
    let older = stored(&hub, "limit=15&before_seq=26");
    assert_eq!(seqs(&older), (11..=25).collect::<Vec<u64>>());
    let forward = stored(&hub, "after_seq=35&limit=3");
    assert_eq!(seqs(&forward), [36, 37, 38]);
    assert_eq!(forward["next_after_seq"], 38);
    assert_eq!(seqs(&stored(&hub, "after_seq=38")), [39, 40]);
    assert_eq!(stored(&hub, "after_seq=38")["next_after_seq"], Value::Null);
    assert_eq!(seqs(&stored(&hub, "level=WARN")), [10, 20, 30, 40]);
    assert_eq!(seqs(&stored(&hub, "q=creeper%20exploded&limit=2")), [30, 40]);
    assert_eq!(seqs(&stored(&hub, "q=Boom")), [10, 20, 30, 40], "search covers the exception");

    let req = format!(
        "GET /api/v1/servers/{SERVER_A}/logs?level=WARN&limit=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        admin_token()
    );
    let resp = raw_http(hub.addr, req.as_bytes());
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(" WARN [server] line 40 creeper exploded"), "{text}");
    assert_eq!(lines[1], "\tjava.lang.Boom");
    assert_eq!(lines[2], "\t\tat x.y(Z.java:1)");
}

#[test]
fn stored_logs_need_the_channel_acl_and_valid_parameters() {
    let hub = Hub::start("");
    let path = format!("/api/v1/servers/{SERVER_A}/logs");
    assert_http_error(&http_get(hub.addr, &path, None), 401, "unauthorized", Some("missing token"));
    let stranger = user_token(&new_id(), &[SERVER_B]);
    assert_http_error(&http_get(hub.addr, &path, Some(&stranger)), 403, "forbidden", None);
    let bad = http_get(hub.addr, &format!("{path}?limit=0"), Some(&admin_token()));
    assert_http_error(&bad, 400, "bad_request", None);
    let allowed = user_token(&new_id(), &[SERVER_A]);
    assert_eq!(http_get(hub.addr, &format!("{path}?token={allowed}"), None).status, 200);
}

#[test]
fn without_disk_history_the_endpoint_answers_from_memory() {
    let hub = Hub::start("");
    for i in 1..=5 {
        hub.publish(&log_body(SERVER_A, &format!("Player{i} joined the game")));
    }
    let page = stored(&hub, "q=player3");
    assert_eq!(seqs(&page), [3], "case-insensitive substring: {page}");
    assert_eq!(seqs(&stored(&hub, "limit=2")), [4, 5]);
}

#[test]
fn a_sigkill_loses_at_most_the_last_moments_and_never_reuses_a_seq() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let mut hub = hub_with_db(&db);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (acked, running, addr) = (Arc::clone(&acked), Arc::clone(&running), hub.addr);
        std::thread::spawn(move || {
            let mut conn = HttpConn::connect(addr);
            let token = service_token();
            let mut i = 0u64;
            while running.load(Ordering::SeqCst) {
                i += 1;
                let body = log_body(SERVER_A, &format!("line {i}")).to_string();
                conn.send(&publish_request(Some(&token), body.as_bytes()));
                match conn.read_response(Duration::from_secs(2)) {
                    Ok(r) if r.status == 202 => acked.lock().unwrap().push(Instant::now()),
                    _ => return,
                }
            }
        })
    };
    // Logs flow for over a second, so most lines are long settled at the kill.
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || acked.lock().unwrap().len() >= 3000));
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed()));
    let killed_at = Instant::now();
    hub.signal(libc::SIGKILL);
    hub.wait_exit(Duration::from_secs(5));
    running.store(false, Ordering::SeqCst);
    let _ = publisher.join();
    let acked = acked.lock().unwrap().clone();
    // The writer commits at least every 200 ms (or 1,000 entries): every
    // line acknowledged well before the kill is on disk.
    let settled = acked.iter().filter(|t| **t + Duration::from_millis(400) <= killed_at).count() as u64;

    let hub = hub_with_db(&db);
    let new_epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    assert_ne!(new_epoch, epoch, "after an unclean stop the epoch changes");
    // Page through everything stored, newest first.
    let mut stored_seqs = Vec::new();
    let mut query = "limit=1000".to_string();
    loop {
        let page = stored(&hub, &query);
        let mut s = seqs(&page);
        s.extend(stored_seqs);
        stored_seqs = s;
        match page["next_before_seq"].as_u64() {
            Some(b) => query = format!("limit=1000&before_seq={b}"),
            None => break,
        }
    }
    let n = stored_seqs.len() as u64;
    assert_eq!(stored_seqs, (1..=n).collect::<Vec<u64>>(), "no hole: every seq from 1 on, once");
    assert!(settled >= 1000, "the test publishes long enough: {settled}");
    assert!(n >= settled, "stored {n}; {settled} were acknowledged more than 400 ms before the kill");
    assert!(n <= acked.len() as u64 + 1, "nothing stored that was not published");
    hub.publish(&log_body(SERVER_A, "after the kill"));
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 1}}));
    let last = &c.recv_json()["data"]["messages"][0];
    assert_eq!(last["epoch"], new_epoch.as_str());
    assert_eq!(last["seq"].as_u64(), Some(n + 1), "the new epoch continues above every stored seq");
}

#[test]
fn a_full_disk_does_not_stop_live_streaming() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let mut config = HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"", db.display()));
    config.fsize_limit = Some(256 * 1024);
    let hub = config.start();
    let mut c = hub.connect_admin();
    c.subscribe_ok(&[&logs(SERVER_A)]);
    let big = "x".repeat(2000);
    for i in 0..400 {
        hub.publish(&log_body(SERVER_A, &format!("{i} {big}")));
        assert_eq!(c.recv_json()["data"]["message"].as_str().map(|m| m.starts_with(&format!("{i} "))), Some(true));
    }
    let stats = hub.wait_stats(Duration::from_secs(10), |s| s["history"]["disk"]["failing"] == true);
    assert!(stats["history"]["disk"]["write_errors"].as_u64() > Some(0), "{stats}");
    assert!(stats["history"]["disk"]["last_error"].is_string());
    let metrics = http_get(hub.addr, "/metrics", None).text();
    assert!(metrics.contains("aymc_history_disk_failing 1"), "{metrics}");
    hub.publish(&log_body(SERVER_A, "still streaming"));
    assert_eq!(c.recv_json()["data"]["message"], "still streaming");
}

#[test]
fn a_broken_database_file_is_set_aside_and_streaming_goes_on() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    std::fs::write(&db, b"this is not a sqlite database, just some bytes ".repeat(200)).unwrap();
    let hub = hub_with_db(&db);
    let mut c = hub.connect_admin();
    c.subscribe_ok(&[&logs(SERVER_A)]);
    hub.publish(&log_body(SERVER_A, "hello"));
    assert_eq!(c.recv_json()["data"]["message"], "hello");
    let aside = std::fs::read_dir(dir.path().join("."))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("history.db.corrupt-"));
    assert!(aside, "the broken file is moved aside");
    wait_stored(&hub, 1);
}

#[test]
fn a_restarted_hub_resumes_the_agent_stream_after_the_stored_offset() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let agent = FakeAgent::start(&[(SERVER_A, "survival")]);
    let start = || {
        HubConfig::new()
            .extra(&format!(
                "[history]\ndb_path = \"{}\"\n\n[monitor]\nhealth_interval_s = 1\n\n[[agents]]\nid = \"6f1c2a9e-0000-4000-8000-00000000000a\"\naddress = \"{}\"\n",
                db.display(),
                agent.address()
            ))
            .start()
    };
    let hub = start();
    let mut last = 0;
    for i in 0..20 {
        last = agent.log(SERVER_A, &format!("line {i}"));
    }
    wait_stored(&hub, 20);
    stop(hub);
    let _hub = start();
    assert!(wait_until(WAIT, || agent.state().stream_requests.len() >= 2));
    let requests = agent.state().stream_requests.clone();
    assert_eq!(requests[0].1, 0, "the first start knows nothing");
    assert_eq!(requests.last().unwrap().1, last, "after a restart: the last stored offset");
}

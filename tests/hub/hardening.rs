//! Regression tests for holes a review found: what one client (signed in or
//! not) could cost the one thread everybody shares, and the cookie rule of
//! PROTOCOL.md section 1 row 4. Each is named after what it pins.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    aymc_loadgen::stats::status_bytes(&pid.to_string(), "VmRSS").unwrap_or(0) / 1024
}

/// How long a `ping` takes to come back as a `pong`.
fn ping_time(client: &mut Client) -> Duration {
    let start = Instant::now();
    client.send_json(&json!({"type": "ping"}));
    let pong = client.recv_json_within(Duration::from_secs(30));
    assert_eq!(pong["type"], "pong");
    start.elapsed()
}

#[test]
fn a_subscribe_naming_64000_channels_is_refused_whole_and_holds_no_one_up() {
    let hub = Hub::start("");
    let mut other = hub.connect_admin();
    let mut abuser = hub.connect_admin();
    // 64,000 distinct invalid names in about 400 KB (it fits in 512 KiB).
    let names: Vec<String> = (0..64_000u32).map(|i| format!("{i:x}")).collect();
    abuser.send_json(&json!({"type": "subscribe", "data": {"channels": names}}));
    let waited = ping_time(&mut other);
    assert!(waited < Duration::from_secs(1), "another client's ping waited {waited:?}");
    let refusal = abuser.recv_json_within(Duration::from_secs(10));
    assert_error_code(&refusal, "TOO_MANY_SUBSCRIPTIONS");
    assert!(refusal["data"].get("data").is_none(), "no details: {refusal}");
    abuser.expect_no_message(QUIET);
    // Nothing changed: the connection works and has no subscription.
    abuser.subscribe_ok(&[&logs(SERVER_A)]);
    assert_eq!(hub.stats()["subscriptions"], json!({ logs(SERVER_A): 1 }));
}

#[test]
fn pipelined_requests_that_are_never_read_are_capped_in_bytes_and_dropped_at_the_write_timeout() {
    let hub = Hub::start("write_timeout_s = 2");
    let before = rss_kib(hub.pid());
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(16_000);
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        let mut s = connect_small_rcvbuf(hub.addr, 4096);
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        // The hub stops reading once a connection's answers pass the cap,
        // so the rest of the requests may stay in our send buffer.
        let _ = s.write_all(&request);
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(hub.pid()).saturating_sub(before);
    // At most about max_reply_bytes (1 MiB) each, plus buffers.
    assert!(grown < 20 * 2048, "20 connections that never read grew the hub by {grown} KiB");
    // None of them reads: they are dropped at the write timeout.
    hub.wait_stats(Duration::from_secs(10), |s| s["connections"].as_u64() == Some(1));
    let mut buf = [0u8; 4096];
    for mut s in conns {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
}

#[test]
fn a_client_that_reads_history_in_a_trickle_is_closed_at_the_write_timeout() {
    let hub = Hub::start("write_timeout_s = 2\nrate_burst = 100");
    let message = "x".repeat(1000);
    for _ in 0..1000 {
        hub.publish(&log_body(SERVER_A, &message));
    }
    let stream = connect_small_rcvbuf(hub.addr, 1 << 20);
    let mut ws = RawWs::connect_stream(stream, &admin_token());
    for _ in 0..40 {
        ws.send_text(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 1000}}).to_string());
    }
    // 400 KB every 1.5 s: progress within every write timeout (the hub's
    // send buffer empties enough to take more), but far too slow to drain
    // the megabytes that wait.
    let start = Instant::now();
    let stream = &mut ws.conn.stream;
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 400 * 1024];
    let closed_after = loop {
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        if hub.stats()["connections"] == 1 {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "a trickling reader kept its queue for 20 s");
        std::thread::sleep(Duration::from_millis(1500));
    };
    assert!(closed_after < Duration::from_secs(12), "closed only after {closed_after:?}");
    hub.connect_admin().ping_pong();
}

#[test]
fn the_oldest_connection_sending_its_head_gets_408_when_max_pending_is_reached() {
    let hub = Hub::start("");
    let mut slow: Vec<HttpConn> = (0..1000)
        .map(|_| {
            let mut c = HttpConn::connect(hub.addr);
            c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            c
        })
        .collect();
    // Past the grace a connection gets to send its head, a client that
    // sends its head promptly still gets in.
    std::thread::sleep(Duration::from_millis(1200));
    let resp = http_get(hub.addr, "/healthz", None);
    assert_eq!(resp.status, 200);
    // The first slow one made room for it.
    let first = slow.first_mut().unwrap();
    let resp = first.read_response(Duration::from_secs(5)).expect("the oldest pending connection is answered");
    assert_http_error(&resp, 408, "request_timeout", None);
    // The others are still waiting for their heads and can finish them.
    let last = slow.last_mut().unwrap();
    last.send(b"\r\n");
    assert_eq!(last.read_response(Duration::from_secs(5)).unwrap().status, 200);
}

#[test]
fn five_thousand_trickling_heads_hold_at_most_max_pending_slots_in_bounded_memory_and_cpu() {
    let _ = rlimit::increase_nofile_limit(20_000);
    let hub = Hub::start("max_connections = 12000");
    let before = rss_kib(hub.pid());
    let mut slow: Vec<HttpConn> = (0..5000)
        .map(|_| {
            let mut c = HttpConn::connect(hub.addr);
            c.send(b"GET /healthz HTTP/1.1\r\n");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1200));
    // Each trickles one more header line; those past the grace make room.
    for c in &mut slow {
        c.stream.set_nonblocking(true).unwrap();
        let _ = c.stream.write_all(b"X-Slow: 1\r\n");
    }
    assert_eq!(http_get(hub.addr, "/healthz", None).status, 200, "a prompt client gets in");
    let stats = hub.wait_stats(Duration::from_secs(10), |s| s["connections"].as_u64().is_some_and(|n| n <= 1001));
    let pid = hub.pid().to_string();
    let cpu = aymc_loadgen::stats::cpu_seconds(&pid).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let busy = aymc_loadgen::stats::cpu_seconds(&pid).unwrap() - cpu;
    assert!(busy < 0.5, "{busy:.2} s of CPU in 2 s with 1,000 heads pending");
    let grown = rss_kib(hub.pid()).saturating_sub(before);
    assert!(grown < 20 * 1024, "{grown} KiB for 5,000 trickling heads; {stats}");
}

#[test]
fn a_websocket_message_that_trickles_is_closed_1008_at_the_message_timeout() {
    let hub = Hub::start("message_timeout_s = 2\npong_timeout_s = 60");
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let frame = masked(0x1, &[b'a'; 100_000]);
    let start = Instant::now();
    // One byte every 300 ms: never silent for the pong timeout, never done.
    for byte in frame.iter().take(30) {
        if !ws.try_send_bytes(&[*byte]) {
            break;
        }
        if let RawEvent::Frame(f) = ws.next_event(Duration::from_millis(300)) {
            assert_eq!(f.close_code(), Some(1008), "{f:?}");
            assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
            return;
        }
    }
    panic!("a message trickled for {:?} without a close", start.elapsed());
}

fn upgrade_with(hub: &Hub, extra: &[(&str, &str)]) -> HttpResponse {
    raw_http(hub.addr, upgrade_request("/api/v1/ws", extra).as_bytes())
}

#[test]
fn a_cookie_token_needs_the_hubs_own_or_a_listed_origin() {
    let hub = HubConfig::new().auth("allowed_origins = [\"https://panel.example\"]").start();
    let cookie = format!("token={}", admin_token());
    let with = |origin: Option<&str>| {
        let mut h = vec![("Cookie", cookie.as_str())];
        h.extend(origin.map(|o| ("Origin", o)));
        upgrade_with(&hub, &h)
    };
    assert_http_error(&with(Some("https://evil.example")), 403, "forbidden", None);
    assert_http_error(&with(None), 403, "forbidden", None);
    assert_upgraded(&with(Some("https://panel.example")));
    // The hub's own origin (its Host) passes although the list names only the panel.
    assert_upgraded(&with(Some("http://127.0.0.1")));
}

#[test]
fn without_allowed_origins_a_cookie_token_from_another_site_is_refused_and_query_tokens_pass() {
    let hub = Hub::start("");
    let token = admin_token();
    let cookie = format!("token={token}");
    let resp = upgrade_with(&hub, &[("Cookie", &cookie), ("Origin", "https://evil.example")]);
    assert_http_error(&resp, 403, "forbidden", None);
    assert_http_error(&upgrade_with(&hub, &[("Cookie", &cookie)]), 403, "forbidden", None);
    assert_upgraded(&upgrade_with(&hub, &[("Cookie", &cookie), ("Origin", "http://127.0.0.1")]));
    // A query token with any Origin, and one without Origin (wscat), pass.
    let resp = raw_http(hub.addr, upgrade_request(&ws_path(&token), &[("Origin", "https://any.example")]).as_bytes());
    assert_upgraded(&resp);
    assert_upgraded(&raw_http(hub.addr, upgrade_request(&ws_path(&token), &[]).as_bytes()));
    // No endpoint that takes a token serves a foreign page riding the
    // cookie, also when the cookie comes among others or twice (the first
    // `token` is the one used); the hub's own origin is served.
    let server = new_id();
    let paths = ["/api/v1/stats".to_string(), "/api/v1/servers".into(), format!("/api/v1/servers/{server}/logs")];
    let paths = [&paths[..], &[format!("/api/v1/servers/{server}/metrics")]].concat();
    let get = |path: &str, cookies: &[String], origin: &str| {
        let mut lines = vec![format!("GET {path} HTTP/1.1"), "Host: 127.0.0.1".into(), format!("Origin: {origin}")];
        lines.extend(cookies.iter().map(|c| format!("Cookie: {c}")));
        raw_http(hub.addr, head(&lines.iter().map(String::as_str).collect::<Vec<_>>()).as_bytes())
    };
    let two = [format!("a=b; {cookie}; token=x"), "token=y".into()];
    for path in &paths {
        for cookies in [std::slice::from_ref(&cookie), &two[..]] {
            let resp = get(path, cookies, "https://evil.example");
            assert_http_error(&resp, 403, "forbidden", Some("origin not allowed"));
            assert_eq!(get(path, cookies, "http://127.0.0.1").status, 200, "{path} {cookies:?}");
        }
    }
}

#[test]
fn channels_published_to_random_ids_are_forgotten_past_max_idle_channels() {
    let hub = Hub::start("max_idle_channels = 50");
    for _ in 0..400 {
        hub.publish(&notification_body(&new_id(), "hello"));
    }
    let stats = hub.wait_stats(Duration::from_secs(5), |s| s["channels_kept"].as_u64().is_some_and(|n| n <= 50));
    assert!(stats["channels_kept"].as_u64().unwrap() >= 40, "{stats}");
    // A channel created now continues above every forgotten seq.
    let user = new_id();
    let mut client = hub.connect(&user_token(&user, &[]));
    client.subscribe_ok(&[&notifications(&user)]);
    hub.publish(&notification_body(&user, "after"));
    let msg = client.recv_json();
    assert!(msg["seq"].as_u64().unwrap() >= 1, "{msg}");
}

#[test]
fn a_connect_storm_is_summed_up_in_the_log() {
    let hub = Hub::start("");
    let clients: Vec<Client> = (0..60).map(|_| hub.connect_admin()).collect();
    drop(clients);
    hub.wait_for_log(Duration::from_secs(5), |l| l.contains("more clients connected"))
        .expect("a summary line for the storm");
    let connected = hub.logs().iter().filter(|l| l.contains("client connected: user")).count();
    assert!(connected <= 10, "{connected} connect lines for 60 clients within a second or two");
}

#[test]
fn a_history_reply_stays_within_the_reply_cap() {
    let hub = Hub::start("max_reply_bytes = 100000");
    let message = "y".repeat(1000);
    for _ in 0..300 {
        hub.publish(&log_body(SERVER_A, &message));
    }
    let mut client = hub.connect_admin();
    client.send_json(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 1000}}));
    let reply: Value = client.recv_json();
    let messages = reply["data"]["messages"].as_array().unwrap();
    assert!(messages.len() < 100 && messages.len() > 50, "{} messages", messages.len());
    assert_eq!(messages.last().unwrap()["seq"], 300, "the newest are kept");
    assert_eq!(reply["data"]["complete"], false);
}

//! PROTOCOL.md sections 5 ("Lag", "Drops"), 5b and 6: keep-alive Pings,
//! the pong timeout, frame-level closes (1009, 1007, 1002), the write
//! timeout of a client that never reads, `MESSAGES_DROPPED` after a queue
//! overflow (status channels, alerts), and a logs subscriber that lags
//! within, or beyond, what the channel's ring keeps.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

#[test]
fn hub_sends_websocket_pings_at_the_ping_interval() {
    let hub = Hub::start("ping_interval_s = 1\npong_timeout_s = 5");
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let start = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 2 {
        match ws.next_event(Duration::from_secs(4)) {
            RawEvent::Frame(f) if f.opcode == OP_PING => {
                pings.push(start.elapsed());
                assert!(!f.masked, "server frames are not masked");
                ws.send_bytes(&masked(OP_PONG, &f.payload));
            }
            other => panic!("expected a Ping within 4 s of the last one, got {other:?} (pings so far at {pings:?})"),
        }
    }
    assert!(pings[1] - pings[0] >= Duration::from_millis(500), "Pings too close together: {pings:?}");
}

#[test]
fn a_silent_client_is_dropped_without_a_close_frame() {
    let hub = Hub::start("ping_interval_s = 1\npong_timeout_s = 2");
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let start = Instant::now();
    loop {
        match ws.next_event(Duration::from_secs(8)) {
            RawEvent::Frame(f) if f.opcode == OP_PING => {}
            RawEvent::Eof | RawEvent::Reset(_) => break,
            other => panic!("a silent client should see Pings and then the end of the connection, got {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "dropped after {elapsed:?}, before pong_timeout_s = 2");
    assert!(elapsed <= Duration::from_secs(6), "dropped only after {elapsed:?}");
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let hub = Hub::start("ping_interval_s = 1\npong_timeout_s = 2");
    let mut client = hub.connect_admin();
    // `next_event` keeps reading, so tungstenite answers every Ping.
    client.expect_no_message(Duration::from_millis(4500));
    client.ping_pong();
}

#[test]
fn a_message_over_max_message_bytes_closes_1009() {
    let hub = Hub::start("max_message_bytes = 1024");
    let mut client = hub.connect_admin();
    let ping = |pad: usize| json!({"type": "ping", "pad": "x".repeat(pad)}).to_string();
    client.send_text(&ping(900));
    assert_eq!(client.recv_json()["type"], "pong");
    client.send_text(&ping(2000));
    let (code, seen) = client.expect_close(WAIT);
    assert_eq!(code, 1009, "{seen:?}");

    // Fragments count together.
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    let text = ping(1100);
    let (a, b) = text.as_bytes().split_at(600);
    ws.send_bytes(&encode_frame(false, OP_TEXT, a, Some([1, 2, 3, 4])));
    ws.send_bytes(&encode_frame(true, OP_CONT, b, Some([5, 6, 7, 8])));
    assert_eq!(ws.expect_close(WAIT), 1009);
}

#[test]
fn invalid_utf8_in_a_text_frame_closes_1007() {
    let hub = Hub::start("");
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    ws.send_bytes(&masked(OP_TEXT, &[b'{', 0xff, 0xfe, b'}']));
    assert_eq!(ws.expect_close(WAIT), 1007);
}

#[test]
fn protocol_errors_close_1002() {
    let hub = Hub::start("");
    let frames = [
        ("unmasked client frame", encode_frame(true, OP_TEXT, br#"{"type":"ping"}"#, None)),
        ("reserved opcode", masked(0x3, b"x")),
        ("RSV1 without an extension", {
            let mut f = masked(OP_TEXT, br#"{"type":"ping"}"#);
            f[0] |= 0x40;
            f
        }),
        ("continuation without a start", masked(OP_CONT, b"x")),
    ];
    for (what, frame) in frames {
        let mut ws = RawWs::connect(hub.addr, &admin_token());
        ws.send_bytes(&frame);
        let code = ws.expect_close(WAIT);
        assert_eq!(code, 1002, "{what}");
    }
}

/// A 20 KB log line.
fn big_log(i: usize) -> Value {
    log_body(SERVER_A, &format!("{i:06} {}", "x".repeat(20_000)))
}

/// A 20 KB status message on `server:S:status`.
fn big_status(server: &str, i: usize) -> Value {
    status_body(server, "running", "running", Some(&format!("{i:06} {}", "x".repeat(20_000))))
}

/// A 20 KB system alert (admins only).
fn big_alert(i: usize) -> Value {
    let mut body = alert_body("system", None, &format!("alert {i}"));
    body["data"]["message"] = json!("y".repeat(20_000));
    body
}

/// Publishes `n` bodies made by `make` on one keep-alive connection; returns
/// the recipients of each.
fn publish_each(hub: &Hub, n: usize, mut make: impl FnMut(usize) -> Value) -> Vec<u64> {
    let token = service_token();
    let mut conn = HttpConn::connect(hub.addr);
    (0..n)
        .map(|i| {
            let body = make(i);
            recipients(&conn.request(&publish_request(Some(&token), body.to_string().as_bytes())), &json!(i))
        })
        .collect()
}

/// Publishes `n` big log lines to `server:A:logs`.
fn publish_many(hub: &Hub, n: usize) -> Vec<u64> {
    publish_each(hub, n, big_log)
}

/// A client whose receive buffer is tiny, connected with an admin token.
fn small_buffer_client(hub: &Hub) -> Client {
    let stream = connect_small_rcvbuf(hub.addr, 4096);
    let url = format!("ws://{}{}", hub.addr, ws_path(&admin_token()));
    ws_connect_stream(stream, url).unwrap()
}

/// Reads JSON messages until none arrives for 700 ms.
fn read_all(client: &mut Client) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        match client.next_event(Duration::from_millis(700)) {
            Event::Json(v) => seen.push(v),
            Event::Timeout => return seen,
            other => panic!("{other:?} after {} messages", seen.len()),
        }
    }
}

fn is_drop_report(m: &Value) -> bool {
    m["type"] == "error" && m["data"]["code"] == "MESSAGES_DROPPED"
}

#[test]
fn a_client_that_never_reads_is_dropped_and_others_keep_receiving() {
    const N: usize = 400;
    let hub = Hub::start("write_timeout_s = 1");
    let channel = logs(SERVER_A);

    let mut slow = RawWs::connect_stream(connect_small_rcvbuf(hub.addr, 4096), &admin_token());
    slow.send_text(&json!({"type": "subscribe", "data": {"channels": [channel]}}).to_string());
    assert_json(&slow.recv_json(WAIT), &subscribed(&[&channel]));

    let mut fast = hub.connect_admin();
    fast.subscribe_ok(&[&channel]);
    let (tx, rx) = mpsc::channel::<(u64, Instant)>();
    let reader = thread::spawn(move || loop {
        match fast.next_event(Duration::from_secs(20)) {
            Event::Json(v) => {
                let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("fast client got {v}"));
                if tx.send((seq, Instant::now())).is_err() {
                    return;
                }
            }
            // The test ended or failed; the main thread reports what is missing.
            _ => return,
        }
    });
    hub.wait_stats(WAIT, |s| s["clients"] == 2);

    let start = Instant::now();
    let got = publish_many(&hub, N);
    let published = Instant::now();
    assert_eq!(got.iter().filter(|&&r| r == 0).count(), 0, "the fast client lost messages: {got:?}");

    // The fast client got everything, in order, promptly: no pause as long
    // as the write timeout while the slow client stalled.
    let mut last_at = start;
    let mut longest_pause = Duration::ZERO;
    for want in 1..=N as u64 {
        let (seq, at) = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("fast client stopped before seq {want}"));
        assert_eq!(seq, want, "fast client saw a gap");
        longest_pause = longest_pause.max(at.saturating_duration_since(last_at));
        last_at = at;
    }
    drop(rx);
    let lag = last_at.saturating_duration_since(published);
    assert!(lag < Duration::from_secs(1), "the last message reached the fast client {lag:?} after it was published");
    assert!(longest_pause < Duration::from_millis(800), "the fast client waited {longest_pause:?} for a message");

    // The stalled client is dropped after write_timeout_s.
    hub.wait_stats(Duration::from_secs(8), |s| s["clients"] == 1);
    let dropped_after = start.elapsed();

    // What the slow client can still read ends; a Close, if any, is 4008.
    let mut frames = 0usize;
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match slow.next_event(deadline.saturating_duration_since(Instant::now())) {
            RawEvent::Frame(f) if f.opcode == OP_TEXT => frames += 1,
            RawEvent::Frame(f) if f.opcode == OP_CLOSE => close = f.close_code(),
            RawEvent::Frame(_) => {}
            RawEvent::Eof | RawEvent::Reset(_) => break,
            RawEvent::Timeout => panic!("the slow client's connection was never closed"),
        }
    }
    assert!(frames < N, "the slow client got all {N} messages, so it never stalled (test setup too small)");
    if let Some(code) = close {
        assert_eq!(code, 4008, "close code for a stalled client");
    }
    assert!(dropped_after < Duration::from_secs(12), "dropped only after {dropped_after:?}");
    // The fast client is still connected.
    assert_eq!(hub.stats()["clients"], 1);
    drop(reader);
}

#[test]
fn queue_overflow_reports_messages_dropped_with_the_exact_gap() {
    const N: usize = 400;
    let hub = Hub::start("client_queue = 4\nwrite_timeout_s = 30");
    let channel = status(SERVER_A);
    let mut slow = small_buffer_client(&hub);
    slow.subscribe_ok(&[&channel]);

    // The slow client does not read while N big messages are published.
    let got = publish_each(&hub, N, |i| big_status(SERVER_A, i));
    let refused = got.iter().filter(|&&r| r == 0).count() as u64;
    assert!(refused > 0, "no message was dropped; kernel buffers were not filled (test setup too small)");

    // Now it reads everything, then one more live message.
    let mut stream_seen = read_all(&mut slow);
    assert_eq!(hub.publish(&status_body(SERVER_A, "running", "stopping", None)), 1);
    stream_seen.push(slow.recv_json());
    slow.expect_no_message(QUIET);

    let total = N as u64 + 1;
    let mut received = Vec::new();
    let mut reports = Vec::new();
    for (pos, msg) in stream_seen.iter().enumerate() {
        if msg["type"] == "server_status" {
            received.push((msg["seq"].as_u64().unwrap(), pos));
        } else {
            assert_json(
                msg,
                &json!({
                    "type": "error",
                    "data": {
                        "code": "MESSAGES_DROPPED",
                        "message": "<string>",
                        "data": {"channel": channel, "dropped": "<u64>", "from_seq": "<u64>", "to_seq": "<u64>"},
                    },
                    "timestamp": "<time>",
                }),
            );
            let d = &msg["data"]["data"];
            let (n, a, b) =
                (d["dropped"].as_u64().unwrap(), d["from_seq"].as_u64().unwrap(), d["to_seq"].as_u64().unwrap());
            assert!(a <= b && n == b - a + 1, "report does not add up: {d}");
            reports.push((a, b, pos));
        }
    }
    assert!(!reports.is_empty(), "{refused} messages were dropped but never reported");
    // Received seqs are increasing; received + reported = 1..=total exactly.
    assert!(received.windows(2).all(|w| w[0].0 < w[1].0), "seqs out of order");
    let mut covered = vec![0u8; total as usize + 1];
    for (seq, _) in &received {
        covered[*seq as usize] += 1;
    }
    for (a, b, _) in &reports {
        for s in *a..=*b {
            covered[s as usize] += 1;
        }
    }
    let wrong: Vec<usize> = (1..=total as usize).filter(|&s| covered[s] != 1).collect();
    assert!(wrong.is_empty(), "seqs neither received nor reported exactly once: {wrong:?}; reports {reports:?}");
    // Each report is exactly a gap, and arrives inside it.
    let pos_of = |seq: u64| received.iter().find(|(s, _)| *s == seq).map(|(_, p)| *p);
    for (a, b, pos) in &reports {
        if *a > 1 {
            let before = pos_of(a - 1).unwrap_or_else(|| panic!("seq {} before the gap {a}..{b} missing", a - 1));
            assert!(before < *pos, "report {a}..{b} came before seq {}", a - 1);
        }
        let after = pos_of(b + 1).unwrap_or_else(|| panic!("seq {} after the gap {a}..{b} missing", b + 1));
        assert!(*pos < after, "report {a}..{b} came after seq {}", b + 1);
    }
    let reported: u64 = reports.iter().map(|(a, b, _)| b - a + 1).sum();
    assert_eq!(reported, refused, "recipients 0 answers vs reported drops");
    let stats = hub.stats();
    assert!(stats["messages"]["dropped"].as_u64().unwrap_or(0) >= refused, "stats: {stats}");
}

#[test]
fn dropped_alerts_are_reported_with_a_null_channel() {
    const N: usize = 400;
    let hub = Hub::start("client_queue = 4\nwrite_timeout_s = 30");
    let mut slow = small_buffer_client(&hub);
    slow.ping_pong();
    let got = publish_each(&hub, N, big_alert);
    let refused = got.iter().filter(|&&r| r == 0).count() as u64;
    assert!(refused > 0, "no alert was dropped; kernel buffers were not filled (test setup too small)");

    let seen = read_all(&mut slow);
    let alerts = seen.iter().filter(|m| m["type"] == "alert").count() as u64;
    let mut reported = 0;
    for m in seen.iter().filter(|m| m["type"] != "alert") {
        assert_json(
            m,
            &json!({
                "type": "error",
                "data": {"code": "MESSAGES_DROPPED", "message": "<string>", "data": {"channel": null, "dropped": "<u64>"}},
                "timestamp": "<time>",
            }),
        );
        reported += m["data"]["data"]["dropped"].as_u64().unwrap();
    }
    assert_eq!(reported, refused, "reported drops vs publishes with 0 recipients");
    assert_eq!(alerts + reported, N as u64, "alerts received + reported");
}

#[test]
fn unsubscribing_discards_a_pending_drop_report() {
    const STREAK: usize = 20;
    let hub = Hub::start("client_queue = 4\nwrite_timeout_s = 30");
    let channel = status(SERVER_A);
    let mut slow = small_buffer_client(&hub);
    slow.subscribe_ok(&[&channel]);
    // Publish until the last STREAK messages were all dropped: the queue is
    // full, and a report for them can only be queued after the last one.
    let token = service_token();
    let mut conn = HttpConn::connect(hub.addr);
    let mut refused_in_a_row = 0;
    let mut published = 0u64;
    while refused_in_a_row < STREAK {
        assert!(published < 1500, "the queue never stayed full (test setup too small)");
        let body = big_status(SERVER_A, published as usize);
        let r = recipients(&conn.request(&publish_request(Some(&token), body.to_string().as_bytes())), &body);
        published += 1;
        refused_in_a_row = if r == 0 { refused_in_a_row + 1 } else { 0 };
    }
    let streak_start = published - STREAK as u64 + 1;
    // The hub reads the unsubscribe although the client is not reading yet.
    slow.unsubscribe(&[&channel]);
    hub.wait_stats(WAIT, |s| s["subscriptions"].get(&channel).is_none_or(|n| *n == 0));

    let seen = read_all(&mut slow);
    for m in seen.iter().filter(|m| is_drop_report(m)) {
        // Reports queued before the final streak are fine; not one for it.
        let to = m["data"]["data"]["to_seq"].as_u64().unwrap_or(0);
        assert!(to < streak_start, "report {m} covers drops {streak_start}..={published} pending at the unsubscribe");
    }
    let answers: Vec<&Value> = seen.iter().filter(|m| m["type"] != "server_status" && !is_drop_report(m)).collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_json(answers[0], &unsubscribed(&[&channel]));
    assert_eq!(hub.publish(&status_body(SERVER_A, "running", "stopping", None)), 0);
    slow.expect_no_message(QUIET);
}

#[test]
fn drop_reports_come_in_order_of_first_drop() {
    const N: usize = 400;
    let hub = Hub::start("client_queue = 4\nwrite_timeout_s = 30");
    let (la, lb) = (status(SERVER_A), status(SERVER_B));
    let mut slow = small_buffer_client(&hub);
    slow.subscribe_ok(&[&la, &lb]);
    // Alternate the two channels; remember which publish got which seq.
    let mut index_of = std::collections::HashMap::new();
    let mut seqs = std::collections::HashMap::new();
    let got = publish_each(&hub, N, |i| {
        let server = if i % 2 == 0 { SERVER_A } else { SERVER_B };
        let seq = seqs.entry(server).or_insert(0u64);
        *seq += 1;
        index_of.insert((status(server), *seq), i);
        big_status(server, i)
    });
    assert!(got.contains(&0), "no message was dropped (test setup too small)");
    let seen = read_all(&mut slow);
    let reports: Vec<(String, u64, u64)> = seen
        .iter()
        .filter(|m| is_drop_report(m))
        .map(|m| {
            let d = &m["data"]["data"];
            (d["channel"].as_str().unwrap().to_string(), d["from_seq"].as_u64().unwrap(), d["to_seq"].as_u64().unwrap())
        })
        .collect();
    assert!(reports.iter().any(|r| r.0 == la) && reports.iter().any(|r| r.0 == lb), "{reports:?}");
    // Every publish with 0 recipients is in exactly one report, and nothing else is.
    let mut reported = std::collections::HashSet::new();
    for (channel, a, b) in &reports {
        for s in *a..=*b {
            let i = index_of[&(channel.clone(), s)];
            assert!(reported.insert(i), "publish {i} reported twice");
            assert_eq!(got[i], 0, "publish {i} ({channel} seq {s}) was delivered but reported dropped");
        }
    }
    assert_eq!(reported.len(), got.iter().filter(|&&r| r == 0).count(), "{reports:?}");
    // All pending reports are queued at once, in order of first drop, so the
    // first drops of the reports, in arrival order, only increase.
    let firsts: Vec<usize> = reports.iter().map(|(c, a, _)| index_of[&(c.clone(), *a)]).collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "reports not in order of first drop: {reports:?} (first drops at publishes {firsts:?})"
    );
}

#[test]
fn control_replies_and_latest_values_are_never_dropped() {
    let hub = Hub::start("client_queue = 4\nwrite_timeout_s = 30");
    let servers = [SERVER_A, SERVER_B, SERVER_C];
    for server in servers {
        assert_eq!(hub.publish(&metrics_body(server, 7, None)), 0);
        assert_eq!(hub.publish(&status_body(server, "starting", "running", None)), 0);
    }
    let mut slow = small_buffer_client(&hub);
    slow.ping_pong();
    // Fill the kernel buffers and the queue with live messages.
    let got = publish_each(&hub, 400, big_alert);
    assert!(got.ends_with(&[0, 0, 0]), "the queue is not full (test setup too small)");
    // While full: a subscribe with six latest values and a ping.
    let channels: Vec<String> = servers.iter().flat_map(|s| [metrics(s), status(s)]).collect();
    let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    slow.subscribe(&refs);
    slow.send_text(r#"{"type":"ping"}"#);
    let seen = read_all(&mut slow);
    let others: Vec<&Value> = seen.iter().filter(|m| m["type"] != "alert" && !is_drop_report(m)).collect();
    assert_eq!(others.len(), 8, "SUBSCRIBED, six latest values and a pong: {others:?}");
    assert_json(others[0], &subscribed(&refs));
    for (msg, channel) in others[1..7].iter().zip(&channels) {
        assert_eq!(msg["channel"], json!(channel), "{msg}");
        assert_eq!(msg["seq"], 1, "{msg}");
    }
    assert_eq!(others[7]["type"], "pong", "{}", others[7]);
    // Only the live alerts were dropped and reported.
    let reports: Vec<&Value> = seen.iter().filter(|m| is_drop_report(m)).collect();
    assert!(!reports.is_empty());
    assert!(reports.iter().all(|r| r["data"]["data"]["channel"].is_null()), "{reports:?}");
}

#[test]
fn pings_are_ponged_and_a_client_close_is_answered() {
    let hub = Hub::start("");
    let mut ws = RawWs::connect(hub.addr, &admin_token());
    ws.send_bytes(&masked(OP_PING, b"are you there"));
    match ws.next_event(WAIT) {
        RawEvent::Frame(f) if f.opcode == OP_PONG => assert_eq!(f.payload, b"are you there"),
        other => panic!("expected a Pong, got {other:?}"),
    }
    // A fragmented message with a Ping between its fragments is one message.
    let text = br#"{"type":"ping"}"#;
    ws.send_bytes(&encode_frame(false, OP_TEXT, &text[..6], Some([9, 8, 7, 6])));
    ws.send_bytes(&masked(OP_PING, b"mid"));
    ws.send_bytes(&encode_frame(true, OP_CONT, &text[6..], Some([1, 2, 3, 4])));
    match ws.next_event(WAIT) {
        RawEvent::Frame(f) if f.opcode == OP_PONG => assert_eq!(f.payload, b"mid"),
        other => panic!("expected a Pong, got {other:?}"),
    }
    assert_eq!(ws.recv_json(WAIT)["type"], "pong");
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    ws.send_bytes(&masked(OP_CLOSE, &close));
    assert_eq!(ws.expect_close(WAIT), 1000);
    match ws.next_event(WAIT) {
        RawEvent::Eof | RawEvent::Reset(_) => {}
        other => panic!("expected the hub to close the connection, got {other:?}"),
    }
}

/// Publishes `n` 20 KB lines to `server:A:logs` while `slow` reads nothing,
/// then reads what it gets: log lines' seqs and drop reports' ranges, with
/// their positions.
fn lag_behind(n: usize) -> (Vec<u64>, Vec<(u64, u64, usize)>) {
    let hub = Hub::start("write_timeout_s = 60");
    let channel = logs(SERVER_A);
    let mut slow = small_buffer_client(&hub);
    slow.subscribe_ok(&[&channel]);
    let got = publish_many(&hub, n);
    assert!(got.iter().all(|&r| r == 1), "a logs line is owed to its subscriber: {got:?}");
    let stats = hub.stats();
    let queued = stats["queued_bytes"].as_u64().unwrap();
    assert!(queued < 100_000, "lines are read from the ring, not queued per client: {stats}");
    let seen = read_all(&mut slow);
    let mut lines = Vec::new();
    let mut reports = Vec::new();
    for (pos, m) in seen.iter().enumerate() {
        if m["type"] == "log_entry" {
            lines.push(m["seq"].as_u64().unwrap());
        } else {
            assert!(is_drop_report(m), "{m}");
            let d = &m["data"]["data"];
            assert_eq!(d["channel"], json!(channel));
            let (a, b) = (d["from_seq"].as_u64().unwrap(), d["to_seq"].as_u64().unwrap());
            assert_eq!(d["dropped"].as_u64(), Some(b - a + 1), "{d}");
            reports.push((a, b, pos));
        }
    }
    (lines, reports)
}

#[test]
fn a_logs_reader_that_falls_behind_within_the_ring_loses_nothing() {
    // 1,000 lines of 20 KB into the default ring of 1,000: the kernel holds
    // a few dozen of them, the reader is ~950 behind in the hub.
    let (lines, reports) = lag_behind(1000);
    assert!(reports.is_empty(), "no drop report: {reports:?}");
    assert_eq!(lines, (1..=1000).collect::<Vec<u64>>(), "every line, in order");
}

#[test]
fn a_logs_reader_that_falls_behind_the_ring_gets_one_report_for_the_evicted_range_then_the_rest() {
    let (lines, reports) = lag_behind(1100);
    assert_eq!(reports.len(), 1, "exactly one report: {reports:?}");
    let (a, b, pos) = reports[0];
    // What reached the kernel before the reader stopped, then the gap, then
    // the ring's 1,000 (seqs 101..=1100).
    assert_eq!(b, 100, "the evicted range ends where the ring starts");
    assert_eq!(pos, (a - 1) as usize, "the report comes where the gap is");
    let want: Vec<u64> = (1..a).chain(101..=1100).collect();
    assert_eq!(lines, want, "everything else, in order, once");
}

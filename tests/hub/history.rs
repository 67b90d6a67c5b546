//! In-memory history and recovery (PROTOCOL.md 5a): `since` replay with no
//! gap and no duplicate at the seam, `recovered` false on another epoch or
//! an overflowed ring, `history` paging, and the sizes in stats.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn seq(msg: &Value) -> u64 {
    msg["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {msg}"))
}

/// Publishes `n` numbered lines on SERVER_A's logs.
fn publish_lines(hub: &Hub, from: usize, n: usize) {
    for i in from..from + n {
        hub.publish(&log_body(SERVER_A, &format!("line {i}")));
    }
}

/// Receives log entries until one with `seq == last`; returns their seqs.
fn seqs_until(client: &mut Client, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let msg = client.recv_json_within(Duration::from_secs(10));
        if msg["type"] == "log_entry" {
            got.push(seq(&msg));
            if seq(&msg) >= last {
                return got;
            }
        }
    }
}

fn subscribe_since(client: &mut Client, channel: &str, since_seq: u64, epoch: &str) -> Value {
    client.send_json(&json!({"type": "subscribe", "data": {"channels": [channel], "since": {channel: {"seq": since_seq, "epoch": epoch}}}}));
    client.recv_json()
}

#[test]
fn since_replays_exactly_the_kept_messages_after_seq_then_live_ones() {
    let hub = Hub::start("");
    let mut first = hub.connect_admin();
    first.subscribe_ok(&[&logs(SERVER_A)]);
    publish_lines(&hub, 0, 10);
    let seen: Vec<Value> = (0..10).map(|_| first.recv_json()).collect();
    let epoch = seen[0]["epoch"].as_str().unwrap().to_string();

    let mut again = hub.connect_admin();
    let answer = subscribe_since(&mut again, &logs(SERVER_A), 6, &epoch);
    assert_json(
        &answer["data"],
        &json!({"code": "SUBSCRIBED", "message": "Successfully subscribed to channels", "data": [logs(SERVER_A)], "recovered": {logs(SERVER_A): true}}),
    );
    let replayed: Vec<Value> = (0..4).map(|_| again.recv_json()).collect();
    assert_eq!(replayed.iter().map(seq).collect::<Vec<_>>(), [7, 8, 9, 10]);
    assert_eq!(replayed[3], seen[9], "replayed copies are the original envelopes");
    publish_lines(&hub, 10, 1);
    assert_eq!(seq(&again.recv_json()), 11);
    again.expect_no_message(QUIET);
}

#[test]
fn since_at_the_last_seq_recovers_with_nothing_to_replay() {
    let hub = Hub::start("");
    publish_lines(&hub, 0, 3);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let mut c = hub.connect_admin();
    let answer = subscribe_since(&mut c, &logs(SERVER_A), 3, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): true}));
    c.expect_no_message(QUIET);
}

#[test]
fn since_from_another_epoch_or_beyond_the_last_seq_is_not_recovered() {
    let hub = Hub::start("");
    publish_lines(&hub, 0, 3);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let mut c = hub.connect_admin();
    let answer = subscribe_since(&mut c, &logs(SERVER_A), 1, "another-epoch");
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): false}));
    c.expect_no_message(QUIET);
    let mut d = hub.connect_admin();
    let answer = subscribe_since(&mut d, &logs(SERVER_A), 9, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): false}));
    d.expect_no_message(QUIET);
}

#[test]
fn an_overflowed_ring_answers_recovered_false_and_replays_nothing_partial() {
    let hub = HubConfig::new().extra("[history]\nlog_lines = 5").start();
    publish_lines(&hub, 0, 12);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let mut c = hub.connect_admin();
    let answer = subscribe_since(&mut c, &logs(SERVER_A), 3, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): false}));
    c.expect_no_message(QUIET);
    // The oldest kept (seq 8) follows seq 7: that one can still be recovered.
    let mut d = hub.connect_admin();
    let answer = subscribe_since(&mut d, &logs(SERVER_A), 7, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): true}));
    assert_eq!(seqs_until(&mut d, 12), [8, 9, 10, 11, 12]);
}

#[test]
fn since_is_used_only_for_channels_the_request_newly_subscribes() {
    let hub = Hub::start("");
    publish_lines(&hub, 0, 3);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let mut c = hub.connect_admin();
    c.subscribe_ok(&[&logs(SERVER_A)]);
    let answer = subscribe_since(&mut c, &logs(SERVER_A), 1, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({}), "already subscribed: not used, not listed");
    c.expect_no_message(QUIET);
}

#[test]
fn publishing_during_a_since_subscribe_leaves_no_gap_and_no_duplicate() {
    let hub = Hub::start("");
    publish_lines(&hub, 0, 50);
    let epoch = hub.stats()["epoch"].as_str().unwrap().to_string();
    let addr = hub.addr;
    let publisher = std::thread::spawn(move || {
        for i in 50..250 {
            publish_ok(addr, &log_body(SERVER_A, &format!("line {i}")));
        }
    });
    let mut c = hub.connect_admin();
    let answer = subscribe_since(&mut c, &logs(SERVER_A), 20, &epoch);
    assert_eq!(answer["data"]["recovered"], json!({logs(SERVER_A): true}));
    let got = seqs_until(&mut c, 250);
    publisher.join().unwrap();
    assert_eq!(got, (21..=250).collect::<Vec<u64>>(), "every seq once, in order, across the seam");
}

#[test]
fn history_pages_backwards_through_what_is_kept() {
    let hub = HubConfig::new().extra("[history]\nlog_lines = 20").start();
    publish_lines(&hub, 0, 30);
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 8}}));
    let page = c.recv_json();
    assert_eq!(page["type"], "history");
    assert_eq!(page["channel"], logs(SERVER_A));
    assert!(page.get("seq").is_none() && page.get("epoch").is_none());
    let seqs: Vec<u64> = page["data"]["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, (23..=30).collect::<Vec<u64>>());
    assert_eq!(page["data"]["complete"], false);
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 100, "before_seq": 23}}));
    let page = c.recv_json();
    let seqs: Vec<u64> = page["data"]["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, (11..=22).collect::<Vec<u64>>(), "the ring keeps the last 20");
    assert_eq!(page["data"]["complete"], false, "older messages were evicted");
    assert_eq!(page["data"]["messages"][0]["data"]["message"], "line 10");
}

#[test]
fn history_of_a_channel_that_never_evicted_is_complete() {
    let hub = Hub::start("");
    publish_lines(&hub, 0, 3);
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_A)}));
    let page = c.recv_json();
    assert_eq!(page["data"]["messages"].as_array().unwrap().len(), 3);
    assert_eq!(page["data"]["complete"], true);
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_B)}));
    assert_eq!(c.recv_json()["data"], json!({"messages": [], "complete": true}));
}

#[test]
fn history_refusals_name_the_channel() {
    let hub = Hub::start("");
    let mut c = hub.connect(&user_token(&new_id(), &[SERVER_A]));
    for (channel, code) in
        [("nope".to_string(), "INVALID_CHANNEL"), (status(SERVER_A), "INVALID_MESSAGE"), (logs(SERVER_B), "FORBIDDEN")]
    {
        c.send_json(&json!({"type": "history", "channel": channel}));
        let msg = c.recv_json();
        assert_error_code(&msg, code);
        assert_eq!(msg["data"]["data"], json!([channel]));
    }
    c.send_json(&json!({"type": "history", "channel": logs(SERVER_A), "data": {"limit": 0}}));
    assert_error_code(&c.recv_json(), "INVALID_MESSAGE");
}

#[test]
fn kept_history_is_bounded_by_max_bytes_and_shown_in_stats_and_metrics() {
    let hub = HubConfig::new().extra("[history]\nlog_lines = 1000\nmax_bytes = 20000").start();
    for i in 0..200 {
        hub.publish(&log_body(if i % 2 == 0 { SERVER_A } else { SERVER_B }, &"x".repeat(200)));
    }
    let stats = hub.stats();
    let bytes = stats["history"]["bytes"].as_u64().unwrap();
    let entries = stats["history"]["entries"].as_u64().unwrap();
    assert!(bytes <= 20000 && bytes > 15000, "{stats}");
    assert!((30..200).contains(&entries), "{stats}");
    let text = http_get(hub.addr, "/metrics", None).text();
    assert!(text.contains(&format!("aymc_history_bytes {bytes}")), "{text}");
}

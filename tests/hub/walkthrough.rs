//! The seed's "Testing Manual" (tests 1-8, `seed/000_8abb27c616feb8a5.md`) as
//! PROTOCOL.md adapts it: no empty `channel`, three-digit times, log messages
//! without the `[thread/LEVEL]: ` prefix, `tps` absent when unknown,
//! `UNSUBSCRIBED` with `data.data`, a stop seen as running -> stopping ->
//! stopped. The client lines are sent exactly as written here; answers are
//! compared as JSON values, with timestamps checked for format only.

use serde_json::{json, Value};

use crate::support::*;

const SUBSCRIBE_LOGS_METRICS: &str = r#"{"type": "subscribe", "data": {"channels": ["server:550e8400-e29b-41d4-a716-446655440000:logs", "server:550e8400-e29b-41d4-a716-446655440000:metrics"]}}"#;
const PING: &str = r#"{"type": "ping"}"#;
const SUBSCRIBE_STATUS: &str =
    r#"{"type": "subscribe", "data": {"channels": ["server:550e8400-e29b-41d4-a716-446655440000:status"]}}"#;
const UNSUBSCRIBE_LOGS: &str =
    r#"{"type": "unsubscribe", "data": {"channels": ["server:550e8400-e29b-41d4-a716-446655440000:logs"]}}"#;
const SUBSCRIBE_LOGS: &str =
    r#"{"type": "subscribe", "data": {"channels": ["server:550e8400-e29b-41d4-a716-446655440000:logs"]}}"#;

const LOGS: &str = "server:550e8400-e29b-41d4-a716-446655440000:logs";
const METRICS: &str = "server:550e8400-e29b-41d4-a716-446655440000:metrics";
const STATUS: &str = "server:550e8400-e29b-41d4-a716-446655440000:status";

fn log_entry(message: &str, seq: u64) -> Value {
    json!({
        "type": "log_entry",
        "channel": LOGS,
        "data": {"server_id": SERVER_A, "timestamp": "<time>", "level": "INFO", "source": "server", "message": message},
        "timestamp": "<time>",
        "seq": seq,
        "epoch": "<string>",
    })
}

fn metrics_msg(tps: Option<f64>, seq: u64) -> Value {
    let data = metrics_data(tps);
    json!({"type": "metrics", "channel": METRICS, "data": data, "timestamp": "<time>", "seq": seq, "epoch": "<string>"})
}

fn status_msg(old: &str, new: &str, reason: Option<&str>, seq: u64) -> Value {
    let mut data = json!({
        "server_id": SERVER_A,
        "server_name": "MyServer",
        "old_status": old,
        "new_status": new,
        "timestamp": "<time>",
    });
    if let Some(reason) = reason {
        data["reason"] = json!(reason);
    }
    json!({"type": "server_status", "channel": STATUS, "data": data, "timestamp": "<time>", "seq": seq, "epoch": "<string>"})
}

#[test]
fn walkthrough() {
    let hub = Hub::start("");
    let token = admin_token();

    // Test 1: connect with ?token=.
    let mut t1 = hub.connect(&token);

    // Test 2: subscribe to logs and metrics.
    t1.send_text(SUBSCRIBE_LOGS_METRICS);
    assert_json(&t1.recv_json(), &subscribed(&[LOGS, METRICS]));

    // Test 3: ping / pong.
    t1.send_text(PING);
    let pong = t1.recv_json();
    assert_json(&pong, &json!({"type": "pong", "data": {"timestamp": "<u64>"}, "timestamp": "<time>"}));
    assert!((pong["data"]["timestamp"].as_i64().unwrap() - now()).abs() <= 5, "{pong}");

    // Test 4: log lines in real time, message without the prefix.
    for (seq, line) in [(1, "Starting minecraft server version 1.20.1"), (2, "Loading properties")] {
        assert_eq!(hub.publish(&log_body(SERVER_A, line)), 1);
        assert_json(&t1.recv_json(), &log_entry(line, seq));
    }

    // Test 5: metrics; tps present when measured (also 0), absent otherwise.
    for (seq, tps) in [(1, Some(20.0)), (2, None), (3, Some(0.0))] {
        assert_eq!(hub.publish(&metrics_body(SERVER_A, 3, tps)), 1);
        assert_json(&t1.recv_json(), &metrics_msg(tps, seq));
    }

    // Test 6: a stop is running -> stopping -> stopped, with the reason.
    t1.send_text(SUBSCRIBE_STATUS);
    assert_json(&t1.recv_json(), &subscribed(&[STATUS]));
    assert_eq!(hub.publish(&status_body(SERVER_A, "running", "stopping", None)), 1);
    assert_json(&t1.recv_json(), &status_msg("running", "stopping", None, 1));
    assert_eq!(hub.publish(&status_body(SERVER_A, "stopping", "stopped", Some("User requested stop"))), 1);
    assert_json(&t1.recv_json(), &status_msg("stopping", "stopped", Some("User requested stop"), 2));

    // Test 7: unsubscribe, answered with data.data; the logs stop coming.
    t1.send_text(UNSUBSCRIBE_LOGS);
    assert_json(&t1.recv_json(), &unsubscribed(&[LOGS]));
    assert_eq!(hub.publish(&log_body(SERVER_A, "Preparing level \"world\"")), 0);
    t1.expect_no_message(QUIET);

    // Test 8: two clients on the logs channel receive the same lines.
    let mut t2 = hub.connect(&token);
    t1.send_text(SUBSCRIBE_LOGS);
    assert_json(&t1.recv_json(), &subscribed(&[LOGS]));
    t2.send_text(SUBSCRIBE_LOGS);
    assert_json(&t2.recv_json(), &subscribed(&[LOGS]));
    for (seq, line) in [(4, "Done (3.214s)! For help, type \"help\""), (5, "Player Steve joined the game")] {
        assert_eq!(hub.publish(&log_body(SERVER_A, line)), 2);
        let a = t1.recv_json();
        let b = t2.recv_json();
        assert_json(&a, &log_entry(line, seq));
        assert_eq!(a, b, "both clients get the same message");
    }

    // Hub state: two clients and their subscriptions.
    let stats = hub.stats();
    assert_eq!(stats["clients"], 2, "{stats}");
    assert_json(&stats["subscriptions"], &json!({LOGS: 2, METRICS: 1, STATUS: 1}));
    t1.expect_no_message(QUIET);
    t2.expect_no_message(QUIET);
}

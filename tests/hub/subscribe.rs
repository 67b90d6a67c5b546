//! PROTOCOL.md sections 3, 4 and 7: channel names, subscribe / unsubscribe /
//! ping answers, the ACL, message classification errors, rate limits and the
//! subscription cap.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

use crate::support::*;

fn upper(channel: &str) -> String {
    // Only the UUID part may be upper case.
    let (head, rest) = channel.split_once(':').unwrap();
    let (id, tail) = rest.split_once(':').unwrap();
    format!("{head}:{}:{tail}", id.to_uppercase())
}

#[test]
fn subscribe_lists_channels_in_request_order_without_duplicates() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    let (m, l, s) = (metrics(SERVER_A), logs(SERVER_A), status(SERVER_A));
    client.subscribe(&[&m, &l, &m]);
    assert_json(&client.recv_json(), &subscribed(&[&m, &l]));
    // Nothing was published, so no latest value follows.
    client.expect_no_message(QUIET);
    // Already-subscribed channels are listed again; subscribing twice is no error.
    client.subscribe(&[&l, &s, &l, &m]);
    assert_json(&client.recv_json(), &subscribed(&[&l, &s, &m]));
    client.subscribe(&[]);
    assert_json(&client.recv_json(), &subscribed(&[]));
    client.expect_no_message(QUIET);
}

#[test]
fn upper_case_uuid_is_accepted_and_lower_cased() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    let l = logs(SERVER_A);
    client.subscribe(&[&upper(&l)]);
    assert_json(&client.recv_json(), &subscribed(&[&l]));
    // Both spellings are one channel.
    client.subscribe(&[&upper(&l), &l]);
    assert_json(&client.recv_json(), &subscribed(&[&l]));
    assert_eq!(hub.publish(&log_body(SERVER_A, "hello")), 1);
    let msg = client.recv_json();
    assert_eq!(msg["type"], "log_entry", "{msg}");
    assert_eq!(msg["channel"], json!(l), "{msg}");
}

#[test]
fn malformed_channel_names_are_invalid_channel() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    let bad = [
        "nope".to_string(),
        format!("SERVER:{SERVER_A}:logs"),
        format!("server:{SERVER_A}:LOGS"),
        format!("server:{SERVER_A}:Logs"),
        format!("server:{SERVER_A}:chat"),
        format!("server:{SERVER_A}"),
        format!("server:{SERVER_A}:logs:extra"),
        "server:550e8400e29b41d4a716446655440000:logs".to_string(),
        "server:not-a-uuid:logs".to_string(),
        format!("server:{{{SERVER_A}}}:logs"),
        format!(" server:{SERVER_A}:logs"),
        format!("user:{OWNER}:logs"),
        format!("server:{OWNER}:notifications"),
        format!("User:{OWNER}:notifications"),
        String::new(),
    ];
    let bad_refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    client.subscribe(&bad_refs);
    assert_json(&client.recv_json(), &error_msg("INVALID_CHANNEL", json!(bad)));
    assert_json(&client.recv_json(), &subscribed(&[]));
    client.expect_no_message(QUIET);
}

#[test]
fn refusals_come_before_subscribed_in_code_order() {
    let hub = Hub::start("max_subscriptions = 3");
    let me = new_id();
    let mut client = hub.connect(&user_token(&me, &[SERVER_A]));
    let lb = logs(SERVER_B);
    let mine = notifications(&me);
    let shouty = format!("server:{SERVER_A}:LOGS");
    client.subscribe(&[
        &lb,
        "nope",
        &logs(SERVER_A),
        &lb,
        &metrics(SERVER_A),
        "nope",
        &status(SERVER_A),
        &mine,
        &shouty,
    ]);
    assert_json(&client.recv_json(), &error_msg("FORBIDDEN", json!([lb])));
    assert_json(&client.recv_json(), &error_msg("INVALID_CHANNEL", json!(["nope", shouty])));
    assert_json(&client.recv_json(), &error_msg("TOO_MANY_SUBSCRIPTIONS", json!([mine])));
    assert_json(&client.recv_json(), &subscribed(&[&logs(SERVER_A), &metrics(SERVER_A), &status(SERVER_A)]));
    client.expect_no_message(QUIET);
}

#[test]
fn acl_admin_user_owner_and_notifications() {
    let hub = Hub::start_with_servers("");

    let mut admin = hub.connect_admin();
    let someone = notifications(&new_id());
    admin.subscribe_ok(&[&logs(SERVER_A), &metrics(SERVER_B), &status(SERVER_C), &someone]);

    let me = new_id();
    let other = notifications(&new_id());
    let mut user = hub.connect(&user_token(&me, &[SERVER_A]));
    let lb_upper = upper(&logs(SERVER_B));
    user.subscribe(&[
        &logs(SERVER_A),
        &metrics(SERVER_A),
        &status(SERVER_A),
        &lb_upper,
        &logs(SERVER_C),
        &notifications(&me),
        &other,
    ]);
    assert_json(&user.recv_json(), &error_msg("FORBIDDEN", json!([lb_upper, logs(SERVER_C), other])));
    assert_json(
        &user.recv_json(),
        &subscribed(&[&logs(SERVER_A), &metrics(SERVER_A), &status(SERVER_A), &notifications(&me)]),
    );

    // The config's [[servers]] owner may watch that server without a claim.
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    owner.subscribe(&[&logs(SERVER_C), &metrics(SERVER_C), &status(SERVER_C), &logs(SERVER_A)]);
    assert_json(&owner.recv_json(), &error_msg("FORBIDDEN", json!([logs(SERVER_A)])));
    assert_json(&owner.recv_json(), &subscribed(&[&logs(SERVER_C), &metrics(SERVER_C), &status(SERVER_C)]));

    // `service` and unknown roles are plain users.
    let mut service = hub.connect(&token(&new_id(), "service", &[]));
    service.subscribe(&[&logs(SERVER_A)]);
    assert_json(&service.recv_json(), &error_msg("FORBIDDEN", json!([logs(SERVER_A)])));
    assert_json(&service.recv_json(), &subscribed(&[]));
    let mut moderator = hub.connect(&token(&new_id(), "moderator", &[SERVER_B]));
    moderator.subscribe(&[&logs(SERVER_A), &logs(SERVER_B)]);
    assert_json(&moderator.recv_json(), &error_msg("FORBIDDEN", json!([logs(SERVER_A)])));
    assert_json(&moderator.recv_json(), &subscribed(&[&logs(SERVER_B)]));
}

#[test]
fn unsubscribe_answers_invalid_channel_then_unsubscribed() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    let (l, m) = (logs(SERVER_A), metrics(SERVER_A));
    client.subscribe_ok(&[&l, &m]);
    let shouty = format!("server:{SERVER_A}:LOGS");
    client.unsubscribe(&[&l, &logs(SERVER_B), "garbage", &shouty]);
    assert_json(&client.recv_json(), &error_msg("INVALID_CHANNEL", json!(["garbage", shouty])));
    assert_json(&client.recv_json(), &unsubscribed(&[&l]));
    client.expect_no_message(QUIET);

    // No longer delivered; the other channel still is.
    assert_eq!(hub.publish(&log_body(SERVER_A, "gone")), 0);
    assert_eq!(hub.publish(&metrics_body(SERVER_A, 1, None)), 1);
    let msg = client.recv_json();
    assert_eq!(msg["type"], "metrics", "{msg}");

    client.unsubscribe(&[]);
    assert_json(&client.recv_json(), &unsubscribed(&[]));
    // An upper-case UUID names the same channel; output is lower case.
    client.unsubscribe(&[&upper(&m)]);
    assert_json(&client.recv_json(), &unsubscribed(&[&m]));
    client.unsubscribe(&[&m]);
    assert_json(&client.recv_json(), &unsubscribed(&[]));
    client.expect_no_message(QUIET);
}

#[test]
fn ping_answers_pong_with_unix_seconds() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    for ping in [r#"{"type":"ping"}"#, r#"{"type":"ping","data":{"x":1}}"#, r#"{"type":"ping","data":null}"#] {
        let before = now();
        client.send_text(ping);
        let msg = client.recv_json();
        assert_json(&msg, &json!({"type": "pong", "data": {"timestamp": "<u64>"}, "timestamp": "<time>"}));
        let ts = msg["data"]["timestamp"].as_i64().unwrap();
        assert!((before - 2..=now() + 2).contains(&ts), "pong timestamp {ts} is not now ({before})");
        let envelope = chrono::DateTime::parse_from_rfc3339(msg["timestamp"].as_str().unwrap()).unwrap();
        assert!((envelope.timestamp() - ts).abs() <= 2, "envelope time {envelope} far from {ts}");
    }
}

#[test]
fn bad_messages_get_errors_and_the_connection_stays_open() {
    let hub = Hub::start("rate_per_s = 1000\nrate_burst = 1000");
    let mut client = hub.connect_admin();
    let cases: &[(&str, &str)] = &[
        ("not json", "INVALID_JSON"),
        (r#"{"type":"ping""#, "INVALID_JSON"),
        ("[1,2,3]", "INVALID_MESSAGE"),
        (r#""ping""#, "INVALID_MESSAGE"),
        ("42", "INVALID_MESSAGE"),
        ("null", "INVALID_MESSAGE"),
        ("{}", "INVALID_MESSAGE"),
        (r#"{"type":7}"#, "INVALID_MESSAGE"),
        (r#"{"type":null}"#, "INVALID_MESSAGE"),
        (r#"{"type":["ping"]}"#, "INVALID_MESSAGE"),
        (r#"{"data":{"channels":[]}}"#, "INVALID_MESSAGE"),
        (r#"{"type":"dance"}"#, "UNKNOWN_TYPE"),
        (r#"{"type":"PING"}"#, "UNKNOWN_TYPE"),
        (r#"{"type":"subscribe"}"#, "INVALID_MESSAGE"),
        (r#"{"type":"subscribe","data":null}"#, "INVALID_MESSAGE"),
        (r#"{"type":"subscribe","data":[]}"#, "INVALID_MESSAGE"),
        (r#"{"type":"subscribe","data":{}}"#, "INVALID_MESSAGE"),
        (
            r#"{"type":"subscribe","data":{"channels":"server:550e8400-e29b-41d4-a716-446655440000:logs"}}"#,
            "INVALID_MESSAGE",
        ),
        (r#"{"type":"subscribe","data":{"channels":[1]}}"#, "INVALID_MESSAGE"),
        (r#"{"type":"unsubscribe","data":{"channels":{}}}"#, "INVALID_MESSAGE"),
        (r#"{"type":"unsubscribe"}"#, "INVALID_MESSAGE"),
        (r#"{"type":"auth","data":{}}"#, "INVALID_MESSAGE"),
        (r#"{"type":"auth","data":{"token":5}}"#, "INVALID_MESSAGE"),
    ];
    for (frame, code) in cases {
        client.send_text(frame);
        let msg = client.recv_json();
        assert_eq!(msg["data"]["code"], *code, "{frame} answered {msg}");
        assert_error_code(&msg, code);
        client.ping_pong();
    }
    client.ws.send(Message::binary(br#"{"type":"ping"}"#.to_vec())).unwrap();
    let msg = client.recv_json();
    assert_error_code(&msg, "INVALID_MESSAGE");
    client.ping_pong();
    client.expect_no_message(QUIET);
}

#[test]
fn a_subscribe_with_a_bad_shape_changes_nothing() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    client.send_json(&json!({"type": "subscribe", "data": {"channels": [logs(SERVER_A), 5]}}));
    assert_error_code(&client.recv_json(), "INVALID_MESSAGE");
    assert_eq!(hub.publish(&log_body(SERVER_A, "nobody")), 0);
    client.expect_no_message(QUIET);

    client.subscribe_ok(&[&logs(SERVER_A)]);
    client.send_json(&json!({"type": "unsubscribe", "data": {"channels": [logs(SERVER_A), null]}}));
    assert_error_code(&client.recv_json(), "INVALID_MESSAGE");
    assert_eq!(hub.publish(&log_body(SERVER_A, "still here")), 1);
    assert_eq!(client.recv_json()["data"]["message"], "still here");
}

#[test]
fn unknown_fields_are_ignored() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    client.send_text(r#"{"type":"ping","id":7,"extra":{"a":[1,2]}}"#);
    assert_eq!(client.recv_json()["type"], "pong");
    client.send_json(&json!({
        "type": "subscribe",
        "ref": "abc",
        "timestamp": "2026-01-01T00:00:00+02:00",
        "data": {"channels": [logs(SERVER_A)], "foo": true},
    }));
    assert_json(&client.recv_json(), &subscribed(&[&logs(SERVER_A)]));
}

fn count(msgs: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    msgs.iter().filter(|m| pred(m)).count()
}

fn is_pong(m: &Value) -> bool {
    m["type"] == "pong"
}

fn is_rate_limited(m: &Value) -> bool {
    m["type"] == "error" && m["data"]["code"] == "RATE_LIMITED"
}

/// Reads JSON messages until nothing arrives for `quiet`; panics on a close.
fn drain(client: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match client.next_event(quiet) {
            Event::Json(v) => out.push(v),
            Event::Timeout => return out,
            other => panic!("unexpected {other:?} after {out:?}"),
        }
    }
}

#[test]
fn rate_limit_answers_rate_limited_at_most_once_per_second() {
    let hub = Hub::start("rate_per_s = 2\nrate_burst = 2");
    let mut client = hub.connect_admin();
    let start = Instant::now();
    for _ in 0..6 {
        client.send_text(r#"{"type":"ping"}"#);
    }
    let msgs = drain(&mut client, Duration::from_millis(400));
    assert!(start.elapsed() < Duration::from_millis(1000), "test machine too slow for this check");
    let pongs = count(&msgs, is_pong);
    assert!((2..=3).contains(&pongs), "burst 2 at 2/s let {pongs} of 6 pings through: {msgs:?}");
    assert_eq!(count(&msgs, is_rate_limited), 1, "one RATE_LIMITED per second: {msgs:?}");
    for m in msgs.iter().filter(|m| is_rate_limited(m)) {
        assert_error_code(m, "RATE_LIMITED");
    }
    assert_eq!(msgs.len(), pongs + 1, "only pongs and one RATE_LIMITED: {msgs:?}");

    // Tokens come back with time; the connection was not closed.
    std::thread::sleep(Duration::from_millis(1100));
    client.ping_pong();
    // A later burst, more than a second after the first RATE_LIMITED, gets one more.
    for _ in 0..5 {
        client.send_text(r#"{"type":"ping"}"#);
    }
    let msgs = drain(&mut client, Duration::from_millis(400));
    assert_eq!(count(&msgs, is_rate_limited), 1, "{msgs:?}");
    assert!(count(&msgs, is_pong) >= 1, "{msgs:?}");
}

#[test]
fn sustained_rate_abuse_closes_with_1008() {
    let hub = Hub::start("rate_per_s = 2\nrate_burst = 2");
    let mut client = hub.connect_admin();
    // 20 messages: at most 18 refused, not more than 10 x rate_per_s.
    for _ in 0..20 {
        client.send_text(r#"{"type":"ping"}"#);
    }
    let msgs = drain(&mut client, Duration::from_millis(300));
    assert!(count(&msgs, is_pong) >= 2, "{msgs:?}");
    assert_eq!(count(&msgs, is_rate_limited), 1, "{msgs:?}");
    // A few more refusals within 10 s pass 20 and close the connection.
    for _ in 0..8 {
        if !client.try_send_text(r#"{"type":"ping"}"#) {
            break;
        }
    }
    let (code, seen) = client.expect_close(WAIT);
    assert_eq!(code, 1008, "expected close 1008 after sustained abuse; saw {seen:?}");
    assert!(count(&seen, is_rate_limited) <= 1, "RATE_LIMITED more than once per second: {seen:?}");
}

#[test]
fn control_frames_do_not_count_toward_the_rate_limit() {
    let hub = Hub::start("rate_per_s = 2\nrate_burst = 2");
    let mut client = hub.connect_admin();
    for i in 0..30u8 {
        client.ws.send(Message::Ping(vec![i].into())).unwrap();
    }
    client.ping_pong();
    client.ping_pong();
    client.expect_no_message(QUIET);
}

#[test]
fn max_subscriptions_caps_new_channels_only() {
    let hub = Hub::start("max_subscriptions = 2");
    let mut client = hub.connect_admin();
    let (l, m, s) = (logs(SERVER_A), metrics(SERVER_A), status(SERVER_A));
    client.subscribe(&[&l, &m, &s, &s]);
    assert_json(&client.recv_json(), &error_msg("TOO_MANY_SUBSCRIPTIONS", json!([s])));
    assert_json(&client.recv_json(), &subscribed(&[&l, &m]));
    // An already-subscribed channel is no new subscription.
    client.subscribe(&[&m]);
    assert_json(&client.recv_json(), &subscribed(&[&m]));
    client.unsubscribe(&[&l]);
    assert_json(&client.recv_json(), &unsubscribed(&[&l]));
    let lb = upper(&logs(SERVER_B));
    client.subscribe(&[&s, &lb]);
    assert_json(&client.recv_json(), &error_msg("TOO_MANY_SUBSCRIPTIONS", json!([lb])));
    assert_json(&client.recv_json(), &subscribed(&[&s]));
    client.expect_no_message(QUIET);
}

//! PROTOCOL.md sections 5, 5a (latest value) and 8: the publish API and what
//! subscribers receive: data shapes, times, `seq`/`epoch`, alert routing,
//! recipients, validation and the HTTP rules of the endpoint.

use std::io::Write;

use serde_json::{json, Value};

use crate::support::*;

/// The expected envelope of a channel message.
fn channel_msg(kind: &str, channel: &str, data: Value, seq: u64) -> Value {
    json!({"type": kind, "channel": channel, "data": data, "timestamp": "<time>", "seq": seq, "epoch": "<string>"})
}

fn subscriber(hub: &Hub, channels: &[&str]) -> Client {
    let mut client = hub.connect_admin();
    client.subscribe_ok(channels);
    client
}

#[test]
fn log_entry_has_the_section_5_shape_seq_and_epoch() {
    let hub = Hub::start("");
    let l = logs(SERVER_A);
    let mut client = subscriber(&hub, &[&l]);
    let exception = "java.lang.IllegalStateException: boom\n\tat a.b.C.run(C.java:1)\n\t... 3 more";
    let body = json!({
        "type": "log_entry",
        "channel": l,
        "data": {
            "server_id": SERVER_A,
            "timestamp": "2026-11-28T16:30:00.5+01:00",
            "level": "WARN",
            "source": "Essentials",
            "message": "Can't keep up!",
            "exception": exception,
        },
    });
    assert_eq!(hub.publish(&body), 1);
    let first = client.recv_json();
    assert_json(
        &first,
        &channel_msg(
            "log_entry",
            &l,
            json!({
                "server_id": SERVER_A,
                "timestamp": "2026-11-28T15:30:00.500Z",
                "level": "WARN",
                "source": "Essentials",
                "message": "Can't keep up!",
                "exception": exception,
            }),
            1,
        ),
    );
    // Without timestamp and exception: the hub stamps the time; omitempty.
    assert_eq!(hub.publish(&log_body(SERVER_A, "Done (3.2s)!")), 1);
    let second = client.recv_json();
    assert_json(
        &second,
        &channel_msg(
            "log_entry",
            &l,
            json!({"server_id": SERVER_A, "timestamp": "<time>", "level": "INFO", "source": "server", "message": "Done (3.2s)!"}),
            2,
        ),
    );
    assert_eq!(first["epoch"], second["epoch"]);
    let stamped = chrono::DateTime::parse_from_rfc3339(second["data"]["timestamp"].as_str().unwrap()).unwrap();
    assert!((stamped.timestamp() - now()).abs() <= 5, "hub-stamped time {stamped} is not now");
}

#[test]
fn seq_counts_per_channel() {
    let hub = Hub::start("");
    let (la, lb, ma) = (logs(SERVER_A), logs(SERVER_B), metrics(SERVER_A));
    let mut client = subscriber(&hub, &[&la, &lb, &ma]);
    let bodies = [
        log_body(SERVER_A, "a1"),
        log_body(SERVER_B, "b1"),
        metrics_body(SERVER_A, 1, None),
        log_body(SERVER_A, "a2"),
        log_body(SERVER_B, "b2"),
        log_body(SERVER_A, "a3"),
        metrics_body(SERVER_A, 2, None),
    ];
    let expected = [(&la, 1), (&lb, 1), (&ma, 1), (&la, 2), (&lb, 2), (&la, 3), (&ma, 2)];
    let mut epochs = std::collections::HashMap::new();
    for (body, (channel, seq)) in bodies.iter().zip(expected) {
        assert_eq!(hub.publish(body), 1);
        let msg = client.recv_json();
        assert_eq!(msg["channel"], json!(channel), "{msg}");
        assert_eq!(msg["seq"], json!(seq), "{msg}");
        let epoch = msg["epoch"].as_str().unwrap_or_else(|| panic!("no epoch string: {msg}")).to_string();
        assert!(!epoch.is_empty());
        let first = epochs.entry(channel.clone()).or_insert_with(|| epoch.clone());
        assert_eq!(*first, epoch, "epoch changed within one hub run");
    }
}

#[test]
fn metrics_tps_is_absent_when_not_given_and_present_when_zero() {
    let hub = Hub::start("");
    let m = metrics(SERVER_A);
    let mut client = subscriber(&hub, &[&m]);
    for (seq, tps) in [(1, Some(20.0)), (2, None), (3, Some(0.0)), (4, Some(19.5))] {
        assert_eq!(hub.publish(&metrics_body(SERVER_A, 3, tps)), 1);
        assert_json(&client.recv_json(), &channel_msg("metrics", &m, metrics_data(tps), seq));
    }
}

#[test]
fn server_status_has_the_section_5_shape() {
    let hub = Hub::start("");
    let s = status(SERVER_A);
    let mut client = subscriber(&hub, &[&s]);
    assert_eq!(hub.publish(&status_body(SERVER_A, "running", "stopping", None)), 1);
    assert_json(
        &client.recv_json(),
        &channel_msg(
            "server_status",
            &s,
            json!({"server_id": SERVER_A, "server_name": "MyServer", "old_status": "running", "new_status": "stopping", "timestamp": "<time>"}),
            1,
        ),
    );
    assert_eq!(hub.publish(&status_body(SERVER_A, "stopping", "stopped", Some("User requested stop"))), 1);
    assert_json(
        &client.recv_json(),
        &channel_msg(
            "server_status",
            &s,
            json!({"server_id": SERVER_A, "server_name": "MyServer", "old_status": "stopping", "new_status": "stopped", "timestamp": "<time>", "reason": "User requested stop"}),
            2,
        ),
    );
    assert_eq!(hub.publish(&status_body(SERVER_A, "unknown", "crashed", None)), 1);
    assert_eq!(client.recv_json()["seq"], 3);
}

#[test]
fn user_notification_has_a_channel_seq_and_no_code() {
    let hub = Hub::start("");
    let me = new_id();
    let n = notifications(&me);
    let mut client = hub.connect(&user_token(&me, &[]));
    client.subscribe_ok(&[&n]);
    let mut other = hub.connect(&user_token(&new_id(), &[]));
    let body = json!({
        "type": "notification",
        "channel": n,
        "data": {"type": "error", "title": "Server Crashed", "message": "Your server 'Survival' has crashed", "link": format!("/servers/{SERVER_A}")},
    });
    assert_eq!(hub.publish(&body), 1);
    assert_json(
        &client.recv_json(),
        &channel_msg(
            "notification",
            &n,
            json!({"type": "error", "title": "Server Crashed", "message": "Your server 'Survival' has crashed", "link": format!("/servers/{SERVER_A}")}),
            1,
        ),
    );
    assert_eq!(hub.publish(&notification_body(&me, "Backup")), 1);
    assert_json(
        &client.recv_json(),
        &channel_msg("notification", &n, json!({"type": "info", "title": "Backup", "message": "Backup finished"}), 2),
    );
    other.expect_no_message(QUIET);
}

#[test]
fn alerts_are_routed_by_the_acl() {
    let hub = Hub::start_with_servers("");
    let mut admin = hub.connect_admin();
    let mut user_a = hub.connect(&user_token(&new_id(), &[SERVER_A]));
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    let mut user_b = hub.connect(&user_token(&new_id(), &[SERVER_B]));
    for c in [&mut admin, &mut user_a, &mut owner, &mut user_b] {
        c.ping_pong();
    }
    let alert = |source: &str, source_id: Option<&str>, title: &str| {
        let mut d = json!({
            "id": "<uuid>",
            "severity": "warning",
            "title": title,
            "message": "Something happened",
            "source": source,
            "timestamp": "<time>",
        });
        if let Some(id) = source_id {
            d["source_id"] = json!(id);
        }
        json!({"type": "alert", "data": d, "timestamp": "<time>"})
    };

    // A server alert goes to everyone allowed to watch that server.
    assert_eq!(hub.publish(&alert_body("server", Some(SERVER_A), "A")), 2);
    let to_admin = admin.recv_json();
    let to_user = user_a.recv_json();
    assert_json(&to_admin, &alert("server", Some(SERVER_A), "A"));
    assert_eq!(to_admin, to_user);
    // Ownership from the config counts.
    assert_eq!(hub.publish(&alert_body("server", Some(SERVER_C), "C")), 2);
    assert_json(&admin.recv_json(), &alert("server", Some(SERVER_C), "C"));
    assert_json(&owner.recv_json(), &alert("server", Some(SERVER_C), "C"));
    // Agent and system alerts go to admins only.
    let agent_id = "6f1c2a9e-0000-4000-8000-000000000001";
    assert_eq!(hub.publish(&alert_body("agent", Some(agent_id), "Agent unreachable")), 1);
    assert_json(&admin.recv_json(), &alert("agent", Some(agent_id), "Agent unreachable"));
    // An explicit id and a data object are kept.
    let id = new_id();
    let mut body = alert_body("system", None, "Disk full");
    body["data"]["id"] = json!(id);
    body["data"]["severity"] = json!("critical");
    body["data"]["data"] = json!({"free_bytes": 1024});
    assert_eq!(hub.publish(&body), 1);
    let mut expected = alert("system", None, "Disk full");
    expected["data"]["id"] = json!(id);
    expected["data"]["severity"] = json!("critical");
    expected["data"]["data"] = json!({"free_bytes": 1024});
    assert_json(&admin.recv_json(), &expected);

    for c in [&mut admin, &mut user_a, &mut owner, &mut user_b] {
        c.expect_no_message(QUIET);
    }
}

#[test]
fn two_clients_on_a_channel_get_the_same_messages() {
    let hub = Hub::start("");
    let l = logs(SERVER_A);
    assert_eq!(hub.publish(&log_body(SERVER_A, "before anyone")), 0);
    let mut one = subscriber(&hub, &[&l]);
    let mut two = subscriber(&hub, &[&l]);
    let mut bystander = subscriber(&hub, &[&logs(SERVER_B)]);
    for text in ["Starting minecraft server version 1.20.1", "Loading properties", "Done (3.2s)!"] {
        assert_eq!(hub.publish(&log_body(SERVER_A, text)), 2);
        let a = one.recv_json();
        let b = two.recv_json();
        assert_eq!(a, b, "the two subscribers got different copies");
        assert_eq!(a["data"]["message"], text);
    }
    bystander.expect_no_message(QUIET);
    two.unsubscribe(&[&l]);
    assert_json(&two.recv_json(), &unsubscribed(&[&l]));
    assert_eq!(hub.publish(&log_body(SERVER_A, "only one")), 1);
    assert_eq!(one.recv_json()["seq"], 5);
}

#[test]
fn latest_value_is_sent_right_after_subscribed() {
    let hub = Hub::start("");
    let (l, m, s) = (logs(SERVER_A), metrics(SERVER_A), status(SERVER_A));
    let mut live = subscriber(&hub, &[&m, &s]);
    assert_eq!(hub.publish(&metrics_body(SERVER_A, 1, None)), 1);
    assert_eq!(hub.publish(&status_body(SERVER_A, "unknown", "starting", None)), 1);
    assert_eq!(hub.publish(&metrics_body(SERVER_A, 2, Some(20.0))), 1);
    assert_eq!(hub.publish(&status_body(SERVER_A, "starting", "running", None)), 1);
    assert_eq!(hub.publish(&log_body(SERVER_A, "not replayed without since")), 0);
    let live_msgs: Vec<Value> = (0..4).map(|_| live.recv_json()).collect();

    let mut late = hub.connect_admin();
    late.subscribe(&[&s, &l, &m]);
    assert_json(&late.recv_json(), &subscribed(&[&s, &l, &m]));
    // Request order: status, then metrics; each is the kept copy, same seq/epoch.
    assert_eq!(late.recv_json(), live_msgs[3], "latest status");
    assert_eq!(late.recv_json(), live_msgs[2], "latest metrics");
    late.expect_no_message(QUIET);
    // Already subscribed: nothing again.
    late.subscribe(&[&m]);
    assert_json(&late.recv_json(), &subscribed(&[&m]));
    late.expect_no_message(QUIET);
    // Then live messages continue the sequence.
    assert_eq!(hub.publish(&metrics_body(SERVER_A, 3, None)), 2);
    let next = late.recv_json();
    assert_eq!(next["seq"], 3, "{next}");
    assert_eq!(next["data"]["players_online"], 3);
    // Notifications channels have no latest value.
    let me = new_id();
    assert_eq!(hub.publish(&notification_body(&me, "earlier")), 0);
    let mut user = hub.connect(&user_token(&me, &[]));
    user.subscribe_ok(&[&notifications(&me)]);
    user.expect_no_message(QUIET);
}

#[test]
fn publish_validation_errors_are_400_and_send_nothing() {
    let hub = Hub::start("");
    let me = new_id();
    let mut watcher = subscriber(
        &hub,
        &[&logs(SERVER_A), &metrics(SERVER_A), &status(SERVER_A), &logs(SERVER_B), &notifications(&me)],
    );
    let with = |mut body: Value, path: &[&str], value: Value| {
        let mut v = &mut body;
        for p in &path[..path.len() - 1] {
            v = &mut v[*p];
        }
        v[path[path.len() - 1]] = value;
        body
    };
    let without = |mut body: Value, key: &str| {
        body["data"].as_object_mut().unwrap().remove(key);
        body
    };
    let log = log_body(SERVER_A, "x");
    let cases: Vec<(&str, Value)> = vec![
        ("unknown type", with(log.clone(), &["type"], json!("chat"))),
        ("log_entry on a metrics channel", with(log.clone(), &["channel"], json!(metrics(SERVER_A)))),
        ("metrics on a logs channel", with(metrics_body(SERVER_A, 1, None), &["channel"], json!(logs(SERVER_A)))),
        ("notification on a server channel", with(notification_body(&me, "t"), &["channel"], json!(logs(SERVER_A)))),
        ("server_id not the channel's", with(log.clone(), &["data", "server_id"], json!(SERVER_B))),
        ("malformed channel", with(log.clone(), &["channel"], json!("server:nope:logs"))),
        ("missing channel", {
            let mut b = log.clone();
            b.as_object_mut().unwrap().remove("channel");
            b
        }),
        ("unknown data field", with(log.clone(), &["data", "colour"], json!("red"))),
        ("missing message", without(log.clone(), "message")),
        ("missing level", without(log.clone(), "level")),
        ("bad level", with(log.clone(), &["data", "level"], json!("VERBOSE"))),
        ("level not a string", with(log.clone(), &["data", "level"], json!(5))),
        ("bad timestamp", with(log.clone(), &["data", "timestamp"], json!("yesterday"))),
        ("data not an object", with(log.clone(), &["data"], json!("hello"))),
        ("missing cpu_percent", without(metrics_body(SERVER_A, 1, None), "cpu_percent")),
        ("players_online a string", with(metrics_body(SERVER_A, 1, None), &["data", "players_online"], json!("3"))),
        ("tps a string", with(metrics_body(SERVER_A, 1, None), &["data", "tps"], json!("20"))),
        ("missing new_status", without(status_body(SERVER_A, "running", "stopping", None), "new_status")),
        (
            "bad status",
            with(status_body(SERVER_A, "running", "stopping", None), &["data", "new_status"], json!("exploded")),
        ),
        ("missing title", without(notification_body(&me, "t"), "title")),
        ("bad notification type", with(notification_body(&me, "t"), &["data", "type"], json!("party"))),
        ("missing severity", without(alert_body("system", None, "t"), "severity")),
        ("bad severity", with(alert_body("system", None, "t"), &["data", "severity"], json!("catastrophic"))),
        ("bad alert source", with(alert_body("system", None, "t"), &["data", "source"], json!("moon"))),
        ("server alert without source_id", alert_body("server", None, "t")),
        ("alert id not a UUID", with(alert_body("system", None, "t"), &["data", "id"], json!("alert-1"))),
    ];
    let token = service_token();
    for (what, body) in &cases {
        let resp = publish(hub.addr, &token, body);
        assert_eq!(resp.status, 400, "{what}: {body} answered {} {}", resp.status, resp.text());
        assert_http_error(&resp, 400, "bad_request", None);
    }
    for raw in [&b"{"[..], b"[]", b"null", b"\"log_entry\""] {
        let resp = raw_http(hub.addr, &publish_request(Some(&token), raw));
        assert_http_error(&resp, 400, "bad_request", None);
    }
    watcher.expect_no_message(QUIET);
    // The watcher's channels still work: nothing was half-published.
    assert_eq!(hub.publish(&log), 1);
    assert_eq!(watcher.recv_json()["seq"], 1);
}

#[test]
fn publish_needs_a_service_or_admin_bearer_token() {
    let hub = Hub::start("");
    let mut watcher = subscriber(&hub, &[&logs(SERVER_A)]);
    let body = log_body(SERVER_A, "x").to_string();
    let resp = raw_http(hub.addr, &publish_request(None, body.as_bytes()));
    assert_http_error(&resp, 401, "unauthorized", Some("missing token"));
    let resp = raw_http(hub.addr, &publish_request(Some("garbage"), body.as_bytes()));
    assert_http_error(&resp, 401, "unauthorized", Some("invalid token"));
    let resp = raw_http(hub.addr, &publish_request(Some(&user_token(&new_id(), &[SERVER_A])), body.as_bytes()));
    assert_http_error(&resp, 403, "forbidden", None);
    // The publish token comes only from the Authorization header.
    let req = format!(
        "POST /api/v1/publish?token={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: token={}\r\nContent-Length: {}\r\n\r\n{body}",
        service_token(),
        service_token(),
        body.len()
    );
    assert_http_error(&raw_http(hub.addr, req.as_bytes()), 401, "unauthorized", Some("missing token"));
    watcher.expect_no_message(QUIET);
    assert_eq!(recipients(&publish(hub.addr, &service_token(), &log_body(SERVER_A, "x")), &json!("service")), 1);
    assert_eq!(recipients(&publish(hub.addr, &admin_token(), &log_body(SERVER_A, "x")), &json!("admin")), 1);
}

#[test]
fn oversized_body_is_413_from_content_length_without_reading_it() {
    let hub = Hub::start("publish_max_bytes = 1024");
    let head_only = |token: Option<&str>, len: usize| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        format!("POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
    };
    // No body is sent: the answer must come from the head alone.
    let resp = raw_http(hub.addr, head_only(Some(&service_token()), 5000).as_bytes());
    assert_http_error(&resp, 413, "payload_too_large", None);
    // 401 and 403 come before 413.
    let resp = raw_http(hub.addr, head_only(None, 5000).as_bytes());
    assert_http_error(&resp, 401, "unauthorized", None);
    let resp = raw_http(hub.addr, head_only(Some(&user_token(&new_id(), &[])), 5000).as_bytes());
    assert_http_error(&resp, 403, "forbidden", None);
    // At the limit is fine.
    let mut body = log_body(SERVER_A, "");
    let base = body.to_string().len();
    body["data"]["message"] = json!("m".repeat(1024 - base));
    assert_eq!(body.to_string().len(), 1024);
    assert_eq!(hub.publish(&body), 0);
}

#[test]
fn publish_without_content_length_is_400() {
    let hub = Hub::start("");
    let req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        service_token()
    );
    assert_http_error(&raw_http(hub.addr, req.as_bytes()), 400, "bad_request", None);
    let body = log_body(SERVER_A, "x").to_string();
    let req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        service_token(),
        body.len()
    );
    assert_http_error(&raw_http(hub.addr, req.as_bytes()), 400, "bad_request", None);
}

#[test]
fn two_publishes_on_one_keep_alive_connection() {
    let hub = Hub::start("");
    let mut watcher = subscriber(&hub, &[&logs(SERVER_A)]);
    let token = service_token();
    let mut conn = HttpConn::connect(hub.addr);
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        let body = log_body(SERVER_A, text);
        let resp = conn.request(&publish_request(Some(&token), body.to_string().as_bytes()));
        assert_eq!(recipients(&resp, &body), 1);
        let msg = watcher.recv_json();
        assert_eq!(msg["data"]["message"], *text);
        assert_eq!(msg["seq"], i as u64 + 1);
    }
    // A GET on the same connection works too.
    let resp = conn.request(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(resp.status, 200);
}

/// The unread body of a `413` must not be taken for a next request: the hub
/// closes the connection after answering.
#[test]
fn after_a_413_the_unread_body_is_not_parsed_as_a_request() {
    let hub = Hub::start("publish_max_bytes = 1024");
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(40);
    let req = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{smuggled}",
        service_token(),
        smuggled.len()
    );
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(req.as_bytes());
    assert_http_error(&resp, 413, "payload_too_large", None);
    let rest = conn.wait_closed(WAIT).unwrap_or_else(|e| panic!("connection kept open after a 413: {e}"));
    assert!(rest.is_empty(), "the body was answered as requests: {:?}", String::from_utf8_lossy(&rest));
}

/// After a refused publish (401, 403, 400) the body is either read and
/// skipped or the connection is closed; it is never parsed as a request.
#[test]
fn a_refused_publish_body_does_not_break_keep_alive_framing() {
    let hub = Hub::start("");
    let body = log_body(SERVER_A, "x").to_string();
    let user = user_token(&new_id(), &[]);
    let service = service_token();
    let requests = [
        ("401", publish_request(Some("garbage"), body.as_bytes())),
        ("403", publish_request(Some(&user), body.as_bytes())),
        ("400", publish_request(Some(&service), b"{\"type\":\"nope\"}")),
    ];
    for (what, req) in requests {
        let mut conn = HttpConn::connect(hub.addr);
        let resp = conn.request(&req);
        assert_eq!(resp.status.to_string(), what, "{}", resp.text());
        if conn.stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            continue;
        }
        if let Ok(resp) = conn.read_response(WAIT) {
            assert_eq!(
                resp.status,
                200,
                "after a {what}, the next request was misread: {} {}",
                resp.status,
                resp.text()
            );
        }
    }
}

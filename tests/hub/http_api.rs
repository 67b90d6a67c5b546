//! PROTOCOL.md sections 1, 8 and 9: `/healthz`, `/api/v1/stats`, `/metrics`
//! and the HTTP errors every endpoint shares (404, 405, 400, 408, 431).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn get(hub: &Hub, path: &str) -> HttpResponse {
    http_get(hub.addr, path, None)
}

#[test]
fn healthz_is_ok() {
    let hub = Hub::start("");
    let resp = get(&hub, "/healthz");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", resp.headers);
    assert_eq!(resp.json(), json!({"status": "ok"}));
}

fn assert_u64(v: &Value, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{what} is not a non-negative integer: {v}"))
}

#[test]
fn stats_for_an_admin_have_the_documented_keys() {
    let hub = Hub::start("");
    let (l, m) = (logs(SERVER_A), metrics(SERVER_A));
    let mut one = hub.connect_admin();
    one.subscribe_ok(&[&l, &m]);
    let mut two = hub.connect_admin();
    two.subscribe_ok(&[&l]);
    assert_eq!(hub.publish(&log_body(SERVER_A, "counted")), 2);
    one.recv_json();
    two.recv_json();

    let stats = hub.stats();
    assert_eq!(stats["clients"], 2, "{stats}");
    assert_json(&stats["subscriptions"], &json!({l.clone(): 2, m.clone(): 1}));
    assert_eq!(stats["channels"], 2, "{stats}");
    let messages = &stats["messages"];
    assert!(assert_u64(&messages["in"], "messages.in") >= 1, "{stats}");
    assert!(assert_u64(&messages["out"], "messages.out") >= 2, "{stats}");
    assert_eq!(assert_u64(&messages["dropped"], "messages.dropped"), 0, "{stats}");
    assert_eq!(stats["agents"], json!([]), "no agents are configured: {stats}");
    assert_u64(&stats["history"]["entries"], "history.entries");
    assert_u64(&stats["history"]["bytes"], "history.bytes");

    // The token is taken as for /api/v1/ws.
    let token = admin_token();
    let resp = get(&hub, &format!("/api/v1/stats?token={token}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let req =
        format!("GET /api/v1/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: token={token}\r\nConnection: close\r\n\r\n");
    let resp = raw_http(hub.addr, req.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", resp.headers);

    drop(two);
    hub.wait_stats(WAIT, |s| s["clients"] == 1 && s["subscriptions"] == json!({l.clone(): 1, m.clone(): 1}));
}

#[test]
fn stats_refuse_non_admins() {
    let hub = Hub::start("");
    assert_http_error(&get(&hub, "/api/v1/stats"), 401, "unauthorized", Some("missing token"));
    let resp = http_get(hub.addr, "/api/v1/stats", Some("garbage"));
    assert_http_error(&resp, 401, "unauthorized", Some("invalid token"));
    let resp = http_get(hub.addr, "/api/v1/stats", Some(&user_token(&new_id(), &[SERVER_A])));
    assert_http_error(&resp, 403, "forbidden", None);
    let resp = http_get(hub.addr, "/api/v1/stats", Some(&service_token()));
    assert_http_error(&resp, 403, "forbidden", None);
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?, parts.next()?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn metrics_endpoint_exposes_the_counters() {
    let hub = Hub::start("");
    let mut client = hub.connect_admin();
    client.subscribe_ok(&[&logs(SERVER_A)]);
    assert_eq!(hub.publish(&log_body(SERVER_A, "counted")), 1);
    client.recv_json();

    let resp = get(&hub, "/metrics");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", resp.headers);
    let text = resp.text();
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"));
    assert_eq!(value("aymc_clients"), 1.0, "{text}");
    assert_eq!(value("aymc_subscriptions"), 1.0, "{text}");
    assert!(value("aymc_messages_in_total") >= 1.0, "{text}");
    assert!(value("aymc_messages_out_total") >= 1.0, "{text}");
    assert_eq!(value("aymc_messages_dropped_total"), 0.0, "{text}");
    assert!(value("aymc_history_bytes") >= 0.0, "{text}");
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let hub = Hub::start("");
    for path in ["/index.html", "/nope", "/api/v1", "/api/v1/ws/extra", "/healthz/x"] {
        assert_http_error(&get(&hub, path), 404, "not_found", None);
    }
    let cases = [
        ("POST", "/healthz", "GET"),
        ("DELETE", "/api/v1/stats", "GET"),
        ("PUT", "/metrics", "GET"),
        ("GET", "/api/v1/publish", "POST"),
        ("POST", "/api/v1/ws", "GET"),
    ];
    for (method, path, allow) in cases {
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let resp = raw_http(hub.addr, req.as_bytes());
        assert_http_error(&resp, 405, "method_not_allowed", None);
        let got = resp.header("allow").unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"));
        assert!(got.split(',').any(|m| m.trim() == allow), "{method} {path}: Allow {got:?} lacks {allow}");
    }
}

#[test]
fn a_request_line_that_is_not_http_1_1_is_400() {
    let hub = Hub::start("");
    let requests: [&[u8]; 4] = [
        b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET /healthz\r\n\r\n",
    ];
    for req in requests {
        let resp = raw_http(hub.addr, req);
        assert_http_error(&resp, 400, "bad_request", None);
    }
}

#[test]
fn an_incomplete_head_times_out_with_408() {
    let hub = Hub::start("head_timeout_s = 1");
    let mut conn = HttpConn::connect(hub.addr);
    let start = Instant::now();
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let resp = conn.read_response(Duration::from_secs(5)).unwrap();
    let elapsed = start.elapsed();
    assert_http_error(&resp, 408, "request_timeout", None);
    assert!(elapsed >= Duration::from_millis(800), "408 after {elapsed:?}, before head_timeout_s = 1");
    assert!(elapsed <= Duration::from_secs(4), "408 only after {elapsed:?}");
}

#[test]
fn a_head_over_the_limits_is_431() {
    let hub = Hub::start("head_max_bytes = 1024\nhead_max_headers = 8");
    let big = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(2000));
    assert_http_error(&raw_http(hub.addr, big.as_bytes()), 431, "headers_too_large", None);

    let with_headers = |n: usize| {
        let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for i in 1..n {
            req.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        req
    };
    assert_http_error(&raw_http(hub.addr, with_headers(12).as_bytes()), 431, "headers_too_large", None);
    let resp = raw_http(hub.addr, with_headers(8).as_bytes());
    assert_eq!(resp.status, 200, "8 headers are within head_max_headers = 8: {}", resp.text());
    // Too large beats an unknown path.
    let big = format!("GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(2000));
    assert_http_error(&raw_http(hub.addr, big.as_bytes()), 431, "headers_too_large", None);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_silently() {
    let hub = Hub::start("head_timeout_s = 1");
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    let resp = conn.request(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    let start = Instant::now();
    let rest = conn.wait_closed(Duration::from_secs(5)).unwrap();
    assert!(rest.is_empty(), "an idle keep-alive connection got {:?}", String::from_utf8_lossy(&rest));
    assert!(start.elapsed() >= Duration::from_millis(800), "closed after {:?}", start.elapsed());
}

/// A body on a non-publish request is framed by its `Content-Length`: it must
/// not be read as the start of the next request on a keep-alive connection
/// (section 8: keep-alive on every non-upgrade request). Closing the
/// connection after the answer is acceptable; answering garbage is not.
#[test]
fn a_body_on_a_get_does_not_break_keep_alive_framing() {
    let hub = Hub::start("");
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(resp.status, 200, "{}", resp.text());
    if conn.stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return;
    }
    if let Ok(resp) = conn.read_response(WAIT) {
        assert_eq!(resp.status, 200, "the second request was misread: {} {}", resp.status, resp.text());
    }
}

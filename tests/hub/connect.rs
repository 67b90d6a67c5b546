//! PROTOCOL.md section 1: the upgrade, where the token comes from, and every
//! refusal with its status, JSON body and place in the check order.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tungstenite::ClientRequestBuilder;

use crate::support::*;

fn upgrade(hub: &Hub, path: &str, extra: &[(&str, &str)]) -> HttpResponse {
    raw_http(hub.addr, upgrade_request(path, extra).as_bytes())
}

fn assert_401(resp: &HttpResponse, message: &str, token: &str) {
    assert_http_error(resp, 401, "unauthorized", Some(message));
    if token.len() > 3 {
        assert!(!resp.text().contains(token), "the 401 body repeats the token: {}", resp.text());
    }
}

#[test]
fn query_token_upgrades_without_protocol_or_other_extensions() {
    let hub = Hub::start("");
    let token = admin_token();
    let resp = upgrade(&hub, &ws_path(&token), &[]);
    assert_upgraded(&resp);
    // A subprotocol is never negotiated; of the extensions, only
    // permessage-deflate is (see `compression`).
    let resp = upgrade(
        &hub,
        &ws_path(&token),
        &[("Sec-WebSocket-Extensions", "x-webkit-deflate-frame"), ("Sec-WebSocket-Protocol", "aymc")],
    );
    assert_upgraded(&resp);
    let resp = upgrade(
        &hub,
        &ws_path(&token),
        &[
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("Sec-WebSocket-Protocol", "aymc"),
        ],
    );
    assert_switched(&resp);
    assert_eq!(
        resp.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut client = hub.connect(&token);
    client.ping_pong();
}

/// A real WebSocket client whose upgrade carries `name: value` and no query.
fn connect_with_header(hub: &Hub, name: &str, value: String) -> Client {
    let uri = format!("ws://{}/api/v1/ws", hub.addr).parse().unwrap();
    ws_connect_request(hub.addr, ClientRequestBuilder::new(uri).with_header(name, value)).unwrap()
}

#[test]
fn bearer_header_token_upgrades() {
    let hub = Hub::start("");
    let token = admin_token();
    assert_upgraded(&upgrade(&hub, "/api/v1/ws", &[("Authorization", &format!("Bearer {token}"))]));
    // The scheme is case-insensitive.
    assert_upgraded(&upgrade(&hub, "/api/v1/ws", &[("Authorization", &format!("bearer {token}"))]));
    assert_upgraded(&upgrade(&hub, "/api/v1/ws", &[("Authorization", &format!("BEARER {token}"))]));
    connect_with_header(&hub, "Authorization", format!("Bearer {token}")).ping_pong();
}

#[test]
fn cookie_token_upgrades() {
    let hub = Hub::start("");
    let token = admin_token();
    // A cookie token needs an allowed Origin: here the hub's own.
    let own = ("Origin", "http://127.0.0.1");
    assert_upgraded(&upgrade(&hub, "/api/v1/ws", &[("Cookie", &format!("theme=dark; token={token}; lang=en")), own]));
    assert_upgraded(&upgrade(&hub, "/api/v1/ws", &[("Cookie", &format!("token={token}")), own]));
    let uri = format!("ws://{}/api/v1/ws", hub.addr).parse().unwrap();
    let req = ClientRequestBuilder::new(uri)
        .with_header("Cookie", format!("token={token}"))
        .with_header("Origin", format!("http://{}", hub.addr));
    ws_connect_request(hub.addr, req).unwrap().ping_pong();
}

#[test]
fn first_present_token_source_wins() {
    let hub = Hub::start("");
    let good = admin_token();
    let bad = sign_hs(&claims(&new_id(), "admin", &[]), "some-other-secret", Algorithm::HS256);
    let bearer_good = format!("Bearer {good}");
    let bearer_bad = format!("Bearer {bad}");
    let cookie_good = format!("token={good}");

    // An invalid query token is 401 even with a valid Bearer or cookie.
    let resp = upgrade(&hub, &ws_path(&bad), &[("Authorization", &bearer_good)]);
    assert_401(&resp, "invalid token", &bad);
    let resp = upgrade(&hub, &ws_path(&bad), &[("Cookie", &cookie_good)]);
    assert_401(&resp, "invalid token", &bad);
    // An invalid Bearer token is 401 even with a valid cookie.
    let resp = upgrade(&hub, "/api/v1/ws", &[("Authorization", &bearer_bad), ("Cookie", &cookie_good)]);
    assert_401(&resp, "invalid token", &bad);
    // A valid first source wins over an invalid later one.
    assert_upgraded(&upgrade(&hub, &ws_path(&good), &[("Authorization", &bearer_bad)]));
    assert_upgraded(&upgrade(
        &hub,
        "/api/v1/ws",
        &[("Authorization", &bearer_good), ("Cookie", &format!("token={bad}"))],
    ));
    // Other Authorization schemes are ignored: the cookie is used.
    assert_upgraded(&upgrade(
        &hub,
        "/api/v1/ws",
        &[
            ("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            ("Cookie", &cookie_good),
            ("Origin", "http://127.0.0.1"),
        ],
    ));
    let resp = upgrade(&hub, "/api/v1/ws", &[("Authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l")]);
    assert_401(&resp, "missing token", "");
}

#[test]
fn missing_or_empty_token_is_missing_token() {
    let hub = Hub::start("");
    assert_401(&upgrade(&hub, "/api/v1/ws", &[]), "missing token", "");
    assert_401(&upgrade(&hub, "/api/v1/ws?token=", &[]), "missing token", "");
    assert_401(&upgrade(&hub, "/api/v1/ws", &[("Cookie", "token=")]), "missing token", "");
    assert_401(&upgrade(&hub, "/api/v1/ws", &[("Cookie", "session=abc")]), "missing token", "");
}

#[test]
fn bad_tokens_are_refused_with_their_message() {
    let hub = Hub::start("");
    let sub = new_id();
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "not-a-jwt".to_string(), "invalid token"),
        ("three garbage parts", "aaa.bbb.ccc".to_string(), "invalid token"),
        ("bad signature", sign_hs(&claims(&sub, "admin", &[]), "some-other-secret", Algorithm::HS256), "invalid token"),
        ("alg none", unsigned_token(&claims(&sub, "admin", &[])), "invalid token"),
        (
            "HS384 with the right secret",
            sign_hs(&claims(&sub, "admin", &[]), SECRET, Algorithm::HS384),
            "invalid token",
        ),
        ("expired", sign(&json!({"sub": sub, "role": "admin", "exp": now() - 3600})), "token expired"),
        (
            "not yet valid",
            sign(&json!({"sub": sub, "role": "admin", "exp": now() + 7200, "nbf": now() + 3600})),
            "token not yet valid",
        ),
        ("sub not a UUID", sign(&json!({"sub": "alice", "role": "admin", "exp": now() + 3600})), "invalid claims"),
        ("no sub", sign(&json!({"role": "admin", "exp": now() + 3600})), "invalid claims"),
        (
            "user_id not a UUID either",
            sign(&json!({"sub": "alice", "user_id": "42", "exp": now() + 3600})),
            "invalid claims",
        ),
    ];
    for (what, token, message) in &cases {
        let resp = upgrade(&hub, &ws_path(token), &[]);
        assert_eq!(resp.status, 401, "{what}: {} {}", resp.status, resp.text());
        assert_401(&resp, message, token);
    }
    // `exp` is required (the message is not fixed by the protocol).
    let token = sign(&json!({"sub": sub, "role": "admin"}));
    let resp = upgrade(&hub, &ws_path(&token), &[]);
    assert_http_error(&resp, 401, "unauthorized", None);
}

#[test]
fn leeway_applies_to_exp_and_nbf() {
    let hub = HubConfig::new().auth("leeway_s = 10").start();
    let sub = new_id();
    let at = |exp: i64, nbf: Option<i64>| {
        let mut c = json!({"sub": sub, "role": "admin", "exp": exp});
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        sign(&c)
    };
    assert_upgraded(&upgrade(&hub, &ws_path(&at(now() - 3, None)), &[]));
    assert_401(&upgrade(&hub, &ws_path(&at(now() - 40, None)), &[]), "token expired", "");
    assert_upgraded(&upgrade(&hub, &ws_path(&at(now() + 600, Some(now() + 3))), &[]));
    assert_401(&upgrade(&hub, &ws_path(&at(now() + 600, Some(now() + 40))), &[]), "token not yet valid", "");
}

#[test]
fn user_id_claim_is_used_when_sub_is_not_a_uuid() {
    let hub = Hub::start("");
    let user = new_id();
    let token = sign(&json!({"sub": "alice", "user_id": user, "role": "user", "exp": now() + 3600}));
    let mut client = hub.connect(&token);
    client.subscribe_ok(&[&notifications(&user)]);
    let other = notifications(&new_id());
    client.subscribe(&[&other]);
    assert_json(&client.recv_json(), &error_msg("FORBIDDEN", json!([other])));
    assert_json(&client.recv_json(), &subscribed(&[]));

    // A UUID `sub` wins over `user_id`.
    let sub = new_id();
    let user_id = new_id();
    let token = sign(&json!({"sub": sub, "user_id": user_id, "role": "user", "exp": now() + 3600}));
    let mut client = hub.connect(&token);
    client.subscribe_ok(&[&notifications(&sub)]);
    let theirs = notifications(&user_id);
    client.subscribe(&[&theirs]);
    assert_json(&client.recv_json(), &error_msg("FORBIDDEN", json!([theirs])));
    assert_json(&client.recv_json(), &subscribed(&[]));
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let hub = HubConfig::new().auth("issuer = \"aymc-backend\"\naudience = \"aymc-hub\"").start();
    let sub = new_id();
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = claims(&sub, "admin", &[]);
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            c["aud"] = json!(aud);
        }
        sign(&c)
    };
    assert_upgraded(&upgrade(&hub, &ws_path(&with(Some("aymc-backend"), Some("aymc-hub"))), &[]));
    assert_401(&upgrade(&hub, &ws_path(&with(Some("someone-else"), Some("aymc-hub"))), &[]), "invalid issuer", "");
    assert_401(&upgrade(&hub, &ws_path(&with(Some("aymc-backend"), Some("grafana"))), &[]), "invalid audience", "");
    assert_401(
        &upgrade(&hub, &ws_path(&with(Some("aymc-backend"), Some("aymc-hub-staging"))), &[]),
        "invalid audience",
        "",
    );
}

/// A configured issuer / audience must be in the token: a token without the
/// claim was not issued by / for them (section 1 row 5, "wrong iss/aud (when
/// configured)").
#[test]
fn issuer_and_audience_are_required_when_configured() {
    let hub = HubConfig::new().auth("issuer = \"aymc-backend\"\naudience = \"aymc-hub\"").start();
    let mut no_iss = claims(&new_id(), "admin", &[]);
    no_iss["aud"] = json!("aymc-hub");
    assert_401(&upgrade(&hub, &ws_path(&sign(&no_iss)), &[]), "invalid issuer", "");
    let mut no_aud = claims(&new_id(), "admin", &[]);
    no_aud["iss"] = json!("aymc-backend");
    assert_401(&upgrade(&hub, &ws_path(&sign(&no_aud)), &[]), "invalid audience", "");
}

#[test]
fn issuer_and_audience_are_ignored_when_not_configured() {
    let hub = Hub::start("");
    let mut c = claims(&new_id(), "admin", &[]);
    c["iss"] = json!("whoever");
    c["aud"] = json!("something-else");
    assert_upgraded(&upgrade(&hub, &ws_path(&sign(&c)), &[]));
}

#[test]
fn not_an_upgrade_is_400() {
    let hub = Hub::start("");
    let key = format!("Sec-WebSocket-Key: {WS_KEY}");
    let cases: [&[&str]; 6] = [
        &[],
        &["Connection: Upgrade", &key, "Sec-WebSocket-Version: 13"],
        &["Upgrade: websocket", &key, "Sec-WebSocket-Version: 13"],
        &["Upgrade: websocket", "Connection: keep-alive", &key, "Sec-WebSocket-Version: 13"],
        &["Upgrade: h2c", "Connection: Upgrade", &key, "Sec-WebSocket-Version: 13"],
        &["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"],
    ];
    let cases = cases.map(upgrade_head);
    for req in &cases {
        let resp = raw_http(hub.addr, req.as_bytes());
        assert_http_error(&resp, 400, "bad_request", None);
    }
}

/// A request head for `/api/v1/ws` with an admin token, `Host`, then `lines`.
fn upgrade_head(lines: &[&str]) -> String {
    let request_line = format!("GET {} HTTP/1.1", ws_path(&admin_token()));
    let mut all = vec![request_line.as_str(), "Host: 127.0.0.1"];
    all.extend_from_slice(lines);
    head(&all)
}

#[test]
fn wrong_websocket_version_is_400_with_version_header() {
    let hub = Hub::start("");
    let req = upgrade_head(&[
        "Upgrade: websocket",
        "Connection: Upgrade",
        &format!("Sec-WebSocket-Key: {WS_KEY}"),
        "Sec-WebSocket-Version: 8",
    ]);
    let resp = raw_http(hub.addr, req.as_bytes());
    assert_http_error(&resp, 400, "bad_request", None);
    assert_eq!(resp.header("sec-websocket-version").map(str::trim), Some("13"), "{:?}", resp.headers);
}

#[test]
fn firefox_connection_header_and_mixed_case_tokens_upgrade() {
    let hub = Hub::start("");
    let req = upgrade_head(&[
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0",
        "Sec-WebSocket-Version: 13",
        "Origin: http://127.0.0.1",
        "Sec-WebSocket-Extensions: permessage-deflate",
        &format!("Sec-WebSocket-Key: {WS_KEY}"),
        "Connection: keep-alive, Upgrade",
        "Upgrade: WebSocket",
    ]);
    let mut conn = HttpConn::connect(hub.addr);
    let resp = conn.request(req.as_bytes());
    assert_switched(&resp);
    assert_eq!(
        resp.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut ws = RawWs { conn };
    ws.send_text(r#"{"type":"ping"}"#);
    let pong = ws.recv_json(WAIT);
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[test]
fn first_frame_in_the_same_packet_as_the_head_is_answered() {
    let hub = Hub::start("");
    let mut bytes = upgrade_request(&ws_path(&admin_token()), &[]).into_bytes();
    bytes.extend_from_slice(&masked(OP_TEXT, br#"{"type":"ping"}"#));
    let mut stream = TcpStream::connect(hub.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut conn = HttpConn::from_stream(stream);
    let resp = conn.read_response(WAIT).unwrap();
    assert_upgraded(&resp);
    let mut ws = RawWs { conn };
    let pong = ws.recv_json(WAIT);
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[test]
fn origin_is_checked_only_against_allowed_origins() {
    let hub = HubConfig::new().auth("allowed_origins = [\"https://panel.example.com\"]").start();
    let token = admin_token();
    let resp = upgrade(&hub, &ws_path(&token), &[("Origin", "https://evil.example.com")]);
    assert_http_error(&resp, 403, "forbidden", None);
    assert_upgraded(&upgrade(&hub, &ws_path(&token), &[("Origin", "https://panel.example.com")]));
    // wscat sends no Origin.
    assert_upgraded(&upgrade(&hub, &ws_path(&token), &[]));

    // Without the list every Origin passes.
    let open = Hub::start("");
    assert_upgraded(&upgrade(&open, &ws_path(&token), &[("Origin", "https://evil.example.com")]));
}

#[test]
fn connection_cap_answers_503_with_retry_after() {
    let hub = Hub::start("max_connections = 2");
    let token = admin_token();
    let mut a = hub.connect(&token);
    let b = hub.connect(&token);
    a.ping_pong();
    let resp = upgrade(&hub, &ws_path(&token), &[]);
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"), "{:?}", resp.headers);
    // Every connection counts, not only upgrades; the cap beats a bad path and a bad token.
    let resp = http_get(hub.addr, "/healthz", None);
    assert_http_error(&resp, 503, "unavailable", None);
    let resp = upgrade(&hub, "/nowhere?token=garbage", &[]);
    assert_http_error(&resp, 503, "unavailable", None);
    // The held connections are untouched.
    a.ping_pong();
    // Freeing one slot lets the next client in.
    drop(b);
    let ok = wait_until(WAIT, || upgrade(&hub, &ws_path(&token), &[]).status == 101);
    assert!(ok, "a slot freed by a closed client was never reused");
}

#[test]
fn a_connection_still_sending_its_head_counts_toward_the_cap() {
    let hub = Hub::start("max_connections = 1");
    let mut first = HttpConn::connect(hub.addr);
    first.send(b"GET /healthz HTTP/1.1\r\n");
    // The listen queue is FIFO: the hub accepts `first` before the next one.
    let resp = upgrade(&hub, &ws_path(&admin_token()), &[]);
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"));
    let resp = first.request(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn a_marked_connection_gets_503_even_when_its_head_times_out_or_is_too_large() {
    let hub = Hub::start("max_connections = 1\nhead_timeout_s = 1\nhead_max_bytes = 1024");
    let mut held = hub.connect_admin();
    let mut late = HttpConn::connect(hub.addr);
    late.send(b"GET /healthz HTTP/1.1\r\n");
    let resp = late.read_response(WAIT).unwrap();
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"));
    let big = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n", "p".repeat(2000));
    let resp = raw_http(hub.addr, big.as_bytes());
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"));
    held.ping_pong();
}

#[test]
fn per_ip_cap_answers_503() {
    let hub = Hub::start("max_connections_per_ip = 1");
    let token = admin_token();
    let mut held = hub.connect(&token);
    let resp = upgrade(&hub, &ws_path(&token), &[]);
    assert_http_error(&resp, 503, "unavailable", None);
    assert_eq!(resp.header("retry-after").map(str::trim), Some("5"));
    held.ping_pong();
}

#[test]
fn checks_run_in_protocol_order() {
    let hub = HubConfig::new().auth("allowed_origins = [\"https://panel.example.com\"]").start();
    let bad = "garbage.token.here";
    // Unknown path beats a bad token.
    let resp = upgrade(&hub, &format!("/api/v1/wss?token={bad}"), &[]);
    assert_http_error(&resp, 404, "not_found", None);
    // Wrong method beats a bad token.
    let req = head(&[&format!("POST {} HTTP/1.1", ws_path(bad)), "Host: 127.0.0.1", "Content-Length: 0"]);
    let resp = raw_http(hub.addr, req.as_bytes());
    assert_http_error(&resp, 405, "method_not_allowed", None);
    assert!(resp.header("allow").is_some_and(|a| a.contains("GET")), "405 without Allow: GET: {:?}", resp.headers);
    // A request line that is not HTTP/1.1 beats a bad token.
    let req = head(&[&format!("GET {} HTTP/1.0", ws_path(bad)), "Host: 127.0.0.1"]);
    assert_http_error(&raw_http(hub.addr, req.as_bytes()), 400, "bad_request", None);
    // A bad Origin beats a bad token.
    let resp = upgrade(&hub, &ws_path(bad), &[("Origin", "https://evil.example.com")]);
    assert_http_error(&resp, 403, "forbidden", None);
    // A bad token beats not being an upgrade and a wrong version.
    let req = head(&[&format!("GET {} HTTP/1.1", ws_path(bad)), "Host: 127.0.0.1"]);
    assert_401(&raw_http(hub.addr, req.as_bytes()), "invalid token", bad);
    let req = head(&[
        &format!("GET {} HTTP/1.1", ws_path(bad)),
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        &format!("Sec-WebSocket-Key: {WS_KEY}"),
        "Sec-WebSocket-Version: 8",
    ]);
    assert_401(&raw_http(hub.addr, req.as_bytes()), "invalid token", bad);
    // A missing token also beats not being an upgrade.
    let req = head(&["GET /api/v1/ws HTTP/1.1", "Host: 127.0.0.1"]);
    assert_401(&raw_http(hub.addr, req.as_bytes()), "missing token", "");
}

#[test]
fn connect_and_disconnect_are_logged() {
    let hub = Hub::start("");
    let user = new_id();
    let mut client = hub.connect(&user_token(&user, &[]));
    client.ping_pong();
    let peer = client.local_addr().to_string();
    let connected = hub
        .wait_for_log(WAIT, |l| l.contains(&user) && l.contains(&peer))
        .unwrap_or_else(|| panic!("no log line with user {user} and peer {peer}:\n{}", hub.logs().join("\n")));
    let _ = client.ws.close(None);
    let _ = client.next_event(Duration::from_secs(2));
    drop(client);
    let disconnected = hub.wait_for_log(WAIT, |l| l.contains(&peer) && l != connected);
    assert!(disconnected.is_some(), "no disconnect log line for peer {peer}:\n{}", hub.logs().join("\n"));
}

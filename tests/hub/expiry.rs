//! PROTOCOL.md sections 1, 4 (`auth`) and 5b: the `TOKEN_EXPIRING` notice,
//! the `4001` close at `exp` + `leeway_s`, and in-band token refresh.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn expiring(exp: i64) -> Value {
    control("TOKEN_EXPIRING", "Token expiring", json!({"expires_at": exp}))
}

fn authenticated(exp: i64, revoked: &[&str]) -> Value {
    control("AUTHENTICATED", "Token refreshed", json!({"expires_at": exp, "revoked": revoked}))
}

fn token_until(sub: &str, servers: &[&str], exp: i64) -> String {
    sign(&json!({"sub": sub, "role": "user", "servers": servers, "exp": exp}))
}

/// Waits for the 4001 close and checks it comes at `exp` + `leeway`, not before.
fn expect_4001(client: &mut Client, exp: i64, leeway: i64) {
    let (code, seen) = client.expect_close(Duration::from_secs(8));
    let at = now_f64();
    assert_eq!(code, 4001, "close code; messages before it: {seen:?}");
    assert!(seen.is_empty(), "messages before the 4001 close: {seen:?}");
    let due = (exp + leeway) as f64;
    assert!(at >= due - 0.3, "closed at {at:.2}, before exp + leeway = {due}");
    assert!(at <= due + 2.5, "closed at {at:.2}, long after exp + leeway = {due}");
}

#[test]
fn token_expiring_comes_expiry_notice_s_before_exp_then_4001() {
    let hub = HubConfig::new().auth("leeway_s = 1\nexpiry_notice_s = 1").start();
    let exp = now() + 3;
    let mut client = hub.connect(&token_until(&new_id(), &[], exp));
    let notice = client.recv_json_within(Duration::from_secs(5));
    let at = now_f64();
    assert_json(&notice, &expiring(exp));
    let due = (exp - 1) as f64;
    assert!(at >= due - 0.3, "TOKEN_EXPIRING at {at:.2}, before exp - expiry_notice_s = {due}");
    assert!(at <= due + 1.5, "TOKEN_EXPIRING at {at:.2}, late for {due}");
    // Once per token, then the close.
    expect_4001(&mut client, exp, 1);
}

#[test]
fn token_expiring_comes_at_connect_when_already_due() {
    let hub = HubConfig::new().auth("leeway_s = 1").start();
    let exp = now() + 2;
    let mut client = hub.connect(&token_until(&new_id(), &[], exp));
    // Default expiry_notice_s (60) is already past: the notice comes at once.
    assert_json(&client.recv_json_within(Duration::from_secs(1)), &expiring(exp));
    client.ping_pong();
    expect_4001(&mut client, exp, 1);
}

#[test]
fn auth_refresh_revokes_channels_and_prevents_the_4001() {
    let hub = HubConfig::new().auth("leeway_s = 1").start();
    let me = new_id();
    let exp = now() + 2;
    let mut client = hub.connect(&token_until(&me, &[SERVER_A, SERVER_B], exp));
    assert_json(&client.recv_json_within(Duration::from_secs(1)), &expiring(exp));
    let (la, lb, mine) = (logs(SERVER_A), logs(SERVER_B), notifications(&me));
    client.subscribe_ok(&[&la, &lb, &mine]);

    let new_exp = now() + 3600;
    client.send_json(&json!({"type": "auth", "data": {"token": token_until(&me, &[SERVER_A], new_exp)}}));
    assert_json(&client.recv_json(), &authenticated(new_exp, &[&lb]));

    // The revoked channel is gone; the others still deliver.
    assert_eq!(hub.publish(&log_body(SERVER_B, "not for you")), 0);
    assert_eq!(hub.publish(&log_body(SERVER_A, "still yours")), 1);
    assert_eq!(client.recv_json()["data"]["message"], "still yours");
    client.unsubscribe(&[&lb]);
    assert_json(&client.recv_json(), &unsubscribed(&[]));
    // Past the old exp + leeway: no 4001, no further notice.
    let quiet_until = (exp + 1) as f64 + 1.5;
    client.expect_no_message(Duration::from_secs_f64((quiet_until - now_f64()).max(0.1)));
    client.ping_pong();
}

#[test]
fn auth_with_another_user_or_a_bad_token_is_unauthorized() {
    let hub = HubConfig::new().auth("leeway_s = 1").start();
    let me = new_id();
    let exp = now() + 3;
    let mut client = hub.connect(&token_until(&me, &[SERVER_A], exp));
    assert_json(&client.recv_json_within(Duration::from_secs(1)), &expiring(exp));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    let bad_tokens = [
        ("another user", token_until(&new_id(), &[SERVER_A], now() + 3600)),
        ("garbage", "garbage".to_string()),
        ("expired", token_until(&me, &[SERVER_A], now() - 3600)),
        (
            "bad signature",
            sign_hs(&json!({"sub": me, "exp": now() + 3600}), "some-other-secret", jsonwebtoken::Algorithm::HS256),
        ),
    ];
    for (what, token) in &bad_tokens {
        client.send_json(&json!({"type": "auth", "data": {"token": token}}));
        let msg = client.recv_json();
        assert_eq!(msg["data"]["code"], "UNAUTHORIZED", "{what}: {msg}");
        assert_error_code(&msg, "UNAUTHORIZED");
    }
    // The connection carries on with the old token...
    client.ping_pong();
    assert_eq!(hub.publish(&log_body(SERVER_A, "hello")), 1);
    assert_eq!(client.recv_json()["data"]["message"], "hello");
    // ...until it expires.
    expect_4001(&mut client, exp, 1);
}

#[test]
fn a_refreshed_token_gets_its_own_notice_and_close() {
    let hub = HubConfig::new().auth("leeway_s = 1").start();
    let me = new_id();
    let mut client = hub.connect(&token_until(&me, &[SERVER_A], now() + 600));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    let exp = now() + 2;
    client.send_json(&json!({"type": "auth", "data": {"token": token_until(&me, &[SERVER_A], exp)}}));
    assert_json(&client.recv_json(), &authenticated(exp, &[]));
    assert_json(&client.recv_json_within(Duration::from_secs(1)), &expiring(exp));
    expect_4001(&mut client, exp, 1);
}

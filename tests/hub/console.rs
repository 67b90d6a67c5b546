//! What the web console needs from the hub: metrics history through
//! `history` on metrics channels (PROTOCOL.md 6.1, 6.4), the server list
//! `GET /api/v1/servers` and the embedded console files (section 11).

use serde_json::{json, Value};

use crate::support::*;

fn players(page: &Value) -> Vec<i64> {
    let messages = page["data"]["messages"].as_array().unwrap_or_else(|| panic!("no messages in {page}"));
    messages.iter().map(|m| m["data"]["players_online"].as_i64().unwrap()).collect()
}

#[test]
fn history_on_a_metrics_channel_pages_the_last_metrics_points() {
    let hub = HubConfig::new().extra("[history]\nmetrics_points = 5").start();
    for p in 1..=8 {
        hub.publish(&metrics_body(SERVER_A, p, Some(20.0)));
    }
    let mut c = hub.connect(&user_token(&new_id(), &[SERVER_A]));
    let channel = metrics(SERVER_A);
    c.send_json(&json!({"type": "history", "channel": channel, "data": {"limit": 3}}));
    let page = c.recv_json();
    assert_eq!(page["type"], "history");
    assert_eq!(page["channel"], channel);
    assert_eq!(players(&page), [6, 7, 8]);
    assert_eq!(page["data"]["complete"], false);
    let first = page["data"]["messages"][0]["seq"].as_u64().unwrap();
    c.send_json(&json!({"type": "history", "channel": channel, "data": {"before_seq": first}}));
    let page = c.recv_json();
    assert_eq!(players(&page), [4, 5], "only metrics_points are kept");
    assert_eq!(page["data"]["complete"], false, "1 to 3 were evicted");

    // Subscribing still sends the latest value at once.
    c.subscribe_ok(&[&channel]);
    assert_eq!(c.recv_json()["data"]["players_online"], 8);

    // Same ACL as subscribe; status channels have no history.
    for (channel, code) in [(metrics(SERVER_B), "FORBIDDEN"), (status(SERVER_A), "INVALID_MESSAGE")] {
        c.send_json(&json!({"type": "history", "channel": channel}));
        let msg = c.recv_json();
        assert_error_code(&msg, code);
        assert_eq!(msg["data"]["data"], json!([channel]));
    }
}

#[test]
fn a_metrics_channel_that_never_evicted_is_complete_and_config_refuses_too_many_points() {
    let hub = Hub::start("");
    for p in 1..=3 {
        hub.publish(&metrics_body(SERVER_A, p, None));
    }
    let mut c = hub.connect_admin();
    c.send_json(&json!({"type": "history", "channel": metrics(SERVER_A)}));
    let page = c.recv_json();
    assert_eq!((players(&page), &page["data"]["complete"]), (vec![1, 2, 3], &json!(true)));
    let stats = hub.stats();
    assert_eq!(stats["history"]["entries"], 3, "metrics rings count in the history size: {stats}");

    let dir = temp_dir();
    let toml = format!("[auth]\njwt_secret = \"{SECRET}\"\n[history]\nmetrics_points = 100001\n");
    let path = write_file(&dir, "points.toml", &toml);
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("history.metrics_points must be from 0 to 100000"), "{out:?}");
}

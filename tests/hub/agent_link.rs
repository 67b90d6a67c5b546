//! The agent link against an in-process fake agent (`fake_agent`): log
//! streams that break and resume by offset, an agent that restarts, is down
//! at start-up or answers too slowly, status transitions, crash
//! notifications and alerts, metrics, and the agents in `/api/v1/stats`.

use std::time::Duration;

use serde_json::Value;

use crate::fake_agent::FakeAgent;
use crate::support::*;

pub(crate) const AGENT_ID: &str = "6f1c2a9e-0000-4000-8000-000000000001";

/// A hub that watches `agent` (health checks every second) and names
/// SERVER_A "Survival", owned by OWNER.
pub(crate) fn hub_for(address: &str) -> Hub {
    HubConfig::new()
        .extra(&format!(
            "[monitor]\nhealth_interval_s = 1\n\n[[agents]]\nid = \"{AGENT_ID}\"\naddress = \"{address}\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\nagent = \"{AGENT_ID}\"\nowner = \"{OWNER}\"\n"
        ))
        .start()
}

fn agent_a() -> FakeAgent {
    FakeAgent::start(&[(SERVER_A, "survival-from-agent")])
}

/// The next message of `kind`, skipping others.
fn recv_type(client: &mut Client, kind: &str) -> Value {
    loop {
        let msg = client.recv_json_within(Duration::from_secs(10));
        if msg["type"] == kind {
            return msg;
        }
    }
}

#[test]
fn agent_log_lines_reach_subscribers_in_order() {
    let agent = agent_a();
    let hub = hub_for(&agent.address());
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    wait_until(WAIT, || agent.state().stream_requests.len() == 1);
    for line in numbered("line", 0..50) {
        agent.log(SERVER_A, &line);
    }
    assert_eq!(recv_log_messages(&mut client, 50), numbered("line", 0..50));
}

#[test]
fn a_broken_stream_resumes_after_the_last_offset_without_loss_or_repeat() {
    let agent = agent_a();
    let hub = hub_for(&agent.address());
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    assert!(wait_until(WAIT, || agent.state().stream_requests.len() == 1));
    let mut last = 0;
    for line in numbered("before", 0..10) {
        last = agent.log(SERVER_A, &line);
    }
    assert_eq!(recv_log_messages(&mut client, 10), numbered("before", 0..10));
    agent.break_streams();
    for line in numbered("during", 0..10) {
        agent.log(SERVER_A, &line);
    }
    assert_eq!(recv_log_messages(&mut client, 10), numbered("during", 0..10));
    let requests = agent.state().stream_requests.clone();
    assert_eq!(requests[1], (SERVER_A.to_string(), last), "resumed after the last offset seen: {requests:?}");
    client.expect_no_message(Duration::from_millis(500));
}

#[test]
fn an_agent_restart_is_seen_as_unreachable_then_resumed_with_one_alert_each_way() {
    let mut agent = agent_a();
    let hub = hub_for(&agent.address());
    let mut admin = hub.connect_admin();
    admin.subscribe_ok(&[&logs(SERVER_A), &status(SERVER_A)]);
    let first = recv_type(&mut admin, "server_status");
    assert_eq!(first["data"]["old_status"], "unknown");
    assert_eq!(first["data"]["new_status"], "running");
    assert_eq!(first["data"]["server_name"], "Survival", "the hub's [[servers]] name wins");
    agent.log(SERVER_A, "one");
    assert_eq!(recv_log_messages(&mut admin, 1), ["one"]);

    agent.stop();
    let alert = recv_type(&mut admin, "alert");
    assert_eq!(alert["data"]["title"], "Agent unreachable");
    assert_eq!(alert["data"]["source"], "agent");
    assert_eq!(alert["data"]["source_id"], AGENT_ID);
    let down = recv_type(&mut admin, "server_status");
    assert_eq!(
        (down["data"]["old_status"].as_str(), down["data"]["new_status"].as_str()),
        (Some("running"), Some("unreachable"))
    );

    agent.restart();
    agent.log(SERVER_A, "two");
    let mut seen = Vec::new();
    let mut alerts = Vec::new();
    while !(seen.contains(&"two".to_string()) && seen.iter().any(|s| s == "status running") && !alerts.is_empty()) {
        let msg = admin.recv_json_within(Duration::from_secs(15));
        match msg["type"].as_str() {
            Some("log_entry") => seen.push(msg["data"]["message"].as_str().unwrap_or_default().to_string()),
            Some("server_status") => {
                seen.push(format!("status {}", msg["data"]["new_status"].as_str().unwrap_or_default()))
            }
            Some("alert") => alerts.push(msg["data"]["title"].as_str().unwrap_or_default().to_string()),
            _ => {}
        }
    }
    assert!(!seen.contains(&"one".to_string()), "no line repeated: {seen:?}");
    assert_eq!(alerts, ["Agent reconnected"], "one alert when it is back, none per retry");
    admin.expect_no_message(Duration::from_millis(1500));
    let stats = hub.wait_stats(WAIT, |s| s["agents"][0]["connected"] == true);
    assert_eq!(stats["agents"][0]["address"], agent.address());
    assert_eq!(stats["agents"][0]["id"], AGENT_ID);
}

#[test]
fn an_agent_down_at_start_up_is_reported_then_streamed_once_it_comes() {
    let mut agent = agent_a();
    agent.stop();
    let hub = hub_for(&agent.address());
    let stats = hub.wait_stats(WAIT, |s| s["agents"][0]["last_error"].is_string());
    assert_eq!(stats["agents"][0]["connected"], false);
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    agent.restart();
    agent.log(SERVER_A, "hello after start-up");
    assert_eq!(recv_log_messages(&mut client, 1), ["hello after start-up"]);
    let stats = hub.wait_stats(WAIT, |s| s["agents"][0]["connected"] == true && s["agents"][0]["streams"] == 2);
    assert!(stats["agents"][0]["since"].as_str().is_some_and(is_time), "{stats}");
}

#[test]
fn a_slow_agent_is_unreachable_and_does_not_slow_the_hub() {
    let agent = agent_a();
    agent.state().ping_delay = Duration::from_secs(3);
    let hub = hub_for(&agent.address());
    let mut admin = hub.connect_admin();
    admin.subscribe_ok(&[&status(SERVER_A)]);
    let alert = recv_type(&mut admin, "alert");
    assert_eq!(alert["data"]["title"], "Agent unreachable");
    assert!(alert["data"]["message"].as_str().is_some_and(|m| m.contains("Deadline")), "{alert}");
    let started = std::time::Instant::now();
    admin.ping_pong();
    assert!(started.elapsed() < Duration::from_millis(500), "the reactor answers while the agent hangs");
}

#[test]
fn a_crash_sends_the_owner_a_notification_and_a_critical_alert() {
    let agent = agent_a();
    let hub = hub_for(&agent.address());
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    owner.subscribe_ok(&[&status(SERVER_A), &notifications(OWNER)]);
    let first = recv_type(&mut owner, "server_status");
    assert_eq!(first["data"]["new_status"], "running");
    agent.set_status(SERVER_A, "crashed");
    let change = recv_type(&mut owner, "server_status");
    assert_eq!(change["data"]["old_status"], "running");
    assert_eq!(change["data"]["new_status"], "crashed");
    assert_eq!(change["data"]["reason"], "fake agent says crashed");
    let note = recv_type(&mut owner, "notification");
    assert_eq!(note["channel"], notifications(OWNER));
    assert_json(
        &note["data"],
        &serde_json::json!({"type": "error", "title": "Server Crashed", "message": "Your server 'Survival' has crashed", "link": format!("/servers/{SERVER_A}")}),
    );
    let alert = recv_type(&mut owner, "alert");
    assert_eq!(alert["data"]["severity"], "critical");
    assert_eq!(alert["data"]["source"], "server");
    assert_eq!(alert["data"]["source_id"], SERVER_A);
}

#[test]
fn lines_the_agent_no_longer_held_raise_a_log_lines_lost_alert() {
    let mut agent = agent_a();
    let hub = hub_for(&agent.address());
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    owner.subscribe_ok(&[&logs(SERVER_A)]);
    agent.log(SERVER_A, "seen");
    assert_eq!(recv_log_messages(&mut owner, 1), ["seen"]);
    agent.stop();
    for line in numbered("lost", 0..3) {
        agent.log(SERVER_A, &line);
    }
    let kept = agent.log(SERVER_A, "kept");
    {
        let mut s = agent.state();
        s.floor = kept - 100;
        s.logs.get_mut(SERVER_A).unwrap().retain(|e| e.get_offset() > kept - 100);
    }
    agent.restart();
    let alert = recv_type(&mut owner, "alert");
    assert_eq!(alert["data"]["title"], "Log lines lost");
    assert_eq!(alert["data"]["severity"], "warning");
    assert_eq!(alert["data"]["source_id"], SERVER_A);
    assert_eq!(recv_log_messages(&mut owner, 1), ["kept"]);
}

#[test]
fn metrics_come_from_the_health_monitor_with_tps_only_when_measured() {
    let agent = agent_a();
    {
        let mut m = aymc_proto::agent::ServerMetrics::new();
        m.set_server_id(SERVER_A.into());
        m.set_cpu_percent(12.5);
        m.set_memory_used(1024);
        m.set_memory_total(4096);
        m.set_memory_percent(25.0);
        m.set_players_online(3);
        m.set_max_players(20);
        m.set_tps(19.5);
        m.set_uptime_seconds(60);
        agent.state().metrics.insert(SERVER_A.into(), m);
    }
    let hub = hub_for(&agent.address());
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&metrics(SERVER_A)]);
    let m = recv_type(&mut client, "metrics");
    assert_eq!(m["data"]["players_online"], 3);
    assert!(m["data"].get("tps").is_none(), "has_tps false: no tps key: {m}");
    agent.state().metrics.get_mut(SERVER_A).unwrap().set_has_tps(true);
    let m = loop {
        let m = recv_type(&mut client, "metrics");
        if m["data"].get("tps").is_some() {
            break m;
        }
    };
    assert_eq!(m["data"]["tps"], 19.5);
    assert!(m["data"]["timestamp"].as_str().is_some_and(is_time));
}

#[test]
fn without_watch_status_the_hub_polls_get_status() {
    let agent = agent_a();
    agent.state().no_watch = true;
    let hub = hub_for(&agent.address());
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&status(SERVER_A)]);
    assert_eq!(recv_type(&mut client, "server_status")["data"]["new_status"], "running");
    agent.set_status(SERVER_A, "stopping");
    let change = recv_type(&mut client, "server_status");
    assert_eq!(
        (change["data"]["old_status"].as_str(), change["data"]["new_status"].as_str()),
        (Some("running"), Some("stopping"))
    );
}

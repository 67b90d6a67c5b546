//! Faults of the agent link: an agent whose offsets go back (its state was
//! reset, or the server moved to another agent host).

use std::time::Duration;

use serde_json::Value;

use crate::fake_agent::FakeAgent;
use crate::support::*;

const AGENT_ID: &str = "6f1c2a9e-0000-4000-8000-000000000011";

/// A hub that watches `address` (health checks every `interval_s`) and makes
/// OWNER the owner of SERVER_A, run by that agent.
fn hub_for(address: &str, interval_s: u64) -> Hub {
    HubConfig::new()
        .extra(&format!(
            "[monitor]\nhealth_interval_s = {interval_s}\n\n[[agents]]\nid = \"{AGENT_ID}\"\naddress = \"{address}\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\nagent = \"{AGENT_ID}\"\nowner = \"{OWNER}\"\n"
        ))
        .start()
}

/// Receives until `n` log entries came; returns their messages and the
/// alerts seen meanwhile.
fn recv_logs_and_alerts(client: &mut Client, n: usize) -> (Vec<String>, Vec<Value>) {
    let (mut lines, mut alerts) = (Vec::new(), Vec::new());
    while lines.len() < n {
        let msg = client.recv_json_within(Duration::from_secs(15));
        match msg["type"].as_str() {
            Some("log_entry") => lines.push(msg["data"]["message"].as_str().unwrap_or_default().to_string()),
            Some("alert") => alerts.push(msg["data"].clone()),
            _ => {}
        }
    }
    (lines, alerts)
}

/// The hub has seen offsets up to 500; the agent loses its state and
/// counts from the start again (offsets from 100), its first entry flagged
/// `truncated` or not. Every new line reaches the client, with one alert.
fn offsets_going_back_are_followed(truncated: bool) {
    let agent = FakeAgent::start(&[(SERVER_A, "survival")]);
    let hub = hub_for(&agent.address(), 1);
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    owner.subscribe_ok(&[&logs(SERVER_A)]);
    assert!(wait_until(WAIT, || agent.state().stream_requests.len() == 1));
    let mut last = 0;
    for line in numbered("old", 0..5) {
        last = agent.log(SERVER_A, &line);
    }
    assert_eq!(recv_log_messages(&mut owner, 5), numbered("old", 0..5));

    {
        let mut s = agent.state();
        s.logs.clear();
        s.offsets_reset = Some(truncated);
    }
    agent.break_streams();
    assert!(wait_until(Duration::from_secs(10), || agent.state().stream_requests.len() == 2));
    assert_eq!(agent.state().stream_requests[1], (SERVER_A.to_string(), last), "resumed from the offset seen");
    let mut offsets = Vec::new();
    for line in numbered("new", 0..8) {
        offsets.push(agent.log(SERVER_A, &line));
    }
    assert!(offsets[0] < last && offsets[7] > last, "the new offsets start below the old ones: {offsets:?}");

    let (lines, alerts) = recv_logs_and_alerts(&mut owner, 8);
    assert_eq!(lines, numbered("new", 0..8), "every line after the reset");
    owner.expect_no_message(Duration::from_millis(1000));
    assert_eq!(alerts.len(), 1, "one alert: {alerts:?}");
    assert_eq!(alerts[0]["title"], "Log lines lost");
    assert_eq!(alerts[0]["severity"], "warning");
    assert_eq!(alerts[0]["source"], "server");
    assert_eq!(alerts[0]["source_id"], SERVER_A);
}

#[test]
fn offsets_going_back_with_truncated_reset_the_resume_point() {
    offsets_going_back_are_followed(true);
}

#[test]
fn offsets_going_back_without_truncated_reset_the_resume_point() {
    offsets_going_back_are_followed(false);
}

//! Which agent may speak for which server: a `[[servers]]` entry that names
//! an `agent` takes that server's logs, metrics and status from that agent
//! only; a server without one is open to whichever agent lists it.

use std::time::{Duration, Instant};

use aymc_proto::agent::ServerMetrics;
use serde_json::Value;

use crate::fake_agent::FakeAgent;
use crate::support::*;

const AGENT_A: &str = "6f1c2a9e-0000-4000-8000-00000000000a";
const AGENT_B: &str = "6f1c2a9e-0000-4000-8000-00000000000b";

fn players(agent: &FakeAgent, server: &str, n: i32) {
    let mut m = ServerMetrics::new();
    m.set_server_id(server.into());
    m.set_players_online(n);
    agent.state().metrics.insert(server.into(), m);
}

/// Messages until `done` holds for those seen (at most 15 s).
fn recv_until(client: &mut Client, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left) {
            Event::Json(v) => seen.push(v),
            other => panic!("expected more messages, got {other:?} after {seen:?}"),
        }
    }
    seen
}

fn is_a_metrics(m: &Value) -> bool {
    m["type"] == "metrics" && m["data"]["players_online"] == 3
}

#[test]
fn an_agent_cannot_speak_for_a_server_assigned_to_another_agent() {
    // A runs SERVER_A. B lists SERVER_A too (a wrong or hostile agent), with
    // a line, a crash and metrics of its own, and SERVER_C, which the config
    // assigns to nobody.
    let a = FakeAgent::start(&[(SERVER_A, "survival")]);
    let b = FakeAgent::start(&[(SERVER_A, "impostor"), (SERVER_C, "creative")]);
    players(&a, SERVER_A, 3);
    players(&b, SERVER_A, 99);
    let hub = HubConfig::new()
        .extra(&format!(
            "[monitor]\nhealth_interval_s = 1\n\n\
             [[agents]]\nid = \"{AGENT_A}\"\naddress = \"{}\"\n\n[[agents]]\nid = \"{AGENT_B}\"\naddress = \"{}\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\nagent = \"{AGENT_A}\"\nowner = \"{OWNER}\"\n\n\
             [[servers]]\nid = \"{SERVER_C}\"\nowner = \"{OWNER}\"\n",
            a.address(),
            b.address()
        ))
        .start();
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    owner.subscribe_ok(&[
        &logs(SERVER_A),
        &status(SERVER_A),
        &metrics(SERVER_A),
        &logs(SERVER_C),
        &notifications(OWNER),
    ]);
    let streamed = |agent: &FakeAgent, server: &str| agent.state().stream_requests.iter().any(|(s, _)| s == server);
    assert!(wait_until(Duration::from_secs(10), || streamed(&a, SERVER_A) && streamed(&b, SERVER_C)));
    a.log(SERVER_A, "genuine");
    b.log(SERVER_A, "rogue");
    b.log(SERVER_C, "open");
    b.set_status(SERVER_A, "crashed");

    // Until A's line, B's SERVER_C line and three health checks of A came
    // (B is checked as often).
    let has_line = |seen: &[Value], line: &str| seen.iter().any(|m| m["data"]["message"] == line);
    let mut seen = recv_until(&mut owner, |seen| {
        has_line(seen, "genuine") && has_line(seen, "open") && seen.iter().filter(|m| is_a_metrics(m)).count() >= 3
    });
    seen.retain(|m| !is_a_metrics(m));
    let mut lines: Vec<&str> =
        seen.iter().filter(|m| m["type"] == "log_entry").filter_map(|m| m["data"]["message"].as_str()).collect();
    lines.sort_unstable();
    assert_eq!(lines, ["genuine", "open"], "B's line for SERVER_A is refused, its SERVER_C open: {seen:?}");
    assert!(
        seen.iter().filter(|m| m["type"] == "server_status").all(|m| m["data"]["new_status"] == "running"),
        "only A's status of SERVER_A: {seen:?}"
    );
    assert!(
        seen.iter().all(|m| m["type"] != "notification" && m["type"] != "alert" && m["type"] != "metrics"),
        "no crash notice, alert or metrics from B: {seen:?}"
    );
    assert!(!streamed(&b, SERVER_A), "B's SERVER_A is never streamed");

    let stats = hub.wait_stats(WAIT, |s| s["agents"][1]["refused"].as_u64() >= Some(3));
    assert_eq!(stats["agents"][0]["refused"], 0, "{stats}");
    let text = http_get(hub.addr, "/metrics", None).text();
    let refused_b = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("aymc_agent_refused_total{{agent=\"{AGENT_B}\"}} ")))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused_b >= Some(3), "{text}");
    assert!(text.contains(&format!("aymc_agent_refused_total{{agent=\"{AGENT_A}\"}} 0")), "{text}");
    let warned: Vec<String> = hub.logs().into_iter().filter(|l| l.contains("refus") && l.contains(SERVER_A)).collect();
    assert_eq!(warned.len(), 1, "one warning per server: {warned:?}");
    assert!(warned[0].contains("WARN") && warned[0].contains(AGENT_B), "{warned:?}");
}

//! Faults of the agent link: an agent whose offsets go back (its state was
//! reset, or the server moved to another agent host), a real aymc-agent
//! SIGKILLed in the middle of a burst of lines, and an agent address that
//! accepts TCP connections and never answers.

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

/// aymc-agent's config: one server (SERVER_A) in `server_dir`, keeping
/// every line of the burst, listening on `listen`.
fn agent_toml(dir: &TempDir, server_dir: &std::path::Path, listen: &str) -> String {
    format!(
        "listen = \"{listen}\"\nid = \"{AGENT_ID}\"\nhistory_lines = 200000\nstate_file = \"{}\"\n\n\
         [[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\ndir = \"{}\"\n",
        dir.path().join("agent-state.toml").display(),
        server_dir.display()
    )
}

/// Appends lines `range` of the burst to latest.log in one write.
fn append_burst(log: &std::path::Path, range: std::ops::Range<usize>) {
    use std::io::Write;
    let mut text = String::new();
    for i in range {
        text.push_str(&format!("[12:00:00] [Server thread/INFO]: burst {i}\n"));
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(log).expect("open latest.log");
    f.write_all(text.as_bytes()).expect("append");
}

#[test]
fn an_agent_sigkilled_mid_burst_and_restarted_loses_and_repeats_no_line() {
    const LINES: usize = 100_000;
    const BATCH: usize = 1_000;
    let dir = temp_dir();
    let server_dir = dir.path().join("survival");
    std::fs::create_dir_all(server_dir.join("logs")).unwrap();
    let log = server_dir.join("logs").join("latest.log");
    std::fs::write(&log, "").unwrap();
    let config = write_file(&dir, "agent.toml", &agent_toml(&dir, &server_dir, "127.0.0.1:0"));
    let (agent, address) = crate::end_to_end::spawn_agent(&config);
    let hub = HubConfig::new()
        .limits("client_queue = 200000\nwrite_timeout_s = 60")
        .extra(&format!(
            "[monitor]\nhealth_interval_s = 1\n\n[[agents]]\nid = \"{AGENT_ID}\"\naddress = \"{address}\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nowner = \"{OWNER}\"\n"
        ))
        .start();
    let mut client = hub.connect(&user_token(OWNER, &[]));
    client.subscribe_ok(&[&logs(SERVER_A)]);
    hub.wait_stats(Duration::from_secs(10), |s| s["agents"][0]["streams"] == 2);

    // A reader thread takes every line as it comes, so that the hub never
    // waits for the client while the test kills and restarts the agent.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let received = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(180);
            let mut lines = Vec::with_capacity(LINES);
            while lines.len() < LINES {
                assert!(std::time::Instant::now() < deadline, "{} of {LINES} lines in 180 s", lines.len());
                let msg = client.recv_json_within(Duration::from_secs(20));
                match msg["type"].as_str() {
                    Some("log_entry") => {
                        lines.push(msg["data"]["message"].as_str().unwrap_or_default().to_string());
                        received.store(lines.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Some("notification") => panic!("after {} lines: {msg}", lines.len()),
                    _ => {}
                }
            }
            (lines, client)
        })
    };

    // The burst: 30,000 lines, SIGKILL once the client has 5,000 of them
    // (the agent is then mid-burst), the other 70,000 while it is dead and
    // after it is back on the same address.
    for start in (0..30_000).step_by(BATCH) {
        append_burst(&log, start..start + BATCH);
    }
    assert!(wait_until(Duration::from_secs(60), || received.load(std::sync::atomic::Ordering::Relaxed) >= 5_000));
    drop(agent);
    let at_kill = received.load(std::sync::atomic::Ordering::Relaxed);
    for start in (30_000..60_000).step_by(BATCH) {
        append_burst(&log, start..start + BATCH);
    }
    std::fs::write(&config, agent_toml(&dir, &server_dir, &address)).unwrap();
    let (_agent, _) = crate::end_to_end::spawn_agent(&config);
    for start in (60_000..LINES).step_by(BATCH) {
        append_burst(&log, start..start + BATCH);
    }

    let (lines, mut client) = reader.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let expected = numbered("burst", 0..LINES);
    if let Some(i) = (0..LINES).find(|&i| lines[i] != expected[i]) {
        panic!("line {i} is {:?}, not {:?} (SIGKILL after {at_kill} lines)", lines[i], expected[i]);
    }
    client.expect_no_message(Duration::from_millis(1000));
}

/// Accepts TCP connections on 127.0.0.1 and holds them without a byte,
/// until dropped.
struct Blackhole {
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => held.push(stream),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Blackhole { address, stop, thread: Some(thread) }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_agent_that_accepts_and_never_answers_is_down_within_two_intervals_and_the_hub_stays_prompt() {
    const INTERVAL: Duration = Duration::from_secs(2);
    const PROMPT: Duration = Duration::from_secs(1);
    let blackhole = Blackhole::start();
    let hub = hub_for(&blackhole.address, INTERVAL.as_secs());
    // The hub starts its agent thread right after it says where it listens.
    let started = std::time::Instant::now();
    let mut admin = hub.connect_admin();
    let mut alerts = Vec::new();
    let mut down_after = None;
    // Ping and publish over three intervals; the agent stays hung
    // throughout, and the hub must notice within two.
    while started.elapsed() < 3 * INTERVAL {
        let t = std::time::Instant::now();
        admin.send_text(r#"{"type":"ping"}"#);
        loop {
            let msg = admin.recv_json_within(PROMPT);
            match msg["type"].as_str() {
                Some("pong") => break,
                Some("alert") => {
                    down_after.get_or_insert(started.elapsed());
                    alerts.push(msg["data"].clone());
                }
                _ => {}
            }
        }
        assert!(t.elapsed() < PROMPT, "ping answered in {:?}", t.elapsed());
        let t = std::time::Instant::now();
        hub.publish(&log_body(SERVER_B, "while the agent hangs"));
        assert!(t.elapsed() < PROMPT, "publish answered in {:?}", t.elapsed());
        if let Event::Json(msg) = admin.next_event(Duration::from_millis(100)) {
            if msg["type"] == "alert" {
                down_after.get_or_insert(started.elapsed());
                alerts.push(msg["data"].clone());
            }
        }
    }
    let down_after = down_after.expect("an alert");
    assert!(down_after <= 2 * INTERVAL, "down after {down_after:?}");
    assert_eq!(alerts.len(), 1, "one alert, none per retry: {alerts:?}");
    assert_eq!(alerts[0]["title"], "Agent unreachable");
    assert_eq!(alerts[0]["severity"], "error");
    assert_eq!(alerts[0]["source"], "agent");
    assert_eq!(alerts[0]["source_id"], AGENT_ID);
    let stats = hub.stats();
    assert_eq!(stats["agents"][0]["connected"], false, "{stats}");
    assert!(stats["agents"][0]["last_error"].is_string(), "{stats}");
}

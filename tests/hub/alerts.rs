//! Smart alerts through the real binaries: a crash-looping demo server
//! behind a real aymc-agent gives one `crash_loop` alert with a count and
//! one webhook call; user rules over the publish API; webhooks answering
//! `429`, hanging, falling behind, or still holding alerts when the hub
//! stops; `check-config` and SIGHUP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::end_to_end::spawn_agent;
use crate::recorder::{Answer, Recorder};
use crate::support::*;

const AGENT_ID: &str = "6f1c2a9e-0000-4000-8000-000000000003";
/// The secret part of every test webhook URL; never in a log line.
const SECRET_PATH: &str = "/api/webhooks/1234/s3cr3t-t0ken";

/// `scripts/demo_server.py` in crash-loop mode; stopped with SIGTERM on
/// drop (it then kills its own "java" process).
struct Demo(Child);

impl Demo {
    fn start(dir: &Path) -> Demo {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(dir)
            .args(["--port", &port.to_string(), "--cycle-seconds", "0.5", "--crash-loop", "--restart-seconds", "0.5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 scripts/demo_server.py");
        Demo(child)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rule_of(msg: &Value) -> Option<&str> {
    (msg["type"] == "alert").then(|| msg["data"]["data"]["rule"].as_str()).flatten()
}

/// Reads messages until an alert of `rule` arrives; returns it and every
/// alert seen before it.
fn wait_rule_alert(client: &mut Client, rule: &str, timeout: Duration) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left) {
            Event::Json(msg) if rule_of(&msg) == Some(rule) => return (msg, seen),
            Event::Json(msg) if msg["type"] == "alert" => seen.push(msg),
            Event::Json(_) => {}
            other => panic!("no '{rule}' alert within {timeout:?}: {other:?}; alerts seen: {seen:?}"),
        }
    }
}

fn webhook_toml(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!("[[alerts.webhooks]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\n{extra}\n")
}

/// A rule matching `TNT` in INFO lines and above, raising on `threshold`
/// matches within a minute.
fn grief_rule(threshold: u32, cooldown_s: u64) -> String {
    format!(
        "[[alerts.rules]]\nname = \"grief\"\ntitle = \"Grief alarm\"\nmessage = '(?i)\\btnt\\b'\nlevel = \"INFO\"\n\
         threshold = {threshold}\nwindow_s = 60\nseverity = \"error\"\ncooldown_s = {cooldown_s}\n"
    )
}

fn assert_no_secret(hub: &Hub) {
    let leaked: Vec<String> = hub.logs().into_iter().filter(|l| l.contains("s3cr3t")).collect();
    assert!(leaked.is_empty(), "the webhook URL is in the log: {leaked:?}");
}

#[test]
fn a_crash_looping_server_gives_one_crash_loop_alert_with_a_count_and_one_webhook_call() {
    let dir = temp_dir();
    let server_dir = dir.path().join("survival");
    std::fs::create_dir_all(server_dir.join("logs")).unwrap();
    let agent_config = write_file(
        &dir,
        "agent.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nid = \"{AGENT_ID}\"\nstate_file = \"{}\"\n\n[[servers]]\nid = \"{SERVER_A}\"\n\
             name = \"Survival\"\ndir = \"{}\"\npid_file = \"{}\"\n",
            dir.path().join("agent-state.toml").display(),
            server_dir.display(),
            server_dir.join("server.pid").display()
        ),
    );
    let (_agent, address) = spawn_agent(&agent_config);
    let recorder = Recorder::start(|_| Answer::Ok);
    let hub = HubConfig::new()
        .extra(&format!(
            "[monitor]\nhealth_interval_s = 3\n\n[[agents]]\nid = \"{AGENT_ID}\"\naddress = \"{address}\"\n\n\
             [[servers]]\nid = \"{SERVER_A}\"\nname = \"Survival\"\nowner = \"{OWNER}\"\n\n\
             [alerts.crash_loop]\ncrashes = 3\nwindow_s = 600\ncooldown_s = 3600\n\n{}",
            webhook_toml("ops", "discord", &recorder.url(SECRET_PATH), "rules = [\"crash_loop\"]")
        ))
        .start();
    let mut admin = hub.connect_admin();
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    let mut stranger = hub.connect(&user_token(&new_id(), &[]));
    let _demo = Demo::start(&server_dir);

    // The third crash raises it (about 5 s per crash cycle).
    let (alert, before) = wait_rule_alert(&mut admin, "crash_loop", Duration::from_secs(120));
    let crashed = |alerts: &[Value]| alerts.iter().filter(|a| a["data"]["title"] == "Server Crashed").count();
    assert_eq!(crashed(&before), 2, "crash_loop comes with the third crash: {before:?}");
    let data = &alert["data"];
    assert_eq!(data["severity"], "critical");
    assert_eq!(data["title"], "Crash loop");
    assert_eq!(data["message"], "'Survival' crashed 3 times in 10 min");
    assert_eq!((data["source"].as_str(), data["source_id"].as_str()), (Some("server"), Some(SERVER_A)));
    assert_eq!(data["data"], json!({"rule": "crash_loop", "count": 3, "crashes": 3, "window_s": 600}));
    assert!(is_uuid(data["id"].as_str().unwrap()));
    assert!(alert.get("seq").is_none() && alert.get("channel").is_none());
    // Routed as server alerts are: the owner gets the same alert.
    let (to_owner, _) = wait_rule_alert(&mut owner, "crash_loop", WAIT);
    assert_eq!(to_owner, alert);

    // Two more crashes within the cool-down: counted, not alerted.
    let mut after = Vec::new();
    let ok = wait_until(Duration::from_secs(90), || {
        if let Event::Json(msg) = admin.next_event(Duration::from_millis(200)) {
            if msg["type"] == "alert" {
                after.push(msg);
            }
        }
        crashed(&after) >= 3
    });
    assert!(ok, "the demo server kept crashing: {after:?}");
    assert!(after.iter().all(|a| rule_of(a) != Some("crash_loop")), "one crash_loop alert per cool-down: {after:?}");
    stranger.expect_no_message(QUIET);

    // Exactly one webhook call, a Discord embed saying it.
    let requests = recorder.wait_requests(1, WAIT);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].line, format!("POST {SECRET_PATH} HTTP/1.1"));
    assert!(requests[0].headers.iter().any(|h| h.eq_ignore_ascii_case("content-type: application/json")));
    let body = requests[0].json();
    let embed = &body["embeds"][0];
    assert_eq!(embed["title"], "Crash loop");
    assert_eq!(embed["description"], "'Survival' crashed 3 times in 10 min");
    assert_eq!(
        embed["fields"],
        json!([
            {"name": "Server", "value": "Survival", "inline": true},
            {"name": "Rule", "value": "crash_loop", "inline": true},
            {"name": "Count", "value": "3", "inline": true},
        ])
    );
    assert_eq!(body["allowed_mentions"], json!({"parse": []}));

    let stats = hub.stats();
    let rule = &stats["alerts"]["rules"]["crash_loop"];
    assert_eq!(rule["raised"], 1, "{stats}");
    assert!(rule["suppressed"].as_u64().unwrap() >= 2, "{stats}");
    let hook = &stats["alerts"]["webhooks"][0];
    assert_eq!((hook["name"].as_str(), hook["sent"].as_u64()), (Some("ops"), Some(1)), "{stats}");
    assert_eq!(hook["host"], recorder.addr.to_string());
    let metrics = http_get(hub.addr, "/metrics", None).text();
    assert!(metrics.contains("aymc_alerts_raised_total{rule=\"crash_loop\"} 1\n"), "{metrics}");
    assert!(metrics.contains("aymc_webhook_sent_total{webhook=\"ops\"} 1\n"), "{metrics}");
    assert_eq!(recorder.requests().len(), 1);
    assert_no_secret(&hub);
}

#[test]
fn a_user_rule_alerts_whoever_may_watch_the_server_and_the_json_webhook_gets_the_same_alert() {
    let recorder = Recorder::start(|_| Answer::Ok);
    let hub = HubConfig::new()
        .extra(SERVERS_TOML)
        .extra(&grief_rule(2, 600))
        .extra(&webhook_toml("panel", "json", &recorder.url(SECRET_PATH), "severities = [\"error\"]"))
        .start();
    let mut admin = hub.connect_admin();
    let mut owner = hub.connect(&user_token(OWNER, &[]));
    let mut stranger = hub.connect(&user_token(&new_id(), &[]));
    hub.publish(&log_body(SERVER_C, "Steve placed TNT"));
    hub.publish(&log_body(SERVER_C, "Steve placed a torch"));
    owner.expect_no_message(QUIET);
    hub.publish(&log_body(SERVER_C, "Alex placed tnt near spawn"));
    let (alert, _) = wait_rule_alert(&mut owner, "grief", WAIT);
    let data = &alert["data"];
    assert_eq!((data["title"].as_str(), data["severity"].as_str()), (Some("Grief alarm"), Some("error")));
    assert_eq!(data["data"], json!({"rule": "grief", "count": 2, "line": "Alex placed tnt near spawn"}));
    assert_eq!(data["source_id"], SERVER_C);
    assert_eq!(wait_rule_alert(&mut admin, "grief", WAIT).0, alert);
    // Within the cool-down: counted only.
    hub.publish(&log_body(SERVER_C, "TNT again"));
    owner.expect_no_message(QUIET);
    stranger.expect_no_message(QUIET);

    // The generic JSON webhook posts the envelope clients got.
    let requests = recorder.wait_requests(1, WAIT);
    let posted = requests[0].json();
    assert_eq!(posted["type"], "alert");
    assert_eq!(posted["data"], alert["data"]);
    hub.wait_stats(WAIT, |s| s["alerts"]["rules"]["grief"] == json!({"raised": 1, "suppressed": 1}));
    assert_eq!(recorder.requests().len(), 1);
}

#[test]
fn a_webhook_answering_429_is_tried_again_after_retry_after() {
    let recorder = Recorder::start(|i| if i == 0 { Answer::TooMany(2) } else { Answer::Ok });
    let hub = HubConfig::new()
        .extra(&grief_rule(1, 0))
        .extra(&webhook_toml("slack", "slack", &recorder.url(SECRET_PATH), "retries = 2"))
        .start();
    hub.publish(&log_body(SERVER_A, "Steve placed TNT"));
    let requests = recorder.wait_requests(2, Duration::from_secs(15));
    let waited = requests[1].at.duration_since(requests[0].at);
    assert!(waited >= Duration::from_millis(1900), "tried again after {waited:?}, before Retry-After: 2");
    assert_eq!(requests[0].body, requests[1].body);
    let slack = requests[1].json();
    assert!(slack["text"].as_str().unwrap().starts_with("[error] Grief alarm: "), "{slack}");
    let stats = hub.wait_stats(WAIT, |s| s["alerts"]["webhooks"][0]["sent"] == 1);
    let hook = &stats["alerts"]["webhooks"][0];
    assert_eq!((hook["retried"].as_u64(), hook["failed"].as_u64()), (Some(1), Some(0)), "{stats}");
    let line = hub.wait_for_log(WAIT, |l| l.contains("answered 429")).unwrap();
    assert!(line.contains(&format!("webhook 'slack' ({})", recorder.addr)), "{line}");
    assert_no_secret(&hub);
}

#[test]
fn a_hanging_webhook_times_out_while_the_hub_keeps_serving() {
    let recorder = Recorder::start(|_| Answer::Hang);
    let hub = HubConfig::new()
        .extra(&grief_rule(1, 0))
        .extra(&webhook_toml("stuck", "json", &recorder.url(SECRET_PATH), "timeout_s = 2\nretries = 1"))
        .start();
    let mut admin = hub.connect_admin();
    admin.subscribe_ok(&[&logs(SERVER_A)]);
    hub.publish(&log_body(SERVER_A, "Steve placed TNT"));
    recorder.wait_requests(1, WAIT);
    // While the webhook hangs, everything else goes on.
    let started = Instant::now();
    hub.publish(&log_body(SERVER_A, "still streaming"));
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let msg = admin.recv_json();
        if msg["type"] == "log_entry" {
            lines.push(msg["data"]["message"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(lines, ["Steve placed TNT", "still streaming"]);
    assert_eq!(http_get(hub.addr, "/healthz", None).status, 200);
    // Two attempts of at most 2 s each (and a 1 s backoff), then given up.
    let stats = hub.wait_stats(Duration::from_secs(30), |s| s["alerts"]["webhooks"][0]["failed"] == 1);
    let hook = &stats["alerts"]["webhooks"][0];
    assert_eq!((hook["retried"].as_u64(), hook["sent"].as_u64()), (Some(1), Some(0)), "{stats}");
    assert!(started.elapsed() >= Duration::from_secs(3), "gave up after {:?}", started.elapsed());
    assert_eq!(recorder.requests().len(), 2);
    let line = hub.wait_for_log(WAIT, |l| l.contains("not delivered")).unwrap();
    assert!(line.contains("webhook 'stuck'") && line.ends_with("not delivered after 2 attempts: timed out"), "{line}");
    assert_no_secret(&hub);
}

#[test]
fn a_webhook_that_falls_behind_drops_what_its_queue_cannot_hold() {
    let recorder = Recorder::start(|_| Answer::Hang);
    let hub = HubConfig::new()
        .extra("[alerts]\nwebhook_queue = 2\n")
        .extra(&grief_rule(1, 0))
        .extra(&webhook_toml("slow", "json", &recorder.url(SECRET_PATH), "timeout_s = 4\nretries = 0"))
        .start();
    let mut admin = hub.connect_admin();
    let started = Instant::now();
    for i in 0..10 {
        hub.publish(&log_body(SERVER_A, &format!("TNT {i}")));
    }
    let took = started.elapsed();
    // Clients get every alert, whatever the webhook does.
    for _ in 0..10 {
        wait_rule_alert(&mut admin, "grief", WAIT);
    }
    let stats = hub.wait_stats(Duration::from_secs(60), |s| {
        let h = &s["alerts"]["webhooks"][0];
        h["failed"].as_u64().unwrap() + h["dropped"].as_u64().unwrap() == 10 && h["queued"] == 0
    });
    let hook = &stats["alerts"]["webhooks"][0];
    let (failed, dropped) = (hook["failed"].as_u64().unwrap(), hook["dropped"].as_u64().unwrap());
    // Each alert that was not dropped was attempted once (and timed out).
    assert_eq!(recorder.requests().len() as u64, failed, "{stats}");
    if took < Duration::from_secs(3) {
        // All published within one attempt's time: one alert in flight,
        // two queued (or, if the thread had not taken the first yet, two
        // queued only); the rest dropped.
        assert!((7..=8).contains(&dropped), "{stats}");
    }
    assert!(dropped >= 1, "{stats}");
    assert_eq!(stats["alerts"]["rules"]["grief"]["raised"], 10);
    let metrics = http_get(hub.addr, "/metrics", None).text();
    assert!(metrics.contains(&format!("aymc_webhook_dropped_total{{webhook=\"slow\"}} {dropped}\n")), "{metrics}");
    let line = hub.wait_for_log(WAIT, |l| l.contains("alert dropped")).unwrap();
    assert!(line.contains("webhook 'slow'") && line.contains("its queue is full"), "{line}");
    assert_no_secret(&hub);
}

#[test]
fn check_config_names_a_bad_regex_by_its_rule_and_never_prints_a_webhook_url() {
    let dir = temp_dir();
    let base = HubConfig::new().extra(&grief_rule(1, 0));
    let bad_regex = base.clone().extra("[[alerts.rules]]\nname = \"broken\"\nexception = '(unclosed'\n");
    let path = write_file(&dir, "regex.toml", &bad_regex.toml());
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].starts_with("aymc-hub: alerts.rules 'broken': exception regex: "), "{out:?}");

    let bad_url = base.clone().extra(&webhook_toml("chat", "discord", "ftp://example.invalid/s3cr3t", ""));
    let path = write_file(&dir, "url.toml", &bad_url.toml());
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("alerts.webhooks 'chat': url is not an http:// or https:// URL"), "{out:?}");
    assert!(!out.stderr.contains("s3cr3t"), "{out:?}");

    // The URL from a file (a credential), one trailing newline stripped.
    let url_file = write_file(&dir, "hook.url", "https://discord.com/api/webhooks/1/s3cr3t\n");
    let from_file = base.extra(&format!(
        "[[alerts.webhooks]]\nname = \"chat\"\nkind = \"discord\"\nurl_file = \"{}\"\n",
        url_file.display()
    ));
    let path = write_file(&dir, "file.toml", &from_file.toml());
    let out = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn sighup_applies_new_rules_and_webhooks() {
    let recorder = Recorder::start(|_| Answer::Ok);
    let config = HubConfig::new();
    let hub = config.clone().start();
    let mut admin = hub.connect_admin();
    hub.publish(&log_body(SERVER_A, "Steve placed TNT"));
    admin.expect_no_message(QUIET);
    let changed = config.extra(&grief_rule(1, 0)).extra(&webhook_toml("ops", "json", &recorder.url(SECRET_PATH), ""));
    std::fs::write(&hub.config_path, changed.toml()).unwrap();
    hub.signal(libc::SIGHUP);
    let line = hub.wait_for_log(WAIT, |l| l.contains("config reloaded")).expect("reload line");
    assert!(line.contains("applied alerts;"), "{line}");
    hub.publish(&log_body(SERVER_A, "Steve placed TNT"));
    let (alert, _) = wait_rule_alert(&mut admin, "grief", WAIT);
    assert_eq!(recorder.wait_requests(1, WAIT)[0].json()["data"]["id"], alert["data"]["id"]);
    assert_no_secret(&hub);
}

#[test]
fn alerts_a_webhook_still_holds_when_the_hub_stops_are_posted_once_without_retries() {
    // The first post hangs until its 3 s timeout; two more alerts queue
    // behind it; then SIGTERM.
    let recorder = Recorder::start(|i| if i == 0 { Answer::Hang } else { Answer::Ok });
    let mut hub = HubConfig::new()
        .extra(&grief_rule(1, 0))
        .extra(&webhook_toml("ops", "json", &recorder.url(SECRET_PATH), "timeout_s = 3\nretries = 5"))
        .start();
    hub.publish(&log_body(SERVER_A, "TNT 0"));
    recorder.wait_requests(1, WAIT);
    hub.publish(&log_body(SERVER_A, "TNT 1"));
    hub.publish(&log_body(SERVER_A, "TNT 2"));
    hub.wait_stats(WAIT, |s| s["alerts"]["webhooks"][0]["queued"] == 2);
    let stopped = Instant::now();
    hub.signal(libc::SIGTERM);
    let status = hub.wait_exit(Duration::from_secs(20)).expect("the hub exits");
    assert!(status.success(), "{status:?}");
    // The hanging post timed out and was not tried again (retries = 5);
    // the two queued alerts went out before the hub exited.
    let lines: Vec<String> =
        recorder.requests().iter().map(|r| r.json()["data"]["data"]["line"].as_str().unwrap().to_string()).collect();
    assert_eq!(lines, ["TNT 0", "TNT 1", "TNT 2"]);
    assert!(stopped.elapsed() < Duration::from_secs(10), "stopped in {:?}", stopped.elapsed());
    assert!(hub
        .wait_for_log(WAIT, |l| l.contains("webhook 'ops'") && l.contains("posting the 2 alerts it holds"))
        .is_some());
    assert_no_secret(&hub);
}

#[test]
fn a_webhook_that_hangs_at_shutdown_holds_the_hub_for_its_grace_only() {
    let recorder = Recorder::start(|_| Answer::Hang);
    let mut hub = HubConfig::new()
        .limits("shutdown_grace_s = 1")
        .extra(&grief_rule(1, 0))
        .extra(&webhook_toml("stuck", "json", &recorder.url(SECRET_PATH), "timeout_s = 120"))
        .start();
    hub.publish(&log_body(SERVER_A, "TNT 0"));
    hub.publish(&log_body(SERVER_A, "TNT 1"));
    recorder.wait_requests(1, WAIT);
    hub.wait_stats(WAIT, |s| s["alerts"]["webhooks"][0]["queued"] == 1);
    let stopped = Instant::now();
    hub.signal(libc::SIGTERM);
    let status = hub.wait_exit(Duration::from_secs(30)).expect("the hub exits");
    assert!(status.success(), "{status:?}");
    // No client: the connections close at once; then the webhooks' 5 s.
    let took = stopped.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(15), "stopped in {took:?}");
    let line = hub.wait_for_log(WAIT, |l| l.contains("when the hub stopped")).expect("a line for what was left");
    assert!(line.contains("webhook 'stuck'") && line.contains("2 alerts not sent (or still in flight)"), "{line}");
    assert_eq!(recorder.requests().len(), 1);
    assert_no_secret(&hub);
}

#[test]
fn an_alert_from_the_publish_api_that_names_a_rule_is_not_taken_for_one_by_webhooks() {
    let recorder = Recorder::start(|_| Answer::Ok);
    let hub = HubConfig::new()
        .extra(&webhook_toml("rules", "json", &recorder.url("/rules/s3cr3t"), ""))
        .extra(&webhook_toml("all", "json", &recorder.url("/all/s3cr3t"), "other_alerts = true"))
        .start();
    let mut body = alert_body("server", Some(SERVER_A), "Crash loop");
    body["data"]["data"] = json!({"rule": "crash_loop", "count": 99});
    hub.publish(&body);
    // Only the webhook that takes alerts no rule raised posts it.
    let stats = hub.wait_stats(WAIT, |s| s["alerts"]["webhooks"][1]["sent"] == 1);
    assert_eq!(stats["alerts"]["webhooks"][0]["sent"], 0, "{stats}");
    std::thread::sleep(QUIET);
    let requests = recorder.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].line.starts_with("POST /all/"), "{}", requests[0].line);
    assert_eq!(requests[0].json()["data"]["data"]["rule"], "crash_loop");
    assert_no_secret(&hub);
}

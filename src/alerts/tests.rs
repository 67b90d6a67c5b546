//! The engine's rules, one by one: what raises an alert, its `data.rule`
//! and `data.count`, the cool-down and its follow-up, and the bounds.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::config::{AlertsConfig, UserRule};
use super::engine::{Engine, MAX_SERVERS};
use crate::protocol::{Alert, AlertSource, Level, LogEntry, Metrics, Publish, Severity, Status, StatusChange, Time};

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A console line of `server` (no time: the hub's).
pub(super) fn log_entry(server: Uuid, level: Level, message: &str, exception: &str) -> LogEntry {
    LogEntry {
        server_id: server,
        timestamp: None,
        level,
        source: "server".into(),
        message: message.into(),
        exception: exception.into(),
        offset: 0,
    }
}

fn line(server: Uuid, level: Level, message: &str, exception: &str) -> Publish {
    Publish::Log(log_entry(server, level, message, exception))
}

fn status(server: Uuid, old: Status, new: Status) -> Publish {
    Publish::Status(StatusChange {
        server_id: server,
        server_name: "Survival".into(),
        old_status: old,
        new_status: new,
        timestamp: None,
        reason: String::new(),
    })
}

fn metrics(server: Uuid, players: i32, tps: Option<f64>, used_mb: u64, uptime: i64) -> Publish {
    Publish::Metrics(Metrics {
        server_id: server,
        timestamp: None,
        cpu_percent: 10.0,
        memory_used: used_mb * 1_000_000,
        memory_total: 16_000_000_000,
        memory_percent: 0.0,
        players_online: players,
        max_players: 20,
        tps,
        uptime_seconds: uptime,
    })
}

struct Run {
    engine: Engine,
    t0: Instant,
}

impl Run {
    fn new(cfg: AlertsConfig) -> Run {
        let t0 = Instant::now();
        Run { engine: Engine::new(&cfg, t0), t0 }
    }

    fn at(&mut self, secs: u64, msg: &Publish) -> Vec<Alert> {
        self.engine.observe(msg, self.t0 + s(secs))
    }

    fn tick(&mut self, secs: u64) -> Vec<Alert> {
        self.engine.tick(self.t0 + s(secs))
    }
}

fn rule(a: &Alert) -> &str {
    a.data.as_ref().and_then(|d| d["rule"].as_str()).unwrap_or_default()
}

fn count(a: &Alert) -> u64 {
    a.data.as_ref().and_then(|d| d["count"].as_u64()).unwrap_or_default()
}

#[test]
fn three_crashes_in_ten_minutes_raise_one_crash_loop_alert_and_a_follow_up_after_the_cooldown() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    // The first observation (unknown -> crashed) is no crash the hub saw.
    assert!(r.at(0, &status(id, Status::Unknown, Status::Crashed)).is_empty());
    assert!(r.at(10, &status(id, Status::Running, Status::Crashed)).is_empty());
    assert!(r.at(20, &status(id, Status::Crashed, Status::Starting)).is_empty());
    assert!(r.at(100, &status(id, Status::Running, Status::Crashed)).is_empty());
    let alerts = r.at(200, &status(id, Status::Running, Status::Crashed));
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!((rule(a), count(a)), ("crash_loop", 3));
    assert_eq!((a.severity, a.source, a.source_id), (Severity::Critical, AlertSource::Server, Some(id)));
    assert_eq!(a.title, "Crash loop");
    assert_eq!(a.message, "'Survival' crashed 3 times in 10 min");
    assert_eq!(a.data.as_ref().unwrap()["window_s"], 600);
    // Two more crashes during the 30-minute cool-down: counted, not sent.
    assert!(r.at(300, &status(id, Status::Running, Status::Crashed)).is_empty());
    assert!(r.at(400, &status(id, Status::Running, Status::Crashed)).is_empty());
    assert!(r.tick(1799).is_empty());
    let follow = r.tick(200 + 1800);
    assert_eq!(follow.len(), 1);
    assert_eq!((rule(&follow[0]), count(&follow[0])), ("crash_loop", 2));
    assert!(follow[0].message.ends_with("(2 more since the last alert)"), "{}", follow[0].message);
    assert_eq!(r.engine.stats().find(|(n, ..)| *n == "crash_loop").map(|(_, a, b)| (a, b)), Some((2, 2)));
}

#[test]
fn crashes_further_apart_than_the_window_are_no_loop() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    for i in 0..10 {
        assert!(r.at(i * 400, &status(id, Status::Running, Status::Crashed)).is_empty());
    }
}

#[test]
fn the_same_exception_five_times_is_one_alert_other_exceptions_do_not_add_up() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let npe = |n: u32| {
        format!("java.lang.NullPointerException: entity {n} is null\n\tat net.minecraft.Level.tick(Level.java:1)")
    };
    let other = "java.lang.IllegalStateException: no\n\tat a.B.c(B.java:2)";
    for i in 0..4u32 {
        assert!(r.at(u64::from(i), &line(id, Level::Error, "tick failed", &npe(i))).is_empty());
        assert!(r.at(u64::from(i), &line(id, Level::Error, "other", other)).is_empty());
    }
    let alerts = r.at(10, &line(id, Level::Error, "tick failed", &npe(9)));
    assert_eq!(alerts.len(), 1);
    assert_eq!((rule(&alerts[0]), count(&alerts[0])), ("repeated_exception", 5));
    let data = alerts[0].data.as_ref().unwrap();
    assert_eq!(data["exception"], "java.lang.NullPointerException");
    assert_eq!(data["frame"], "at net.minecraft.Level.tick(Level.java:1)");
    assert_eq!(alerts[0].severity, Severity::Error);
}

#[test]
fn cant_keep_up_reports_the_lag_of_the_line_that_made_the_count() {
    let mut cfg = AlertsConfig::default();
    cfg.cant_keep_up.min_behind_ms = 3000;
    let mut r = Run::new(cfg);
    let id = Uuid::new_v4();
    let lag = |ms: u32, ticks: u32| {
        line(
            id,
            Level::Warn,
            &format!("Can't keep up! Is the server overloaded? Running {ms}ms or {ticks} ticks behind"),
            "",
        )
    };
    assert!(r.at(0, &lag(5000, 100)).is_empty());
    // Under min_behind_ms: not counted.
    assert!(r.at(1, &lag(2100, 42)).is_empty());
    assert!(r.at(2, &lag(4000, 80)).is_empty());
    let alerts = r.at(3, &lag(4200, 84));
    assert_eq!(alerts.len(), 1);
    assert_eq!((rule(&alerts[0]), count(&alerts[0])), ("cant_keep_up", 3));
    let data = alerts[0].data.as_ref().unwrap();
    assert_eq!((data["behind_ms"].clone(), data["behind_ticks"].clone()), (json!(4200), json!(84)));
    assert_eq!(
        alerts[0].message,
        "'550e8400' can't keep up: 4200 ms (84 ticks) behind, 3 times in 5 min".replace("550e8400", &id.to_string())
    );
}

#[test]
fn out_of_memory_alerts_once_per_server_and_cooldown() {
    let mut r = Run::new(AlertsConfig::default());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let trace = "java.util.concurrent.ExecutionException: x\n\tat a.b(C.java:1)\nCaused by: java.lang.OutOfMemoryError: Java heap space";
    let first = r.at(0, &line(a, Level::Error, "Exception in server tick loop", trace));
    assert_eq!(first.len(), 1);
    assert_eq!((rule(&first[0]), count(&first[0]), first[0].severity), ("out_of_memory", 1, Severity::Critical));
    assert_eq!(first[0].data.as_ref().unwrap()["line"], "Caused by: java.lang.OutOfMemoryError: Java heap space");
    assert!(r.at(1, &line(a, Level::Error, "java.lang.OutOfMemoryError: Java heap space", "")).is_empty());
    // Another server has its own cool-down.
    assert_eq!(r.at(2, &line(b, Level::Error, "java.lang.OutOfMemoryError: Metaspace", "")).len(), 1);
}

#[test]
fn a_watchdog_line_alerts_with_the_tick_time() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let alerts = r.at(0, &line(id, Level::Error, "A single server tick took 60.00 seconds (should be max 0.05)", ""));
    assert_eq!(alerts.len(), 1);
    assert_eq!(rule(&alerts[0]), "watchdog");
    assert_eq!(alerts[0].data.as_ref().unwrap()["tick_s"], 60.0);
    // An INFO line never reaches the built-in markers.
    assert!(r.at(700, &line(id, Level::Info, "A single server tick took 60.00 seconds", "")).is_empty());
}

#[test]
fn tps_under_the_floor_for_two_minutes_alerts_and_recovering_resets_it() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    assert!(r.at(0, &metrics(id, 3, Some(12.0), 2000, 10)).is_empty());
    assert!(r.at(60, &metrics(id, 3, Some(11.0), 2000, 70)).is_empty());
    // Back up: the two minutes start again.
    assert!(r.at(90, &metrics(id, 3, Some(19.9), 2000, 100)).is_empty());
    assert!(r.at(120, &metrics(id, 3, Some(10.0), 2000, 130)).is_empty());
    assert!(r.at(200, &metrics(id, 3, Some(10.0), 2000, 210)).is_empty());
    let alerts = r.at(240, &metrics(id, 3, Some(9.5), 2000, 250));
    assert_eq!(alerts.len(), 1);
    assert_eq!(rule(&alerts[0]), "low_tps");
    assert_eq!(alerts[0].data.as_ref().unwrap()["for_s"], 120);
    assert!(alerts[0].message.contains("TPS 9.5 below 15 for 2 min"), "{}", alerts[0].message);
    // Not measured: no TPS rule at all.
    assert!(r.at(2000, &metrics(id, 3, None, 2000, 2010)).is_empty());
}

#[test]
fn memory_rising_steadily_for_an_hour_says_how_fast_and_when_it_is_full() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let mut alerts = Vec::new();
    for i in 0..=120u64 {
        alerts.extend(r.at(i * 30, &metrics(id, 3, Some(20.0), 2000 + i * 30 * 200 / 3600, (i * 30) as i64)));
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(rule(a), "memory_growth");
    assert!(a.message.contains("RAM +200 MB/h, full in ~"), "{}", a.message);
    let data = a.data.as_ref().unwrap();
    assert!((data["mb_per_hour"].as_f64().unwrap() - 200.0).abs() < 5.0, "{data:?}");
    assert!(data["hours_to_full"].as_f64().unwrap() > 60.0, "{data:?}");
}

#[test]
fn players_falling_from_many_to_none_is_a_mass_disconnect_unless_the_server_stopped() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    assert!(r.at(0, &metrics(id, 12, None, 2000, 10)).is_empty());
    let alerts = r.at(30, &metrics(id, 0, None, 2000, 40));
    assert_eq!(alerts.len(), 1);
    assert_eq!(rule(&alerts[0]), "mass_disconnect");
    assert_eq!(alerts[0].data.as_ref().unwrap()["players_before"], 12);
    // A few players leaving is not it; a stop is not it either.
    let other = Uuid::new_v4();
    r.at(0, &metrics(other, 3, None, 2000, 10));
    assert!(r.at(30, &metrics(other, 0, None, 2000, 40)).is_empty());
    r.at(40, &status(other, Status::Unknown, Status::Running));
    r.at(50, &metrics(other, 15, None, 2000, 60));
    r.at(55, &status(other, Status::Running, Status::Stopping));
    assert!(r.at(80, &metrics(other, 0, None, 2000, 90)).is_empty());
}

fn user_rule(name: &str) -> UserRule {
    UserRule {
        name: name.into(),
        title: Some("Grief alarm".into()),
        message: Some(r"(?i)\btnt\b".into()),
        exception: None,
        level: Level::Info,
        servers: Vec::new(),
        threshold: 2,
        window_s: 60,
        severity: Severity::Error,
        cooldown_s: 600,
    }
}

#[test]
fn a_user_rule_counts_matches_in_its_window_and_cools_down() {
    let mut cfg = AlertsConfig::default();
    cfg.rules.push(user_rule("grief"));
    let mut r = Run::new(cfg);
    let id = Uuid::new_v4();
    assert!(r.at(0, &line(id, Level::Info, "Steve placed TNT", "")).is_empty());
    assert!(r.at(1, &line(id, Level::Info, "Steve placed a torch", "")).is_empty());
    // Below the rule's level.
    assert!(r.at(2, &line(id, Level::Debug, "tnt debug", "")).is_empty());
    let alerts = r.at(3, &line(id, Level::Info, "Alex placed TNT", ""));
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!((rule(a), count(a), a.title.as_str(), a.severity), ("grief", 2, "Grief alarm", Severity::Error));
    assert_eq!(a.data.as_ref().unwrap()["line"], "Alex placed TNT");
    assert!(a.message.ends_with(": 2 matching lines in 60 s, the last: Alex placed TNT"), "{}", a.message);
    assert!(r.at(4, &line(id, Level::Info, "tnt again", "")).is_empty());
}

#[test]
fn lines_older_than_max_age_are_not_evaluated() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let Publish::Log(mut e) = line(id, Level::Error, "java.lang.OutOfMemoryError", "") else { unreachable!() };
    e.timestamp = Some(Time(chrono::Utc::now() - chrono::Duration::seconds(301)));
    assert!(r.at(0, &Publish::Log(e.clone())).is_empty());
    e.timestamp = Some(Time(chrono::Utc::now() - chrono::Duration::seconds(10)));
    assert_eq!(r.at(0, &Publish::Log(e)).len(), 1);
}

#[test]
fn disabled_rules_and_a_disabled_table_raise_nothing() {
    let mut cfg = AlertsConfig::default();
    cfg.out_of_memory.enabled = false;
    let mut r = Run::new(cfg);
    let id = Uuid::new_v4();
    assert!(r.at(0, &line(id, Level::Error, "java.lang.OutOfMemoryError", "")).is_empty());
    let mut r = Run::new(AlertsConfig { enabled: false, ..AlertsConfig::default() });
    assert!(r.at(0, &line(id, Level::Error, "A single server tick took 60.00 seconds", "")).is_empty());
}

#[test]
fn the_servers_kept_and_their_pending_cooldowns_are_bounded() {
    let mut r = Run::new(AlertsConfig::default());
    for i in 0..MAX_SERVERS as u64 + 10 {
        r.at(i, &metrics(Uuid::new_v4(), 1, None, 1000, 1));
    }
    assert!(r.engine.servers() <= MAX_SERVERS && r.engine.servers() > MAX_SERVERS * 7 / 8);
    // Servers that come and go, each raising an alert (and a cool-down):
    // the cool-downs of forgotten servers do not pile up.
    for i in 0..70_000u64 {
        let alerts = r.at(i / 1000, &line(Uuid::new_v4(), Level::Error, "java.lang.OutOfMemoryError", ""));
        assert_eq!(alerts.len(), 1);
    }
    assert!(r.engine.servers() <= MAX_SERVERS);
    assert!(r.engine.scheduled() < 66_000, "{}", r.engine.scheduled());
}

#[test]
fn a_reload_keeps_the_cooldown_of_a_rule_it_did_not_change() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let oom = line(id, Level::Error, "java.lang.OutOfMemoryError", "");
    assert_eq!(r.at(0, &oom).len(), 1);
    let mut cfg = AlertsConfig::default();
    cfg.rules.push(user_rule("grief"));
    cfg.watchdog.cooldown_s = 5;
    r.engine.reload(&cfg, r.t0 + s(1));
    assert!(r.at(2, &oom).is_empty(), "the out_of_memory cool-down goes on");
    assert_eq!(r.tick(600).len(), 1, "and its follow-up comes when it ends");
    cfg.out_of_memory.cooldown_s = 10;
    r.engine.reload(&cfg, r.t0 + s(601));
    assert_eq!(r.at(602, &oom).len(), 1, "a changed rule starts afresh");
}

#[test]
fn the_exceptions_tracked_per_server_are_bounded_the_least_recent_forgotten() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let trace = |n: usize| format!("java.lang.IllegalStateException: x\n\tat a.B.c{n}(B.java:1)");
    for t in 0..4 {
        assert!(r.at(t, &line(id, Level::Error, "boom", &trace(0))).is_empty());
    }
    // As many other exceptions as are tracked: the first one is forgotten,
    // so its fifth occurrence starts a new window instead of alerting.
    for n in 1..=super::engine::MAX_SIGNATURES {
        assert!(r.at(5, &line(id, Level::Error, "boom", &trace(n))).is_empty());
    }
    assert!(r.at(6, &line(id, Level::Error, "boom", &trace(0))).is_empty());
    // Without the eviction it does alert on the fifth.
    let mut r = Run::new(AlertsConfig::default());
    for t in 0..4 {
        r.at(t, &line(id, Level::Error, "boom", &trace(0)));
    }
    assert_eq!(r.at(6, &line(id, Level::Error, "boom", &trace(0))).len(), 1);
}

#[test]
fn rules_read_only_the_head_of_a_huge_line_and_of_its_trace() {
    // A hostile line (a player's text, a plugin's dump) of several MiB:
    // the built-ins' markers and the user regexes look at its first
    // SCAN_BYTES only, so its cost on the reactor is bounded.
    let mut cfg = AlertsConfig::default();
    cfg.rules.push(UserRule { threshold: 1, message: Some("needle".into()), ..user_rule("needle") });
    cfg.rules.push(UserRule { threshold: 1, message: None, exception: Some("needle".into()), ..user_rule("deep") });
    let mut r = Run::new(cfg);
    let id = Uuid::new_v4();
    let pad = "é".repeat(super::builtin::SCAN_BYTES / 2);
    let far = |marker: &str| format!("{pad}{marker}");
    let names = |alerts: Vec<Alert>| alerts.iter().map(|a| rule(a).to_string()).collect::<Vec<_>>();
    assert!(r.at(0, &line(id, Level::Error, &far("needle java.lang.OutOfMemoryError"), "")).is_empty());
    assert!(r.at(1, &line(id, Level::Error, "x", &far("needle\nCaused by: java.lang.OutOfMemoryError"))).is_empty());
    assert!(r.at(2, &line(id, Level::Error, &far("A single server tick took 60.00 seconds"), "")).is_empty());
    // Within the head, each is found.
    assert_eq!(
        names(r.at(3, &line(id, Level::Error, "needle java.lang.OutOfMemoryError", ""))),
        ["out_of_memory", "needle"]
    );
    assert_eq!(names(r.at(4, &line(id, Level::Error, "x", "needle\n\tat a.B(C.java:1)"))), ["deep"]);
}

#[test]
fn a_huge_server_name_is_cut_in_what_the_engine_keeps_and_says() {
    let mut r = Run::new(AlertsConfig::default());
    let id = Uuid::new_v4();
    let Publish::Status(mut st) = status(id, Status::Running, Status::Running) else { unreachable!() };
    st.server_name = "N".repeat(1 << 20);
    r.at(0, &Publish::Status(st));
    assert_eq!(r.engine.server_name(id).map(|n| n.chars().count()), Some(super::builtin::NAME_CHARS + 1));
    let alerts = r.at(1, &line(id, Level::Error, "java.lang.OutOfMemoryError", ""));
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].message.len() < 2000, "{} bytes", alerts[0].message.len());
}

#[test]
fn a_watchdog_line_with_an_endless_number_gives_no_infinite_tick_time() {
    let mut r = Run::new(AlertsConfig::default());
    let digits = "9".repeat(400);
    let alerts =
        r.at(0, &line(Uuid::new_v4(), Level::Error, &format!("A single server tick took {digits} seconds"), ""));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].data.as_ref().unwrap()["tick_s"], serde_json::Value::Null);
    assert!(!alerts[0].message.contains("inf"), "{}", alerts[0].message);
}

//! `GET /api/v1/servers/{id}/metrics` through the real binary: steps and
//! the TPS histogram from the memory ring, the ACL and the bounds, and a
//! week of points kept on disk across a restart, with retention by age, and
//! stored points across a SIGKILL.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

/// A `metrics` publish of SERVER_A measured at unix second `at`.
fn point(at: i64, cpu: f64, players: i64, tps: Option<f64>) -> Value {
    let mut body = metrics_body(SERVER_A, players, tps);
    body["data"]["timestamp"] = json!(rfc3339(at));
    body["data"]["cpu_percent"] = json!(cpu);
    body
}

fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `GET .../metrics?from&to&step` of SERVER_A with an admin token.
fn chart(hub: &Hub, from: i64, to: i64, step: i64) -> Value {
    let path = format!("/api/v1/servers/{SERVER_A}/metrics?from={}&to={}&step={step}", rfc3339(from), rfc3339(to));
    let resp = http_get(hub.addr, &path, Some(&admin_token()));
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

fn stop(mut hub: Hub) {
    hub.signal(libc::SIGTERM);
    assert!(hub.wait_exit(Duration::from_secs(8)).is_some_and(|s| s.success()), "clean exit");
}

#[test]
fn memory_ring_gives_min_avg_max_per_step_and_the_tps_bands() {
    let hub = Hub::start("");
    // The last ten minutes, every 30 s: TPS 20 for 5 minutes, then 17, 12 and
    // 5 for a minute each, then 19.5 for two; CPU climbs 1% per point.
    let start = now() / 60 * 60 - 600;
    let tps = |i: i64| match i {
        0..=9 => 20.0,
        10..=11 => 17.0,
        12..=13 => 12.0,
        14..=15 => 5.0,
        _ => 19.5,
    };
    for i in 0..20 {
        hub.publish(&point(start + 30 * i, i as f64, 10 + i, Some(tps(i))));
    }
    let v = chart(&hub, start, start + 600, 300);
    assert_eq!((v["source"].as_str(), v["points"].as_u64(), v["step"].as_u64()), (Some("memory"), Some(20), Some(300)));
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{v}");
    assert_eq!(series[0]["t"], rfc3339(start));
    assert_eq!(series[0]["n"], 10);
    assert_eq!(series[0]["cpu_percent"], json!({"min": 0.0, "avg": 4.5, "max": 9.0}));
    assert_eq!(series[1]["players_online"], json!({"min": 20.0, "avg": 24.5, "max": 29.0}));
    assert_eq!(series[1]["tps"], json!({"min": 5.0, "avg": 14.6, "max": 19.5}));
    assert_eq!(series[1]["memory_used"]["max"], 2147483648.0);
    // Each point stands for 30 s: 300 s at 20, 60 s in each of 15-19,
    // 10-15 and <10, 120 s (the last point counting as long as the others) in 19-20.
    assert_eq!(v["tps_seconds"], 600);
    assert_eq!(v["tps_histogram"], json!({"20": 0.5, "19-20": 0.2, "15-19": 0.1, "10-15": 0.1, "<10": 0.1}));
    // Nothing in a range before the points: empty series, zero shares.
    let empty = chart(&hub, start - 3 * HOUR, start - HOUR, 600);
    assert_eq!((empty["points"].as_u64(), empty["series"].clone()), (Some(0), json!([])));
    assert_eq!(empty["tps_histogram"]["20"], 0.0);
}

#[test]
fn the_metrics_endpoint_needs_the_channel_acl_and_bounded_parameters() {
    let hub = Hub::start("");
    let path = format!("/api/v1/servers/{SERVER_A}/metrics");
    assert_http_error(&http_get(hub.addr, &path, None), 401, "unauthorized", Some("missing token"));
    let stranger = user_token(&new_id(), &[SERVER_B]);
    assert_http_error(&http_get(hub.addr, &path, Some(&stranger)), 403, "forbidden", None);
    let allowed = user_token(&new_id(), &[SERVER_A]);
    let v = http_get(hub.addr, &format!("{path}?token={allowed}"), None).json();
    assert_eq!((v["server_id"].as_str(), v["step"].as_u64()), (Some(SERVER_A), Some(30)), "an hour in 120 steps");
    let week_ago = rfc3339(now() - 7 * DAY);
    for (query, says) in [
        ("step=5".to_string(), "at least 10"),
        (format!("from={week_ago}&step=60"), "at least 605 s"),
        (format!("from={}", rfc3339(now() - 40 * DAY)), "31 days"),
        (format!("from={}&to={week_ago}", rfc3339(now())), "before"),
        ("to=tomorrow".to_string(), "RFC 3339"),
        // Not UTF-8 once percent-decoded; a step past any range; one given twice.
        ("from=%FF%FE".to_string(), "'from' must be an RFC 3339 time"),
        ("step=9223372036854775807".to_string(), "at most 2678400"),
        ("step=99999999999999999999".to_string(), "whole number"),
        ("step=600&step=10".to_string(), "'step' is given more than once"),
        (format!("from={week_ago}&to={}&from={week_ago}", rfc3339(now())), "'from' is given more than once"),
    ] {
        let resp = http_get(hub.addr, &format!("{path}?{query}"), Some(&admin_token()));
        assert_http_error(&resp, 400, "bad_request", None);
        assert!(resp.json()["message"].as_str().unwrap().contains(says), "{query}: {}", resp.text());
    }
    assert_eq!(http_get(hub.addr, "/api/v1/servers/nope/metrics", Some(&admin_token())).status, 404);
}

#[test]
fn a_week_of_metrics_is_charted_after_a_restart_and_old_points_expire() {
    let dir = temp_dir();
    let db = dir.path().join("history.db");
    let config = || HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"\nretention_days = 14", db.display()));
    let hub = config().start();
    // One point an hour for a week (more than the memory ring keeps): TPS 20
    // on even days, 18 on odd ones; RAM as published; players = day number.
    let start = (now() - 8 * DAY) / DAY * DAY + DAY;
    for h in 0..7 * 24 {
        let day = h / 24;
        hub.publish(&point(start + h * HOUR, 50.0, day, Some(if day % 2 == 0 { 20.0 } else { 18.0 })));
    }
    // And one from 20 days ago, past retention (deleted at the next start).
    hub.publish(&point(now() - 20 * DAY, 1.0, 99, Some(3.0)));
    let old = |hub: &Hub| chart(hub, now() - 21 * DAY, now() - 19 * DAY, 3600)["points"].as_u64();
    let ok = wait_until(Duration::from_secs(10), || chart(&hub, start, start + 7 * DAY, DAY)["points"] == 168);
    assert!(ok, "the store never held the week: {}", chart(&hub, start, start + 7 * DAY, DAY));
    assert_eq!(old(&hub), Some(1));
    stop(hub);

    let hub = config().start();
    let v = chart(&hub, start, start + 7 * DAY, DAY);
    assert_eq!((v["source"].as_str(), v["points"].as_u64()), (Some("history"), Some(168)), "{v}");
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 7);
    for (day, s) in series.iter().enumerate() {
        assert_eq!(s["t"], rfc3339(start + day as i64 * DAY));
        assert_eq!(s["n"], 24);
        assert_eq!(s["players_online"]["avg"], day as f64);
        assert_eq!(s["tps"]["max"], if day % 2 == 0 { 20.0 } else { 18.0 });
    }
    // 4 days at 20, 3 at 18: each point stands for its hour (gaps up to a step count).
    assert_eq!(v["tps_seconds"], 7 * DAY);
    assert_eq!(v["tps_histogram"]["20"], 0.5714);
    assert_eq!(v["tps_histogram"]["15-19"], 0.4286);
    // Retention (right after start, then every minute) deleted the old point.
    assert!(wait_until(Duration::from_secs(10), || old(&hub) == Some(0)), "the old point was kept: {:?}", old(&hub));
}

#[test]
fn stored_points_survive_a_sigkill() {
    let dir = temp_dir();
    let config = || HubConfig::new().extra(&format!("[history]\ndb_path = \"{}\"", dir.path().join("h.db").display()));
    let mut hub = config().start();
    let start = now() / 60 * 60 - 3600;
    for i in 0..60 {
        hub.publish(&point(start + 60 * i, 10.0, 1, Some(20.0)));
    }
    let ok = wait_until(Duration::from_secs(10), || chart(&hub, start, start + 3600, 600)["points"] == 60);
    assert!(ok, "the store never held the hour");
    hub.signal(libc::SIGKILL);
    assert!(hub.wait_exit(Duration::from_secs(8)).is_some());
    let hub = config().start();
    let v = chart(&hub, start, start + 3600, 600);
    assert_eq!((v["source"].as_str(), v["points"].as_u64()), (Some("history"), Some(60)), "{v}");
    assert_eq!(v["tps_histogram"]["20"], 1.0);
}

//! `Publish::from_api` (section 8): any bytes are refused or accepted
//! without a panic; a valid body built from random fields is accepted, its
//! fields reach the envelope unchanged (the omitempty ones left out), and
//! the envelope, stripped of what the hub adds, is accepted again and
//! encodes to the same bytes.

use aymc_hub::protocol::{Publish, Time};
use chrono::{DateTime, FixedOffset, SecondsFormat};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::support::{json as any_json, uuid};

/// Any RFC 3339 time, with any offset and any number of fraction digits.
fn time() -> impl Strategy<Value = String> {
    (0i64..8_000_000_000, 0u32..1_000_000_000, -1439i32..1440, 0usize..4).prop_map(|(secs, nanos, offset_min, fmt)| {
        let t = DateTime::from_timestamp(secs, nanos).unwrap();
        let t = t.with_timezone(&FixedOffset::east_opt(offset_min * 60).unwrap());
        let fmt = [SecondsFormat::Secs, SecondsFormat::Millis, SecondsFormat::Micros, SecondsFormat::Nanos][fmt];
        t.to_rfc3339_opts(fmt, offset_min == 0)
    })
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
}

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(options).prop_map(str::to_string)
}

fn put(m: &mut Map<String, Value>, key: &str, v: Option<impl Into<Value>>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

/// A valid publish body of any type.
fn body() -> impl Strategy<Value = Value> {
    let log = (
        uuid(),
        prop::option::of(time()),
        pick(&["DEBUG", "INFO", "WARN", "ERROR"]),
        any::<String>(),
        any::<String>(),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(id, ts, level, source, message, exception)| {
            let mut d = Map::new();
            d.insert("server_id".into(), id.to_string().into());
            put(&mut d, "timestamp", ts);
            d.insert("level".into(), level.into());
            d.insert("source".into(), source.into());
            d.insert("message".into(), message.into());
            put(&mut d, "exception", exception);
            json!({"type": "log_entry", "channel": format!("server:{id}:logs"), "data": d})
        });
    let metrics = (
        uuid(),
        prop::option::of(time()),
        (finite(), any::<u64>(), any::<u64>(), finite()),
        (any::<i32>(), any::<i32>(), prop::option::of(finite()), any::<i64>()),
    )
        .prop_map(|(id, ts, (cpu, used, total, pct), (online, max, tps, up))| {
            let mut d = Map::new();
            d.insert("server_id".into(), id.to_string().into());
            put(&mut d, "timestamp", ts);
            d.insert("cpu_percent".into(), cpu.into());
            d.insert("memory_used".into(), used.into());
            d.insert("memory_total".into(), total.into());
            d.insert("memory_percent".into(), pct.into());
            d.insert("players_online".into(), online.into());
            d.insert("max_players".into(), max.into());
            put(&mut d, "tps", tps);
            d.insert("uptime_seconds".into(), up.into());
            json!({"type": "metrics", "channel": format!("server:{id}:metrics"), "data": d})
        });
    const STATUSES: &[&str] = &["running", "starting", "stopping", "stopped", "crashed", "unreachable"];
    let status = (
        uuid(),
        any::<String>(),
        prop_oneof![Just("unknown".to_string()), pick(STATUSES)],
        pick(STATUSES),
        prop::option::of(time()),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(id, name, old, new, ts, reason)| {
            let mut d = Map::new();
            d.insert("server_id".into(), id.to_string().into());
            d.insert("server_name".into(), name.into());
            d.insert("old_status".into(), old.into());
            d.insert("new_status".into(), new.into());
            put(&mut d, "timestamp", ts);
            put(&mut d, "reason", reason);
            json!({"type": "server_status", "channel": format!("server:{id}:status"), "data": d})
        });
    let notification = (
        uuid(),
        pick(&["info", "success", "warning", "error"]),
        any::<String>(),
        any::<String>(),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(user, kind, title, message, link)| {
            let mut d = Map::new();
            d.insert("type".into(), kind.into());
            d.insert("title".into(), title.into());
            d.insert("message".into(), message.into());
            put(&mut d, "link", link);
            json!({"type": "notification", "channel": format!("user:{user}:notifications"), "data": d})
        });
    let alert = (
        (prop::option::of(uuid()), pick(&["info", "warning", "error", "critical"]), any::<String>(), any::<String>()),
        (pick(&["server", "agent", "system"]), uuid(), any::<bool>(), prop::option::of(time())),
        prop::option::of(any_json(&["rule", "count"]).prop_map(|v| match v {
            Value::Object(m) => m,
            other => Map::from_iter([("v".to_string(), other)]),
        })),
    )
        .prop_map(|((id, severity, title, message), (source, source_id, with_id, ts), data)| {
            let mut d = Map::new();
            put(&mut d, "id", id.map(|u| u.to_string()));
            d.insert("severity".into(), severity.into());
            d.insert("title".into(), title.into());
            d.insert("message".into(), message.into());
            let with_id = with_id || source == "server";
            d.insert("source".into(), source.into());
            put(&mut d, "source_id", with_id.then(|| source_id.to_string()));
            put(&mut d, "timestamp", ts);
            put(&mut d, "data", data.map(Value::Object));
            json!({"type": "alert", "data": d})
        });
    prop_oneof![log, metrics, status, notification, alert]
}

fn now() -> Time {
    Time::from_unix_ms(1_795_879_800_123).unwrap()
}

/// Encodes an accepted publish and checks it is a fixed point: stripped of
/// `timestamp`, `seq` and `epoch`, the envelope is accepted again and
/// encodes to the same bytes. Returns the envelope.
fn round_trip(mut p: Publish) -> Value {
    // As the hub does: a seq for channel messages only.
    let seq = p.channel().map(|_| (7, "e"));
    p.stamp(now());
    let first = p.encode(now(), seq);
    let env: Value = serde_json::from_slice(&first).expect("the hub encodes JSON");
    let mut stripped = env.clone();
    for key in ["timestamp", "seq", "epoch"] {
        stripped.as_object_mut().unwrap().remove(key);
    }
    let mut again = Publish::from_api(stripped.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("its own envelope refused: {e}: {stripped}"));
    again.stamp(now());
    let second: Value = serde_json::from_slice(&again.encode(now(), seq)).unwrap();
    assert_eq!(second, env, "{env}\nbecame\n{second}");
    env
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = Publish::from_api(&bytes) {
            round_trip(p);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(kind in pick(&["log_entry", "metrics", "server_status", "notification", "alert", "x"]), channel in prop::option::of(any_json(&[])), data in any_json(&["server_id", "level", "source", "message", "type", "title", "severity"])) {
        let mut b = json!({"type": kind, "data": data});
        if let Some(c) = channel {
            b["channel"] = c;
        }
        if let Ok(p) = Publish::from_api(b.to_string().as_bytes()) {
            round_trip(p);
        }
    }

    #[test]
    fn valid_bodies_are_accepted_and_re_encode(body in body()) {
        let p = Publish::from_api(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"));
        let env = round_trip(p);
        prop_assert_eq!(&env["type"], &body["type"]);
        prop_assert_eq!(env.get("channel"), body.get("channel"));
        prop_assert_eq!(env.get("seq").is_some(), body.get("channel").is_some(), "channel messages carry a seq");
        for (k, v) in body["data"].as_object().unwrap() {
            if k == "timestamp" || v == "" {
                continue;
            }
            prop_assert_eq!(&env["data"][k], v, "data.{}: {} became {}", k, v, env["data"][k]);
        }
    }

    #[test]
    fn a_changed_field_never_panics(body in body(), key in any::<prop::sample::Index>(), value in any_json(&[])) {
        let mut body = body;
        let data = body["data"].as_object_mut().unwrap();
        let k = data.keys().nth(key.index(data.len())).unwrap().clone();
        data.insert(k, value);
        if let Ok(p) = Publish::from_api(body.to_string().as_bytes()) {
            round_trip(p);
        }
    }
}

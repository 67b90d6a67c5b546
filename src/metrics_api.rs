//! `GET /api/v1/servers/{id}/metrics` (PROTOCOL.md 11.8, issue 12 part 3):
//! a server's metrics between `from` and `to`, downsampled to min/avg/max
//! per `step`, and the share of time its TPS spent in each band.
//!
//! The points come from the memory ring of the server's `metrics` channel
//! (answered on the reactor: at most `history.metrics_points` of them), or,
//! with on-disk history, from SQLite on the query thread
//! ([`crate::logs_api`]), streamed through one [`Summary`] so that the
//! answer's size and the memory used depend on the number of steps only
//! ([`MAX_STEPS`]), never on the number of points.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::protocol::{Metrics, Time};
use crate::store::{parse_time, MetricPoint};

/// The smallest `step`, seconds.
pub const MIN_STEP_S: i64 = 10;
/// Steps in one answer at most (`to - from` over `step`).
pub const MAX_STEPS: i64 = 1000;
/// The longest `to - from`, days.
pub const MAX_RANGE_DAYS: i64 = 31;
/// Without `from`: this long before `to`, seconds.
pub const DEFAULT_RANGE_S: i64 = 3600;
/// Without `step`: the range cut into this many steps (or [`MIN_STEP_S`]).
pub const DEFAULT_STEPS: i64 = 120;
/// A point stands for the time until the next one, at most this long (ms)
/// or one step, whichever is longer: a longer gap means the server or its
/// agent was away.
const MAX_SPAN_MS: i64 = 300_000;
/// The span of a point when no interval is known yet (the agents' default
/// metrics interval), ms.
const DEFAULT_SPAN_MS: i64 = 30_000;
/// The TPS bands, as named in the answer.
const BANDS: [&str; 5] = ["20", "19-20", "15-19", "10-15", "<10"];

/// A checked query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsQuery {
    /// The server.
    pub server: Uuid,
    /// Start (included), unix ms.
    pub from_ms: i64,
    /// End (excluded), unix ms.
    pub to_ms: i64,
    /// Step, ms (whole seconds).
    pub step_ms: i64,
}

impl MetricsQuery {
    /// Reads `from`, `to` (RFC 3339; default: now and an hour before `to`)
    /// and `step` (whole seconds; default: the range in
    /// [`DEFAULT_STEPS`] steps) and checks the bounds.
    ///
    /// # Errors
    /// A sentence for the `400` answer naming the bad parameter.
    pub fn from_params(server: Uuid, now_ms: i64, param: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| param(name).filter(|v| !v.is_empty());
        let time = |name: &str| -> Result<Option<i64>, String> {
            get(name).map(|v| parse_time(&v).ok_or_else(|| format!("'{name}' must be an RFC 3339 time"))).transpose()
        };
        let to_ms = time("to")?.unwrap_or(now_ms);
        let from_ms = time("from")?.unwrap_or(to_ms.saturating_sub(DEFAULT_RANGE_S * 1000));
        if from_ms >= to_ms {
            return Err("'from' must be before 'to'".into());
        }
        let range_ms = to_ms - from_ms;
        if range_ms > MAX_RANGE_DAYS * 86_400_000 {
            return Err(format!("'from' to 'to' may span {MAX_RANGE_DAYS} days at most"));
        }
        // Both positive and far from overflowing (the range is capped above).
        let ceil_div = |a: i64, b: i64| (a + b - 1) / b;
        // The smallest step that keeps the answer within MAX_STEPS, in whole seconds.
        let least_s = ceil_div(range_ms, MAX_STEPS * 1000).max(MIN_STEP_S);
        let max_s = MAX_RANGE_DAYS * 86_400;
        let step_s = match get("step") {
            None => ceil_div(range_ms, DEFAULT_STEPS * 1000).max(least_s),
            Some(v) => match v.parse::<i64>() {
                Ok(s) if s > max_s => return Err(format!("'step' must be at most {max_s} s ({MAX_RANGE_DAYS} days)")),
                Ok(s) if s >= least_s => s,
                Ok(s) if s >= MIN_STEP_S => {
                    return Err(format!(
                        "'step' must be at least {least_s} s for this range ({MAX_STEPS} steps at most)"
                    ))
                }
                _ => return Err(format!("'step' must be a whole number of seconds, at least {MIN_STEP_S}")),
            },
        };
        Ok(MetricsQuery { server, from_ms, to_ms, step_ms: step_s * 1000 })
    }
}

/// How far ahead of the hub's clock a publisher's `data.timestamp` may be
/// stored; a later one is stored at the hub's time (a point dated years
/// ahead would outlive every retention).
const MAX_FUTURE_MS: i64 = 60_000;

/// The point of a `metrics` message (its time filled by the hub when
/// missing, or when later than a minute ahead of the hub's clock).
pub fn point(m: &Metrics, now: Time) -> MetricPoint {
    let now_ms = now.0.timestamp_millis();
    let ts_ms = m.timestamp.map_or(now_ms, |t| t.0.timestamp_millis());
    MetricPoint {
        server: m.server_id,
        ts_ms: if ts_ms > now_ms.saturating_add(MAX_FUTURE_MS) { now_ms } else { ts_ms },
        cpu: m.cpu_percent,
        ram: m.memory_used,
        players: i64::from(m.players_online),
        tps: m.tps,
    }
}

/// Min, sum and max of one field in one step.
#[derive(Debug, Clone, Copy)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    n: u64,
}

impl Agg {
    fn new(v: f64) -> Agg {
        Agg { min: v, max: v, sum: v, n: 1 }
    }

    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.n += 1;
    }

    fn json(&self) -> Value {
        let avg = self.sum / self.n as f64;
        json!({ "min": self.min, "avg": (avg * 1000.0).round() / 1000.0, "max": self.max })
    }
}

/// One step: its index from `from`, point count, and the fields.
struct Step {
    index: i64,
    n: u64,
    cpu: Agg,
    ram: Agg,
    players: Agg,
    tps: Option<Agg>,
}

/// The answer being built from points in time order. See the module docs.
pub struct Summary {
    q: MetricsQuery,
    steps: Vec<Step>,
    points: u64,
    /// The previous point with a TPS: its time and band.
    last_tps: Option<(i64, usize)>,
    /// The span the last TPS point stands for when it has no successor.
    last_span: i64,
    /// Milliseconds per band.
    bands: [i64; 5],
}

/// A CPU share or TPS beyond this (either way) is no measurement: left
/// out, so that sums (up to 31 days of points) and averages stay finite.
const MAX_VALUE: f64 = 1e12;

/// A finite value within [`MAX_VALUE`].
fn measured(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_VALUE
}

/// Milliseconds per band as shares in ten-thousandths that add up to
/// 10,000 (largest remainders round up), or all 0 when there are none.
fn shares(bands: [i64; 5]) -> [i64; 5] {
    let total: i64 = bands.iter().sum();
    let mut units = [0i64; 5];
    if total <= 0 {
        return units;
    }
    let mut rest = [(0i64, 0usize); 5];
    for (i, (ms, (u, r))) in bands.iter().zip(units.iter_mut().zip(rest.iter_mut())).enumerate() {
        // At most 31 days of ms times 10,000: far from overflowing.
        let scaled = ms.saturating_mul(10_000);
        *u = scaled / total;
        *r = (scaled % total, i);
    }
    let short = 10_000 - units.iter().sum::<i64>();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rest.iter().take(usize::try_from(short).unwrap_or(0)) {
        if let Some(u) = units.get_mut(*i) {
            *u += 1;
        }
    }
    units
}

fn band(tps: f64) -> usize {
    match tps {
        t if t >= 19.95 => 0,
        t if t >= 19.0 => 1,
        t if t >= 15.0 => 2,
        t if t >= 10.0 => 3,
        _ => 4,
    }
}

impl Summary {
    /// An empty answer for `q`.
    pub fn new(q: &MetricsQuery) -> Summary {
        Summary {
            q: q.clone(),
            steps: Vec::new(),
            points: 0,
            last_tps: None,
            last_span: DEFAULT_SPAN_MS,
            bands: [0; 5],
        }
    }

    /// Adds a point; points outside the range, with a CPU or TPS that is
    /// no measurement ([`measured`]) and points older than the last one
    /// are ignored.
    pub fn add(&mut self, p: &MetricPoint) {
        let q = &self.q;
        if p.ts_ms < q.from_ms || p.ts_ms >= q.to_ms || !measured(p.cpu) || p.tps.is_some_and(|t| !measured(t)) {
            return;
        }
        let index = (p.ts_ms - q.from_ms) / q.step_ms;
        let (cpu, ram, players) = (p.cpu, p.ram as f64, p.players as f64);
        match self.steps.last_mut() {
            Some(s) if s.index == index => {
                s.n += 1;
                s.cpu.add(cpu);
                s.ram.add(ram);
                s.players.add(players);
                if let Some(t) = p.tps {
                    s.tps.get_or_insert(Agg { min: t, max: t, sum: 0.0, n: 0 }).add(t);
                }
            }
            Some(s) if s.index > index => return,
            _ => self.steps.push(Step {
                index,
                n: 1,
                cpu: Agg::new(cpu),
                ram: Agg::new(ram),
                players: Agg::new(players),
                tps: p.tps.map(Agg::new),
            }),
        }
        self.points += 1;
        if let Some(t) = p.tps {
            if let Some((at, b)) = self.last_tps {
                let span = (p.ts_ms - at).clamp(0, MAX_SPAN_MS.max(q.step_ms));
                if let Some(ms) = self.bands.get_mut(b) {
                    *ms += span;
                }
                if span > 0 {
                    self.last_span = span;
                }
            }
            self.last_tps = Some((p.ts_ms, band(t)));
        }
    }

    /// The JSON answer; `source` is `memory` or `history`.
    pub fn finish(mut self, source: &str) -> Value {
        if let Some((at, b)) = self.last_tps {
            // The last point stands for as long as the one before it, within the range.
            let span = self.last_span.min(self.q.to_ms - at);
            if let Some(ms) = self.bands.get_mut(b) {
                *ms += span;
            }
        }
        let total: i64 = self.bands.iter().sum();
        let mut histogram = Map::new();
        for (name, units) in BANDS.iter().zip(shares(self.bands)) {
            histogram.insert((*name).to_string(), json!(units as f64 / 10_000.0));
        }
        let q = &self.q;
        let time = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(Time);
        let series: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut v = Map::new();
                v.insert("t".into(), json!(time(q.from_ms + s.index * q.step_ms)));
                v.insert("n".into(), json!(s.n));
                v.insert("cpu_percent".into(), s.cpu.json());
                v.insert("memory_used".into(), s.ram.json());
                v.insert("players_online".into(), s.players.json());
                if let Some(t) = &s.tps {
                    v.insert("tps".into(), t.json());
                }
                Value::Object(v)
            })
            .collect();
        json!({
            "server_id": q.server,
            "from": time(q.from_ms),
            "to": time(q.to_ms),
            "step": q.step_ms / 1000,
            "source": source,
            "points": self.points,
            "series": series,
            "tps_histogram": histogram,
            "tps_seconds": total / 1000,
        })
    }
}

/// `data` of a kept `metrics` envelope.
#[derive(Deserialize)]
struct Envelope {
    data: Metrics,
}

/// The answer from the memory ring: `kept` are the JSON envelopes of the
/// channel's kept messages (any order; unreadable ones are skipped).
pub fn from_memory<'a>(q: &MetricsQuery, kept: impl Iterator<Item = &'a [u8]>) -> Value {
    let now = Time::now();
    let mut points: Vec<MetricPoint> =
        kept.filter_map(|json| serde_json::from_slice::<Envelope>(json).ok()).map(|e| point(&e.data, now)).collect();
    points.sort_by_key(|p| p.ts_ms);
    let mut summary = Summary::new(q);
    for p in &points {
        summary.add(p);
    }
    summary.finish("memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn query(params: &[(&str, &str)]) -> Result<MetricsQuery, String> {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap().timestamp_millis();
        MetricsQuery::from_params(Uuid::nil(), now, |n| {
            params.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string())
        })
    }

    fn p(ts_ms: i64, cpu: f64, tps: Option<f64>) -> MetricPoint {
        MetricPoint { server: Uuid::nil(), ts_ms, cpu, ram: 1000, players: 3, tps }
    }

    #[test]
    fn a_point_dated_ahead_of_the_hub_is_stored_at_the_hubs_time() {
        let at = |s: &str| Time(chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        let now = at("2026-12-01T12:00:00Z");
        let metrics = |ts: Option<&str>| {
            serde_json::from_value::<Metrics>(serde_json::json!({
                "server_id": Uuid::nil(), "timestamp": ts, "cpu_percent": 1.0, "memory_used": 1, "memory_total": 2,
                "memory_percent": 50.0, "players_online": 0, "max_players": 20, "uptime_seconds": 5
            }))
            .unwrap()
        };
        let ms = |s: &str| at(s).0.timestamp_millis();
        assert_eq!(point(&metrics(None), now).ts_ms, ms("2026-12-01T12:00:00Z"));
        assert_eq!(point(&metrics(Some("2026-12-01T11:00:00Z")), now).ts_ms, ms("2026-12-01T11:00:00Z"));
        assert_eq!(point(&metrics(Some("2026-12-01T12:00:59Z")), now).ts_ms, ms("2026-12-01T12:00:59Z"));
        assert_eq!(point(&metrics(Some("2099-01-01T00:00:00Z")), now).ts_ms, ms("2026-12-01T12:00:00Z"));
    }

    #[test]
    fn params_have_defaults_and_bounds() {
        let q = query(&[]).unwrap();
        assert_eq!((q.to_ms - q.from_ms, q.step_ms), (HOUR_MS, 30_000));
        let week = query(&[("from", "2026-11-24T12:00:00Z"), ("to", "2026-12-01T12:00:00Z")]).unwrap();
        assert_eq!(week.step_ms, 7 * 24 * HOUR_MS / 120);
        assert_eq!(query(&[("step", "10")]).unwrap().step_ms, 10_000);
        for (params, says) in [
            (&[("step", "9")][..], "at least 10"),
            (&[("step", "x")][..], "whole number"),
            (&[("from", "2026-12-01T12:00:00Z"), ("to", "2026-12-01T11:00:00Z")][..], "before"),
            (&[("from", "2026-10-01T00:00:00Z")][..], "31 days"),
            (&[("from", "yesterday")][..], "RFC 3339"),
            // A week in 60 s steps is 10,080 steps.
            (&[("from", "2026-11-24T12:00:00Z"), ("step", "60")][..], "at least 605 s"),
        ] {
            let err = query(params).unwrap_err();
            assert!(err.contains(says), "{params:?}: {err}");
        }
    }

    #[test]
    fn points_are_downsampled_per_step_and_tps_time_is_shared_out() {
        let q = MetricsQuery { server: Uuid::nil(), from_ms: 0, to_ms: 120_000, step_ms: 60_000 };
        let mut s = Summary::new(&q);
        // Every 30 s: 20, 20, 18, then a point without TPS, then 5 (outside: ignored).
        for pt in [
            p(0, 10.0, Some(20.0)),
            p(30_000, 30.0, Some(20.0)),
            p(60_000, 50.0, Some(18.0)),
            p(90_000, 70.0, None),
            p(120_000, 99.0, Some(5.0)),
        ] {
            s.add(&pt);
        }
        let v = s.finish("memory");
        assert_eq!(v["points"], 4);
        assert_eq!(v["series"].as_array().unwrap().len(), 2);
        assert_eq!(v["series"][0]["cpu_percent"], json!({"min": 10.0, "avg": 20.0, "max": 30.0}));
        assert_eq!(v["series"][0]["tps"], json!({"min": 20.0, "avg": 20.0, "max": 20.0}));
        assert_eq!(v["series"][1]["n"], 2);
        assert_eq!(v["series"][1]["tps"], json!({"min": 18.0, "avg": 18.0, "max": 18.0}));
        assert_eq!(v["series"][1]["t"], "1970-01-01T00:01:00.000Z");
        // 20 from 0 to 60 s; 18 from 60 s for as long as the span before (30 s).
        let h = &v["tps_histogram"];
        assert_eq!((h["20"].as_f64(), h["15-19"].as_f64(), h["<10"].as_f64()), (Some(0.6667), Some(0.3333), Some(0.0)));
        assert_eq!(v["tps_seconds"], 90);
    }

    #[test]
    fn gaps_count_five_minutes_at_most_and_nothing_gives_zeros() {
        let q = MetricsQuery { server: Uuid::nil(), from_ms: 0, to_ms: HOUR_MS, step_ms: 60_000 };
        let mut s = Summary::new(&q);
        s.add(&p(0, 1.0, Some(8.0)));
        s.add(&p(HOUR_MS / 2, 1.0, Some(20.0)));
        let v = s.finish("history");
        assert_eq!(v["tps_seconds"], 600);
        assert_eq!(v["tps_histogram"]["<10"], 0.5);
        let empty = Summary::new(&q).finish("memory");
        assert_eq!(empty["series"], json!([]));
        assert_eq!(empty["tps_histogram"]["20"], 0.0);
    }

    #[test]
    fn the_shares_add_up_to_one_to_four_decimals() {
        let q = MetricsQuery { server: Uuid::nil(), from_ms: 0, to_ms: 90_000, step_ms: 30_000 };
        let mut s = Summary::new(&q);
        // 30 s each in three bands: thirds, which do not round to a sum of 1.
        for (i, tps) in [20.0, 17.0, 5.0].into_iter().enumerate() {
            s.add(&p(i as i64 * 30_000, 1.0, Some(tps)));
        }
        let v = s.finish("memory");
        let units: Vec<i64> =
            BANDS.iter().map(|b| (v["tps_histogram"][b].as_f64().unwrap() * 10_000.0).round() as i64).collect();
        assert_eq!(units.iter().sum::<i64>(), 10_000, "{}", v["tps_histogram"]);
        assert!(units.iter().all(|u| [0, 3333, 3334].contains(u)), "{units:?}");
    }

    #[test]
    fn absurd_values_from_a_publisher_leave_every_average_a_number() {
        let q = MetricsQuery { server: Uuid::nil(), from_ms: 0, to_ms: 60_000, step_ms: 60_000 };
        let mut s = Summary::new(&q);
        s.add(&p(0, 1e306, Some(1e306)));
        s.add(&p(10_000, 1e308, Some(20.0)));
        s.add(&p(20_000, 1e308, Some(20.0)));
        s.add(&p(30_000, 50.0, Some(20.0)));
        let v = s.finish("memory");
        for field in ["cpu_percent", "memory_used", "players_online", "tps"] {
            for k in ["min", "avg", "max"] {
                assert!(v["series"][0][field][k].is_number(), "{field}.{k}: {}", v["series"][0]);
            }
        }
    }
}

//! The rules engine: per server, the state each rule keeps (a window of
//! occurrences and a cool-down gate per rule, the last status, players and
//! TPS, the memory trend, the recent exceptions), fed with every published
//! log line, status change and metrics sample, raising [`Alert`]s with
//! `data.rule` and `data.count`. Runs on the reactor thread, so it is
//! cheap by construction: an INFO line with no user rule at INFO costs one
//! comparison; built-in markers are substring checks on WARN/ERROR lines
//! and lines with a stack trace; user rules are one `RegexSet` per field;
//! all read at most [`SCAN_BYTES`](builtin::SCAN_BYTES) of the message and
//! of the trace, however long the line.
//! Every piece of state is bounded: servers ([`MAX_SERVERS`]), exception
//! signatures per server ([`MAX_SIGNATURES`]), times per window (the
//! threshold), memory samples (one per window/120).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::builtin::{self, head, quote, span, MemoryTrend, CANT_KEEP_UP, NAME_CHARS, QUOTE_CHARS, WATCHDOG};
use super::config::{AlertsConfig, BUILTIN_NAMES};
use super::gate::{Detail, Gate, Window};
use super::rules::UserRules;
use crate::protocol::{Alert, AlertSource, Level, LogEntry, Metrics, Publish, Severity, Status, StatusChange, Time};

/// Servers the engine keeps state for at most; past it the eighth seen
/// least recently is forgotten (their windows and cool-downs start afresh).
pub const MAX_SERVERS: usize = 4096;
/// Distinct exceptions tracked per server at most; past it the one seen
/// least recently is forgotten.
pub const MAX_SIGNATURES: usize = 64;
/// Pending cool-down ends kept before those of forgotten servers are
/// purged (servers come and go through the publish API).
const DUE_PURGE: usize = 65_536;

// Slots of the built-in rules, in `BUILTIN_NAMES` order; user rules follow.
const CRASH_LOOP: usize = 0;
const REPEATED_EXCEPTION: usize = 1;
const CANT_KEEP_UP_SLOT: usize = 2;
const OUT_OF_MEMORY: usize = 3;
const WATCHDOG_SLOT: usize = 4;
const LOW_TPS: usize = 5;
const MEMORY_GROWTH: usize = 6;
const MASS_DISCONNECT: usize = 7;
const BUILTINS: usize = BUILTIN_NAMES.len();

/// A rule as the engine runs it.
#[derive(Debug)]
struct Slot {
    name: String,
    title: String,
    enabled: bool,
    severity: Severity,
    cooldown: Duration,
    /// Its configuration, to carry its state over a reload that left it
    /// unchanged.
    key: String,
    raised: u64,
    suppressed: u64,
}

fn slot(name: &str, title: &str, enabled: bool, severity: Severity, cooldown_s: u64, key: String) -> Slot {
    let (name, title) = (name.to_string(), title.to_string());
    Slot { name, title, enabled, severity, cooldown: Duration::from_secs(cooldown_s), key, raised: 0, suppressed: 0 }
}

fn slots(cfg: &AlertsConfig) -> Vec<Slot> {
    let (c, e, k, o, w) =
        (&cfg.crash_loop, &cfg.repeated_exception, &cfg.cant_keep_up, &cfg.out_of_memory, &cfg.watchdog);
    let (t, m, d) = (&cfg.low_tps, &cfg.memory_growth, &cfg.mass_disconnect);
    let mut v = vec![
        slot("crash_loop", "Crash loop", c.enabled, c.severity, c.cooldown_s, format!("{c:?}")),
        slot("repeated_exception", "Repeated exception", e.enabled, e.severity, e.cooldown_s, format!("{e:?}")),
        slot("cant_keep_up", "Server can't keep up", k.enabled, k.severity, k.cooldown_s, format!("{k:?}")),
        slot("out_of_memory", "Out of memory", o.enabled, o.severity, o.cooldown_s, format!("{o:?}")),
        slot("watchdog", "Server tick too long", w.enabled, w.severity, w.cooldown_s, format!("{w:?}")),
        slot("low_tps", "Low TPS", t.enabled, t.severity, t.cooldown_s, format!("{t:?}")),
        slot("memory_growth", "Memory growing", m.enabled, m.severity, m.cooldown_s, format!("{m:?}")),
        slot("mass_disconnect", "Mass disconnect", d.enabled, d.severity, d.cooldown_s, format!("{d:?}")),
    ];
    for r in &cfg.rules {
        let title = r.title.as_deref().unwrap_or(&r.name);
        v.push(slot(&r.name, title, true, r.severity, r.cooldown_s, format!("{r:?}")));
    }
    v
}

/// What the engine keeps per server.
#[derive(Debug)]
struct ServerState {
    name: Option<String>,
    status: Option<Status>,
    seen: Instant,
    gates: Vec<Gate>,
    windows: Vec<Window>,
    exceptions: HashMap<u64, Window>,
    tps_low_since: Option<Instant>,
    players: Option<i32>,
    memory: MemoryTrend,
}

impl ServerState {
    fn new(slots: usize, now: Instant) -> ServerState {
        ServerState {
            name: None,
            status: None,
            seen: now,
            gates: vec![Gate::default(); slots],
            windows: vec![Window::default(); slots],
            exceptions: HashMap::new(),
            tps_low_since: None,
            players: None,
            memory: MemoryTrend::default(),
        }
    }

    /// Up, or not known to be down: where player and TPS rules apply.
    fn running(&self) -> bool {
        matches!(self.status, None | Some(Status::Running | Status::Unknown))
    }
}

/// The engine. See the module docs.
#[derive(Debug)]
pub struct Engine {
    cfg: AlertsConfig,
    slots: Vec<Slot>,
    user: UserRules,
    servers: HashMap<Uuid, ServerState>,
    /// Cool-downs to look at when they end: (end, slot, server). At most
    /// one live entry per rule and server; entries of forgotten servers
    /// are purged when it doubles past [`DUE_PURGE`].
    due: BinaryHeap<Reverse<(Instant, usize, Uuid)>>,
    /// `due`'s length that triggers the next purge.
    purge_at: usize,
    /// The memory trend's clock starts here.
    epoch: Instant,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Engine {
    /// An engine for a validated configuration (a rule that does not
    /// compile, which validation rules out, leaves user rules off).
    pub fn new(cfg: &AlertsConfig, now: Instant) -> Engine {
        let user = UserRules::compile(&cfg.rules).unwrap_or_else(|e| {
            log::error!("alert rules not compiled, user rules are off: {e}");
            UserRules::none()
        });
        Engine {
            cfg: cfg.clone(),
            slots: slots(cfg),
            user,
            servers: HashMap::new(),
            due: BinaryHeap::new(),
            purge_at: DUE_PURGE,
            epoch: now,
        }
    }

    /// Takes a reloaded configuration: the state of each server, and of
    /// each rule whose configuration did not change, goes on.
    pub fn reload(&mut self, cfg: &AlertsConfig, now: Instant) {
        let mut old = std::mem::replace(self, Engine::new(cfg, now));
        let new = self;
        new.epoch = old.epoch;
        let map: Vec<Option<usize>> =
            new.slots.iter().map(|s| old.slots.iter().position(|o| o.key == s.key && o.name == s.name)).collect();
        for (s, o) in new.slots.iter_mut().zip(&map) {
            if let Some(o) = o.and_then(|i| old.slots.get(i)) {
                (s.raised, s.suppressed) = (o.raised, o.suppressed);
            }
        }
        for (id, mut st) in old.servers.drain() {
            let mut gates = vec![Gate::default(); new.slots.len()];
            let mut windows = vec![Window::default(); new.slots.len()];
            for (j, old) in map.iter().enumerate() {
                let Some(i) = *old else { continue };
                if let (Some(g), Some(w), Some(og), Some(ow)) =
                    (gates.get_mut(j), windows.get_mut(j), st.gates.get_mut(i), st.windows.get_mut(i))
                {
                    *g = std::mem::take(og);
                    *w = std::mem::take(ow);
                    if let Some(until) = g.until() {
                        new.due.push(Reverse((until, j, id)));
                    }
                }
            }
            (st.gates, st.windows) = (gates, windows);
            new.servers.insert(id, st);
        }
    }

    /// Evaluates one published message; returns the alerts it raises.
    pub fn observe(&mut self, msg: &Publish, now: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        if !self.cfg.enabled {
            return out;
        }
        match msg {
            Publish::Log(e) => self.on_log(e, now, &mut out),
            Publish::Status(s) => self.on_status(s, now, &mut out),
            Publish::Metrics(m) => self.on_metrics(m, now, &mut out),
            Publish::Notification { .. } | Publish::Alert(_) => {}
        }
        out
    }

    /// Ends the cool-downs that are over: a follow-up alert for each rule
    /// and server with occurrences held back during it.
    pub fn tick(&mut self, now: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, slot, id))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            let Some(cooldown) = self.slots.get(slot).map(|s| s.cooldown) else { continue };
            let Some(gate) = self.servers.get_mut(&id).and_then(|s| s.gates.get_mut(slot)) else { continue };
            if let Some((n, detail)) = gate.expire(now, cooldown) {
                if let Some(until) = gate.until() {
                    self.schedule(until, slot, id);
                }
                out.push(self.alert(slot, id, n, detail, true));
            }
        }
        out
    }

    /// The name of a server in alerts: from its latest status message.
    pub fn server_name(&self, id: Uuid) -> Option<&str> {
        self.servers.get(&id)?.name.as_deref()
    }

    /// Stats: per rule, alerts raised and occurrences held back.
    pub fn stats(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.slots.iter().map(|s| (s.name.as_str(), s.raised, s.suppressed))
    }

    /// Servers with state.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Cool-down ends waiting to be looked at.
    #[cfg(test)]
    pub fn scheduled(&self) -> usize {
        self.due.len()
    }

    fn on(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.enabled)
    }

    /// Older than `max_age_s` by its own time (the clock is read only
    /// for a message that has one).
    fn stale(&self, ts: Option<Time>) -> bool {
        let max = self.cfg.max_age_s as i64;
        max > 0 && ts.is_some_and(|t| (chrono::Utc::now() - t.0).num_seconds() > max)
    }

    fn state(&mut self, id: Uuid, now: Instant) -> &mut ServerState {
        if !self.servers.contains_key(&id) && self.servers.len() >= MAX_SERVERS {
            // An eighth at once, so a stream of new servers costs one scan
            // per MAX_SERVERS / 8 of them, not one each.
            let mut seen: Vec<(Instant, Uuid)> = self.servers.iter().map(|(k, s)| (s.seen, *k)).collect();
            let cut = MAX_SERVERS / 8;
            seen.select_nth_unstable(cut);
            for (_, k) in seen.iter().take(cut) {
                self.servers.remove(k);
            }
        }
        let slots = self.slots.len();
        let st = self.servers.entry(id).or_insert_with(|| ServerState::new(slots, now));
        st.seen = now;
        st
    }

    /// Remembers to look at a cool-down when it ends.
    fn schedule(&mut self, until: Instant, slot: usize, id: Uuid) {
        if self.due.len() >= self.purge_at {
            let servers = &self.servers;
            self.due.retain(|Reverse((_, _, id))| servers.contains_key(id));
            self.purge_at = DUE_PURGE.max(self.due.len() * 2);
        }
        self.due.push(Reverse((until, slot, id)));
    }

    /// An occurrence of `slot`'s condition with `count` in its window:
    /// an alert unless the rule cools down on this server.
    fn pass(
        &mut self,
        id: Uuid,
        slot: usize,
        now: Instant,
        count: u32,
        detail: impl FnOnce(&str) -> Detail,
        out: &mut Vec<Alert>,
    ) {
        let Some(cooldown) = self.slots.get(slot).map(|s| s.cooldown) else { return };
        let ServerState { name, gates, .. } = self.state(id, now);
        let Some(gate) = gates.get_mut(slot) else { return };
        // The detail (and its text) is made only when it is kept.
        let passed = gate.pass(now, cooldown, count, || match name.as_deref() {
            Some(name) => detail(name),
            None => detail(&id.to_string()),
        });
        let until = gate.until();
        match passed {
            Some((n, d)) => {
                if let Some(until) = until {
                    self.schedule(until, slot, id);
                }
                out.push(self.alert(slot, id, n, d, false));
            }
            None => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.suppressed += 1;
                }
            }
        }
    }

    /// An occurrence for a windowed rule: the count when the window holds
    /// `threshold` of them.
    fn hit(&mut self, id: Uuid, slot: usize, now: Instant, window_s: u64, threshold: u32) -> Option<u32> {
        self.state(id, now).windows.get_mut(slot)?.hit(now, secs(window_s), threshold)
    }

    fn alert(&mut self, slot: usize, id: Uuid, count: u32, detail: Detail, follow_up: bool) -> Alert {
        let (name, title, severity) = match self.slots.get_mut(slot) {
            Some(s) => {
                s.raised += 1;
                (s.name.clone(), s.title.clone(), s.severity)
            }
            None => (String::new(), String::new(), Severity::Warning),
        };
        let mut data = Map::new();
        data.insert("rule".into(), Value::from(name));
        data.insert("count".into(), Value::from(count));
        data.extend(detail.data);
        let message = match follow_up {
            true => format!("{} ({count} more since the last alert)", detail.message),
            false => detail.message,
        };
        Alert {
            id: Some(Uuid::new_v4()),
            severity,
            title,
            message,
            source: AlertSource::Server,
            source_id: Some(id),
            timestamp: Some(Time::now()),
            data: Some(data),
        }
    }

    fn on_log(&mut self, e: &LogEntry, now: Instant, out: &mut Vec<Alert>) {
        let traced = !e.exception.is_empty();
        let builtin = e.level >= Level::Warn || traced;
        if !(builtin || self.user.wants(e.level)) || self.stale(e.timestamp) {
            return;
        }
        let id = e.server_id;
        if builtin {
            self.builtin_log(e, now, out);
        }
        for i in self.user.matching(e) {
            let Some(rule) = self.cfg.rules.get(i) else { continue };
            let (window_s, threshold) = (rule.window_s, rule.threshold);
            let Some(n) = self.hit(id, BUILTINS + i, now, window_s, threshold) else { continue };
            let detail = |server: &str| {
                let line = quote(&e.message, QUOTE_CHARS);
                Detail {
                    message: match n {
                        1 => format!("'{server}': {line}"),
                        n => format!("'{server}': {n} matching lines in {}, the last: {line}", span(window_s)),
                    },
                    data: obj(json!({ "line": line })),
                }
            };
            self.pass(id, BUILTINS + i, now, n, detail, out);
        }
    }

    fn builtin_log(&mut self, e: &LogEntry, now: Instant, out: &mut Vec<Alert>) {
        let id = e.server_id;
        let (message, exception) = (head(&e.message), head(&e.exception));
        if self.on(CANT_KEEP_UP_SLOT) && message.contains(CANT_KEEP_UP) {
            let c = &self.cfg.cant_keep_up;
            let (count, window_s, min) = (c.count, c.window_s, c.min_behind_ms);
            let (ms, ticks) = builtin::behind(message).unwrap_or((0, 0));
            if ms >= min {
                if let Some(n) = self.hit(id, CANT_KEEP_UP_SLOT, now, window_s, count) {
                    self.pass(
                        id,
                        CANT_KEEP_UP_SLOT,
                        now,
                        n,
                        |server| Detail {
                            message: format!(
                                "'{server}' can't keep up: {ms} ms ({ticks} ticks) behind, {n} times in {}",
                                span(window_s)
                            ),
                            data: obj(json!({ "behind_ms": ms, "behind_ticks": ticks })),
                        },
                        out,
                    );
                }
            }
        }
        if self.on(WATCHDOG_SLOT) && message.contains(WATCHDOG) {
            let took = builtin::tick_took(message);
            self.pass(
                id,
                WATCHDOG_SLOT,
                now,
                1,
                |server| Detail {
                    message: match took {
                        Some(s) => format!(
                            "'{server}': a single server tick took {s:.2} seconds; the watchdog stops the server"
                        ),
                        None => format!("'{server}': {}", quote(message, QUOTE_CHARS)),
                    },
                    data: obj(json!({ "tick_s": took })),
                },
                out,
            );
        }
        if self.on(OUT_OF_MEMORY) {
            if let Some(line) = builtin::oom_line(message, exception) {
                let detail = |server: &str| {
                    let line = quote(line, QUOTE_CHARS);
                    Detail {
                        message: format!("'{server}' ran out of memory: {line}"),
                        data: obj(json!({ "line": line })),
                    }
                };
                self.pass(id, OUT_OF_MEMORY, now, 1, detail, out);
            }
        }
        if self.on(REPEATED_EXCEPTION) && !exception.is_empty() {
            self.repeated_exception(id, exception, now, out);
        }
    }

    fn repeated_exception(&mut self, id: Uuid, exception: &str, now: Instant, out: &mut Vec<Alert>) {
        let (class, frame) = builtin::signature(exception);
        let key = builtin::signature_key(class, frame);
        let c = &self.cfg.repeated_exception;
        let (count, window_s) = (c.count, c.window_s);
        let st = self.state(id, now);
        if !st.exceptions.contains_key(&key) && st.exceptions.len() >= MAX_SIGNATURES {
            if let Some(oldest) = st.exceptions.iter().min_by_key(|(_, w)| w.last()).map(|(k, _)| *k) {
                st.exceptions.remove(&oldest);
            }
        }
        let Some(n) = st.exceptions.entry(key).or_default().hit(now, secs(window_s), count) else { return };
        let detail = |server: &str| {
            let (class, frame) = (quote(class, QUOTE_CHARS), quote(frame, QUOTE_CHARS));
            Detail {
                message: format!("'{server}': {class} {n} times in {} ({frame})", span(window_s)),
                data: obj(json!({ "exception": class, "frame": frame })),
            }
        };
        self.pass(id, REPEATED_EXCEPTION, now, n, detail, out);
    }

    fn on_status(&mut self, s: &StatusChange, now: Instant, out: &mut Vec<Alert>) {
        let id = s.server_id;
        let st = self.state(id, now);
        if !s.server_name.is_empty() {
            let name = quote(&s.server_name, NAME_CHARS);
            if st.name.as_deref() != Some(&name) {
                st.name = Some(name);
            }
        }
        st.status = Some(s.new_status);
        if s.new_status != Status::Running {
            st.tps_low_since = None;
            st.players = None;
        }
        let crash = s.new_status == Status::Crashed && !matches!(s.old_status, Status::Unknown | Status::Crashed);
        if !crash || !self.on(CRASH_LOOP) || self.stale(s.timestamp) {
            return;
        }
        let (crashes, window_s) = (self.cfg.crash_loop.crashes, self.cfg.crash_loop.window_s);
        let Some(n) = self.hit(id, CRASH_LOOP, now, window_s, crashes) else { return };
        self.pass(
            id,
            CRASH_LOOP,
            now,
            n,
            |server| Detail {
                message: format!("'{server}' crashed {n} times in {}", span(window_s)),
                data: obj(json!({ "crashes": n, "window_s": window_s })),
            },
            out,
        );
    }

    fn on_metrics(&mut self, m: &Metrics, now: Instant, out: &mut Vec<Alert>) {
        let id = m.server_id;
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        let (low, disconnect, growth) = (&self.cfg.low_tps, &self.cfg.mass_disconnect, &self.cfg.memory_growth);
        let (floor, for_s, min_players) = (low.floor, low.for_s, disconnect.min_players);
        let growth_cfg = growth.clone();
        let (tps_on, players_on, memory_on) = (self.on(LOW_TPS), self.on(MASS_DISCONNECT), self.on(MEMORY_GROWTH));
        let st = self.state(id, now);
        let running = st.running();
        let mut low_for = None;
        match m.tps {
            Some(tps) if tps < floor && running && tps_on => {
                let since = *st.tps_low_since.get_or_insert(now);
                let lasted = now.saturating_duration_since(since);
                if lasted >= secs(for_s) {
                    low_for = Some((tps, lasted.as_secs()));
                }
            }
            _ => st.tps_low_since = None,
        }
        let before = st.players.replace(m.players_online);
        let dropped = before.filter(|b| players_on && running && *b >= min_players as i32 && m.players_online == 0);
        let grew = match memory_on {
            true => st.memory.add(t, m.memory_used, m.memory_total, m.uptime_seconds, &growth_cfg),
            false => None,
        };
        if let Some((tps, lasted)) = low_for {
            self.pass(
                id,
                LOW_TPS,
                now,
                1,
                |server| Detail {
                    message: format!("'{server}': TPS {tps:.1} below {floor} for {}", span(lasted)),
                    data: obj(json!({ "tps": tps, "floor": floor, "for_s": lasted })),
                },
                out,
            );
        }
        if let Some(before) = dropped {
            self.pass(
                id,
                MASS_DISCONNECT,
                now,
                1,
                |server| Detail {
                    message: format!("'{server}': all {before} players disconnected at once while it kept running"),
                    data: obj(json!({ "players_before": before })),
                },
                out,
            );
        }
        if let Some(g) = grew {
            let full = g.hours_to_full.map(|h| format!(", full in ~{h:.0} hours")).unwrap_or_default();
            self.pass(
                id,
                MEMORY_GROWTH,
                now,
                1,
                |server| Detail {
                    message: format!(
                        "'{server}': RAM +{:.0} MB/h{full} (linear over the last {}, now {} MB)",
                        g.mb_per_hour,
                        span(g.span_s),
                        g.used / 1_000_000
                    ),
                    data: obj(json!({
                        "mb_per_hour": (g.mb_per_hour * 10.0).round() / 10.0,
                        "r2": (g.r2 * 1000.0).round() / 1000.0,
                        "memory_used": g.used,
                        "memory_total": g.total,
                        "hours_to_full": g.hours_to_full.map(|h| (h * 10.0).round() / 10.0),
                    })),
                },
                out,
            );
        }
    }
}

/// An object literal's map.
fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

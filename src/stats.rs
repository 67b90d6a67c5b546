//! What `/api/v1/stats` (JSON) and `/metrics` (Prometheus text) show
//! (PROTOCOL.md section 9): the hub's counters, subscriptions, history
//! sizes, the on-disk store's figures and each agent's link state.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::app::App;

/// The `/api/v1/stats` document.
pub fn json(app: &App) -> Value {
    let hub = &app.hub;
    let subscriptions: serde_json::Map<String, Value> =
        hub.subscriptions().map(|(name, n)| (name.to_string(), json!(n))).collect();
    let (entries, bytes) = hub.history_size();
    let c = hub.counters;
    json!({
        "clients": hub.sessions(),
        "connections": app.connections,
        "channels": subscriptions.len(),
        "channels_kept": hub.channels_kept(),
        "queued_bytes": hub.queued_bytes(),
        "subscriptions": subscriptions,
        "messages": { "in": c.messages_in, "out": c.messages_out, "dropped": c.messages_dropped },
        "agents": app.agents.iter().map(|a| json!({
            "id": a.id,
            "address": a.address,
            "connected": a.connected,
            "since": a.since.map(|t| t.to_string()),
            "last_error": a.last_error,
            "streams": a.streams,
            "refused": a.refused,
        })).collect::<Vec<_>>(),
        "history": { "entries": entries, "bytes": bytes, "disk": hub.store_stats().map(|d| json!({
            "entries": d.stored_entries,
            "bytes": d.stored_bytes,
            "pending": d.pending,
            "write_errors": d.write_errors,
            "dropped": d.dropped,
            "failing": d.failing,
            "last_error": d.last_error,
        })) },
        "proxied": {
            "forwarded_for_fallbacks": app.proxied.forwarded_fallbacks,
            "proxy_headers_refused": app.proxied.headers_refused,
        },
        "alerts": app.alerts.stats(),
        "epoch": hub.epoch(),
        "uptime_seconds": app.started.elapsed().as_secs(),
    })
}

/// One metric: name, type, help, value.
type Metric<'a> = (&'a str, &'a str, &'a str, u64);

fn write_metrics(out: &mut String, metrics: &[Metric<'_>]) {
    for (name, kind, help, value) in metrics {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    }
}

/// The `/metrics` text.
pub fn prometheus(app: &App) -> String {
    let hub = &app.hub;
    let (entries, bytes) = hub.history_size();
    let c = hub.counters;
    let subscriptions: usize = hub.subscriptions().map(|(_, n)| n).sum();
    let mut out = String::new();
    write_metrics(
        &mut out,
        &[
            ("aymc_clients", "gauge", "Connected WebSocket clients.", hub.sessions() as u64),
            ("aymc_connections", "gauge", "Open TCP connections.", app.connections as u64),
            ("aymc_subscriptions", "gauge", "Channel subscriptions of all clients.", subscriptions as u64),
            ("aymc_queued_bytes", "gauge", "Bytes queued for clients, not yet written.", hub.queued_bytes() as u64),
            ("aymc_messages_in_total", "counter", "Messages published.", c.messages_in),
            ("aymc_messages_out_total", "counter", "Message copies queued to clients.", c.messages_out),
            ("aymc_messages_dropped_total", "counter", "Message copies dropped for slow clients.", c.messages_dropped),
            (
                "aymc_channels_kept",
                "gauge",
                "Channels kept (with subscribers, a seq or a latest value).",
                hub.channels_kept() as u64,
            ),
            ("aymc_history_entries", "gauge", "Log and metrics messages kept in memory.", entries as u64),
            ("aymc_history_bytes", "gauge", "Bytes of log and metrics messages kept in memory.", bytes as u64),
            (
                "aymc_forwarded_for_fallbacks_total",
                "counter",
                "Request heads from a trusted proxy whose last X-Forwarded-For entry was no address.",
                app.proxied.forwarded_fallbacks,
            ),
            (
                "aymc_proxy_headers_refused_total",
                "counter",
                "Connections from a trusted proxy closed for a missing or bad PROXY header.",
                app.proxied.headers_refused,
            ),
            ("aymc_uptime_seconds", "gauge", "Seconds since the hub started.", app.started.elapsed().as_secs()),
        ],
    );
    if let Some(d) = hub.store_stats() {
        write_metrics(
            &mut out,
            &[
                ("aymc_history_disk_entries", "gauge", "Log lines stored on disk.", d.stored_entries),
                ("aymc_history_disk_bytes", "gauge", "Bytes of log lines stored on disk.", d.stored_bytes),
                ("aymc_history_disk_pending", "gauge", "Log lines waiting for the disk.", d.pending),
                ("aymc_history_disk_write_errors_total", "counter", "Failed disk writes.", d.write_errors),
                ("aymc_history_disk_dropped_total", "counter", "Log lines never written to disk.", d.dropped),
                ("aymc_history_disk_failing", "gauge", "Whether disk writes fail now.", u64::from(d.failing)),
            ],
        );
    }
    out.push_str("# HELP aymc_agent_up Whether the agent answers (1) or not (0).\n# TYPE aymc_agent_up gauge\n");
    for a in &app.agents {
        let _ = writeln!(
            out,
            "aymc_agent_up{{agent=\"{}\",address=\"{}\"}} {}",
            a.id,
            a.address.replace(['"', '\\', '\n'], "_"),
            u8::from(a.connected)
        );
    }
    out.push_str(
        "# HELP aymc_agent_refused_total Servers an agent listed that another agent runs (refused, per listing).\n\
         # TYPE aymc_agent_refused_total counter\n",
    );
    for a in &app.agents {
        let _ = writeln!(out, "aymc_agent_refused_total{{agent=\"{}\"}} {}", a.id, a.refused);
    }
    app.alerts.write_prometheus(&mut out);
    out
}

//! The body a webhook posts for an alert: a Discord embed, a Slack
//! attachment, or the alert's envelope as WebSocket clients get it. Text
//! from log lines is cut to the services' limits, and nothing in it can
//! ping anyone (Discord's `allowed_mentions` is empty; Slack's `<`, `>`
//! and `&` are escaped).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use serde_json::{json, Value};

use super::builtin::quote;
use super::config::WebhookKind;
use crate::protocol::{Alert, Publish, Severity, Time};

/// The severity as the wire writes it.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
        Severity::Critical => "critical",
    }
}

fn color(s: Severity) -> u32 {
    match s {
        Severity::Info => 0x3498db,
        Severity::Warning => 0xf1c40f,
        Severity::Error => 0xe67e22,
        Severity::Critical => 0xe74c3c,
    }
}

/// The fields both chat services show: server, rule, count.
fn fields(alert: &Alert, server: Option<&str>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(id) = alert.source_id {
        out.push(("Server", server.map_or_else(|| id.to_string(), str::to_string)));
    }
    let data = alert.data.as_ref();
    if let Some(rule) = data.and_then(|d| d.get("rule")).and_then(Value::as_str) {
        out.push(("Rule", rule.to_string()));
    }
    if let Some(count) = data.and_then(|d| d.get("count")).and_then(Value::as_u64) {
        out.push(("Count", count.to_string()));
    }
    out
}

/// Slack's escaping of `&`, `<`, `>` (which would otherwise make links
/// and `<!channel>` mentions out of log text).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The JSON body for `kind`. `server` is the server's display name.
pub fn render(kind: WebhookKind, alert: &Alert, server: Option<&str>) -> Vec<u8> {
    let ts = alert.timestamp.unwrap_or_else(Time::now);
    let severity = severity_name(alert.severity);
    let body = match kind {
        WebhookKind::Json => return Publish::Alert(alert.clone()).encode(ts, None),
        WebhookKind::Discord => json!({
            "username": "aymc-hub",
            "allowed_mentions": { "parse": [] },
            "embeds": [{
                "title": quote(&alert.title, 250),
                "description": quote(&alert.message, 4000),
                "color": color(alert.severity),
                "timestamp": ts,
                "fields": fields(alert, server).into_iter().map(|(name, value)| json!({
                    "name": name, "value": quote(&value, 1000), "inline": true,
                })).collect::<Vec<_>>(),
                "footer": { "text": format!("{severity} · aymc-hub") },
            }],
        }),
        WebhookKind::Slack => json!({
            "text": slack_escape(&format!("[{severity}] {}: {}", quote(&alert.title, 250), quote(&alert.message, 3000))),
            "attachments": [{
                "color": format!("#{:06x}", color(alert.severity)),
                "title": slack_escape(&quote(&alert.title, 250)),
                "text": slack_escape(&quote(&alert.message, 3000)),
                "fields": fields(alert, server).into_iter().map(|(title, value)| json!({
                    "title": title, "value": slack_escape(&quote(&value, 1000)), "short": true,
                })).collect::<Vec<_>>(),
                "ts": ts.0.timestamp(),
            }],
        }),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AlertSource;
    use uuid::Uuid;

    fn alert() -> Alert {
        let mut data = serde_json::Map::new();
        data.insert("rule".into(), json!("crash_loop"));
        data.insert("count".into(), json!(3));
        Alert {
            id: Some(Uuid::nil()),
            severity: Severity::Critical,
            title: "Crash loop".into(),
            message: "'Survival' crashed 3 times in 10 min <@everyone> & <!channel>".into(),
            source: AlertSource::Server,
            source_id: Some(Uuid::nil()),
            timestamp: Time::from_unix_ms(1_764_000_000_000),
            data: Some(data),
        }
    }

    #[test]
    fn discord_gets_an_embed_that_pings_nobody() {
        let v: Value = serde_json::from_slice(&render(WebhookKind::Discord, &alert(), Some("Survival"))).unwrap();
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        let e = &v["embeds"][0];
        assert_eq!(e["title"], "Crash loop");
        assert_eq!(e["color"], 0xe74c3c);
        assert_eq!(e["fields"][0], json!({"name": "Server", "value": "Survival", "inline": true}));
        assert_eq!(e["fields"][1]["value"], "crash_loop");
        assert_eq!(e["fields"][2]["value"], "3");
        assert_eq!(e["timestamp"], "2025-11-24T16:00:00.000Z");
    }

    #[test]
    fn slack_text_is_escaped() {
        let v: Value = serde_json::from_slice(&render(WebhookKind::Slack, &alert(), None)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("[critical] Crash loop: "), "{text}");
        assert!(text.contains("&lt;!channel&gt;") && text.contains("&amp;") && !text.contains("<!"), "{text}");
        assert_eq!(v["attachments"][0]["fields"][0]["value"], Uuid::nil().to_string());
    }

    #[test]
    fn json_is_the_envelope_clients_get() {
        let v: Value = serde_json::from_slice(&render(WebhookKind::Json, &alert(), None)).unwrap();
        assert_eq!(v["type"], "alert");
        assert_eq!(v["data"]["data"]["rule"], "crash_loop");
        assert_eq!(v["data"]["severity"], "critical");
        assert!(v.get("channel").is_none() && v.get("seq").is_none());
    }
}

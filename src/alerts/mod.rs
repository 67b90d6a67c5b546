//! Smart alerts: rules evaluated on the reactor thread as log lines,
//! status changes and metrics are published, each raising an `alert` with
//! `data.rule` and `data.count`, at most one per rule and server per
//! cool-down ([`engine`]); and webhooks that post alerts to Discord, Slack
//! or any JSON endpoint from their own threads ([`webhook`]).
//!
//! [`Alerts`] is what the [`App`](crate::app::App) holds: `observe` is
//! called with every message before the hub publishes it and returns the
//! alerts to publish after it; `tick` (from the reactor's timer) returns
//! the follow-up alerts of cool-downs that ended. Alerts are routed as
//! every alert is (PROTOCOL.md 5.3): `source` `server`, to whoever may
//! watch the server. Touches no socket and never blocks, but for
//! `finish` when the hub stops.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod builtin;
pub mod config;
mod engine;
mod gate;
mod payload;
mod rules;
#[cfg(test)]
mod tests;
mod webhook;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use config::AlertsConfig;
use engine::Engine;
use webhook::Webhooks;

use crate::protocol::{Alert, AlertSource, Publish};

/// How long webhooks may take, once the hub stops, to post the alerts they
/// still hold.
pub const WEBHOOK_GRACE: Duration = Duration::from_secs(5);

/// The rules engine and the webhooks. See the module docs.
pub struct Alerts {
    cfg: AlertsConfig,
    engine: Engine,
    webhooks: Webhooks,
}

impl Alerts {
    /// The engine for a validated configuration, and a thread per webhook.
    pub fn new(cfg: &AlertsConfig) -> Alerts {
        let webhooks = match cfg.enabled {
            true => Webhooks::start(&cfg.webhooks, cfg.webhook_queue),
            false => Webhooks::default(),
        };
        Alerts { cfg: cfg.clone(), engine: Engine::new(cfg, Instant::now()), webhooks }
    }

    /// Evaluates a message about to be published (alerts: stamped
    /// already) and hands alerts to the webhooks. Returns the alerts the
    /// rules raise, to publish after the message.
    pub fn observe(&mut self, msg: &Publish, now: Instant) -> Vec<Alert> {
        let raised = self.engine.observe(msg, now);
        if let Publish::Alert(alert) = msg {
            self.notify(alert, false, now);
        }
        for alert in &raised {
            self.notify(alert, true, now);
        }
        raised
    }

    /// Follow-up alerts of cool-downs that ended (run from the timer).
    pub fn tick(&mut self, now: Instant) -> Vec<Alert> {
        let raised = self.engine.tick(now);
        for alert in &raised {
            self.notify(alert, true, now);
        }
        raised
    }

    /// Hands an alert to the webhooks; `by_rule`: a rule raised it (its
    /// `data.rule` names the rule), else it came from elsewhere.
    fn notify(&mut self, alert: &Alert, by_rule: bool, now: Instant) {
        let server = match (alert.source, alert.source_id) {
            (AlertSource::Server, Some(id)) => self.engine.server_name(id),
            _ => None,
        };
        let rule = alert.data.as_ref().and_then(|d| d.get("rule")).and_then(Value::as_str).filter(|_| by_rule);
        self.webhooks.offer(alert, rule, server, now);
    }

    /// The hub is stopping: the webhooks post what they hold for at most
    /// [`WEBHOOK_GRACE`].
    pub fn finish(&mut self) {
        self.webhooks.finish(WEBHOOK_GRACE);
    }

    /// Takes a reloaded `[alerts]` (SIGHUP). Returns whether it changed.
    /// Rules whose configuration is unchanged keep their windows and
    /// cool-downs; unchanged webhooks keep their thread and counters.
    pub fn reload(&mut self, cfg: &AlertsConfig) -> bool {
        if format!("{:?}", self.cfg) == format!("{cfg:?}") {
            return false;
        }
        self.engine.reload(cfg, Instant::now());
        let hooks: &[config::WebhookConfig] = if cfg.enabled { &cfg.webhooks } else { &[] };
        self.webhooks.reload(hooks, cfg.webhook_queue);
        self.cfg = cfg.clone();
        true
    }

    /// The `alerts` object of `/api/v1/stats`.
    pub fn stats(&self) -> Value {
        let rules: serde_json::Map<String, Value> = self
            .engine
            .stats()
            .map(|(name, raised, suppressed)| (name.to_string(), json!({ "raised": raised, "suppressed": suppressed })))
            .collect();
        json!({
            "enabled": self.cfg.enabled,
            "servers": self.engine.servers(),
            "rules": rules,
            "webhooks": self.webhooks.stats(),
        })
    }

    /// The alert and webhook counters in Prometheus text.
    pub fn write_prometheus(&self, out: &mut String) {
        out.push_str(
            "# HELP aymc_alerts_raised_total Alerts raised by a rule.\n# TYPE aymc_alerts_raised_total counter\n",
        );
        for (name, raised, _) in self.engine.stats() {
            let _ = writeln!(out, "aymc_alerts_raised_total{{rule=\"{name}\"}} {raised}");
        }
        out.push_str(
            "# HELP aymc_alerts_suppressed_total Occurrences folded into a later alert (cool-down).\n\
             # TYPE aymc_alerts_suppressed_total counter\n",
        );
        for (name, _, suppressed) in self.engine.stats() {
            let _ = writeln!(out, "aymc_alerts_suppressed_total{{rule=\"{name}\"}} {suppressed}");
        }
        type Read = fn(&webhook::Counters) -> u64;
        let series: [(&str, &str, &str, Read); 5] = [
            ("sent_total", "counter", "Alerts a webhook delivered.", |c| c.sent.load(Ordering::SeqCst)),
            ("failed_total", "counter", "Alerts a webhook gave up on.", |c| c.failed.load(Ordering::SeqCst)),
            ("dropped_total", "counter", "Alerts dropped because a webhook's queue was full.", |c| {
                c.dropped.load(Ordering::SeqCst)
            }),
            ("retried_total", "counter", "Webhook attempts repeated.", |c| c.retried.load(Ordering::SeqCst)),
            ("queued", "gauge", "Alerts waiting for a webhook.", |c| c.queued.load(Ordering::SeqCst) as u64),
        ];
        for (suffix, kind, help, read) in series {
            let _ = write!(out, "# HELP aymc_webhook_{suffix} {help}\n# TYPE aymc_webhook_{suffix} {kind}\n");
            for (name, c) in self.webhooks.counters() {
                let _ = writeln!(out, "aymc_webhook_{suffix}{{webhook=\"{name}\"}} {}", read(c));
            }
        }
    }
}

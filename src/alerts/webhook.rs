//! Webhooks: each `[[alerts.webhooks]]` entry gets its own thread and a
//! bounded queue, so the reactor only ever does a `try_send` (a full queue
//! drops the alert for that webhook and counts it) and a slow or hanging
//! endpoint delays nobody else. The thread posts with `ureq` (blocking,
//! rustls), one attempt bounded by `timeout_s` (connect, send and answer
//! together), retries a timeout, a network error, `408`, `429` or `5xx`
//! up to `retries` times with a backoff of 1, 2, 4... s (at most 30 s), or
//! after `Retry-After` (at most 60 s) when a `429` gives one. Redirects are
//! not followed. The URL is a secret: logs and stats name the webhook and
//! its host only, and `ureq`'s errors (which may quote the URL) are
//! reduced to their kind.
//!
//! When the hub stops ([`Webhooks::finish`]), each thread posts what its
//! queue still holds, once each and without retries, for at most a grace
//! period; what is left then is logged as not sent.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::config::WebhookConfig;
use super::payload;
use crate::protocol::{Alert, AlertSource};

/// The longest `Retry-After` honoured; longer ones wait this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A full queue is logged at most this often per webhook (each drop is
/// counted).
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// One webhook's figures (shared with its thread).
#[derive(Debug, Default)]
pub struct Counters {
    /// Alerts delivered (a `2xx` answer).
    pub sent: AtomicU64,
    /// Alerts given up on (attempts used up, or an answer not worth
    /// retrying).
    pub failed: AtomicU64,
    /// Alerts dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Attempts repeated.
    pub retried: AtomicU64,
    /// Alerts waiting in the queue.
    pub queued: AtomicUsize,
    /// The hub is stopping: no more retries or backoff waits.
    stopping: AtomicBool,
}

struct Job {
    alert: Alert,
    server: Option<String>,
}

struct Hook {
    cfg: WebhookConfig,
    /// The configuration and queue size it was started with.
    key: String,
    host: String,
    tx: SyncSender<Job>,
    counters: Arc<Counters>,
    dropped_logged: Option<Instant>,
    thread: JoinHandle<()>,
}

/// The running webhooks. See the module docs.
#[derive(Default)]
pub struct Webhooks {
    hooks: Vec<Hook>,
}

impl Webhooks {
    /// Starts a thread per webhook (one that cannot be started is logged
    /// and left out).
    pub fn start(cfgs: &[WebhookConfig], queue: usize) -> Webhooks {
        let mut hooks = Webhooks::default();
        hooks.reload(cfgs, queue);
        hooks
    }

    /// Takes a reloaded list: webhooks whose configuration did not change
    /// keep their thread, queue and counters; the others' threads finish
    /// what they hold and end.
    pub fn reload(&mut self, cfgs: &[WebhookConfig], queue: usize) {
        let mut old = std::mem::take(&mut self.hooks);
        for cfg in cfgs {
            let key = format!("{cfg:?}/{queue}");
            match old.iter().position(|h| h.key == key) {
                Some(i) => self.hooks.push(old.swap_remove(i)),
                None => {
                    if let Some(hook) = spawn(cfg, key, queue) {
                        self.hooks.push(hook);
                    }
                }
            }
        }
    }

    /// Queues `alert` for every webhook that wants it; never blocks.
    /// `rule`: the rule that raised it (`None`: no rule did, whatever its
    /// `data.rule` says, such as an alert from the publish API).
    pub fn offer(&mut self, alert: &Alert, rule: Option<&str>, server: Option<&str>, now: Instant) {
        for hook in &mut self.hooks {
            if !wants(&hook.cfg, alert, rule) {
                continue;
            }
            let job = Job { alert: alert.clone(), server: server.map(str::to_string) };
            hook.counters.queued.fetch_add(1, Ordering::SeqCst);
            let full = match hook.tx.try_send(job) {
                Ok(()) => continue,
                Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Disconnected(_)) => false,
            };
            hook.counters.queued.fetch_sub(1, Ordering::SeqCst);
            hook.counters.dropped.fetch_add(1, Ordering::SeqCst);
            if hook.dropped_logged.is_none_or(|t| now.saturating_duration_since(t) >= DROP_LOG_EVERY) {
                hook.dropped_logged = Some(now);
                let why = if full { "its queue is full" } else { "its thread has stopped" };
                log::warn!(
                    "webhook '{}' ({}): alert dropped, {why} (dropped so far: {})",
                    hook.cfg.name,
                    hook.host,
                    hook.counters.dropped.load(Ordering::SeqCst)
                );
            }
        }
    }

    /// Per webhook: name, kind, host and counters (for `/api/v1/stats`).
    pub fn stats(&self) -> Vec<Value> {
        self.hooks
            .iter()
            .map(|h| {
                let c = &h.counters;
                json!({
                    "name": h.cfg.name,
                    "kind": format!("{:?}", h.cfg.kind).to_lowercase(),
                    "host": h.host,
                    "sent": c.sent.load(Ordering::SeqCst),
                    "failed": c.failed.load(Ordering::SeqCst),
                    "dropped": c.dropped.load(Ordering::SeqCst),
                    "retried": c.retried.load(Ordering::SeqCst),
                    "queued": c.queued.load(Ordering::SeqCst),
                })
            })
            .collect()
    }

    /// Name and counters of each webhook (for `/metrics`).
    pub fn counters(&self) -> impl Iterator<Item = (&str, &Counters)> {
        self.hooks.iter().map(|h| (h.cfg.name.as_str(), &*h.counters))
    }

    /// The hub is stopping: every thread posts what it holds, once each,
    /// for at most `grace`; what is left then is logged.
    pub fn finish(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let hooks = std::mem::take(&mut self.hooks);
        let mut running = Vec::new();
        for hook in hooks {
            hook.counters.stopping.store(true, Ordering::SeqCst);
            let queued = hook.counters.queued.load(Ordering::SeqCst);
            if queued > 0 {
                log::info!("webhook '{}' ({}): posting the {queued} alerts it holds", hook.cfg.name, hook.host);
            }
            // Dropping the sender ends the thread once its queue is empty.
            let Hook { cfg, host, counters, thread, .. } = hook;
            running.push((cfg.name, host, counters, thread));
        }
        while running.iter().any(|(.., t)| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (name, host, counters, thread) in running {
            if !thread.is_finished() {
                let left = counters.queued.load(Ordering::SeqCst) + 1;
                log::warn!(
                    "webhook '{name}' ({host}): {left} alerts not sent (or still in flight) when the hub stopped"
                );
            }
        }
    }
}

/// Whether a webhook takes an alert: its severity, its server, and the
/// rule that raised it (or, when none did, `other_alerts`).
fn wants(cfg: &WebhookConfig, alert: &Alert, rule: Option<&str>) -> bool {
    if !cfg.severities.contains(&alert.severity) {
        return false;
    }
    let server = (alert.source == AlertSource::Server).then_some(alert.source_id).flatten();
    if !cfg.servers.is_empty() && !server.is_some_and(|s| cfg.servers.contains(&s)) {
        return false;
    }
    match rule {
        Some(rule) => cfg.rules.is_empty() || cfg.rules.iter().any(|r| r == rule),
        None => cfg.other_alerts,
    }
}

fn spawn(cfg: &WebhookConfig, key: String, queue: usize) -> Option<Hook> {
    let (tx, rx) = sync_channel(queue);
    let counters = Arc::new(Counters::default());
    let host = cfg.url.host();
    let (thread_cfg, thread_host, thread_counters) = (cfg.clone(), host.clone(), Arc::clone(&counters));
    let spawned = std::thread::Builder::new()
        .name(format!("webhook-{}", cfg.name))
        .spawn(move || run(&rx, &thread_cfg, &thread_host, &thread_counters));
    match spawned {
        Ok(thread) => {
            log::info!("webhook '{}' ({host}) ready", cfg.name);
            Some(Hook { cfg: cfg.clone(), key, host, tx, counters, dropped_logged: None, thread })
        }
        Err(e) => {
            log::error!("webhook '{}' ({host}): cannot start its thread: {e}; it is off", cfg.name);
            None
        }
    }
}

/// The webhook thread: posts each queued alert until the hub drops the
/// sending end.
fn run(rx: &Receiver<Job>, cfg: &WebhookConfig, host: &str, counters: &Counters) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(cfg.timeout_s)))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("aymc-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    while let Ok(job) = rx.recv() {
        counters.queued.fetch_sub(1, Ordering::SeqCst);
        let body = payload::render(cfg.kind, &job.alert, job.server.as_deref());
        let id = job.alert.id.map(|i| i.to_string()).unwrap_or_default();
        let mut attempt = 0;
        loop {
            match post(&agent, &cfg.url.0, &body) {
                Attempt::Sent => {
                    counters.sent.fetch_add(1, Ordering::SeqCst);
                    log::debug!("webhook '{}' ({host}): alert {id} sent", cfg.name);
                    break;
                }
                Attempt::Retry { why, after } if attempt < cfg.retries && !counters.stopping.load(Ordering::SeqCst) => {
                    let wait = after.unwrap_or_else(|| backoff(attempt));
                    log::info!("webhook '{}' ({host}): {why}; trying alert {id} again in {wait:?}", cfg.name);
                    counters.retried.fetch_add(1, Ordering::SeqCst);
                    attempt += 1;
                    pause(wait, &counters.stopping);
                }
                Attempt::Retry { why, .. } | Attempt::Fail(why) => {
                    counters.failed.fetch_add(1, Ordering::SeqCst);
                    log::warn!(
                        "webhook '{}' ({host}): alert {id} not delivered after {} attempts: {why}",
                        cfg.name,
                        attempt + 1
                    );
                    break;
                }
            }
        }
    }
}

/// Sleeps for `wait`, or less once the hub is stopping (the attempt it
/// waited for is then made at once, and is the last).
fn pause(wait: Duration, stopping: &AtomicBool) {
    let until = Instant::now() + wait;
    while !stopping.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// What one attempt came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Sent,
    Retry { why: String, after: Option<Duration> },
    Fail(String),
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Attempt {
    let answer = agent.post(url).header("Content-Type", "application/json").send(body);
    let response = match answer {
        Ok(r) => r,
        Err(e) => return describe(&e),
    };
    let status = response.status();
    match status.as_u16() {
        200..=299 => Attempt::Sent,
        429 => {
            let after = response.headers().get("retry-after").and_then(|v| v.to_str().ok());
            Attempt::Retry { why: "answered 429".into(), after: after.and_then(|v| retry_after(v, Utc::now())) }
        }
        408 | 500..=599 => Attempt::Retry { why: format!("answered {}", status.as_u16()), after: None },
        code => Attempt::Fail(format!("answered {code}")),
    }
}

/// A `ureq` error as a kind, never its text (which may quote the URL).
fn describe(e: &ureq::Error) -> Attempt {
    let retry = |why: &str| Attempt::Retry { why: why.to_string(), after: None };
    match e {
        ureq::Error::Timeout(_) => retry("timed out"),
        ureq::Error::HostNotFound => retry("host not found"),
        ureq::Error::ConnectionFailed => retry("connection failed"),
        ureq::Error::Io(io) => retry(&format!("network error ({:?})", io.kind())),
        ureq::Error::Protocol(_) => retry("malformed HTTP answer"),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => retry("TLS error"),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            Attempt::Fail("answered a redirect (not followed)".into())
        }
        _ => Attempt::Fail("request failed".into()),
    }
}

/// 1, 2, 4... seconds, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(8)).min(MAX_BACKOFF)
}

/// A `Retry-After` value: seconds (decimals allowed) or an HTTP date, at
/// most [`MAX_RETRY_AFTER`].
fn retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::{SecretUrl, WebhookKind};
    use crate::protocol::Severity;
    use uuid::Uuid;

    fn hook() -> WebhookConfig {
        WebhookConfig {
            name: "ops".into(),
            kind: WebhookKind::Json,
            url: SecretUrl("http://127.0.0.1:9/hook".into()),
            url_file: None,
            severities: vec![Severity::Warning, Severity::Critical],
            servers: Vec::new(),
            rules: Vec::new(),
            other_alerts: false,
            timeout_s: 1,
            retries: 0,
        }
    }

    fn alert(severity: Severity, rule: Option<&str>, server: Uuid) -> Alert {
        Alert {
            id: None,
            severity,
            title: "t".into(),
            message: "m".into(),
            source: AlertSource::Server,
            source_id: Some(server),
            timestamp: None,
            data: rule.map(|r| {
                let mut m = serde_json::Map::new();
                m.insert("rule".into(), json!(r));
                m
            }),
        }
    }

    #[test]
    fn a_webhook_takes_the_severities_servers_and_rules_it_names() {
        let s = Uuid::new_v4();
        let mut cfg = hook();
        let raised = alert(Severity::Warning, Some("crash_loop"), s);
        assert!(wants(&cfg, &raised, Some("crash_loop")));
        assert!(!wants(&cfg, &alert(Severity::Info, Some("crash_loop"), s), Some("crash_loop")));
        // Alerts no rule raised only with other_alerts, whatever their
        // data.rule says (an alert from the publish API may say anything).
        assert!(!wants(&cfg, &alert(Severity::Critical, None, s), None));
        assert!(!wants(&cfg, &raised, None));
        cfg.other_alerts = true;
        assert!(wants(&cfg, &alert(Severity::Critical, None, s), None));
        cfg.rules = vec!["low_tps".into()];
        assert!(!wants(&cfg, &raised, Some("crash_loop")));
        assert!(wants(&cfg, &alert(Severity::Warning, Some("low_tps"), s), Some("low_tps")));
        cfg.servers = vec![Uuid::new_v4()];
        assert!(!wants(&cfg, &alert(Severity::Warning, Some("low_tps"), s), Some("low_tps")));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0.5 ", now), Some(Duration::from_millis(500)));
        assert_eq!(retry_after("3600", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("Fri, 04 Dec 2026 12:00:07 GMT", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("Fri, 04 Dec 2026 11:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("-1", now), None);
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // A listener that never answers: the thread holds the first alert
        // for its whole timeout, the queue (1) the second, the rest drop.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = hook();
        cfg.url = SecretUrl(format!("http://{}/hook", listener.local_addr().unwrap()));
        cfg.timeout_s = 5;
        let mut hooks = Webhooks::start(&[cfg], 1);
        let now = Instant::now();
        let s = Uuid::new_v4();
        let a = alert(Severity::Warning, Some("r"), s);
        hooks.offer(&a, Some("r"), None, now);
        // Wait until the thread has taken the first one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hooks.hooks[0].counters.queued.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..5 {
            hooks.offer(&a, Some("r"), None, now);
        }
        let stats = &hooks.stats()[0];
        assert_eq!(stats["queued"], 1, "{stats}");
        assert_eq!(stats["dropped"], 4, "{stats}");
        assert_eq!(stats["host"], listener.local_addr().unwrap().to_string());
    }
}

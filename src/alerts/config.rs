//! `[alerts]`, `[[alerts.rules]]` and `[[alerts.webhooks]]`: the keys, their
//! defaults and their validation (a bad regex is reported by the rule's
//! name). Compiles nothing it keeps: [`super::rules::UserRules::compile`]
//! is run once here to check, and again when the hub builds its engine.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use serde::Deserialize;
use uuid::Uuid;

use crate::config::ConfigError;
use crate::protocol::{Level, Severity};

/// User rules at most (`[[alerts.rules]]`).
pub const MAX_RULES: usize = 64;
/// Webhooks at most (`[[alerts.webhooks]]`), one thread each.
pub const MAX_WEBHOOKS: usize = 16;
/// A user rule's regex source, bytes at most.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Occurrences a threshold may ask for at most (each rule and server keeps
/// the times of at most this many).
pub const MAX_THRESHOLD: u32 = 100;
/// The longest window or cool-down, seconds (a week).
pub const MAX_WINDOW_S: u64 = 7 * 86_400;
/// Names of the built-in rules, as `data.rule` carries them.
pub const BUILTIN_NAMES: [&str; 8] = [
    "crash_loop",
    "repeated_exception",
    "cant_keep_up",
    "out_of_memory",
    "watchdog",
    "low_tps",
    "memory_growth",
    "mass_disconnect",
];

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

fn check_range<T: PartialOrd + fmt::Display>(key: &str, v: T, min: T, max: T) -> Result<(), ConfigError> {
    if v >= min && v <= max {
        return Ok(());
    }
    err(format!("{key} must be from {min} to {max}; got {v}"))
}

/// Declares a built-in rule's table: `enabled`, `severity`, `cooldown_s`
/// and the rule's own keys, with their defaults.
macro_rules! builtin {
    ($(#[$doc:meta])* $name:ident, $severity:expr, $cooldown:expr, { $($(#[$fdoc:meta])* $field:ident : $ty:ty = $default:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// The rule runs.
            pub enabled: bool,
            /// The alert's severity.
            pub severity: Severity,
            /// After an alert, further occurrences on the same server are
            /// counted into the next one instead, for this long (seconds).
            pub cooldown_s: u64,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { enabled: true, severity: $severity, cooldown_s: $cooldown, $($field: $default,)* }
            }
        }
    };
}

builtin!(
    /// `[alerts.crash_loop]`: `crashes` crashes (status changes to
    /// `crashed`) within `window_s`.
    CrashLoop, Severity::Critical, 1800, {
        /// Crashes that make a loop.
        crashes: u32 = 3,
        /// Within this many seconds.
        window_s: u64 = 600,
    }
);

builtin!(
    /// `[alerts.repeated_exception]`: the same exception (class and first
    /// frame) `count` times within `window_s`.
    RepeatedException, Severity::Error, 900, {
        /// Occurrences of one exception.
        count: u32 = 5,
        /// Within this many seconds.
        window_s: u64 = 300,
    }
);

builtin!(
    /// `[alerts.cant_keep_up]`: `Can't keep up!` lines reporting at least
    /// `min_behind_ms`, `count` times within `window_s`.
    CantKeepUp, Severity::Warning, 900, {
        /// Lines that count.
        count: u32 = 3,
        /// Within this many seconds.
        window_s: u64 = 300,
        /// Lines reporting less lag are ignored.
        min_behind_ms: u64 = 0,
    }
);

builtin!(
    /// `[alerts.out_of_memory]`: a `java.lang.OutOfMemoryError` in a line
    /// or its stack trace.
    OutOfMemory, Severity::Critical, 600, {}
);

builtin!(
    /// `[alerts.watchdog]`: `A single server tick took` (the watchdog
    /// stops the server).
    Watchdog, Severity::Critical, 600, {}
);

builtin!(
    /// `[alerts.low_tps]`: measured TPS below `floor` for `for_s` seconds.
    LowTps, Severity::Warning, 900, {
        /// TPS under this is low.
        floor: f64 = 15.0,
        /// For at least this many seconds.
        for_s: u64 = 120,
    }
);

builtin!(
    /// `[alerts.memory_growth]`: a linear fit of the memory used over the
    /// last `window_s` rises by at least `min_mb_per_hour` with r² of at
    /// least `min_r2`.
    MemoryGrowth, Severity::Warning, 3600, {
        /// The span fitted, seconds.
        window_s: u64 = 3600,
        /// Samples must cover at least this many seconds.
        min_span_s: u64 = 1800,
        /// Growth that counts, MB (10^6 bytes) per hour.
        min_mb_per_hour: f64 = 100.0,
        /// How straight the line must be (coefficient of determination).
        min_r2: f64 = 0.8,
    }
);

builtin!(
    /// `[alerts.mass_disconnect]`: players online fall from at least
    /// `min_players` to 0 between two samples while the server runs.
    MassDisconnect, Severity::Warning, 600, {
        /// Players before the drop.
        min_players: u32 = 5,
    }
);

/// `[[alerts.rules]]`: a user rule on log lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRule {
    /// `data.rule`; unique, not a built-in rule's name.
    pub name: String,
    /// The alert's title (default: the name).
    #[serde(default)]
    pub title: Option<String>,
    /// A regex the line's message must match.
    #[serde(default)]
    pub message: Option<String>,
    /// A regex the line's folded stack trace must match.
    #[serde(default)]
    pub exception: Option<String>,
    /// Lines of this level or more severe (default: all).
    #[serde(default = "lowest_level")]
    pub level: Level,
    /// Only these servers (empty: all).
    #[serde(default)]
    pub servers: Vec<Uuid>,
    /// Matching lines that raise the alert...
    #[serde(default = "one")]
    pub threshold: u32,
    /// ...within this many seconds.
    #[serde(default = "sixty")]
    pub window_s: u64,
    /// The alert's severity.
    #[serde(default = "warning")]
    pub severity: Severity,
    /// Seconds during which further matches are counted, not alerted.
    #[serde(default = "five_minutes")]
    pub cooldown_s: u64,
}

fn lowest_level() -> Level {
    Level::Debug
}
fn one() -> u32 {
    1
}
fn sixty() -> u64 {
    60
}
fn warning() -> Severity {
    Severity::Warning
}
fn five_minutes() -> u64 {
    300
}

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookKind {
    /// A Discord webhook (`embeds`).
    Discord,
    /// A Slack incoming webhook (`text` and an attachment).
    Slack,
    /// The alert's envelope as WebSocket clients get it.
    Json,
}

/// A webhook URL: a secret. Its `Debug` shows the host and a fingerprint,
/// never the URL (so a changed URL still shows as a change on reload).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl SecretUrl {
    /// `host[:port]`, what logs and stats name the webhook by.
    pub fn host(&self) -> String {
        match self.0.parse::<ureq::http::Uri>() {
            Ok(uri) => match (uri.host(), uri.port_u16()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => "?".into(),
            },
            Err(_) => "?".into(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        write!(f, "SecretUrl({}, #{:016x})", self.host(), h.finish())
    }
}

/// `[[alerts.webhooks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// How logs and stats name it; unique.
    pub name: String,
    /// `discord`, `slack` or `json`.
    pub kind: WebhookKind,
    /// The URL (a secret; or `url_file`).
    #[serde(default)]
    pub url: SecretUrl,
    /// A file holding the URL (one trailing newline stripped). After
    /// [`AlertsConfig::resolve_files`], `url` holds its content.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Alerts of these severities (default: warning, error, critical).
    #[serde(default = "default_severities")]
    pub severities: Vec<Severity>,
    /// Only these servers' alerts (empty: all).
    #[serde(default)]
    pub servers: Vec<Uuid>,
    /// Only these rules' alerts (empty: every rule).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Also alerts no rule raised (`Server Crashed`, `Agent unreachable`,
    /// published ones); these are not deduplicated.
    #[serde(default)]
    pub other_alerts: bool,
    /// One attempt's budget, seconds: connecting, sending and the answer.
    #[serde(default = "ten")]
    pub timeout_s: u64,
    /// Attempts after the first on a timeout, a network error, `429` or
    /// `5xx`.
    #[serde(default = "three")]
    pub retries: u32,
}

fn default_severities() -> Vec<Severity> {
    vec![Severity::Warning, Severity::Error, Severity::Critical]
}
fn ten() -> u64 {
    10
}
fn three() -> u32 {
    3
}

/// `[alerts]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Every rule (built-in and user) runs; webhooks send.
    pub enabled: bool,
    /// Log lines and status changes older than this by their own
    /// timestamp are not evaluated (lines an agent sends again after a
    /// reconnect); 0 = off.
    pub max_age_s: u64,
    /// Alerts waiting for each webhook at most; more are dropped and
    /// counted.
    pub webhook_queue: usize,
    /// `[alerts.crash_loop]`
    pub crash_loop: CrashLoop,
    /// `[alerts.repeated_exception]`
    pub repeated_exception: RepeatedException,
    /// `[alerts.cant_keep_up]`
    pub cant_keep_up: CantKeepUp,
    /// `[alerts.out_of_memory]`
    pub out_of_memory: OutOfMemory,
    /// `[alerts.watchdog]`
    pub watchdog: Watchdog,
    /// `[alerts.low_tps]`
    pub low_tps: LowTps,
    /// `[alerts.memory_growth]`
    pub memory_growth: MemoryGrowth,
    /// `[alerts.mass_disconnect]`
    pub mass_disconnect: MassDisconnect,
    /// `[[alerts.rules]]`
    pub rules: Vec<UserRule>,
    /// `[[alerts.webhooks]]`
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            max_age_s: 300,
            webhook_queue: 64,
            crash_loop: CrashLoop::default(),
            repeated_exception: RepeatedException::default(),
            cant_keep_up: CantKeepUp::default(),
            out_of_memory: OutOfMemory::default(),
            watchdog: Watchdog::default(),
            low_tps: LowTps::default(),
            memory_growth: MemoryGrowth::default(),
            mass_disconnect: MassDisconnect::default(),
            rules: Vec::new(),
            webhooks: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// Reads each webhook's `url_file` into its `url`.
    ///
    /// # Errors
    /// Both `url` and `url_file` set; an unreadable or empty file.
    pub fn resolve_files(&mut self) -> Result<(), ConfigError> {
        for hook in &mut self.webhooks {
            let Some(path) = &hook.url_file else { continue };
            if !hook.url.0.is_empty() {
                return err(format!("alerts.webhooks '{}': url and url_file are both set; use one", hook.name));
            }
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("alerts.webhooks '{}': url_file {}: {e}", hook.name, path.display()))
            })?;
            let url = text.trim();
            if url.is_empty() {
                return err(format!("alerts.webhooks '{}': url_file {} is empty", hook.name, path.display()));
            }
            hook.url = SecretUrl(url.to_string());
        }
        Ok(())
    }

    /// Checks ranges, names, regexes (by rule name) and URLs (by webhook
    /// name, never printing the URL).
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("alerts.max_age_s", self.max_age_s, 0, MAX_WINDOW_S)?;
        check_range("alerts.webhook_queue", self.webhook_queue, 1, 100_000)?;
        self.validate_builtins()?;
        if self.rules.len() > MAX_RULES {
            return err(format!("alerts.rules: {} rules; at most {MAX_RULES}", self.rules.len()));
        }
        let mut names = HashSet::new();
        for rule in &self.rules {
            let key = format!("alerts.rules '{}'", rule.name);
            check_name(&key, &rule.name)?;
            if BUILTIN_NAMES.contains(&rule.name.as_str()) {
                return err(format!("{key}: the name of a built-in rule; pick another"));
            }
            if !names.insert(rule.name.as_str()) {
                return err(format!("{key}: the name appears twice"));
            }
            check_range(&format!("{key}: threshold"), rule.threshold, 1, MAX_THRESHOLD)?;
            check_range(&format!("{key}: window_s"), rule.window_s, 1, MAX_WINDOW_S)?;
            check_range(&format!("{key}: cooldown_s"), rule.cooldown_s, 0, MAX_WINDOW_S)?;
        }
        super::rules::UserRules::compile(&self.rules)?;
        self.validate_webhooks()
    }

    fn validate_builtins(&self) -> Result<(), ConfigError> {
        let cooldowns = [
            ("crash_loop", self.crash_loop.cooldown_s),
            ("repeated_exception", self.repeated_exception.cooldown_s),
            ("cant_keep_up", self.cant_keep_up.cooldown_s),
            ("out_of_memory", self.out_of_memory.cooldown_s),
            ("watchdog", self.watchdog.cooldown_s),
            ("low_tps", self.low_tps.cooldown_s),
            ("memory_growth", self.memory_growth.cooldown_s),
            ("mass_disconnect", self.mass_disconnect.cooldown_s),
        ];
        for (name, cooldown) in cooldowns {
            check_range(&format!("alerts.{name}.cooldown_s"), cooldown, 0, MAX_WINDOW_S)?;
        }
        let (c, e, k, t, m) =
            (&self.crash_loop, &self.repeated_exception, &self.cant_keep_up, &self.low_tps, &self.memory_growth);
        check_range("alerts.crash_loop.crashes", c.crashes, 1, MAX_THRESHOLD)?;
        check_range("alerts.crash_loop.window_s", c.window_s, 1, MAX_WINDOW_S)?;
        check_range("alerts.repeated_exception.count", e.count, 1, MAX_THRESHOLD)?;
        check_range("alerts.repeated_exception.window_s", e.window_s, 1, MAX_WINDOW_S)?;
        check_range("alerts.cant_keep_up.count", k.count, 1, MAX_THRESHOLD)?;
        check_range("alerts.cant_keep_up.window_s", k.window_s, 1, MAX_WINDOW_S)?;
        check_range("alerts.cant_keep_up.min_behind_ms", k.min_behind_ms, 0, 86_400_000)?;
        check_range("alerts.low_tps.floor", t.floor, 0.0, 20.0)?;
        check_range("alerts.low_tps.for_s", t.for_s, 0, MAX_WINDOW_S)?;
        check_range("alerts.memory_growth.window_s", m.window_s, 60, 86_400)?;
        check_range("alerts.memory_growth.min_span_s", m.min_span_s, 60, m.window_s)?;
        check_range("alerts.memory_growth.min_mb_per_hour", m.min_mb_per_hour, 0.001, 1e9)?;
        check_range("alerts.memory_growth.min_r2", m.min_r2, 0.0, 1.0)?;
        check_range("alerts.mass_disconnect.min_players", self.mass_disconnect.min_players, 1, 1_000_000)
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        if self.webhooks.len() > MAX_WEBHOOKS {
            return err(format!("alerts.webhooks: {} webhooks; at most {MAX_WEBHOOKS}", self.webhooks.len()));
        }
        let mut names = HashSet::new();
        for hook in &self.webhooks {
            let key = format!("alerts.webhooks '{}'", hook.name);
            check_name(&key, &hook.name)?;
            if !names.insert(hook.name.as_str()) {
                return err(format!("{key}: the name appears twice"));
            }
            let url = &hook.url.0;
            if url.is_empty() {
                return err(format!("{key}: set url or url_file"));
            }
            let ok = url.parse::<ureq::http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
            });
            if !ok {
                // Never the URL itself: it is a secret.
                return err(format!("{key}: url is not an http:// or https:// URL with a host"));
            }
            if hook.severities.is_empty() {
                return err(format!("{key}: severities is empty, so it would never send"));
            }
            for rule in &hook.rules {
                if !BUILTIN_NAMES.contains(&rule.as_str()) && !self.rules.iter().any(|r| &r.name == rule) {
                    return err(format!("{key}: rules names '{rule}', which is no built-in or [[alerts.rules]] rule"));
                }
            }
            check_range(&format!("{key}: timeout_s"), hook.timeout_s, 1, 300)?;
            check_range(&format!("{key}: retries"), hook.retries, 0, 10)?;
        }
        Ok(())
    }
}

/// A rule or webhook name: 1 to 64 letters, digits, `_`, `-`, `.`.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        return Ok(());
    }
    err(format!("{key}: a name is 1 to 64 letters, digits, '_', '-' or '.'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> UserRule {
        UserRule {
            name: name.into(),
            title: None,
            message: Some("x".into()),
            exception: None,
            level: Level::Debug,
            servers: Vec::new(),
            threshold: 1,
            window_s: 60,
            severity: Severity::Warning,
            cooldown_s: 0,
        }
    }

    fn hook(name: &str, url: &str) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            kind: WebhookKind::Json,
            url: SecretUrl(url.into()),
            url_file: None,
            severities: default_severities(),
            servers: Vec::new(),
            rules: Vec::new(),
            other_alerts: false,
            timeout_s: 10,
            retries: 3,
        }
    }

    fn error(cfg: &AlertsConfig) -> String {
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn rule_names_are_unique_and_not_built_in_and_their_count_is_bounded() {
        let mut cfg = AlertsConfig { rules: vec![rule("a"), rule("a")], ..AlertsConfig::default() };
        assert_eq!(error(&cfg), "alerts.rules 'a': the name appears twice");
        cfg.rules = vec![rule("crash_loop")];
        assert!(error(&cfg).contains("the name of a built-in rule"));
        cfg.rules = vec![rule("bad name")];
        assert!(error(&cfg).contains("a name is 1 to 64 letters"));
        cfg.rules = (0..=MAX_RULES).map(|i| rule(&format!("r{i}"))).collect();
        assert_eq!(error(&cfg), "alerts.rules: 65 rules; at most 64");
        cfg.rules = vec![rule("ok")];
        cfg.rules[0].threshold = MAX_THRESHOLD + 1;
        assert_eq!(error(&cfg), "alerts.rules 'ok': threshold must be from 1 to 100; got 101");
    }

    #[test]
    fn webhooks_are_checked_without_printing_their_url() {
        let mut cfg = AlertsConfig {
            webhooks: vec![hook("chat", "https://discord.com/api/webhooks/1/s3cr3t")],
            ..AlertsConfig::default()
        };
        assert!(cfg.validate().is_ok());
        assert!(!format!("{cfg:?}").contains("s3cr3t"), "Debug shows the host only");
        assert!(format!("{cfg:?}").contains("SecretUrl(discord.com, #"));
        cfg.webhooks[0].url = SecretUrl("discord.com/s3cr3t".into());
        let e = error(&cfg);
        assert!(e.contains("url is not an http:// or https:// URL") && !e.contains("s3cr3t"), "{e}");
        cfg.webhooks = vec![hook("chat", "http://127.0.0.1:1/")];
        cfg.webhooks[0].rules = vec!["nope".into()];
        assert!(error(&cfg).contains("rules names 'nope'"));
        cfg.webhooks = (0..=MAX_WEBHOOKS).map(|i| hook(&format!("h{i}"), "http://127.0.0.1:1/")).collect();
        assert_eq!(error(&cfg), "alerts.webhooks: 17 webhooks; at most 16");
    }

    #[test]
    fn a_url_comes_from_url_or_url_file_never_both() {
        let dir = std::env::temp_dir().join(format!("aymc-alerts-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hook.url");
        std::fs::write(&file, "https://hooks.slack.com/services/T/B/s3cr3t\n").unwrap();
        let mut cfg = AlertsConfig { webhooks: vec![hook("slack", "")], ..AlertsConfig::default() };
        cfg.webhooks[0].url_file = Some(file.clone());
        cfg.resolve_files().unwrap();
        assert_eq!(cfg.webhooks[0].url.0, "https://hooks.slack.com/services/T/B/s3cr3t");
        assert!(cfg.validate().is_ok());
        let e = cfg.resolve_files().unwrap_err().to_string();
        assert!(e.contains("url and url_file are both set"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        cfg.webhooks[0].url = SecretUrl::default();
        assert!(cfg.resolve_files().unwrap_err().to_string().contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

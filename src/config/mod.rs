//! Configuration: command line, `AYMC_*` environment variables and the TOML
//! file, merged (flag > environment > file > default) into a validated
//! [`Config`] before anything runs. A problem is one [`ConfigError`] line,
//! which `main` prints and answers with exit code 2. Touches no socket.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aymc_cli::read_toml;
pub use aymc_cli::ConfigError;
use serde::Deserialize;
use uuid::Uuid;

use crate::proxy::Cidr;

mod cli;

pub use cli::{Cli, Command, USAGE, USAGE_CHECK_CONFIG, USAGE_SERVE, USAGE_TOKEN};

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The longest timeout, interval or grace period a key may set, seconds (a
/// day): every such key becomes a deadline (`Instant` + it), which must
/// not overflow.
pub const MAX_DURATION_S: u64 = 86_400;
/// The longest `history.retention_days` (a year).
pub const MAX_RETENTION_DAYS: u64 = 365;
/// The largest message and body size keys (`limits.max_message_bytes`,
/// `limits.publish_max_bytes`): 64 MiB.
pub const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// The largest `limits.head_max_bytes`: 1 MiB.
pub const MAX_HEAD_BYTES: u64 = 1024 * 1024;
/// The largest `limits.head_max_headers` (each request parse reserves room
/// for this many).
pub const MAX_HEAD_HEADERS: u64 = 1024;
/// The largest count keys (`client_queue`, `max_connections`,
/// `max_connections_per_ip`, `max_subscriptions`, `history.log_lines`).
pub const MAX_COUNT: u64 = 1_000_000;
/// The largest `history.max_bytes`: 16 GiB.
pub const MAX_MEMORY_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// The largest `history.retention_mb_per_server`: 1 TiB.
pub const MAX_RETENTION_MB: u64 = 1024 * 1024;

/// A numeric key's value and its valid range, inclusive.
struct Range {
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    /// Says what `max` is, for the error line.
    what: &'static str,
}

impl Range {
    fn new(key: &'static str, value: impl TryInto<u64>, min: u64, max: u64, what: &'static str) -> Range {
        Range { key, value: value.try_into().unwrap_or(u64::MAX), min, max, what }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&self.value) {
            return Ok(());
        }
        err(format!("{} must be from {} to {} ({}); got {}", self.key, self.min, self.max, self.what, self.value))
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret.
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 secret (its content, one trailing newline
    /// stripped). After [`Cli::load`], the file the secret came from
    /// (this one, or `$CREDENTIALS_DIRECTORY/jwt_secret`), if any.
    pub jwt_secret_file: Option<PathBuf>,
    /// Path to a PEM public key (RS256 / ES256 / EdDSA by key type).
    pub jwt_public_key: Option<String>,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Allowed `Origin` values when set (section 1 row 4).
    pub allowed_origins: Option<Vec<String>>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// `TOKEN_EXPIRING` this long before `exp`, seconds.
    pub expiry_notice_s: u64,
}

/// Reads a secret file: its content with one trailing newline stripped.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("auth.jwt_secret_file: {}: {e}", path.display())))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    if secret.is_empty() {
        return err(format!("auth.jwt_secret_file: {} is empty", path.display()));
    }
    Ok(secret.to_string())
}

impl AuthConfig {
    /// Settles where the HS256 secret comes from: `AYMC_JWT_SECRET` wins;
    /// else the file's `jwt_secret` or `jwt_secret_file` (not both);
    /// else, when no key is configured at all,
    /// `$CREDENTIALS_DIRECTORY/jwt_secret` if it exists. A relative
    /// `jwt_secret_file` is taken relative to the working directory, as
    /// the file's other paths are.
    ///
    /// # Errors
    /// Both file keys set; a secret file that cannot be read or is empty.
    pub fn resolve_secret(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(secret) = env("AYMC_JWT_SECRET") {
            self.jwt_secret = Some(secret);
            self.jwt_secret_file = None;
            return Ok(());
        }
        if let Some(file) = self.jwt_secret_file.take() {
            if self.jwt_secret.is_some() {
                return err("auth.jwt_secret and auth.jwt_secret_file are both set; use one");
            }
            self.jwt_secret = Some(read_secret(&file)?);
            self.jwt_secret_file = Some(file);
            return Ok(());
        }
        if self.jwt_secret.is_none() && self.jwt_public_key.is_none() {
            if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
                let file = Path::new(&dir).join("jwt_secret");
                if file.exists() {
                    self.jwt_secret = Some(read_secret(&file)?);
                    self.jwt_secret_file = Some(file);
                }
            }
        }
        Ok(())
    }

    /// A warning when the secret came from a file that group or others may
    /// read (`mode & 0o077`).
    pub fn secret_file_warning(&self) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let file = self.jwt_secret_file.as_ref()?;
        let mode = std::fs::metadata(file).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "warning: the JWT secret file {} is readable by group or others (mode {:o}); chmod 600 it",
                file.display(),
                mode & 0o777
            )
        })
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key: None,
            issuer: None,
            audience: None,
            allowed_origins: None,
            leeway_s: 60,
            expiry_notice_s: 60,
        }
    }
}

/// `[limits]`: PROTOCOL.md sections 6 and 7. Each doc says what hitting it does.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The hub sends a WebSocket Ping this often, seconds.
    pub ping_interval_s: u64,
    /// No frame from a client for this long: dropped without a Close frame.
    pub pong_timeout_s: u64,
    /// A write that makes no progress this long: close `4008`, dropped.
    pub write_timeout_s: u64,
    /// One incoming message over this: close `1009`.
    pub max_message_bytes: usize,
    /// Live messages queued per client; more are dropped for that client and
    /// reported as `MESSAGES_DROPPED`.
    pub client_queue: usize,
    /// Open connections; more are answered `503`.
    pub max_connections: usize,
    /// Open connections per IP (0 = off); more are answered `503`.
    pub max_connections_per_ip: usize,
    /// Subscriptions per connection; more: `TOO_MANY_SUBSCRIPTIONS`.
    pub max_subscriptions: usize,
    /// Incoming data messages per second per connection (token bucket rate).
    pub rate_per_s: u32,
    /// Token bucket size; over it: `RATE_LIMITED`, sustained: close `1008`.
    pub rate_burst: u32,
    /// HTTP request head size; over it: `431`.
    pub head_max_bytes: usize,
    /// HTTP request headers; over it: `431`.
    pub head_max_headers: usize,
    /// Time for a request head to arrive (and idle keep-alive): `408`.
    pub head_timeout_s: u64,
    /// Publish body size; over it: `413`.
    pub publish_max_bytes: usize,
    /// Time clients get to finish after SIGTERM before the hub exits.
    pub shutdown_grace_s: u64,
    /// Channels one `subscribe`/`unsubscribe` may name; more: the request
    /// is refused as a whole with one `TOO_MANY_SUBSCRIPTIONS`.
    pub max_channels_per_request: usize,
    /// Reply bytes (HTTP answers, `history`, control replies) queued for one
    /// connection; over it the hub reads nothing more from that connection
    /// until they drain.
    pub max_reply_bytes: usize,
    /// Connections still sending their request head; over it the oldest of
    /// them is answered `408` and closed (slowloris).
    pub max_pending: usize,
    /// Time for a WebSocket message to arrive, first frame to last; over
    /// it: close `1008`.
    pub message_timeout_s: u64,
    /// Channels without subscribers the hub keeps (their seq and latest
    /// value); over it the least recently used are forgotten.
    pub max_idle_channels: usize,
    /// permessage-deflate is negotiated with clients that offer it.
    pub compression: bool,
    /// Messages shorter than this go uncompressed.
    pub compress_min_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ping_interval_s: 54,
            pong_timeout_s: 60,
            write_timeout_s: 10,
            max_message_bytes: 512 * 1024,
            client_queue: 256,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_subscriptions: 256,
            rate_per_s: 20,
            rate_burst: 40,
            head_max_bytes: 8192,
            head_max_headers: 64,
            head_timeout_s: 10,
            publish_max_bytes: 1024 * 1024,
            shutdown_grace_s: 5,
            max_channels_per_request: 1024,
            max_reply_bytes: 1024 * 1024,
            max_pending: 1000,
            message_timeout_s: 30,
            max_idle_channels: 100_000,
            compression: true,
            compress_min_bytes: 256,
        }
    }
}

/// `[monitor]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Agent health checks (Ping, GetMetrics, GetStatus) this often, seconds.
    pub health_interval_s: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig { health_interval_s: 30 }
    }
}

/// `[history]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept in memory per `server:{id}:logs` channel.
    pub log_lines: usize,
    /// Messages kept in memory per `server:{id}:metrics` channel (they
    /// share `max_bytes` with the logs rings).
    pub metrics_points: usize,
    /// Bytes of all rings together; the oldest of the largest is evicted.
    pub max_bytes: usize,
    /// On-disk history (SQLite) when set.
    pub db_path: Option<PathBuf>,
    /// Stored lines older than this are deleted.
    pub retention_days: u64,
    /// Stored bytes per server above this are deleted, oldest first.
    pub retention_mb_per_server: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            log_lines: 1000,
            metrics_points: 120,
            max_bytes: 64 * 1024 * 1024,
            db_path: None,
            retention_days: 14,
            retention_mb_per_server: 200,
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines (env_logger's format); `<N>message` lines when stderr
    /// is the systemd journal.
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// Log filter (as `AYMC_LOG`, which wins over it); unset: `info`.
    pub level: Option<String>,
}

/// `[[agents]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id (alerts' `source_id`, stats).
    pub id: Uuid,
    /// `host:port` of its gRPC service.
    pub address: String,
}

/// `[[servers]]`: name and owner for an agent's server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's id.
    pub id: Uuid,
    /// Display name.
    pub name: Option<String>,
    /// The agent that runs it (an `[[agents]]` id): when set, only that
    /// agent's logs, metrics and status of this server are taken.
    pub agent: Option<Uuid>,
    /// The user who owns it (may watch it; gets its crash notifications).
    pub owner: Option<Uuid>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the hub listens on.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` (or PROXY header) names the client
    /// (PROTOCOL.md 1, behind a reverse proxy).
    pub trusted_proxies: Vec<Cidr>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[limits]`
    pub limits: Limits,
    /// `[monitor]`
    pub monitor: MonitorConfig,
    /// `[history]`
    pub history: HistoryConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[[agents]]`
    pub agents: Vec<AgentConfig>,
    /// `[[servers]]`
    pub servers: Vec<ServerConfig>,
    /// `[alerts]`, `[[alerts.rules]]`, `[[alerts.webhooks]]`
    pub alerts: crate::alerts::AlertsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            monitor: MonitorConfig::default(),
            history: HistoryConfig::default(),
            log: LogConfig::default(),
            agents: Vec::new(),
            servers: Vec::new(),
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }
}

impl Config {
    /// Parses a TOML file (not yet validated).
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, unknown key, wrong type.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        read_toml(path)
    }

    /// Checks ranges and consistency.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        match (&a.jwt_secret, &a.jwt_public_key) {
            (Some(_), Some(_)) => return err("auth.jwt_secret and auth.jwt_public_key are both set; use one"),
            (None, None) => return err("no JWT key: set auth.jwt_secret, auth.jwt_secret_file (or AYMC_JWT_SECRET, or a jwt_secret systemd credential) or auth.jwt_public_key"),
            (Some(s), None) if s.is_empty() => return err("auth.jwt_secret must not be empty"),
            _ => {}
        }
        for range in self.ranges() {
            range.check()?;
        }
        let mut seen = std::collections::HashSet::new();
        for agent in &self.agents {
            if !seen.insert(agent.id) {
                return err(format!("agents: id '{}' appears twice", agent.id));
            }
            if agent.address.is_empty() {
                return err(format!("agents: agent '{}' has an empty address", agent.id));
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return err("proxy_protocol = true needs trusted_proxies: only their connections carry a PROXY header");
        }
        let mut seen = std::collections::HashSet::new();
        for server in &self.servers {
            if !seen.insert(server.id) {
                return err(format!("servers: id '{}' appears twice", server.id));
            }
            if let Some(agent) = server.agent.filter(|a| !self.agents.iter().any(|c| c.id == *a)) {
                return err(format!(
                    "servers: server '{}' names agent '{agent}', which is not among [[agents]]",
                    server.id
                ));
            }
        }
        self.alerts.validate()
    }

    /// Every numeric key with its valid range (docs/CONFIG.md says the
    /// same), in the order of the file's tables.
    fn ranges(&self) -> [Range; 29] {
        const DAY: &str = "seconds, a day at most";
        let (a, l, h) = (&self.auth, &self.limits, &self.history);
        [
            Range::new("auth.leeway_s", a.leeway_s, 0, MAX_DURATION_S, DAY),
            Range::new("auth.expiry_notice_s", a.expiry_notice_s, 0, MAX_DURATION_S, DAY),
            Range::new("limits.ping_interval_s", l.ping_interval_s, 1, MAX_DURATION_S, DAY),
            Range::new("limits.pong_timeout_s", l.pong_timeout_s, 1, MAX_DURATION_S, DAY),
            Range::new("limits.write_timeout_s", l.write_timeout_s, 1, MAX_DURATION_S, DAY),
            Range::new("limits.max_message_bytes", l.max_message_bytes, 1, MAX_BODY_BYTES, "bytes, 64 MiB at most"),
            Range::new("limits.client_queue", l.client_queue, 1, MAX_COUNT, "messages"),
            Range::new("limits.max_connections", l.max_connections, 1, MAX_COUNT, "connections"),
            Range::new("limits.max_connections_per_ip", l.max_connections_per_ip, 0, MAX_COUNT, "connections; 0 = off"),
            Range::new("limits.max_subscriptions", l.max_subscriptions, 1, MAX_COUNT, "subscriptions"),
            Range::new("limits.rate_per_s", l.rate_per_s, 1, u64::from(u32::MAX), "messages per second"),
            Range::new("limits.rate_burst", l.rate_burst, 1, u64::from(u32::MAX), "messages"),
            Range::new("limits.head_max_bytes", l.head_max_bytes, 1, MAX_HEAD_BYTES, "bytes, 1 MiB at most"),
            Range::new("limits.head_max_headers", l.head_max_headers, 1, MAX_HEAD_HEADERS, "headers"),
            Range::new("limits.head_timeout_s", l.head_timeout_s, 1, MAX_DURATION_S, DAY),
            Range::new("limits.publish_max_bytes", l.publish_max_bytes, 1, MAX_BODY_BYTES, "bytes, 64 MiB at most"),
            Range::new("limits.shutdown_grace_s", l.shutdown_grace_s, 0, MAX_DURATION_S, DAY),
            Range::new("limits.max_channels_per_request", l.max_channels_per_request, 1, MAX_COUNT, "channels"),
            Range::new("limits.max_reply_bytes", l.max_reply_bytes, 1, MAX_BODY_BYTES, "bytes, 64 MiB at most"),
            Range::new("limits.max_pending", l.max_pending, 1, MAX_COUNT, "connections"),
            Range::new("limits.message_timeout_s", l.message_timeout_s, 1, MAX_DURATION_S, DAY),
            Range::new("limits.max_idle_channels", l.max_idle_channels, 1, MAX_COUNT, "channels"),
            Range::new("limits.compress_min_bytes", l.compress_min_bytes, 0, MAX_BODY_BYTES, "bytes, 64 MiB at most"),
            Range::new("monitor.health_interval_s", self.monitor.health_interval_s, 1, MAX_DURATION_S, DAY),
            Range::new("history.log_lines", h.log_lines, 0, MAX_COUNT, "messages per channel"),
            Range::new("history.metrics_points", h.metrics_points, 0, 100_000, "messages per channel"),
            Range::new("history.max_bytes", h.max_bytes, 0, MAX_MEMORY_BYTES, "bytes, 16 GiB at most"),
            Range::new(
                "history.retention_days",
                h.retention_days,
                0,
                MAX_RETENTION_DAYS,
                "days, a year at most; 0 = off",
            ),
            Range::new(
                "history.retention_mb_per_server",
                h.retention_mb_per_server,
                0,
                MAX_RETENTION_MB,
                "MiB, 1 TiB at most; 0 = off",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, ConfigError> {
        Cli::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn serve_is_the_default_and_flags_win_over_env() {
        let c = cli(&["--listen", "127.0.0.1:9000"]).unwrap();
        assert_eq!(c.command, Command::Serve);
        let env = |k: &str| match k {
            "AYMC_LISTEN" => Some("127.0.0.1:7000".to_string()),
            "AYMC_JWT_SECRET" => Some("x".to_string()),
            _ => None,
        };
        assert_eq!(c.load(env).unwrap().listen.port(), 9000);
        assert_eq!(cli(&[]).unwrap().load(env).unwrap().listen.port(), 7000);
    }

    #[test]
    fn token_needs_a_uuid_sub() {
        assert!(cli(&["token"]).is_err());
        assert!(cli(&["token", "--sub", "bob"]).is_err());
        let c =
            cli(&["token", "--sub", "123e4567-e89b-12d3-a456-426614174000", "--role=admin", "--ttl", "60"]).unwrap();
        assert!(matches!(c.command, Command::Token { ttl_s: 60, .. }));
        assert!(cli(&["serve", "--sub", "x"]).is_err());
    }

    #[test]
    fn config_errors_are_one_line() {
        let dir = std::env::temp_dir().join(format!("aymc-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[limits]\nclient_queeu = 3\n").unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("client_queeu") && e.contains("line 3") && !e.contains('\n'), "{e}");
        std::fs::write(&path, "[auth]\njwt_secret = \"a\"\njwt_public_key = \"b\"\n").unwrap();
        let e = Config::from_file(&path).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
        std::fs::write(&path, "[auth]\njwt_secret = \"a\"\n[[servers]]\nid = \"550e8400-e29b-41d4-a716-446655440000\"\nagent = \"node-3\"\n").unwrap();
        let e = Config::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 5") && !e.contains('\n'), "{e}");
        std::fs::write(&path, "[auth]\njwt_secret = \"a\"\n[[servers]]\nid = \"550e8400-e29b-41d4-a716-446655440000\"\nagent = \"6f1c2a9e-0000-4000-8000-000000000001\"\n").unwrap();
        let e = Config::from_file(&path).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("6f1c2a9e-0000-4000-8000-000000000001") && e.contains("[[agents]]"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The wire contract of `PROTOCOL.md` as types: channel names, the envelope,
//! the `data` shapes of section 5, error codes, and the classification of
//! client messages (section 4). Pure functions only: nothing here does IO.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A point in time on the wire: UTC RFC 3339 with exactly three fraction
/// digits on output; any RFC 3339 time on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Time(pub DateTime<Utc>);

impl Time {
    /// The current time.
    pub fn now() -> Time {
        Time(Utc::now())
    }

    /// A time from unix milliseconds (the agent contract's unit); `None`
    /// when out of range.
    pub fn from_unix_ms(ms: i64) -> Option<Time> {
        DateTime::from_timestamp_millis(ms).map(Time)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a channel carries (section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `server:{uuid}:logs`
    Logs,
    /// `server:{uuid}:metrics`
    Metrics,
    /// `server:{uuid}:status`
    Status,
    /// `user:{uuid}:notifications`
    Notifications,
}

/// A parsed channel name: a kind and the server's or user's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Channel {
    /// What the channel carries.
    pub kind: ChannelKind,
    /// The server id (server channels) or the user id (notifications).
    pub id: Uuid,
}

impl Channel {
    /// Parses a channel name: lower-case fixed parts, a hyphenated UUID in any
    /// case. Anything else is not a channel (`None`).
    pub fn parse(name: &str) -> Option<Channel> {
        let (prefix, rest) = name.split_once(':')?;
        let (id, suffix) = rest.split_once(':')?;
        let kind = match (prefix, suffix) {
            ("server", "logs") => ChannelKind::Logs,
            ("server", "metrics") => ChannelKind::Metrics,
            ("server", "status") => ChannelKind::Status,
            ("user", "notifications") => ChannelKind::Notifications,
            _ => return None,
        };
        if id.len() != 36 {
            return None;
        }
        let id = Uuid::try_parse(id).ok()?;
        Some(Channel { kind, id })
    }

    /// `server:{id}:logs`
    pub fn logs(server: Uuid) -> Channel {
        Channel { kind: ChannelKind::Logs, id: server }
    }

    /// `server:{id}:metrics`
    pub fn metrics(server: Uuid) -> Channel {
        Channel { kind: ChannelKind::Metrics, id: server }
    }

    /// `server:{id}:status`
    pub fn status(server: Uuid) -> Channel {
        Channel { kind: ChannelKind::Status, id: server }
    }

    /// `user:{id}:notifications`
    pub fn notifications(user: Uuid) -> Channel {
        Channel { kind: ChannelKind::Notifications, id: user }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, suffix) = match self.kind {
            ChannelKind::Logs => ("server", "logs"),
            ChannelKind::Metrics => ("server", "metrics"),
            ChannelKind::Status => ("server", "status"),
            ChannelKind::Notifications => ("user", "notifications"),
        };
        write!(f, "{prefix}:{}:{suffix}", self.id.hyphenated())
    }
}

/// Error codes of `error` messages (section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// JSON of the wrong shape, or a binary frame.
    InvalidMessage,
    /// An unrecognised `type`.
    UnknownType,
    /// A malformed channel name.
    InvalidChannel,
    /// A channel the connection's claims do not allow.
    Forbidden,
    /// Over `limits.max_subscriptions`.
    TooManySubscriptions,
    /// Over the message rate limit.
    RateLimited,
    /// A refused in-band `auth`.
    Unauthorized,
    /// Live messages dropped for this client (section 5, "Drops").
    MessagesDropped,
}

impl ErrorCode {
    /// The code as sent in `data.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::InvalidChannel => "INVALID_CHANNEL",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::MessagesDropped => "MESSAGES_DROPPED",
        }
    }
}

/// Log levels of `log_entry` (section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// `DEBUG` (agents map TRACE here).
    Debug,
    /// `INFO`
    Info,
    /// `WARN`
    Warn,
    /// `ERROR` (agents map FATAL here).
    Error,
}

/// A server's status (section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Only as `old_status` of a first observation.
    Unknown,
    /// Starting up.
    Starting,
    /// Up (after `Done (`).
    Running,
    /// Shutting down.
    Stopping,
    /// Stopped cleanly.
    Stopped,
    /// Stopped without a clean stop.
    Crashed,
    /// Its agent does not answer.
    Unreachable,
}

/// `data` of a `log_entry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// The server the line comes from.
    pub server_id: Uuid,
    /// When the line was written; filled by the hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Severity.
    pub level: Level,
    /// `server`, or a plugin/mod name.
    pub source: String,
    /// The line without its `[HH:MM:SS] [thread/LEVEL]: ` prefix.
    pub message: String,
    /// The folded stack trace, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exception: String,
    /// The agent's offset of the entry (0 when published through the API);
    /// not on the wire, kept with on-disk history to resume after a restart.
    #[serde(skip)]
    pub offset: u64,
}

/// `data` of a `metrics` message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// The server measured.
    pub server_id: Uuid,
    /// When it was measured; filled by the hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// CPU of the server's process, percent of one core.
    pub cpu_percent: f64,
    /// Bytes of memory the process uses.
    pub memory_used: u64,
    /// Bytes of memory of the host.
    pub memory_total: u64,
    /// `memory_used` / `memory_total` in percent.
    pub memory_percent: f64,
    /// Players online.
    pub players_online: i32,
    /// Player slots.
    pub max_players: i32,
    /// Ticks per second; absent when not measured, present even when 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tps: Option<f64>,
    /// Seconds since the server process started.
    pub uptime_seconds: i64,
}

/// `data` of a `server_status` message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// The server.
    pub server_id: Uuid,
    /// Its display name.
    pub server_name: String,
    /// The status before.
    pub old_status: Status,
    /// The status now.
    pub new_status: Status,
    /// When it changed; filled by the hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Why, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Kind of a user notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationType {
    /// `info`
    Info,
    /// `success`
    Success,
    /// `warning`
    Warning,
    /// `error`
    Error,
}

/// `data` of a user `notification` (section 5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Kind.
    #[serde(rename = "type")]
    pub kind: NotificationType,
    /// Title.
    pub title: String,
    /// Text.
    pub message: String,
    /// A link in the panel.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link: String,
}

/// Severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `info`
    Info,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `critical`
    Critical,
}

/// Where an alert comes from; decides who receives it (section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertSource {
    /// A server: to everyone allowed to watch `source_id`.
    Server,
    /// An agent: to admins.
    Agent,
    /// The hub itself: to admins.
    System,
}

/// `data` of an `alert`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Unique id; filled by the hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Severity.
    pub severity: Severity,
    /// Title.
    pub title: String,
    /// Text.
    pub message: String,
    /// Origin.
    pub source: AlertSource,
    /// The server or agent; required when `source` is `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<Uuid>,
    /// When; filled by the hub when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Extra details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Map<String, Value>>,
}

/// A message to publish: what the agent thread and the publish API hand to
/// the hub. Channel messages name their channel; alerts route by ACL.
#[derive(Debug, Clone)]
pub enum Publish {
    /// A console line on `server:{id}:logs`.
    Log(LogEntry),
    /// Metrics on `server:{id}:metrics`.
    Metrics(Metrics),
    /// A transition on `server:{id}:status`.
    Status(StatusChange),
    /// A user notification on `user:{user}:notifications`.
    Notification {
        /// The user.
        user: Uuid,
        /// The notification.
        notification: Notification,
    },
    /// An alert (no channel).
    Alert(Alert),
}

impl Publish {
    /// The envelope `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Publish::Log(_) => "log_entry",
            Publish::Metrics(_) => "metrics",
            Publish::Status(_) => "server_status",
            Publish::Notification { .. } => "notification",
            Publish::Alert(_) => "alert",
        }
    }

    /// The channel, for everything but alerts.
    pub fn channel(&self) -> Option<Channel> {
        match self {
            Publish::Log(e) => Some(Channel::logs(e.server_id)),
            Publish::Metrics(m) => Some(Channel::metrics(m.server_id)),
            Publish::Status(s) => Some(Channel::status(s.server_id)),
            Publish::Notification { user, .. } => Some(Channel::notifications(*user)),
            Publish::Alert(_) => None,
        }
    }

    /// Fills the optional fields the hub stamps (`timestamp`, an alert's
    /// `id`).
    pub fn stamp(&mut self, now: Time) {
        match self {
            Publish::Log(e) => fill(&mut e.timestamp, now),
            Publish::Metrics(m) => fill(&mut m.timestamp, now),
            Publish::Status(s) => fill(&mut s.timestamp, now),
            Publish::Notification { .. } => {}
            Publish::Alert(a) => {
                fill(&mut a.timestamp, now);
                a.id.get_or_insert_with(Uuid::new_v4);
            }
        }
    }

    /// Parses a publish API body (section 8): the envelope without
    /// timestamp. Every shape error is a sentence for the `400` answer.
    ///
    /// # Errors
    /// A description of the first problem found.
    pub fn from_api(body: &[u8]) -> Result<Publish, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            channel: Option<String>,
            data: Value,
        }
        let body: Body = serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))?;
        let channel = match body.channel.as_deref() {
            None => None,
            Some(name) => Some(Channel::parse(name).ok_or_else(|| format!("invalid channel '{name}'"))?),
        };
        let want = match body.kind.as_str() {
            "log_entry" => Some(ChannelKind::Logs),
            "metrics" => Some(ChannelKind::Metrics),
            "server_status" => Some(ChannelKind::Status),
            "notification" => Some(ChannelKind::Notifications),
            "alert" => None,
            other => return Err(format!("unknown type '{other}'")),
        };
        let channel = match (want, channel) {
            (None, None) => None,
            (None, Some(_)) => return Err("an alert has no channel".into()),
            (Some(_), None) => return Err(format!("type '{}' needs a channel", body.kind)),
            (Some(kind), Some(c)) if c.kind != kind => {
                return Err(format!("type '{}' cannot be sent on channel '{c}'", body.kind))
            }
            (Some(_), Some(c)) => Some(c),
        };
        fn data<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| format!("invalid data: {e}"))
        }
        let publish = match (body.kind.as_str(), channel) {
            ("log_entry", _) => Publish::Log(data(body.data)?),
            ("metrics", _) => Publish::Metrics(data(body.data)?),
            ("server_status", _) => {
                let s: StatusChange = data(body.data)?;
                if s.new_status == Status::Unknown {
                    return Err("invalid data: new_status cannot be 'unknown'".into());
                }
                Publish::Status(s)
            }
            ("notification", Some(c)) => Publish::Notification { user: c.id, notification: data(body.data)? },
            _ => {
                let a: Alert = data(body.data)?;
                if a.source == AlertSource::Server && a.source_id.is_none() {
                    return Err("invalid data: source_id is required when source is 'server'".into());
                }
                Publish::Alert(a)
            }
        };
        if let (Some(c), Some(published)) = (channel, publish.channel()) {
            if c != published {
                return Err(format!("data.server_id does not match channel '{c}'"));
            }
        }
        Ok(publish)
    }

    /// Serializes the envelope. `seq` is `Some((seq, epoch))` for channel
    /// messages.
    pub fn encode(&self, timestamp: Time, seq: Option<(u64, &str)>) -> Vec<u8> {
        let channel = self.channel().map(|c| c.to_string());
        let (kind, channel) = (self.type_name(), channel.as_deref());
        match self {
            Publish::Log(e) => encode_envelope(kind, channel, e, timestamp, seq),
            Publish::Metrics(m) => encode_envelope(kind, channel, m, timestamp, seq),
            Publish::Status(s) => encode_envelope(kind, channel, s, timestamp, seq),
            Publish::Notification { notification, .. } => encode_envelope(kind, channel, notification, timestamp, seq),
            Publish::Alert(a) => encode_envelope(kind, channel, a, timestamp, seq),
        }
    }
}

fn fill(slot: &mut Option<Time>, now: Time) {
    slot.get_or_insert(now);
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    timestamp: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
}

/// Serializes one envelope (section 2).
pub fn encode_envelope(
    kind: &str,
    channel: Option<&str>,
    data: &impl Serialize,
    timestamp: Time,
    seq: Option<(u64, &str)>,
) -> Vec<u8> {
    let envelope = Envelope { kind, channel, data, timestamp, seq: seq.map(|(s, _)| s), epoch: seq.map(|(_, e)| e) };
    // Serializing these types into a Vec cannot fail: every map key is a string.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// A control `notification` (`SUBSCRIBED`, `UNSUBSCRIBED`, `AUTHENTICATED`,
/// `TOKEN_EXPIRING`): no channel, `data.code`, `data.message`, `data.data`.
pub fn control(code: &str, message: &str, data: Value, extra: Option<(&str, Value)>) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("code".into(), Value::from(code));
    body.insert("message".into(), Value::from(message));
    body.insert("data".into(), data);
    if let Some((key, value)) = extra {
        body.insert(key.into(), value);
    }
    encode_envelope("notification", None, &body, Time::now(), None)
}

/// An `error` message; `details` goes to `data.data` when present.
pub fn error(code: ErrorCode, message: &str, details: Option<Value>) -> Vec<u8> {
    let mut body = Map::new();
    body.insert("code".into(), Value::from(code.as_str()));
    body.insert("message".into(), Value::from(message));
    if let Some(details) = details {
        body.insert("data".into(), details);
    }
    encode_envelope("error", None, &body, Time::now(), None)
}

/// The answer to `ping`.
pub fn pong(now: Time) -> Vec<u8> {
    encode_envelope("pong", None, &serde_json::json!({ "timestamp": now.0.timestamp() }), now, None)
}

/// `since` of one channel in a `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The last seq the client has.
    pub seq: u64,
    /// The epoch of that seq.
    pub epoch: String,
}

/// A classified client message (section 4).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `subscribe`: channel names as sent, and `since` per channel name.
    Subscribe {
        /// As sent.
        channels: Vec<String>,
        /// `since` entries, keyed by channel name as sent; `None` when the
        /// request has no `since`.
        since: Option<Vec<(String, Since)>>,
    },
    /// `unsubscribe`: channel names as sent.
    Unsubscribe {
        /// As sent.
        channels: Vec<String>,
    },
    /// `ping`.
    Ping,
    /// `history` of one logs channel.
    History {
        /// The channel name as sent.
        channel: String,
        /// How many (1..=1000, default 100).
        limit: usize,
        /// Only messages below this seq.
        before_seq: Option<u64>,
    },
    /// `auth`: an in-band token refresh.
    Auth {
        /// The new JWT.
        token: String,
    },
}

/// Why a client message was refused (section 4 classification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// The message text.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// Classifies a text frame as section 4 says.
///
/// # Errors
/// `INVALID_JSON`, `INVALID_MESSAGE` or `UNKNOWN_TYPE` with a message.
pub fn parse_client(text: &[u8]) -> Result<ClientMessage, Refusal> {
    let value: Value =
        serde_json::from_slice(text).map_err(|_| refuse(ErrorCode::InvalidJson, "Message is not valid JSON"))?;
    let Value::Object(mut object) = value else {
        return Err(refuse(ErrorCode::InvalidMessage, "Message must be a JSON object"));
    };
    let Some(Value::String(kind)) = object.remove("type") else {
        return Err(refuse(ErrorCode::InvalidMessage, "Message needs a string 'type'"));
    };
    let data = object.remove("data").unwrap_or(Value::Null);
    let bad = |what: &str| refuse(ErrorCode::InvalidMessage, format!("Invalid '{kind}' message: {what}"));
    match kind.as_str() {
        "subscribe" | "unsubscribe" => {
            let Value::Object(mut data) = data else {
                return Err(bad("data must be an object with 'channels'"));
            };
            let channels = match data.remove("channels") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(bad("'channels' must be an array of strings")),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad("'channels' must be an array of strings")),
            };
            if kind == "unsubscribe" {
                return Ok(ClientMessage::Unsubscribe { channels });
            }
            let since = match data.remove("since") {
                None | Some(Value::Null) => None,
                Some(Value::Object(map)) => Some(
                    map.into_iter()
                        .map(|(name, v)| {
                            serde_json::from_value::<Since>(v)
                                .map(|s| (name, s))
                                .map_err(|_| bad("'since' entries must be {\"seq\": N, \"epoch\": \"...\"}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(_) => return Err(bad("'since' must be an object")),
            };
            Ok(ClientMessage::Subscribe { channels, since })
        }
        "ping" => Ok(ClientMessage::Ping),
        "history" => {
            let Some(Value::String(channel)) = object.remove("channel") else {
                return Err(bad("a string 'channel' is required"));
            };
            let data = match data {
                Value::Null => Map::new(),
                Value::Object(map) => map,
                _ => return Err(bad("data must be an object")),
            };
            let limit = match data.get("limit") {
                None | Some(Value::Null) => 100,
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 1 => usize::try_from(n.min(1000)).unwrap_or(1000),
                    _ => return Err(bad("'limit' must be an integer of at least 1")),
                },
            };
            let before_seq = match data.get("before_seq") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| bad("'before_seq' must be a non-negative integer"))?),
            };
            Ok(ClientMessage::History { channel, limit, before_seq })
        }
        "auth" => match data {
            Value::Object(mut map) => match map.remove("token") {
                Some(Value::String(token)) => Ok(ClientMessage::Auth { token }),
                _ => Err(bad("a string 'token' is required")),
            },
            _ => Err(bad("a string 'token' is required")),
        },
        _ => Err(refuse(ErrorCode::UnknownType, format!("Unknown message type '{kind}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "550e8400-e29b-41d4-a716-446655440000";

    #[test]
    fn channel_names_round_trip_in_lower_case() {
        let c = Channel::parse(&format!("server:{}:logs", SERVER.to_uppercase())).unwrap();
        assert_eq!(c.to_string(), format!("server:{SERVER}:logs"));
        assert_eq!(Channel::parse(&format!("user:{SERVER}:notifications")).unwrap().kind, ChannelKind::Notifications);
    }

    #[test]
    fn malformed_channels_are_refused() {
        for name in [
            "",
            "server::logs",
            &format!("SERVER:{SERVER}:logs"),
            &format!("server:{SERVER}:LOGS"),
            &format!("server:{SERVER}:notifications"),
            &format!("user:{SERVER}:logs"),
            &format!("server:{}:logs", SERVER.replace('-', "")),
            &format!("server:{{{SERVER}}}:logs"),
            &format!("server:{SERVER}:logs:x"),
        ] {
            assert_eq!(Channel::parse(name), None, "{name}");
        }
    }

    #[test]
    fn times_have_three_fraction_digits() {
        let t = Time(DateTime::parse_from_rfc3339("2026-11-28T15:30:00Z").unwrap().to_utc());
        assert_eq!(t.to_string(), "2026-11-28T15:30:00.000Z");
        assert_eq!(Time::from_unix_ms(1_795_879_800_123).unwrap().to_string(), "2026-11-28T15:30:00.123Z");
    }

    #[test]
    fn client_messages_are_classified() {
        let code = |s: &str| parse_client(s.as_bytes()).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code("[1]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"subscribe","data":{"channels":"x"}}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"subscribe","data":{"channels":[1]}}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"history","channel":"x","data":{"limit":0}}"#), ErrorCode::InvalidMessage);
        assert_eq!(parse_client(br#"{"type":"ping","extra":1}"#).unwrap(), ClientMessage::Ping);
    }

    #[test]
    fn publish_bodies_are_validated() {
        let ok = format!(
            r#"{{"type":"log_entry","channel":"server:{SERVER}:logs","data":{{"server_id":"{SERVER}","level":"INFO","source":"server","message":"hi"}}}}"#
        );
        assert!(matches!(Publish::from_api(ok.as_bytes()), Ok(Publish::Log(_))));
        let other = "123e4567-e89b-12d3-a456-426614174000";
        for bad in [
            ok.replace("INFO", "LOUD"),
            ok.replace(r#""source":"server","#, ""),
            ok.replace(r#""message":"hi""#, r#""message":"hi","color":"red""#),
            ok.replace(&format!(":{SERVER}:logs"), &format!(":{other}:logs")),
            ok.replace(":logs", ":metrics"),
            ok.replace("log_entry", "shout"),
        ] {
            assert!(Publish::from_api(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn encoded_envelopes_leave_out_absent_fields() {
        let mut p = Publish::Metrics(Metrics {
            server_id: Uuid::nil(),
            timestamp: None,
            cpu_percent: 1.5,
            memory_used: 1,
            memory_total: 2,
            memory_percent: 50.0,
            players_online: 0,
            max_players: 20,
            tps: None,
            uptime_seconds: 3,
        });
        let now = Time::now();
        p.stamp(now);
        let v: Value = serde_json::from_slice(&p.encode(now, Some((7, "e1")))).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["epoch"], "e1");
        assert!(v["data"].get("tps").is_none());
        assert_eq!(v["data"]["timestamp"], v["timestamp"]);
    }
}

//! The wire contract of `PROTOCOL.md` as types: channel names, the envelope,
//! the `data` shapes of section 5, error codes, and the classification of
//! client messages (section 4). Pure functions only: nothing here does IO.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

mod client;
mod data;

pub use client::{parse_client, ClientMessage, Refusal, Since};
pub use data::{
    Alert, AlertSource, LogEntry, Metrics, Notification, NotificationType, Publish, Severity, StatusChange,
};

/// A point in time on the wire: UTC RFC 3339 with exactly three fraction
/// digits on output; any RFC 3339 time on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    /// Any RFC 3339 time whose UTC year stays within 0000-9999 (outside
    /// them it could not be written back as RFC 3339).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        let t = DateTime::<Utc>::deserialize(d)?;
        if (0..=9999).contains(&t.year()) {
            Ok(Time(t))
        } else {
            Err(serde::de::Error::custom("the time is outside the years 0000-9999 in UTC"))
        }
    }
}

impl Time {
    /// The current time.
    pub fn now() -> Time {
        Time(Utc::now())
    }

    /// A time from unix milliseconds (the agent contract's unit); `None`
    /// when out of range.
    pub fn from_unix_ms(ms: i64) -> Option<Time> {
        DateTime::from_timestamp_millis(ms).filter(|t| (0..=9999).contains(&t.year())).map(Time)
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

//! The `data` shapes of PROTOCOL.md section 5 and [`Publish`], a message
//! on its way to the hub (from an agent or the publish API): validation of
//! publish bodies (section 8) and encoding into one envelope.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{encode_envelope, Channel, ChannelKind, Level, Status, Time};
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

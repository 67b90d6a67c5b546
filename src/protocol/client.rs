//! What a client sends (PROTOCOL.md section 4): the classification of a
//! text frame into a [`ClientMessage`] or a [`Refusal`] with its code.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ErrorCode;
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

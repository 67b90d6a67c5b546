//! `protocol::parse_client`: any bytes and any JSON give a message or a
//! refusal with one of section 4's classification codes (`INVALID_JSON`,
//! `INVALID_MESSAGE`, `UNKNOWN_TYPE`), never a panic; well-formed requests
//! come back with what they asked.

use aymc_hub::protocol::{parse_client, ClientMessage, ErrorCode};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::support::json as any_json;

const KEYS: &[&str] = &[
    "type",
    "data",
    "channel",
    "channels",
    "since",
    "seq",
    "epoch",
    "limit",
    "before_seq",
    "token",
    "subscribe",
    "unsubscribe",
    "ping",
    "history",
    "auth",
    "server:550e8400-e29b-41d4-a716-446655440000:logs",
];

fn classified(text: &[u8]) -> Result<ClientMessage, ErrorCode> {
    parse_client(text).map_err(|r| {
        assert!(!r.message.is_empty());
        assert!(matches!(r.code, ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::UnknownType), "{r:?}");
        r.code
    })
}

/// A JSON object with a `type` that is usually a known one.
fn message() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        4 => prop::sample::select(&["subscribe", "unsubscribe", "ping", "history", "auth"][..]).prop_map(Value::from),
        1 => any_json(KEYS),
    ];
    (kind, prop::option::of(any_json(KEYS)), prop::option::of(any_json(KEYS))).prop_map(|(kind, data, channel)| {
        let mut m = serde_json::Map::new();
        m.insert("type".into(), kind);
        if let Some(d) = data {
            m.insert("data".into(), d);
        }
        if let Some(c) = channel {
            m.insert("channel".into(), c);
        }
        Value::Object(m)
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_classified(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Err(code) = classified(&bytes) {
            if serde_json::from_slice::<Value>(&bytes).is_err() {
                prop_assert_eq!(code, ErrorCode::InvalidJson);
            }
        }
    }

    #[test]
    fn arbitrary_json_is_classified(v in any_json(KEYS)) {
        let out = classified(v.to_string().as_bytes());
        if !v.get("type").is_some_and(Value::is_string) {
            prop_assert_eq!(out, Err(ErrorCode::InvalidMessage));
        }
    }

    #[test]
    fn messages_with_a_type_are_classified(v in message()) {
        let out = classified(v.to_string().as_bytes());
        match v["type"].as_str() {
            Some("subscribe" | "unsubscribe" | "ping" | "history" | "auth") => {
                prop_assert!(!matches!(out, Err(ErrorCode::UnknownType | ErrorCode::InvalidJson)));
            }
            Some(_) => prop_assert_eq!(out, Err(ErrorCode::UnknownType)),
            None => prop_assert_eq!(out, Err(ErrorCode::InvalidMessage)),
        }
    }

    #[test]
    fn well_formed_requests_come_back(channels in prop::collection::vec(any::<String>(), 0..8), limit in -5i64..2000, before in any::<Option<u64>>(), token in any::<String>()) {
        let sub = json!({"type": "subscribe", "data": {"channels": channels, "extra": 1}});
        prop_assert_eq!(classified(sub.to_string().as_bytes()), Ok(ClientMessage::Subscribe { channels: channels.clone(), since: None }));
        let unsub = json!({"type": "unsubscribe", "data": {"channels": channels}});
        prop_assert_eq!(classified(unsub.to_string().as_bytes()), Ok(ClientMessage::Unsubscribe { channels: channels.clone() }));
        let channel = channels.first().cloned().unwrap_or_default();
        let history = json!({"type": "history", "channel": channel, "data": {"limit": limit, "before_seq": before}});
        let want = if limit >= 1 {
            Ok(ClientMessage::History { channel, limit: limit.min(1000) as usize, before_seq: before })
        } else {
            Err(ErrorCode::InvalidMessage)
        };
        prop_assert_eq!(classified(history.to_string().as_bytes()), want);
        let auth = json!({"type": "auth", "data": {"token": token}});
        prop_assert_eq!(classified(auth.to_string().as_bytes()), Ok(ClientMessage::Auth { token }));
    }
}

//! `protocol::parse_client` on arbitrary bytes: a message or a refusal with
//! one of section 4's classification codes, never a panic; the channels it
//! names go through `Channel::parse` as the dispatcher does.
use aymc_hub::protocol::{parse_client, Channel, ClientMessage, ErrorCode};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        match parse_client(data) {
            Ok(ClientMessage::Subscribe { channels, since }) => {
                for c in &channels {
                    let _ = Channel::parse(c);
                }
                for (c, _) in since.iter().flatten() {
                    let _ = Channel::parse(c);
                }
            }
            Ok(ClientMessage::Unsubscribe { channels }) => {
                for c in &channels {
                    let _ = Channel::parse(c);
                }
            }
            Ok(ClientMessage::History { channel, limit, .. }) => {
                assert!((1..=1000).contains(&limit));
                let _ = Channel::parse(&channel);
            }
            Ok(ClientMessage::Ping | ClientMessage::Auth { .. }) => {}
            Err(r) => {
                assert!(
                    matches!(r.code, ErrorCode::InvalidJson | ErrorCode::InvalidMessage | ErrorCode::UnknownType),
                    "{r:?}"
                );
                if std::str::from_utf8(data).is_err() || serde_json::from_slice::<serde_json::Value>(data).is_err() {
                    assert_eq!(r.code, ErrorCode::InvalidJson);
                }
            }
        }
    });
}

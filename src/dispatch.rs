//! The WebSocket side of a connection: frames out of the read buffer
//! (keeping only an incomplete one), control frames, the rate limit, and
//! each client message (PROTOCOL.md section 4) handed to the hub. Every
//! entry point returns the connection's [`Outcome`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::time::Instant;

use log::{debug, info, warn};
use tungstenite::protocol::frame::coding::Control;

use crate::app::App;
use crate::client::Rate;
use crate::conn::{Conn, Outcome, Phase, Reason};
use crate::protocol::{self, ClientMessage, ErrorCode};
use crate::proxy::Remote;
use crate::ws::{self, Decoder, Incoming};

/// Bytes arrived on an upgraded connection. Whole frames are decoded in
/// place; an incomplete one is kept for the next read.
pub fn on_bytes(app: &mut App, key: usize, conn: &mut Conn, bytes: &mut [u8], now: Instant) -> Outcome {
    let remote = conn.remote();
    let Phase::WebSocket(ws) = &mut conn.phase else { return Outcome::Keep };
    if ws.partial.is_empty() {
        let used = match frames(app, key, remote, &mut ws.decoder, bytes, now) {
            Ok(used) => used,
            Err(outcome) => return outcome,
        };
        ws.partial.extend_from_slice(bytes.get(used..).unwrap_or_default());
    } else {
        let mut partial = std::mem::take(&mut ws.partial);
        partial.extend_from_slice(bytes);
        let used = match frames(app, key, remote, &mut ws.decoder, &mut partial, now) {
            Ok(used) => used,
            Err(outcome) => return outcome,
        };
        partial.drain(..used);
        ws.partial = if partial.is_empty() { Vec::new() } else { partial };
    }
    let arriving = !ws.partial.is_empty() || ws.decoder.in_message();
    ws.message_since = if arriving { ws.message_since.or(Some(now)) } else { None };
    Outcome::Keep
}

/// Decodes and handles the whole frames in `buf`. Returns the bytes used,
/// or the outcome that ends the connection.
fn frames(
    app: &mut App,
    key: usize,
    remote: Remote,
    decoder: &mut Decoder,
    buf: &mut [u8],
    now: Instant,
) -> Result<usize, Outcome> {
    let max = app.cfg.limits.max_message_bytes;
    let inflate = app.hub.session(key).is_some_and(|s| s.deflate.is_some());
    let mut pos = 0;
    loop {
        if app.hub.reply_bytes(key) > app.cfg.limits.max_reply_bytes {
            // The rest waits until the answers drain (the reactor pauses
            // reading too).
            return Ok(pos);
        }
        let Some(rest) = buf.get_mut(pos..) else { return Ok(pos) };
        match decoder.next_frame(rest, max, inflate) {
            Ok(None) => return Ok(pos),
            Ok(Some((used, message))) => {
                pos += used;
                if let Some(message) = message {
                    match on_message(app, key, remote, message, now) {
                        Outcome::Keep => {}
                        outcome => return Err(outcome),
                    }
                }
            }
            Err(e) => {
                debug!("closing {key}: {e}");
                return Err(close(app, key, e.close_code(), &e.to_string()));
            }
        }
    }
}

/// Queues a Close frame with `code`; the connection then closes.
pub fn close(app: &mut App, key: usize, code: u16, text: &str) -> Outcome {
    app.hub.queue_close(key, ws::close(code, text));
    Outcome::Close(Reason::Closed(code))
}

/// Sends `TOKEN_EXPIRING` when due; closes with `4001` once the token has
/// expired.
pub fn check_token(app: &mut App, key: usize, unix_now: i64) -> Option<Outcome> {
    let leeway = i64::try_from(app.cfg.auth.leeway_s).unwrap_or(i64::MAX);
    if !app.hub.token_expired(key, unix_now, leeway) {
        return None;
    }
    if let Some(session) = app.hub.session(key) {
        info!("closing {}: token expired", session.describe());
    }
    Some(close(app, key, 4001, "token expired"))
}

/// Handles one message.
fn on_message(app: &mut App, key: usize, remote: Remote, message: Incoming<'_>, now: Instant) -> Outcome {
    let text = match message {
        Incoming::Ping(payload) => {
            app.hub.queue(key, ws::control(Control::Pong, payload));
            return Outcome::Keep;
        }
        Incoming::Pong => return Outcome::Keep,
        Incoming::Close(code) => {
            let valid = code.is_none_or(|c| matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999));
            if !valid {
                return close(app, key, 1002, "invalid close code");
            }
            let reply = code.map_or_else(|| ws::control(Control::Close, &[]), |c| ws::close(c, ""));
            app.hub.queue(key, reply);
            return Outcome::Close(Reason::Closed(code.unwrap_or(1005)));
        }
        Incoming::Text(text) => Some(text),
        Incoming::Binary(_) => None,
    };
    let l = &app.cfg.limits;
    let Some(session) = app.hub.session_mut(key) else { return Outcome::Keep };
    match session.rate.check(l.rate_per_s, l.rate_burst, now) {
        Rate::Allow => {}
        Rate::Refuse => return Outcome::Keep,
        Rate::RefuseAndTell => {
            let e = protocol::error(ErrorCode::RateLimited, "Too many messages; slow down", None);
            app.hub.reply(key, &e);
            return Outcome::Keep;
        }
        Rate::Abuse => {
            warn!("closing {} from {remote}: sustained rate-limit abuse", session.describe());
            return close(app, key, 1008, "rate limit exceeded");
        }
    }
    let parsed = match text {
        Some(text) => protocol::parse_client(&text),
        None => Err(protocol::Refusal {
            code: ErrorCode::InvalidMessage,
            message: "Binary frames are not supported".into(),
        }),
    };
    let max_channels = app.cfg.limits.max_channels_per_request;
    match parsed {
        Err(r) => app.hub.reply(key, &protocol::error(r.code, &r.message, None)),
        Ok(ClientMessage::Subscribe { channels, .. } | ClientMessage::Unsubscribe { channels })
            if channels.len() > max_channels =>
        {
            let text = format!("A request may name at most {max_channels} channels");
            app.hub.reply(key, &protocol::error(ErrorCode::TooManySubscriptions, &text, None));
        }
        Ok(ClientMessage::Ping) => app.hub.reply(key, &protocol::pong(protocol::Time::now())),
        Ok(ClientMessage::Subscribe { channels, since }) => {
            app.hub.subscribe(key, &app.auth, &channels, since.as_deref());
        }
        Ok(ClientMessage::Unsubscribe { channels }) => app.hub.unsubscribe(key, &channels),
        Ok(ClientMessage::History { channel, limit, before_seq }) => {
            app.hub.history(key, &app.auth, &channel, limit, before_seq);
        }
        Ok(ClientMessage::Auth { token }) => {
            app.hub.reauth(key, &app.auth, &token, app.cfg.auth.expiry_notice_s);
            if let Some(outcome) = check_token(app, key, chrono::Utc::now().timestamp()) {
                return outcome;
            }
        }
    }
    Outcome::Keep
}

//! What clients ask of the hub (PROTOCOL.md section 4): `subscribe` with
//! its refusals and `since` replays, `unsubscribe`, `history`, and the
//! in-band `auth`, with the subscriber lists they change.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde_json::{json, Value};

use super::Hub;
use crate::auth::Authenticator;
use crate::client::Sub;
use crate::outq::DropKey;
use crate::protocol::{self, Channel, ChannelKind, ErrorCode, Since, Time};
use crate::ws::Shared;

impl Hub {
    /// Handles `subscribe` (section 4 order: errors, `SUBSCRIBED`, replays).
    /// The work is linear in the number of names (sets, not scans).
    pub fn subscribe(&mut self, key: usize, auth: &Authenticator, names: &[String], since: Option<&[(String, Since)]>) {
        let mut refusals: [(ErrorCode, &str, Vec<&str>); 3] = [
            (ErrorCode::Forbidden, "Access denied to channels", Vec::new()),
            (ErrorCode::InvalidChannel, "Invalid channel names", Vec::new()),
            (ErrorCode::TooManySubscriptions, "Too many subscriptions", Vec::new()),
        ];
        let mut refused: HashSet<&str> = HashSet::new();
        let mut listed: Vec<Channel> = Vec::new();
        let mut seen: HashSet<Channel> = HashSet::new();
        let mut newly: Vec<usize> = Vec::new();
        for name in names {
            if refused.contains(name.as_str()) {
                continue;
            }
            let refusal = match Channel::parse(name) {
                None => Some(1),
                Some(channel) => match self.try_subscribe(key, auth, channel) {
                    Err(code) => Some(code),
                    Ok(new) => {
                        newly.extend(new);
                        if seen.insert(channel) {
                            listed.push(channel);
                        }
                        None
                    }
                },
            };
            if let Some(list) = refusal.and_then(|i| refusals.get_mut(i)) {
                refused.insert(name);
                list.2.push(name);
            }
        }
        for (code, text, list) in refusals {
            if !list.is_empty() {
                self.reply(key, &protocol::error(code, text, Some(json!(list))));
            }
        }
        let mut wanted: HashMap<Channel, &Since> = HashMap::new();
        for (name, s) in since.unwrap_or_default() {
            if let Some(channel) = Channel::parse(name) {
                wanted.entry(channel).or_insert(s);
            }
        }
        let mut recovered = serde_json::Map::new();
        let mut replays: Vec<Rc<Shared>> = Vec::new();
        for &i in &newly {
            let Some(entry) = self.channels.get(i) else { continue };
            match entry.channel.kind {
                ChannelKind::Logs => {
                    if let Some(since) = wanted.get(&entry.channel) {
                        let ok = self.channels.recover(i, since, &self.epoch, &mut replays);
                        recovered.insert(entry.channel.to_string(), Value::Bool(ok));
                    }
                }
                ChannelKind::Metrics | ChannelKind::Status => replays.extend(entry.latest.clone()),
                ChannelKind::Notifications => {}
            }
        }
        let listed: Vec<String> = listed.iter().map(Channel::to_string).collect();
        let extra = since.is_some().then_some(("recovered", Value::Object(recovered)));
        let answer = protocol::control("SUBSCRIBED", "Successfully subscribed to channels", json!(listed), extra);
        self.reply(key, &answer);
        for frame in replays {
            self.queue_shared(key, &frame);
        }
    }

    /// Subscribes a client to one valid channel: `Ok(Some(index))` when
    /// newly subscribed, `Ok(None)` when it already was, `Err(i)` with the
    /// index of the refusal (0 forbidden, 2 too many).
    pub(super) fn try_subscribe(
        &mut self,
        key: usize,
        auth: &Authenticator,
        channel: Channel,
    ) -> Result<Option<usize>, usize> {
        let Some(session) = self.session(key) else { return Err(0) };
        if !auth.may_subscribe(&session.identity, &channel) {
            return Err(0);
        }
        let existing = self.channels.find(&channel);
        if existing.is_some_and(|i| session.subs.iter().any(|s| s.channel as usize == i)) {
            return Ok(None);
        }
        if session.subs.len() >= self.max_subscriptions {
            return Err(2);
        }
        let i = self.channels.index_of(channel);
        self.add_subscriber(key, i);
        Ok(Some(i))
    }

    pub(super) fn add_subscriber(&mut self, key: usize, i: usize) {
        let Some(pos) = self.channels.subscribe(i, key) else { return };
        if let Some(session) = self.session_mut(key) {
            session.subs.push(Sub { channel: i as u32, pos });
        }
    }

    /// Removes a subscriber from channel `sub.channel`, fixing the position
    /// of the subscriber moved into its place.
    pub(super) fn remove_subscriber(&mut self, sub: Sub) {
        let i = sub.channel as usize;
        if let Some(moved) = self.channels.unsubscribe(i, sub.pos as usize) {
            if let Some(session) = self.session_mut(moved) {
                if let Some(s) = session.subs.iter_mut().find(|s| s.channel as usize == i) {
                    s.pos = sub.pos;
                }
            }
        }
        self.channels.forget_if_unused(i);
    }

    /// Drops one subscription of a client, with its pending drop report.
    pub(super) fn unsubscribe_one(&mut self, key: usize, i: usize) -> bool {
        let Some(client) = self.client_mut(key) else { return false };
        client.out.discard_report(DropKey::Channel(i));
        let Some(session) = &mut client.session else { return false };
        let Some(at) = session.subs.iter().position(|s| s.channel as usize == i) else { return false };
        let sub = session.subs.swap_remove(at);
        self.remove_subscriber(sub);
        true
    }

    /// Handles `unsubscribe`: `INVALID_CHANNEL` for malformed names, then
    /// `UNSUBSCRIBED` listing the channels that were subscribed.
    pub fn unsubscribe(&mut self, key: usize, names: &[String]) {
        let mut invalid: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut removed: Vec<String> = Vec::new();
        for name in names {
            let Some(channel) = Channel::parse(name) else {
                if seen.insert(name) {
                    invalid.push(name);
                }
                continue;
            };
            let Some(i) = self.channels.find(&channel) else { continue };
            if self.unsubscribe_one(key, i) {
                removed.push(channel.to_string());
            }
        }
        if !invalid.is_empty() {
            let error = protocol::error(ErrorCode::InvalidChannel, "Invalid channel names", Some(json!(invalid)));
            self.reply(key, &error);
        }
        let answer = protocol::control("UNSUBSCRIBED", "Successfully unsubscribed from channels", json!(removed), None);
        self.reply(key, &answer);
    }

    /// Handles `history` (5a) on a logs or metrics channel: the newest
    /// `limit` kept messages below `before_seq`, oldest first.
    pub fn history(&mut self, key: usize, auth: &Authenticator, name: &str, limit: usize, before_seq: Option<u64>) {
        let Some(session) = self.session(key) else { return };
        let channel = match Channel::parse(name) {
            None => Err((ErrorCode::InvalidChannel, "Invalid channel names")),
            Some(c) if !matches!(c.kind, ChannelKind::Logs | ChannelKind::Metrics) => {
                Err((ErrorCode::InvalidMessage, "Only logs and metrics channels have history"))
            }
            Some(c) if !auth.may_subscribe(&session.identity, &c) => {
                Err((ErrorCode::Forbidden, "Access denied to channels"))
            }
            Some(c) => Ok(c),
        };
        let channel = match channel {
            Ok(c) => c,
            Err((code, text)) => return self.reply(key, &protocol::error(code, text, Some(json!([name])))),
        };
        let (mut kept, mut complete) = self.channels.page(&channel, limit, before_seq);
        // One reply stays within the reply cap: the oldest go first (the
        // client pages back with `before_seq`); one message always fits.
        let mut size: usize = kept.iter().map(|k| k.frame.plain().len()).sum();
        let drop = kept.iter().take_while(|k| {
            let over = size > self.max_reply_bytes;
            size -= k.frame.plain().len();
            over
        });
        let drop = drop.count().min(kept.len().saturating_sub(1));
        if drop > 0 {
            kept.drain(..drop);
            complete = false;
        }
        let mut body = String::from("{\"type\":\"history\",\"channel\":");
        body.push_str(&Value::from(channel.to_string()).to_string());
        body.push_str(",\"data\":{\"messages\":[");
        for (n, k) in kept.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(std::str::from_utf8(k.frame.payload()).unwrap_or("null"));
        }
        body.push_str(&format!("],\"complete\":{complete}}},\"timestamp\":\"{}\"}}", Time::now()));
        self.reply(key, body.as_bytes());
    }

    /// Handles `auth`: replaces the token of the same user, unsubscribing
    /// channels the new claims no longer allow; `TOKEN_EXPIRING` comes
    /// `expiry_notice_s` before the new token expires.
    pub fn reauth(&mut self, key: usize, auth: &Authenticator, token: &str, expiry_notice_s: u64) {
        let Some(session) = self.session(key) else { return };
        let identity = match auth.validate(token) {
            Ok(id) if id.user == session.identity.user => id,
            Ok(_) => return self.refuse_auth(key, "Token belongs to another user"),
            Err(e) => return self.refuse_auth(key, &format!("Token refused: {e}")),
        };
        let revoked: Vec<usize> = session
            .subs
            .iter()
            .map(|s| s.channel as usize)
            .filter(|&i| self.channels.get(i).is_some_and(|c| !auth.may_subscribe(&identity, &c.channel)))
            .collect();
        let mut names = Vec::new();
        for i in revoked {
            names.extend(self.channels.get(i).map(|c| c.channel.to_string()));
            self.unsubscribe_one(key, i);
        }
        let exp = identity.exp;
        if let Some(session) = self.session_mut(key) {
            session.set_identity(identity, expiry_notice_s);
        }
        let data = json!({ "expires_at": exp, "revoked": names });
        self.reply(key, &protocol::control("AUTHENTICATED", "Token refreshed", data, None));
    }

    pub(super) fn refuse_auth(&mut self, key: usize, text: &str) {
        self.reply(key, &protocol::error(ErrorCode::Unauthorized, text, None));
    }
}

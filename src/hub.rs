//! The channel table and fan-out: who is subscribed to what, `publish`
//! (serialize and frame once, share the bytes with every subscriber's queue),
//! `seq`/`epoch`, the history rings and latest values (PROTOCOL.md 5, 5a),
//! and the client requests that act on them (`subscribe`, `unsubscribe`,
//! `history`, `auth`). It queues bytes on connections' [`OutQueue`]s and
//! lists the connections to flush; it never touches a socket.
//!
//! [`OutQueue`]: crate::outq::OutQueue

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde_json::{json, Value};
use slab::Slab;

use crate::auth::{Authenticator, Identity, Role};
use crate::conn::Conn;
use crate::outq::{DropKey, DropReport};
use crate::protocol::{self, AlertSource, Channel, ChannelKind, ErrorCode, Publish, Since, Time};
use crate::store::{LogQuery, Page, Recovered, Store, StoreStats, StoredLog};
use crate::ws;

/// Counters for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Messages published.
    pub messages_in: u64,
    /// Copies queued to clients.
    pub messages_out: u64,
    /// Copies dropped for slow clients.
    pub messages_dropped: u64,
}

/// A kept message: its seq and its frame.
struct Kept {
    seq: u64,
    frame: Rc<[u8]>,
}

struct ChannelEntry {
    channel: Channel,
    name: String,
    /// Connection keys; a connection's `Sub::pos` is its index here.
    subscribers: Vec<usize>,
    /// Last seq issued in this epoch (0: none).
    seq: u64,
    /// Logs channels: the last `history.log_lines` messages.
    ring: VecDeque<Kept>,
    /// Bytes of `ring`.
    ring_bytes: usize,
    /// Something was evicted from `ring` in this epoch.
    evicted: bool,
    /// Metrics and status channels: the latest message.
    latest: Option<Rc<[u8]>>,
}

impl ChannelEntry {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.seq == 0
    }
}

/// One subscription of a connection: the channel and the connection's
/// position in that channel's subscriber list (O(1) removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    channel: u32,
    pos: u32,
}

/// The hub. See the module docs.
pub struct Hub {
    channels: Slab<ChannelEntry>,
    index: HashMap<Channel, usize>,
    epoch: String,
    /// Live messages queued per client at most (`limits.client_queue`).
    queue_cap: usize,
    max_subscriptions: usize,
    log_lines: usize,
    history_max_bytes: usize,
    history_bytes: usize,
    history_entries: usize,
    /// Connections with replies to flush at the end of the loop turn.
    dirty: Vec<usize>,
    /// Connections with live messages, flushed together in batches (see
    /// the reactor's `FANOUT_DELAY`).
    fanout: Vec<usize>,
    /// When the oldest live message not yet flushed was published.
    fanout_since: Option<std::time::Instant>,
    /// Counters for stats.
    pub counters: Counters,
    /// On-disk history, when configured.
    store: Option<Store>,
    /// A seq of a channel the store does not save by itself (all but logs)
    /// moved since the last [`Hub::save_counters`].
    counters_changed: bool,
}

/// What a client's `auth` did.
pub enum AuthOutcome {
    /// Token replaced.
    Refreshed,
    /// Refused; the old token stays.
    Refused,
}

impl Hub {
    /// An empty hub in a new epoch.
    ///
    /// With on-disk history, `recovered` gives the epoch, each channel's
    /// last seq and the recent log lines to refill the rings, and every log
    /// line published is also handed to `store`.
    pub fn new(
        limits: &crate::config::Limits,
        history: &crate::config::HistoryConfig,
        store: Option<Store>,
        recovered: Option<Recovered>,
    ) -> Hub {
        let mut hub = Hub {
            channels: Slab::new(),
            index: HashMap::new(),
            epoch: crate::store::new_epoch(),
            queue_cap: limits.client_queue,
            max_subscriptions: limits.max_subscriptions,
            log_lines: history.log_lines,
            history_max_bytes: history.max_bytes,
            history_bytes: 0,
            history_entries: 0,
            dirty: Vec::new(),
            fanout: Vec::new(),
            fanout_since: None,
            counters: Counters::default(),
            store,
            counters_changed: false,
        };
        if let Some(recovered) = recovered {
            hub.restore(recovered);
        }
        hub
    }

    /// Goes on from what the on-disk history knows (5: seq never reused in
    /// an epoch; 5a: `since` across a restart).
    fn restore(&mut self, recovered: Recovered) {
        self.epoch = recovered.epoch;
        for (name, seq) in recovered.seqs {
            if let Some(channel) = Channel::parse(&name) {
                let i = self.channel_index(channel);
                self.channels[i].seq = seq;
            }
        }
        for (server, entries) in recovered.recent {
            let i = self.channel_index(Channel::logs(server));
            let skip = entries.len().saturating_sub(self.log_lines);
            for (seq, envelope) in entries.into_iter().skip(skip) {
                self.keep(i, seq, ws::text(envelope.as_bytes()));
            }
            let entry = &mut self.channels[i];
            entry.seq = entry.seq.max(entry.ring.back().map_or(0, |k| k.seq));
            entry.evicted = skip > 0 || recovered.evicted.contains(&server);
        }
    }

    /// Adds a message to a logs channel's ring, evicting what the caps
    /// (`history.log_lines`, `history.max_bytes`) no longer allow.
    fn keep(&mut self, i: usize, seq: u64, frame: Rc<[u8]>) {
        let entry = &mut self.channels[i];
        entry.ring_bytes += frame.len();
        self.history_bytes += frame.len();
        self.history_entries += 1;
        entry.ring.push_back(Kept { seq, frame });
        if entry.ring.len() > self.log_lines {
            self.evict(i);
        }
        if self.history_bytes > self.history_max_bytes {
            // Evict the oldest of the largest ring down to a low-water mark,
            // so the scan for the largest runs once per 1/64 of the budget
            // rather than once per published line.
            let low = self.history_max_bytes - self.history_max_bytes / 64;
            while self.history_bytes > low {
                let largest = self.channels.iter().max_by_key(|(_, c)| c.ring_bytes).map(|(k, _)| k);
                let Some(k) = largest.filter(|&k| self.channels[k].ring_bytes > 0) else { break };
                while self.history_bytes > low && !self.channels[k].ring.is_empty() {
                    self.evict(k);
                }
            }
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Takes the list of connections with replies to flush.
    pub fn take_dirty(&mut self, into: &mut Vec<usize>) {
        into.append(&mut self.dirty);
    }

    /// Takes the list of connections with live messages to flush.
    pub fn take_fanout(&mut self, into: &mut Vec<usize>) {
        self.fanout_since = None;
        into.append(&mut self.fanout);
    }

    /// When the oldest unflushed live message was published, if any.
    pub fn fanout_since(&self) -> Option<std::time::Instant> {
        self.fanout_since
    }

    /// Marks a connection as having output to flush.
    pub fn touch(&mut self, key: usize, conn: &mut Conn) {
        mark_dirty(key, conn, &mut self.dirty);
    }

    /// Queues a control reply (never dropped, not counted) to one connection.
    pub fn reply(&mut self, key: usize, conn: &mut Conn, payload: &[u8]) {
        conn.out.push_control(ws::text(payload));
        self.touch(key, conn);
    }

    fn channel_index(&mut self, channel: Channel) -> usize {
        if let Some(&i) = self.index.get(&channel) {
            return i;
        }
        let i = self.channels.insert(ChannelEntry {
            channel,
            name: channel.to_string(),
            subscribers: Vec::new(),
            seq: 0,
            ring: VecDeque::new(),
            ring_bytes: 0,
            evicted: false,
            latest: None,
        });
        self.index.insert(channel, i);
        i
    }

    fn forget_if_unused(&mut self, i: usize) {
        if self.channels.get(i).is_some_and(ChannelEntry::is_unused) {
            let entry = self.channels.remove(i);
            self.index.remove(&entry.channel);
        }
    }

    /// Publishes one message: stamps it, gives it its channel's next seq,
    /// serializes and frames it once, and queues the shared bytes for every
    /// subscriber (alerts: every connection the ACL allows). Returns the
    /// number of connections it was queued for.
    pub fn publish(&mut self, conns: &mut Slab<Conn>, auth: &Authenticator, mut msg: Publish) -> usize {
        let now = Time::now();
        msg.stamp(now);
        self.counters.messages_in += 1;
        let Some(channel) = msg.channel() else {
            return self.publish_alert(conns, auth, &msg, now);
        };
        let i = self.channel_index(channel);
        let entry = &mut self.channels[i];
        entry.seq += 1;
        let seq = entry.seq;
        let json = msg.encode(now, Some((seq, &self.epoch)));
        let frame = ws::text(&json);
        let (mut queued, mut dropped) = (0, 0);
        if !entry.subscribers.is_empty() {
            self.fanout_since.get_or_insert_with(std::time::Instant::now);
        }
        for &key in &entry.subscribers {
            let Some(conn) = conns.get_mut(key) else { continue };
            match offer(key, conn, &frame, self.queue_cap, DropKey::Channel(i), seq, &mut self.fanout) {
                true => queued += 1,
                false => dropped += 1,
            }
        }
        match channel.kind {
            ChannelKind::Logs => {
                self.keep(i, seq, frame);
                if let (Some(store), Publish::Log(e)) = (&self.store, msg) {
                    store.append(StoredLog {
                        server: e.server_id,
                        seq,
                        epoch: self.epoch.clone(),
                        ts_ms: e.timestamp.unwrap_or(now).0.timestamp_millis(),
                        level: e.level,
                        source: e.source,
                        message: e.message,
                        exception: e.exception,
                        envelope: String::from_utf8(json).unwrap_or_default(),
                        offset: e.offset,
                    });
                }
            }
            ChannelKind::Metrics | ChannelKind::Status => {
                entry.latest = Some(frame);
                self.counters_changed = true;
            }
            ChannelKind::Notifications => self.counters_changed = true,
        }
        self.counters.messages_out += queued;
        self.counters.messages_dropped += dropped;
        queued as usize
    }

    fn evict(&mut self, i: usize) {
        let entry = &mut self.channels[i];
        if let Some(old) = entry.ring.pop_front() {
            entry.ring_bytes -= old.frame.len();
            entry.evicted = true;
            self.history_bytes -= old.frame.len();
            self.history_entries -= 1;
        }
    }

    fn publish_alert(&mut self, conns: &mut Slab<Conn>, auth: &Authenticator, msg: &Publish, now: Time) -> usize {
        let Publish::Alert(alert) = msg else { return 0 };
        let frame = ws::text(&msg.encode(now, None));
        let (mut queued, mut dropped) = (0, 0);
        for (key, conn) in conns.iter_mut() {
            let Some(session) = conn.session() else { continue };
            let allowed = match (alert.source, alert.source_id) {
                (AlertSource::Server, Some(server)) => auth.may_watch(&session.identity, server),
                _ => session.identity.role == Role::Admin,
            };
            if !allowed {
                continue;
            }
            self.fanout_since.get_or_insert_with(std::time::Instant::now);
            match offer(key, conn, &frame, self.queue_cap, DropKey::Alerts, 0, &mut self.fanout) {
                true => queued += 1,
                false => dropped += 1,
            }
        }
        self.counters.messages_out += queued;
        self.counters.messages_dropped += dropped;
        queued as usize
    }

    /// `MESSAGES_DROPPED` errors for drop reports (section 5, "Drops").
    pub fn drop_errors(&self, reports: Vec<DropReport>) -> impl Iterator<Item = Vec<u8>> + '_ {
        reports.into_iter().map(|r| {
            let details = match r.key {
                DropKey::Channel(i) => json!({
                    "channel": self.channels.get(i).map(|c| c.name.as_str()),
                    "dropped": r.dropped,
                    "from_seq": r.from_seq,
                    "to_seq": r.to_seq,
                }),
                DropKey::Alerts => json!({ "channel": null, "dropped": r.dropped }),
            };
            protocol::error(
                ErrorCode::MessagesDropped,
                "Messages were dropped because the client reads too slowly",
                Some(details),
            )
        })
    }

    /// Handles `subscribe` (section 4 order: errors, `SUBSCRIBED`, replays).
    pub fn subscribe(
        &mut self,
        key: usize,
        conns: &mut Slab<Conn>,
        auth: &Authenticator,
        names: &[String],
        since: Option<&[(String, Since)]>,
    ) {
        let (mut forbidden, mut invalid, mut too_many) = (Vec::new(), Vec::new(), Vec::new());
        let mut listed: Vec<Channel> = Vec::new();
        let mut newly: Vec<usize> = Vec::new();
        for name in names {
            let Some(channel) = Channel::parse(name) else {
                push_unique(&mut invalid, name);
                continue;
            };
            let Some(session) = conns.get(key).and_then(Conn::session) else { return };
            if !auth.may_subscribe(&session.identity, &channel) {
                push_unique(&mut forbidden, name);
                continue;
            }
            let existing = self.index.get(&channel).copied();
            let already = existing.is_some_and(|i| session.subs.iter().any(|s| s.channel as usize == i));
            if !already {
                if session.subs.len() >= self.max_subscriptions {
                    push_unique(&mut too_many, name);
                    continue;
                }
                let i = self.channel_index(channel);
                self.add_subscriber(key, conns, i);
                newly.push(i);
            }
            if !listed.contains(&channel) {
                listed.push(channel);
            }
        }
        let Some(conn) = conns.get_mut(key) else { return };
        for (code, list, text) in [
            (ErrorCode::Forbidden, forbidden, "Access denied to channels"),
            (ErrorCode::InvalidChannel, invalid, "Invalid channel names"),
            (ErrorCode::TooManySubscriptions, too_many, "Too many subscriptions"),
        ] {
            if !list.is_empty() {
                self.reply(key, conn, &protocol::error(code, text, Some(json!(list))));
            }
        }
        let mut recovered = serde_json::Map::new();
        let mut replays: Vec<Rc<[u8]>> = Vec::new();
        for &i in &newly {
            let entry = &self.channels[i];
            match entry.channel.kind {
                ChannelKind::Logs => {
                    let wanted =
                        since.unwrap_or_default().iter().find(|(n, _)| Channel::parse(n) == Some(entry.channel));
                    if let Some((_, since)) = wanted {
                        let ok = self.recover(i, since, &mut replays);
                        recovered.insert(entry.name.clone(), Value::Bool(ok));
                    }
                }
                ChannelKind::Metrics | ChannelKind::Status => replays.extend(entry.latest.clone()),
                ChannelKind::Notifications => {}
            }
        }
        let listed: Vec<String> = listed.iter().map(Channel::to_string).collect();
        let extra = since.is_some().then_some(("recovered", Value::Object(recovered)));
        let answer = protocol::control("SUBSCRIBED", "Successfully subscribed to channels", json!(listed), extra);
        self.reply(key, conn, &answer);
        for frame in replays {
            conn.out.push_control(frame);
        }
    }

    /// The kept messages after `since` (appended to `out`), or false when
    /// they cannot all be given (5a).
    fn recover(&self, i: usize, since: &Since, out: &mut Vec<Rc<[u8]>>) -> bool {
        let entry = &self.channels[i];
        if since.epoch != self.epoch || since.seq > entry.seq {
            return false;
        }
        if since.seq == entry.seq {
            return true;
        }
        match entry.ring.front() {
            Some(first) if first.seq <= since.seq + 1 => {
                out.extend(entry.ring.iter().filter(|k| k.seq > since.seq).map(|k| Rc::clone(&k.frame)));
                true
            }
            _ => false,
        }
    }

    fn add_subscriber(&mut self, key: usize, conns: &mut Slab<Conn>, i: usize) {
        let entry = &mut self.channels[i];
        let pos = entry.subscribers.len() as u32;
        entry.subscribers.push(key);
        if let Some(session) = conns.get_mut(key).and_then(Conn::session_mut) {
            session.subs.push(Sub { channel: i as u32, pos });
        }
    }

    /// Removes `key` from channel `sub.channel`, fixing the position of the
    /// subscriber moved into its place.
    fn remove_subscriber(&mut self, conns: &mut Slab<Conn>, sub: Sub) {
        let i = sub.channel as usize;
        let Some(entry) = self.channels.get_mut(i) else { return };
        let pos = sub.pos as usize;
        if pos >= entry.subscribers.len() {
            return;
        }
        entry.subscribers.swap_remove(pos);
        if let Some(&moved) = entry.subscribers.get(pos) {
            if let Some(session) = conns.get_mut(moved).and_then(Conn::session_mut) {
                if let Some(s) = session.subs.iter_mut().find(|s| s.channel as usize == i) {
                    s.pos = sub.pos;
                }
            }
        }
        self.forget_if_unused(i);
    }

    /// Handles `unsubscribe`: `INVALID_CHANNEL` for malformed names, then
    /// `UNSUBSCRIBED` listing the channels that were subscribed.
    pub fn unsubscribe(&mut self, key: usize, conns: &mut Slab<Conn>, names: &[String]) {
        let mut invalid = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for name in names {
            let Some(channel) = Channel::parse(name) else {
                push_unique(&mut invalid, name);
                continue;
            };
            let Some(&i) = self.index.get(&channel) else { continue };
            let Some(conn) = conns.get_mut(key) else { return };
            conn.out.discard_report(DropKey::Channel(i));
            let Some(session) = conn.session_mut() else { return };
            let Some(at) = session.subs.iter().position(|s| s.channel as usize == i) else { continue };
            let sub = session.subs.swap_remove(at);
            self.remove_subscriber(conns, sub);
            removed.push(channel.to_string());
        }
        let Some(conn) = conns.get_mut(key) else { return };
        if !invalid.is_empty() {
            self.reply(
                key,
                conn,
                &protocol::error(ErrorCode::InvalidChannel, "Invalid channel names", Some(json!(invalid))),
            );
        }
        let answer = protocol::control("UNSUBSCRIBED", "Successfully unsubscribed from channels", json!(removed), None);
        self.reply(key, conn, &answer);
    }

    /// Drops every subscription of a closed connection (already out of
    /// `conns`).
    pub fn remove_client(&mut self, conns: &mut Slab<Conn>, subs: &[Sub]) {
        for &sub in subs {
            self.remove_subscriber(conns, sub);
        }
    }

    /// Handles `history` (5a): the newest `limit` kept messages below
    /// `before_seq`, oldest first.
    pub fn history(
        &mut self,
        key: usize,
        conns: &mut Slab<Conn>,
        auth: &Authenticator,
        name: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) {
        let Some(conn) = conns.get_mut(key) else { return };
        let Some(session) = conn.session() else { return };
        let refusal = match Channel::parse(name) {
            None => Some((ErrorCode::InvalidChannel, "Invalid channel names")),
            Some(c) if c.kind != ChannelKind::Logs => {
                Some((ErrorCode::InvalidMessage, "Only logs channels have history"))
            }
            Some(c) if !auth.may_subscribe(&session.identity, &c) => {
                Some((ErrorCode::Forbidden, "Access denied to channels"))
            }
            Some(_) => None,
        };
        if let Some((code, text)) = refusal {
            self.reply(key, conn, &protocol::error(code, text, Some(json!([name]))));
            return;
        }
        let channel = Channel::parse(name);
        let entry = channel.and_then(|c| self.index.get(&c)).and_then(|&i| self.channels.get(i));
        let (kept, complete): (Vec<&Kept>, bool) = match entry {
            None => (Vec::new(), true),
            Some(e) => {
                let below: Vec<&Kept> = e.ring.iter().filter(|k| before_seq.is_none_or(|b| k.seq < b)).collect();
                let skip = below.len().saturating_sub(limit);
                let kept: Vec<&Kept> = below.into_iter().skip(skip).collect();
                let first_is_oldest = match (kept.first(), e.ring.front()) {
                    (Some(k), Some(front)) => k.seq == front.seq,
                    (None, _) => true,
                    _ => false,
                };
                (kept, !e.evicted && first_is_oldest)
            }
        };
        let mut body = String::from("{\"type\":\"history\",\"channel\":");
        body.push_str(&Value::from(channel.map(|c| c.to_string()).unwrap_or_default()).to_string());
        body.push_str(",\"data\":{\"messages\":[");
        for (n, k) in kept.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(std::str::from_utf8(frame_payload(&k.frame)).unwrap_or("null"));
        }
        body.push_str(&format!("],\"complete\":{complete}}},\"timestamp\":\"{}\"}}", Time::now()));
        conn.out.push_control(ws::text(body.as_bytes()));
        self.touch(key, conn);
    }

    /// Handles `auth`: replaces the token of the same user, unsubscribing
    /// channels the new claims no longer allow.
    pub fn reauth(&mut self, key: usize, conns: &mut Slab<Conn>, auth: &Authenticator, token: &str) -> AuthOutcome {
        let Some(session) = conns.get(key).and_then(Conn::session) else { return AuthOutcome::Refused };
        let identity = match auth.validate(token) {
            Ok(id) if id.user == session.identity.user => id,
            Ok(_) => return self.refuse_auth(key, conns, "Token belongs to another user"),
            Err(e) => return self.refuse_auth(key, conns, &format!("Token refused: {e}")),
        };
        let revoked: Vec<Sub> = session
            .subs
            .iter()
            .copied()
            .filter(|s| {
                self.channels.get(s.channel as usize).is_some_and(|c| !auth.may_subscribe(&identity, &c.channel))
            })
            .collect();
        let mut names = Vec::new();
        for sub in revoked {
            names.push(self.channels[sub.channel as usize].name.clone());
            if let Some(conn) = conns.get_mut(key) {
                conn.out.discard_report(DropKey::Channel(sub.channel as usize));
                if let Some(session) = conn.session_mut() {
                    session.subs.retain(|s| s.channel != sub.channel);
                }
            }
            self.remove_subscriber(conns, sub);
        }
        let exp = identity.exp;
        let Some(conn) = conns.get_mut(key) else { return AuthOutcome::Refused };
        if let Some(session) = conn.session_mut() {
            session.set_identity(identity);
        }
        let data = json!({ "expires_at": exp, "revoked": names });
        self.reply(key, conn, &protocol::control("AUTHENTICATED", "Token refreshed", data, None));
        AuthOutcome::Refreshed
    }

    fn refuse_auth(&mut self, key: usize, conns: &mut Slab<Conn>, text: &str) -> AuthOutcome {
        if let Some(conn) = conns.get_mut(key) {
            self.reply(key, conn, &protocol::error(ErrorCode::Unauthorized, text, None));
        }
        AuthOutcome::Refused
    }

    /// Stats: channel name -> subscriber count, for channels with subscribers.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, usize)> {
        self.channels
            .iter()
            .filter(|(_, c)| !c.subscribers.is_empty())
            .map(|(_, c)| (c.name.as_str(), c.subscribers.len()))
    }

    /// Hands the seq counters of metrics, status and notification channels
    /// to the store when they moved (logs channels are saved with their
    /// lines).
    pub fn save_counters(&mut self) {
        if let Some(store) = &self.store {
            if std::mem::take(&mut self.counters_changed) {
                store.save_counters(self.seqs());
            }
        }
    }

    fn seqs(&self) -> Vec<(String, u64)> {
        self.channels.iter().filter(|(_, c)| c.seq > 0).map(|(_, c)| (c.name.clone(), c.seq)).collect()
    }

    /// Flushes and closes the store (clean shutdown: the epoch is kept).
    pub fn close_store(&mut self) {
        if let Some(store) = self.store.take() {
            let seqs = self.seqs();
            if !store.shutdown(seqs) {
                log::warn!("on-disk history was not closed cleanly; the next start begins a new epoch");
            }
        }
    }

    /// The store's figures, when there is one.
    pub fn store_stats(&self) -> Option<StoreStats> {
        self.store.as_ref().map(Store::stats)
    }

    /// A page of a server's kept log lines (no on-disk history).
    pub fn memory_page(&self, query: &LogQuery) -> Page {
        let kept = self.index.get(&Channel::logs(query.server)).and_then(|&i| self.channels.get(i));
        let ring = kept.into_iter().flat_map(|c| c.ring.iter()).map(|k| (k.seq, frame_payload(&k.frame)));
        crate::store::memory_page(query, ring)
    }

    /// Kept history: (entries, bytes).
    pub fn history_size(&self) -> (usize, usize) {
        (self.history_entries, self.history_bytes)
    }
}

/// Queues a live message for one connection (or counts the drop) and lists
/// the connection for the next fan-out flush. Returns whether it was queued.
fn offer(
    key: usize,
    conn: &mut Conn,
    frame: &Rc<[u8]>,
    cap: usize,
    drop: DropKey,
    seq: u64,
    fanout: &mut Vec<usize>,
) -> bool {
    let queued = conn.out.push_live(frame, cap, drop, seq);
    if !conn.fanout {
        conn.fanout = true;
        fanout.push(key);
    }
    queued
}

fn mark_dirty(key: usize, conn: &mut Conn, dirty: &mut Vec<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// The payload of an unmasked server frame.
fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or_default()
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

/// Who an identity is, for log lines.
pub fn describe(identity: &Identity) -> String {
    let role = match identity.role {
        Role::Admin => "admin",
        Role::Service => "service",
        Role::User => "user",
    };
    format!("{} ({role})", identity.user)
}

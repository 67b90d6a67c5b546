//! The hub: clients and channels, and everything that happens between them.
//! It keeps one [`Client`] per open connection (its out-queue and, once
//! upgraded, its [`Session`]), the channel table with `seq`/`epoch`, the
//! history rings and latest values (PROTOCOL.md 5, 5a), and answers the
//! client requests that act on them (`subscribe`, `unsubscribe`,
//! `history`, `auth`). [`Hub::publish`] serializes and frames a message
//! once and shares the bytes with every subscriber's queue; a `logs`
//! channel's subscribers read the shared frames from its history ring
//! instead ([`lag`]). A subscriber that negotiated permessage-deflate gets
//! the frame's compressed variant, made once per window size
//! ([`ws::Shared`]).
//!
//! It knows queues and sessions, not sockets: output is written through
//! [`Hub::write_out`] to any `Write`, and the connections to flush are
//! listed for the reactor ([`Hub::take_dirty`], [`Hub::take_fanout`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod channels;
mod lag;
mod requests;
#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::frame::coding::Control;

use crate::auth::{Authenticator, Role};
use crate::client::{Client, Session};
use crate::config::{HistoryConfig, Limits};
use crate::outq::{DropKey, DropReport};
use crate::protocol::{self, AlertSource, Channel, ChannelKind, ErrorCode, Publish, Time};
use crate::store::{LogQuery, Page, Recovered, Store, StoreStats, StoredLog};
use crate::ws::{self, Shared};
use channels::Channels;
use lag::Wire;

/// Counters for `/api/v1/stats` and `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Messages published.
    pub messages_in: u64,
    /// Copies queued to clients (on a logs channel: one per subscriber,
    /// read from the ring).
    pub messages_out: u64,
    /// Copies dropped for slow clients (on a logs channel: evicted from
    /// the ring before the subscriber read them).
    pub messages_dropped: u64,
}

/// What [`Hub::write_out`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// What the writes paid of what waited, in the units of
    /// [`Hub::pending_bytes`]: bytes, a compressed ring line counted at
    /// its plain size (the write timeout's window).
    pub written: usize,
    /// Something still waits (queued, or unread in a logs ring).
    pub waiting: bool,
    /// Bytes of replies (uncounted items) still waiting.
    pub reply_bytes: usize,
}

/// The hub. See the module docs.
pub struct Hub {
    /// Indexed by connection key; `None` for free keys.
    clients: Vec<Option<Client>>,
    /// Clients with a session.
    sessions: usize,
    channels: Channels,
    epoch: String,
    /// Live messages queued per client at most (`limits.client_queue`).
    queue_cap: usize,
    max_subscriptions: usize,
    /// A `history` reply's size at most (`limits.max_reply_bytes`).
    max_reply_bytes: usize,
    /// Shorter messages go uncompressed (`limits.compress_min_bytes`).
    compress_min_bytes: usize,
    /// Clients with replies to flush at the end of the loop turn.
    dirty: Vec<usize>,
    /// Clients with live messages, flushed together in batches (see the
    /// reactor's `FANOUT_DELAY`).
    fanout: Vec<usize>,
    /// Logs channels with lines their subscribers have not been written
    /// yet; their subscribers join `fanout` when it is taken.
    lagging: Vec<usize>,
    /// Scratch for [`Hub::write_out`].
    order: lag::Order,
    /// Messages published so far: each one's ordinal, and the stamp of
    /// what is queued (so queued items and ring frames keep their order).
    ord: u64,
    /// When the oldest live message not yet flushed was published.
    fanout_since: Option<Instant>,
    /// Counters for stats.
    pub counters: Counters,
    /// On-disk history, when configured.
    store: Option<Store>,
    /// A seq of a channel the store does not save by itself (all but logs)
    /// moved since the last [`Hub::save_counters`].
    counters_changed: bool,
}

impl Hub {
    /// An empty hub in a new epoch.
    ///
    /// With on-disk history, `recovered` gives the epoch, each channel's
    /// last seq and the recent log lines to refill the rings, and every log
    /// line published is also handed to `store`.
    pub fn new(limits: &Limits, history: &HistoryConfig, store: Option<Store>, recovered: Option<Recovered>) -> Hub {
        let mut channels = Channels::new(history, limits.max_idle_channels, limits.client_queue);
        let epoch = match recovered {
            Some(recovered) => channels.restore(recovered),
            None => crate::store::new_epoch(),
        };
        Hub {
            clients: Vec::new(),
            sessions: 0,
            channels,
            epoch,
            queue_cap: limits.client_queue,
            max_subscriptions: limits.max_subscriptions,
            max_reply_bytes: limits.max_reply_bytes,
            compress_min_bytes: limits.compress_min_bytes,
            dirty: Vec::new(),
            fanout: Vec::new(),
            lagging: Vec::new(),
            order: lag::Order::new(),
            ord: 0,
            fanout_since: None,
            counters: Counters::default(),
            store,
            counters_changed: false,
        }
    }

    /// Takes reloaded caps (SIGHUP): `client_queue`, `max_subscriptions`
    /// and `max_reply_bytes` apply to what comes next; queues and
    /// subscriptions already over a lowered cap are left as they are
    /// (`compress_min_bytes` too). `max_idle_channels` is not reloaded.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.queue_cap = limits.client_queue;
        self.channels.set_lag_floor(limits.client_queue);
        self.max_subscriptions = limits.max_subscriptions;
        self.max_reply_bytes = limits.max_reply_bytes;
        self.compress_min_bytes = limits.compress_min_bytes;
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    // ---- clients ----

    /// Adds a client for a new connection under its key.
    pub fn connect(&mut self, key: usize) {
        if self.clients.len() <= key {
            self.clients.resize_with(key + 1, || None);
        }
        if let Some(slot) = self.clients.get_mut(key) {
            *slot = Some(Client::default());
        }
    }

    /// Removes a connection's client, dropping its subscriptions.
    pub fn disconnect(&mut self, key: usize) -> Option<Client> {
        self.end_session(key);
        let client = self.clients.get_mut(key)?.take();
        while self.clients.last().is_some_and(Option::is_none) {
            self.clients.pop();
        }
        client
    }

    /// Gives back the client table's spare capacity once it is mostly
    /// empty.
    pub fn shrink(&mut self) {
        if self.clients.len() < self.clients.capacity() / 4 {
            self.clients.shrink_to_fit();
        }
        for list in [&mut self.dirty, &mut self.fanout, &mut self.lagging] {
            if list.is_empty() {
                list.shrink_to_fit();
            }
        }
    }

    /// The client of a connection.
    pub fn client(&self, key: usize) -> Option<&Client> {
        self.clients.get(key)?.as_ref()
    }

    fn client_mut(&mut self, key: usize) -> Option<&mut Client> {
        self.clients.get_mut(key)?.as_mut()
    }

    /// The session of an upgraded connection.
    pub fn session(&self, key: usize) -> Option<&Session> {
        self.client(key)?.session.as_ref()
    }

    /// The session, mutably.
    pub fn session_mut(&mut self, key: usize) -> Option<&mut Session> {
        self.client_mut(key)?.session.as_mut()
    }

    /// Reply bytes queued for a connection (the input cap of PROTOCOL.md 6).
    pub fn reply_bytes(&self, key: usize) -> usize {
        self.client(key).map_or(0, |c| c.out.reply_bytes())
    }

    /// Upgraded clients.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Starts a client's session (the connection was upgraded).
    pub fn open_session(&mut self, key: usize, session: Session) {
        if let Some(client) = self.client_mut(key) {
            if client.session.replace(session).is_none() {
                self.sessions += 1;
            }
        }
    }

    /// Ends a client's session: its subscriptions and pending drop reports
    /// go; what is queued stays to be written. Returns the session.
    pub fn end_session(&mut self, key: usize) -> Option<Session> {
        let client = self.client_mut(key)?;
        let session = client.session.take()?;
        client.out.discard_reports();
        self.sessions -= 1;
        for &sub in &session.subs {
            self.remove_subscriber(sub);
        }
        Some(session)
    }

    // ---- output ----

    /// Queues bytes that are never dropped (a response, a control frame,
    /// a replayed copy) and lists the client for the end of the turn.
    pub fn queue(&mut self, key: usize, bytes: Rc<[u8]>) {
        let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else { return };
        client.out.push_control(bytes, self.ord);
        mark(key, &mut client.dirty, &mut self.dirty);
    }

    /// Queues a control reply (a text frame, never dropped, not counted),
    /// compressed for a client that negotiated it.
    pub fn reply(&mut self, key: usize, payload: &[u8]) {
        let Some(client) = self.client(key) else { return };
        let frame = Wire::of(client, self.compress_min_bytes).text(payload);
        self.queue(key, frame);
    }

    /// Queues a shared frame (a replay or a latest value) as the client
    /// takes it: compressed or not.
    fn queue_shared(&mut self, key: usize, frame: &Shared) {
        let Some(client) = self.client(key) else { return };
        let frame = Rc::clone(Wire::of(client, self.compress_min_bytes).shared(frame));
        self.queue(key, frame);
    }

    /// Lists a client for the end of the turn (its socket became writable).
    pub fn touch(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else { return };
        mark(key, &mut client.dirty, &mut self.dirty);
    }

    /// Takes the list of clients with replies to flush.
    pub fn take_dirty(&mut self, into: &mut Vec<usize>) {
        into.append(&mut self.dirty);
    }

    /// Takes the list of clients with live messages to flush: those with
    /// queued ones, and the subscribers of the logs channels that had new
    /// lines.
    pub fn take_fanout(&mut self, into: &mut Vec<usize>) {
        self.fanout_since = None;
        for i in self.lagging.drain(..) {
            let Some(entry) = self.channels.get_mut(i) else { continue };
            entry.listed = false;
            for &key in &entry.subscribers {
                if let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) {
                    mark(key, &mut client.fanout, &mut self.fanout);
                }
            }
        }
        into.append(&mut self.fanout);
    }

    /// When the oldest unflushed live message was published, if any.
    pub fn fanout_since(&self) -> Option<Instant> {
        self.fanout_since
    }

    // ---- session timers ----

    /// Queues a WebSocket Ping when one is due; frees an idle client's
    /// buffers otherwise.
    pub fn ping_if_due(&mut self, key: usize, now: Instant, interval: Duration) {
        let Some(client) = self.client_mut(key) else { return };
        let Some(session) = &mut client.session else { return };
        if now < session.next_ping {
            return client.release(now);
        }
        session.next_ping = now + interval;
        self.queue(key, ws::control(Control::Ping, &[]));
    }

    /// Sends `TOKEN_EXPIRING` when due. Returns true when the token has
    /// expired (`exp` + `leeway` passed): the caller closes with `4001`.
    pub fn token_expired(&mut self, key: usize, unix_now: i64, leeway: i64) -> bool {
        let Some(session) = self.session_mut(key) else { return false };
        let exp = session.identity.exp;
        if unix_now >= exp.saturating_add(leeway) {
            return true;
        }
        if unix_now >= session.notice_at && session.notice_at != i64::MAX {
            session.notice_at = i64::MAX;
            let notice = protocol::control("TOKEN_EXPIRING", "Token expiring", json!({ "expires_at": exp }), None);
            self.reply(key, &notice);
        }
        false
    }

    // ---- publish ----

    /// Publishes one message: stamps it, gives it its channel's next seq,
    /// serializes and frames it once, and queues the shared bytes for every
    /// subscriber (alerts: every client the ACL allows; logs channels: its
    /// subscribers read it from the ring). Returns the number of clients it
    /// was queued for.
    pub fn publish(&mut self, auth: &Authenticator, mut msg: Publish) -> usize {
        let now = Time::now();
        msg.stamp(now);
        self.counters.messages_in += 1;
        self.ord += 1;
        let ord = self.ord;
        let Some(channel) = msg.channel() else {
            return self.publish_alert(auth, &msg, now);
        };
        let i = self.channels.index_of(channel);
        self.channels.used(i);
        let Some(entry) = self.channels.get_mut(i) else { return 0 };
        entry.seq += 1;
        let seq = entry.seq;
        let json = msg.encode(now, Some((seq, &self.epoch)));
        let frame = Shared::text(&json);
        let (mut queued, mut dropped) = (0, 0);
        if !entry.subscribers.is_empty() {
            self.fanout_since.get_or_insert_with(Instant::now);
        }
        let out = Out { cap: self.queue_cap, min_bytes: self.compress_min_bytes };
        if channel.kind == ChannelKind::Logs {
            // Read from the ring: the subscribers are listed at the flush.
            queued = entry.subscribers.len() as u64;
            if queued > 0 && !std::mem::replace(&mut entry.listed, true) {
                self.lagging.push(i);
            }
        } else {
            for &key in &entry.subscribers {
                let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else { continue };
                match offer(key, client, &frame, out, (DropKey::Channel(i), seq, ord), &mut self.fanout) {
                    true => queued += 1,
                    false => dropped += 1,
                }
            }
        }
        match channel.kind {
            ChannelKind::Logs => {
                self.channels.keep(i, seq, ord, frame);
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
            ChannelKind::Metrics => {
                entry.latest = Some(Rc::clone(&frame));
                self.counters_changed = true;
                self.channels.keep(i, seq, ord, frame);
                if let (Some(store), Publish::Metrics(m)) = (&self.store, &msg) {
                    store.append_metric(crate::metrics_api::point(m, now));
                }
            }
            ChannelKind::Status => {
                entry.latest = Some(frame);
                if let Publish::Status(s) = msg {
                    entry.server = Some(Box::new((s.server_name, s.new_status)));
                }
                self.counters_changed = true;
            }
            ChannelKind::Notifications => self.counters_changed = true,
        }
        self.counters.messages_out += queued;
        self.counters.messages_dropped += dropped;
        queued as usize
    }

    fn publish_alert(&mut self, auth: &Authenticator, msg: &Publish, now: Time) -> usize {
        let ord = self.ord;
        let Publish::Alert(alert) = msg else { return 0 };
        let frame = Shared::text(&msg.encode(now, None));
        let out = Out { cap: self.queue_cap, min_bytes: self.compress_min_bytes };
        let (mut queued, mut dropped) = (0, 0);
        for (key, slot) in self.clients.iter_mut().enumerate() {
            let Some(client) = slot else { continue };
            let Some(session) = &client.session else { continue };
            let allowed = match (alert.source, alert.source_id) {
                (AlertSource::Server, Some(server)) => auth.may_watch(&session.identity, server),
                _ => session.identity.role == Role::Admin,
            };
            if !allowed {
                continue;
            }
            self.fanout_since.get_or_insert_with(Instant::now);
            match offer(key, client, &frame, out, (DropKey::Alerts, 0, ord), &mut self.fanout) {
                true => queued += 1,
                false => dropped += 1,
            }
        }
        self.counters.messages_out += queued;
        self.counters.messages_dropped += dropped;
        queued as usize
    }

    // ---- stats, store ----

    /// Stats: channel -> subscriber count, for channels with subscribers.
    pub fn subscriptions(&self) -> impl Iterator<Item = (Channel, usize)> + '_ {
        self.channels.subscriptions()
    }

    /// Hands the seq counters of metrics, status and notification channels
    /// to the store when they moved (logs channels are saved with their
    /// lines).
    pub fn save_counters(&mut self) {
        if let Some(store) = &self.store {
            if std::mem::take(&mut self.counters_changed) {
                store.save_counters(self.channels.seqs());
            }
        }
    }

    /// Flushes and closes the store (clean shutdown: the epoch is kept).
    pub fn close_store(&mut self) {
        if let Some(store) = self.store.take() {
            if !store.shutdown(self.channels.seqs()) {
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
        let ring = self.channels.ring(&Channel::logs(query.server)).map(|k| (k.seq, k.frame.payload()));
        crate::store::memory_page(query, ring)
    }

    /// The JSON envelopes kept in a server's metrics ring, oldest first.
    pub fn metrics_ring(&self, server: uuid::Uuid) -> impl Iterator<Item = &[u8]> {
        self.channels.ring(&Channel::metrics(server)).map(|k| k.frame.payload())
    }

    /// Forgets the least recently used channels without subscribers over
    /// `limits.max_idle_channels` (run by the timer).
    pub fn forget_idle_channels(&mut self) {
        self.channels.forget_idle();
    }

    /// Bytes queued for all clients together.
    pub fn queued_bytes(&self) -> usize {
        self.clients.iter().flatten().map(|c| c.out.pending_bytes()).sum()
    }

    /// Channels in the table (with subscribers, a seq or a latest value).
    pub fn channels_kept(&self) -> usize {
        self.channels.len()
    }

    /// Kept history: (entries, bytes).
    pub fn history_size(&self) -> (usize, usize) {
        self.channels.size()
    }

    /// The servers whose status channel is kept, with the name and status
    /// of its latest `server_status` message.
    pub fn servers(&self) -> impl Iterator<Item = (uuid::Uuid, &str, protocol::Status)> {
        self.channels.servers()
    }
}

/// How live messages are queued: the queue cap (`limits.client_queue`)
/// and the compression threshold (`limits.compress_min_bytes`).
#[derive(Clone, Copy)]
struct Out {
    cap: usize,
    min_bytes: usize,
}

/// Queues a live message for one client (or counts the drop under its key
/// and seq) at its publish ordinal, compressed when the client negotiated
/// it, and lists the client for the next fan-out flush. Returns whether it
/// was queued.
fn offer(
    key: usize,
    client: &mut Client,
    frame: &Shared,
    out: Out,
    (drop, seq, ord): (DropKey, u64, u64),
    fanout: &mut Vec<usize>,
) -> bool {
    let bytes = Rc::clone(Wire::of(client, out.min_bytes).shared(frame));
    let queued = client.out.push_live(&bytes, out.cap, drop, seq, ord);
    mark(key, &mut client.fanout, fanout);
    queued
}

/// Lists `key` once in `list` (the flag says it is listed already).
fn mark(key: usize, listed: &mut bool, list: &mut Vec<usize>) {
    if !*listed {
        *listed = true;
        list.push(key);
    }
}

/// `MESSAGES_DROPPED` errors for drop reports (section 5, "Drops").
fn drop_errors(channels: &Channels, reports: Vec<DropReport>) -> impl Iterator<Item = Vec<u8>> + '_ {
    reports.into_iter().map(|r| {
        let details = match r.key {
            DropKey::Channel(i) => json!({
                "channel": channels.get(i).map(|c| c.channel.to_string()),
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

//! The channel table: every channel with subscribers or a seq, its
//! subscriber list, its seq counter, the history ring of a `logs` or
//! `metrics` channel, the latest value of a `metrics`/`status` channel and
//! the server's name and status a `status` channel last carried
//! (PROTOCOL.md 5a). Rings are bounded by `history.log_lines` (logs) or
//! `history.metrics_points` (metrics) each and `history.max_bytes` in all;
//! over the byte budget the oldest entries of the largest ring go.
//!
//! A logs channel's subscribers read its ring by position: each has a
//! cursor, the seq it reads next (beside its key in the channel). So that
//! lag costs no more than a queue of `limits.client_queue` would: a logs
//! ring with subscribers keeps at least that many messages whatever
//! `log_lines` says, and the byte budget evicts none of its last
//! `client_queue` messages that a subscriber has not read yet.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use slab::Slab;

use crate::config::HistoryConfig;
use crate::protocol::{Channel, ChannelKind, Since, Status};
use crate::store::Recovered;
use crate::ws::Shared;

/// After a blocked eviction pass, the next one waits for this many more
/// bytes at least.
pub(super) const SHED_STEP: usize = 64 * 1024;

/// A kept message: its seq, the hub's publish ordinal (0 for messages
/// restored from disk) and its frame (with the compressed variants made
/// for it; the byte budget counts the plain frame).
pub(super) struct Kept {
    pub seq: u64,
    pub ord: u64,
    pub frame: Rc<Shared>,
}

/// One channel.
pub(super) struct Entry {
    pub channel: Channel,
    /// Client keys; a client's `Sub::pos` is its index here.
    pub subscribers: Vec<usize>,
    /// Logs channels: each subscriber's cursor (the seq it reads next),
    /// at the same index as its key; empty for other kinds.
    pub cursors: Vec<u64>,
    /// Listed among the channels whose subscribers have lines to read.
    pub listed: bool,
    /// Last seq issued in this epoch (0: none).
    pub seq: u64,
    /// Logs channels: the last `history.log_lines` messages; metrics
    /// channels: the last `history.metrics_points`.
    pub ring: VecDeque<Kept>,
    /// Bytes of `ring`.
    ring_bytes: usize,
    /// Something was evicted from `ring` in this epoch.
    pub evicted: bool,
    /// Metrics and status channels: the latest message.
    pub latest: Option<Rc<Shared>>,
    /// Status channels: the server's name and status in the latest message
    /// (boxed: most channels have none).
    pub server: Option<Box<(String, Status)>>,
    /// When it was last used (the table's clock), for forgetting idle ones.
    used: u64,
}

impl Entry {
    /// Where a logs subscriber whose cursor is `next` reads: the index in
    /// the ring of the first kept message at or after `next`, and the seqs
    /// evicted before it read them, if any.
    pub fn locate(&self, next: u64) -> (usize, Option<(u64, u64)>) {
        let Some(front) = self.ring.front() else {
            return (0, (next <= self.seq).then_some((next, self.seq)));
        };
        if next < front.seq {
            return (0, Some((next, front.seq - 1)));
        }
        // Seqs are consecutive in a ring filled live; one restored from
        // disk may have holes.
        let guess = usize::try_from(next - front.seq).unwrap_or(usize::MAX);
        if self.ring.get(guess).is_some_and(|k| k.seq == next) {
            return (guess, None);
        }
        (self.ring.partition_point(|k| k.seq < next), None)
    }

    /// The byte budget may evict the messages with a seq below this: those
    /// every subscriber has read, and those older than the last `floor`.
    fn evictable_below(&self, floor: usize) -> u64 {
        match self.cursors.iter().min() {
            None => u64::MAX,
            Some(&min) => min.max((self.seq + 1).saturating_sub(floor as u64)),
        }
    }
}

/// The table. See the module docs.
pub(super) struct Channels {
    slab: Slab<Entry>,
    index: HashMap<Channel, usize>,
    log_lines: usize,
    metrics_points: usize,
    max_bytes: usize,
    bytes: usize,
    entries: usize,
    /// Channels without subscribers, and how many of them are kept at most
    /// (`limits.max_idle_channels`).
    idle: usize,
    max_idle: usize,
    /// Counts uses (publishes, unsubscribes) to order idle channels.
    clock: u64,
    /// Messages a subscribed logs ring keeps unread at least
    /// (`limits.client_queue`).
    lag_floor: usize,
    /// After an eviction pass that could not get under the budget (what is
    /// over it is unread), the next pass waits until the rings hold this
    /// many bytes, so publishing does not sort the rings for every line.
    shed_at: usize,
    /// The highest seq of a forgotten channel: a channel created after it
    /// continues above it, so no seq is issued twice in an epoch.
    seq_floor: u64,
}

impl Channels {
    pub fn new(history: &HistoryConfig, max_idle: usize, lag_floor: usize) -> Channels {
        Channels {
            slab: Slab::new(),
            index: HashMap::new(),
            log_lines: history.log_lines,
            metrics_points: history.metrics_points,
            max_bytes: history.max_bytes,
            bytes: 0,
            entries: 0,
            idle: 0,
            max_idle,
            clock: 0,
            lag_floor,
            shed_at: 0,
            seq_floor: 0,
        }
    }

    /// Takes a reloaded `limits.client_queue`.
    pub fn set_lag_floor(&mut self, lag_floor: usize) {
        self.lag_floor = lag_floor;
    }

    /// Goes on from what the on-disk history knows: each channel's last seq
    /// and the recent log lines refill the rings. Returns the epoch.
    pub fn restore(&mut self, recovered: Recovered) -> String {
        for (name, seq) in recovered.seqs {
            if let Some(channel) = Channel::parse(&name) {
                let i = self.index_of(channel);
                if let Some(entry) = self.slab.get_mut(i) {
                    entry.seq = seq;
                    // Metrics rings are not stored: what came before the
                    // restart is gone.
                    entry.evicted |= channel.kind == ChannelKind::Metrics && seq > 0;
                }
            }
        }
        for (server, entries) in recovered.recent {
            let i = self.index_of(Channel::logs(server));
            let skip = entries.len().saturating_sub(self.log_lines);
            for (seq, envelope) in entries.into_iter().skip(skip) {
                self.keep(i, seq, 0, Shared::text(envelope.as_bytes()));
            }
            if let Some(entry) = self.slab.get_mut(i) {
                entry.seq = entry.seq.max(entry.ring.back().map_or(0, |k| k.seq));
                entry.evicted = skip > 0 || recovered.evicted.contains(&server);
            }
        }
        recovered.epoch
    }

    /// The index of `channel`, created when it has none.
    pub fn index_of(&mut self, channel: Channel) -> usize {
        if let Some(&i) = self.index.get(&channel) {
            return i;
        }
        self.clock += 1;
        let i = self.slab.insert(Entry {
            channel,
            subscribers: Vec::new(),
            cursors: Vec::new(),
            listed: false,
            seq: self.seq_floor,
            ring: VecDeque::new(),
            ring_bytes: 0,
            evicted: self.seq_floor > 0,
            latest: None,
            server: None,
            used: self.clock,
        });
        self.index.insert(channel, i);
        self.idle += 1;
        i
    }

    /// Adds a subscriber (on a logs channel, reading from the next
    /// message); returns its position in the channel's list.
    pub fn subscribe(&mut self, i: usize, key: usize) -> Option<u32> {
        let entry = self.slab.get_mut(i)?;
        if entry.subscribers.is_empty() {
            self.idle -= 1;
        }
        entry.subscribers.push(key);
        if entry.channel.kind == ChannelKind::Logs {
            entry.cursors.push(entry.seq + 1);
        }
        Some(entry.subscribers.len() as u32 - 1)
    }

    /// Removes the subscriber at `pos`; returns the key moved into its place.
    pub fn unsubscribe(&mut self, i: usize, pos: usize) -> Option<usize> {
        let entry = self.slab.get_mut(i)?;
        if pos >= entry.subscribers.len() {
            return None;
        }
        entry.subscribers.swap_remove(pos);
        if pos < entry.cursors.len() {
            entry.cursors.swap_remove(pos);
        }
        let moved = entry.subscribers.get(pos).copied();
        if entry.subscribers.is_empty() {
            entry.subscribers = Vec::new();
            entry.cursors = Vec::new();
            self.idle += 1;
            self.clock += 1;
            entry.used = self.clock;
            // Without subscribers the lag floor no longer holds the ring.
            self.trim(i);
        }
        moved
    }

    /// Marks a channel used (a message was published on it).
    pub fn used(&mut self, i: usize) {
        self.clock += 1;
        if let Some(entry) = self.slab.get_mut(i) {
            entry.used = self.clock;
        }
    }

    /// Forgets the least recently used channels without subscribers while
    /// more than `max_idle` are kept (their seq, latest value and ring go;
    /// a channel created later continues above every forgotten seq).
    /// Runs in time proportional to the table only when over the cap.
    pub fn forget_idle(&mut self) {
        if self.idle <= self.max_idle {
            return;
        }
        let mut idle: Vec<(u64, usize)> =
            self.slab.iter().filter(|(_, c)| c.subscribers.is_empty()).map(|(i, c)| (c.used, i)).collect();
        idle.sort_unstable();
        // Down to 15/16 of the cap, so the scan runs once per 1/16 of it.
        let target = self.max_idle - self.max_idle / 16;
        for (_, i) in idle.into_iter().take(self.idle.saturating_sub(target)) {
            while self.slab.get(i).is_some_and(|c| !c.ring.is_empty()) {
                self.evict(i);
            }
            let entry = self.slab.remove(i);
            self.index.remove(&entry.channel);
            self.seq_floor = self.seq_floor.max(entry.seq);
            self.idle -= 1;
        }
    }

    /// The index of `channel`, if it exists.
    pub fn find(&self, channel: &Channel) -> Option<usize> {
        self.index.get(channel).copied()
    }

    pub fn get(&self, i: usize) -> Option<&Entry> {
        self.slab.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Entry> {
        self.slab.get_mut(i)
    }

    /// Forgets a channel that has no subscriber and never had a message.
    pub fn forget_if_unused(&mut self, i: usize) {
        if self.slab.get(i).is_some_and(|c| c.subscribers.is_empty() && c.seq == self.seq_floor) {
            let entry = self.slab.remove(i);
            self.index.remove(&entry.channel);
            self.idle -= 1;
        }
    }

    /// Number of channels in the table.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Adds a message (publish ordinal `ord`) to a logs or metrics
    /// channel's ring, evicting what the caps (`history.log_lines` or
    /// `history.metrics_points`, `history.max_bytes`) no longer allow.
    /// Other channels keep no ring.
    pub fn keep(&mut self, i: usize, seq: u64, ord: u64, frame: Rc<Shared>) {
        let Some(entry) = self.slab.get_mut(i) else { return };
        if !matches!(entry.channel.kind, ChannelKind::Logs | ChannelKind::Metrics) {
            return;
        }
        let len = frame.plain().len();
        entry.ring_bytes += len;
        self.bytes += len;
        self.entries += 1;
        entry.ring.push_back(Kept { seq, ord, frame });
        self.trim(i);
        if self.bytes > self.max_bytes.max(self.shed_at) {
            self.shed();
        }
    }

    /// Evicts the oldest messages of a ring over its count cap.
    fn trim(&mut self, i: usize) {
        let Some(entry) = self.slab.get(i) else { return };
        let cap = match entry.channel.kind {
            ChannelKind::Logs if entry.subscribers.is_empty() => self.log_lines,
            ChannelKind::Logs => self.log_lines.max(self.lag_floor),
            ChannelKind::Metrics => self.metrics_points,
            ChannelKind::Status | ChannelKind::Notifications => return,
        };
        let over = entry.ring.len().saturating_sub(cap);
        for _ in 0..over {
            self.evict(i);
        }
    }

    /// Over the byte budget: evicts the oldest messages of the largest
    /// rings down to a low-water mark, so the scan for the largest runs
    /// once per 1/64 of the budget rather than once per published line. A
    /// ring gives only what its subscribers have read, or what is older
    /// than its last `lag_floor` messages.
    fn shed(&mut self) {
        let low = self.max_bytes - self.max_bytes / 64;
        let mut rings: Vec<(usize, usize)> =
            self.slab.iter().filter(|(_, c)| c.ring_bytes > 0).map(|(k, c)| (c.ring_bytes, k)).collect();
        rings.sort_unstable_by(|a, b| b.cmp(a));
        for (_, k) in rings {
            if self.bytes <= low {
                break;
            }
            let below = self.slab.get(k).map_or(0, |c| c.evictable_below(self.lag_floor));
            while self.bytes > low
                && self.slab.get(k).and_then(|c| c.ring.front()).is_some_and(|front| front.seq < below)
            {
                self.evict(k);
            }
        }
        self.shed_at = match self.bytes > low {
            true => self.bytes + (self.max_bytes / 64).max(SHED_STEP),
            false => 0,
        };
    }

    fn evict(&mut self, i: usize) {
        let Some(entry) = self.slab.get_mut(i) else { return };
        if let Some(old) = entry.ring.pop_front() {
            let len = old.frame.plain().len();
            entry.ring_bytes -= len;
            entry.evicted = true;
            self.bytes -= len;
            self.entries -= 1;
        }
    }

    /// The kept messages after `since` (appended to `out`), or false when
    /// they cannot all be given (5a).
    pub fn recover(&self, i: usize, since: &Since, epoch: &str, out: &mut Vec<Rc<Shared>>) -> bool {
        let Some(entry) = self.slab.get(i) else { return false };
        if since.epoch != epoch || since.seq > entry.seq {
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

    /// The newest `limit` kept messages of `channel` with `seq <
    /// before_seq`, oldest first, and whether the first of them is the
    /// oldest the channel ever had in this epoch (5a `complete`).
    pub fn page(&self, channel: &Channel, limit: usize, before_seq: Option<u64>) -> (Vec<&Kept>, bool) {
        // A channel not in the table never had a message, unless it was
        // forgotten: then nothing is known of what it had.
        let Some(e) = self.find(channel).and_then(|i| self.slab.get(i)) else {
            return (Vec::new(), self.seq_floor == 0);
        };
        let below = e.ring.iter().filter(|k| before_seq.is_none_or(|b| k.seq < b));
        let count = below.clone().count();
        let kept: Vec<&Kept> = below.skip(count.saturating_sub(limit)).collect();
        let first_is_oldest = match (kept.first(), e.ring.front()) {
            (Some(k), Some(front)) => k.seq == front.seq,
            (None, _) => true,
            _ => false,
        };
        (kept, !e.evicted && first_is_oldest)
    }

    /// The ring of a channel, oldest first (empty when it has none).
    pub fn ring(&self, channel: &Channel) -> impl DoubleEndedIterator<Item = &Kept> {
        self.find(channel).and_then(|i| self.slab.get(i)).into_iter().flat_map(|c| c.ring.iter())
    }

    /// Channel → subscriber count, for channels with subscribers.
    pub fn subscriptions(&self) -> impl Iterator<Item = (Channel, usize)> + '_ {
        self.slab.iter().filter(|(_, c)| !c.subscribers.is_empty()).map(|(_, c)| (c.channel, c.subscribers.len()))
    }

    /// Every channel's last seq (channels that issued one).
    pub fn seqs(&self) -> Vec<(String, u64)> {
        self.slab.iter().filter(|(_, c)| c.seq > 0).map(|(_, c)| (c.channel.to_string(), c.seq)).collect()
    }

    /// Kept history: (entries, bytes).
    pub fn size(&self) -> (usize, usize) {
        (self.entries, self.bytes)
    }

    /// Every kept status channel's server with the name and status of its
    /// latest message.
    pub fn servers(&self) -> impl Iterator<Item = (uuid::Uuid, &str, Status)> {
        self.slab
            .iter()
            .filter_map(|(_, c)| c.server.as_deref().map(|(name, status)| (c.channel.id, name.as_str(), *status)))
    }
}

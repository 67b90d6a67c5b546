//! Lag as a cursor (PROTOCOL.md 5.6): a subscriber of a `logs` channel
//! has no copies queued for it; it reads the channel's history ring from
//! its cursor (the seq it reads next) when its socket is written. Publishing
//! a line only lists the channel; the next fan-out flush lists its
//! subscribers. What was evicted before a subscriber read it becomes one
//! `MESSAGES_DROPPED` for exactly that range, written where the gap is.
//!
//! [`Hub::write_out`] puts a client's queued items (replies, alerts, other
//! channels' messages) and its ring frames on the wire in the order they
//! were published: each queued item carries the publish ordinal it was
//! queued at, each ring frame the ordinal it was published at, and one
//! `writev` takes them merged. A ring frame half written when the socket
//! filled up moves into the queue, first, to be finished.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use smallvec::SmallVec;

use super::channels::{Channels, Kept};
use super::{drop_errors, Counters, Hub, Written};
use crate::client::Client;
use crate::outq::{DropKey, DropReport};
use crate::ws::{self, Shared};
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// How many buffers one `writev` takes at most.
const IOV_BATCH: usize = 128;
/// A graceful close carries at most this many bytes of a client's unread
/// log lines (at their plain size) before its Close frame; the rest of
/// each channel's unread lines is reported dropped. A client far behind on
/// many busy channels would otherwise hold every one of those lines (and
/// their compression) for the close's linger.
pub(super) const CLOSE_CARRY_BYTES: usize = 1 << 20;

/// A client's logs subscriptions with something to write, by the publish
/// ordinal of what each writes next (then by index): the next ring frame
/// of one client costs O(log subscriptions), not a scan of them all. Kept
/// by the hub between writes, so it allocates only when it grows.
pub(super) type Order = BinaryHeap<Reverse<(u64, usize)>>;

/// One logs subscription with lines to read: its channel, its index among
/// the channel's subscribers, its place in the ring, and the seqs evicted
/// before it read them, if any.
#[derive(Clone, Copy)]
struct Head {
    channel: usize,
    pos: usize,
    idx: usize,
    gap: Option<(u64, u64)>,
}

/// One buffer of a `writev`: a queued item, a gap's report, or a ring
/// frame (head, ring index, seq, the frame's length and its plain one).
#[derive(Clone, Copy)]
enum Piece {
    Queued(usize),
    Report { head: usize, len: usize },
    Ring { head: usize, idx: usize, seq: u64, len: usize, plain: usize },
}

/// How a client takes frames: compressed with its window (when it
/// negotiated permessage-deflate) from `min_bytes` on, else plain.
#[derive(Clone, Copy)]
pub(super) struct Wire {
    deflate: Option<u8>,
    min_bytes: usize,
}

impl Wire {
    pub(super) fn of(client: &Client, min_bytes: usize) -> Wire {
        Wire { deflate: client.session.as_ref().and_then(|s| s.deflate), min_bytes }
    }

    /// A text frame made for this client alone (a reply, a drop report).
    pub(super) fn text(self, payload: &[u8]) -> Rc<[u8]> {
        ws::message(OpCode::Data(Data::Text), payload, self.deflate, self.min_bytes)
    }

    /// The frame of a shared message this client gets (compressed once
    /// per window size).
    pub(super) fn shared(self, frame: &Shared) -> &Rc<[u8]> {
        frame.variant(self.deflate, self.min_bytes)
    }

    /// [`Wire::shared`] for a kept message.
    fn ring(self, k: &Kept) -> &Rc<[u8]> {
        self.shared(&k.frame)
    }
}

impl Hub {
    /// Writes what waits for a client to `w` (its socket) until it would
    /// block: queued items and the lines its logs subscriptions have not
    /// read, in publish order; once live messages have drained below the
    /// cap, the pending `MESSAGES_DROPPED` reports are queued and written
    /// too.
    ///
    /// # Errors
    /// A write error other than WouldBlock/Interrupted: the connection is
    /// gone.
    pub fn write_out(&mut self, key: usize, w: &mut impl Write) -> io::Result<Written> {
        let cap = self.queue_cap;
        let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) else {
            return Ok(Written { written: 0, waiting: false, reply_bytes: 0 });
        };
        client.dirty = false;
        client.fanout = false;
        let wire = Wire::of(client, self.compress_min_bytes);
        let mut written = 0;
        loop {
            let (n, more) = write_batch(client, wire, &mut self.channels, &mut self.counters, &mut self.order, w)?;
            written += n;
            if more {
                continue;
            }
            let reports = client.out.take_reports(cap);
            if reports.is_empty() {
                break;
            }
            for error in drop_errors(&self.channels, reports) {
                client.out.push_control(wire.text(&error), self.ord);
            }
        }
        let waiting = !client.out.is_empty() || lagging(client, &self.channels);
        Ok(Written { written, waiting, reply_bytes: client.out.reply_bytes() })
    }

    /// Bytes waiting for a client: queued, and unread in its logs rings
    /// at their plain size (a compressing client's writes pay them off at
    /// that size, [`Written::written`], so no line is compressed before
    /// it is written). Linear in its lag: for the write timeout's window,
    /// which opens rarely.
    pub fn pending_bytes(&self, key: usize) -> usize {
        let Some(client) = self.client(key) else { return 0 };
        let Some(session) = &client.session else { return client.out.pending_bytes() };
        let unread = session.subs.iter().filter_map(|sub| {
            let entry = self.channels.get(sub.channel as usize)?;
            let &next = entry.cursors.get(sub.pos as usize)?;
            let (idx, _) = entry.locate(next);
            Some(entry.ring.range(idx..).map(|k| k.frame.plain().len()).sum::<usize>())
        });
        client.out.pending_bytes() + unread.sum::<usize>()
    }

    /// Queues a Close frame after everything the client has not read yet,
    /// its unread log lines included up to [`CLOSE_CARRY_BYTES`] (a
    /// graceful close: it may still read them, PROTOCOL.md 12); the rest
    /// of a channel's unread lines gets one `MESSAGES_DROPPED`.
    pub fn queue_close(&mut self, key: usize, frame: Rc<[u8]>) {
        if let Some(client) = self.clients.get_mut(key).and_then(Option::as_mut) {
            let wire = Wire::of(client, self.compress_min_bytes);
            let mut frames: Vec<(u64, Rc<[u8]>)> = Vec::new();
            let mut budget = CLOSE_CARRY_BYTES;
            for head in heads(client, &self.channels) {
                if let Some(report) = report_gap(&mut self.channels, &mut self.counters, head, wire) {
                    // Right before the first line after the gap.
                    let at = self.channels.get(head.channel).and_then(|e| e.ring.get(head.idx));
                    frames.push((at.map_or(u64::MAX, |k| k.ord), report));
                }
                let Some(entry) = self.channels.get(head.channel) else { continue };
                for k in entry.ring.range(head.idx..) {
                    let Some(rest) = budget.checked_sub(k.frame.plain().len()) else {
                        // Not carried: this line and those after it.
                        let range = (k.seq, entry.seq);
                        if let Some(report) =
                            dropped_frame(&self.channels, &mut self.counters, head.channel, range, wire)
                        {
                            frames.push((k.ord, report));
                        }
                        break;
                    };
                    budget = rest;
                    frames.push((k.ord, Rc::clone(wire.ring(k))));
                }
                if let Some(entry) = self.channels.get_mut(head.channel) {
                    let last = entry.seq;
                    if let Some(cursor) = entry.cursors.get_mut(head.pos) {
                        *cursor = last + 1;
                    }
                }
            }
            frames.sort_by_key(|(ord, _)| *ord);
            client.out.merge_ring(frames);
        }
        self.queue(key, frame);
    }
}

/// Whether any logs subscription of the client has lines to read.
fn lagging(client: &Client, channels: &Channels) -> bool {
    let Some(session) = &client.session else { return false };
    session.subs.iter().any(|sub| {
        channels
            .get(sub.channel as usize)
            .is_some_and(|e| e.cursors.get(sub.pos as usize).is_some_and(|&next| next <= e.seq))
    })
}

/// The logs subscriptions of a client with lines to read, or with lines
/// evicted before it read them.
fn heads(client: &Client, channels: &Channels) -> SmallVec<[Head; 4]> {
    let mut heads = SmallVec::new();
    let Some(session) = &client.session else { return heads };
    for sub in &session.subs {
        let (channel, pos) = (sub.channel as usize, sub.pos as usize);
        let Some(entry) = channels.get(channel) else { continue };
        let Some(&next) = entry.cursors.get(pos) else { continue };
        let (idx, gap) = entry.locate(next);
        if idx < entry.ring.len() || gap.is_some() {
            heads.push(Head { channel, pos, idx, gap });
        }
    }
    heads
}

/// The publish ordinal of what a head writes next: its gap's report takes
/// the place of the line after it (and comes after everything when no line
/// after it is kept); `None` when it has nothing left.
fn next_ord(channels: &Channels, head: &Head) -> Option<u64> {
    let k = channels.get(head.channel)?.ring.get(head.idx);
    match head.gap {
        Some(_) => Some(k.map_or(u64::MAX, |k| k.ord)),
        None => k.map(|k| k.ord),
    }
}

/// Moves a cursor past what was evicted before it was read, and counts it:
/// the `MESSAGES_DROPPED` frame for exactly that range (none without a
/// gap).
fn report_gap(channels: &mut Channels, counters: &mut Counters, head: Head, wire: Wire) -> Option<Rc<[u8]>> {
    let (from_seq, to_seq) = head.gap?;
    let cursor = channels.get_mut(head.channel)?.cursors.get_mut(head.pos)?;
    *cursor = to_seq + 1;
    dropped_frame(channels, counters, head.channel, (from_seq, to_seq), wire)
}

/// The `MESSAGES_DROPPED` frame for seqs `from_seq..=to_seq` of a logs
/// channel, counted.
fn dropped_frame(
    channels: &Channels,
    counters: &mut Counters,
    channel: usize,
    (from_seq, to_seq): (u64, u64),
    wire: Wire,
) -> Option<Rc<[u8]>> {
    let dropped = to_seq - from_seq + 1;
    counters.messages_dropped += dropped;
    let report = DropReport { key: DropKey::Channel(channel), dropped, from_seq, to_seq };
    drop_errors(channels, vec![report]).next().map(|error| wire.text(&error))
}

/// One `writev` of what waits for a client, queued items and ring frames
/// merged by publish ordinal, each gap's report right before the line
/// after it. Returns what it paid of what waited ([`Written::written`])
/// and whether to try again
/// (something is left; the next call finds out whether the socket takes
/// it).
///
/// A report is made for the batch and counted only once it is written: a
/// reader that does not get that far gets one report later, for all that
/// was evicted by then.
fn write_batch(
    client: &mut Client,
    wire: Wire,
    channels: &mut Channels,
    counters: &mut Counters,
    order: &mut Order,
    w: &mut impl Write,
) -> io::Result<(usize, bool)> {
    let mut heads = heads(client, channels);
    let reports: SmallVec<[Option<Rc<[u8]>>; 4]> = heads
        .iter()
        .map(|h| {
            let (from_seq, to_seq) = h.gap?;
            let report =
                DropReport { key: DropKey::Channel(h.channel), dropped: to_seq - from_seq + 1, from_seq, to_seq };
            drop_errors(channels, vec![report]).next().map(|error| wire.text(&error))
        })
        .collect();
    let mut slices = [IoSlice::new(&[]); IOV_BATCH];
    let mut plan = [Piece::Queued(0); IOV_BATCH];
    let mut n = 0;
    let mut total = 0;
    let mut queued = client.out.waiting().peekable();
    order.clear();
    order.extend(heads.iter().enumerate().filter_map(|(h, head)| Some(Reverse((next_ord(channels, head)?, h)))));
    while let (Some(slice), Some(piece)) = (slices.get_mut(n), plan.get_mut(n)) {
        // What comes next among the heads: the one published first.
        let next = order.peek().map(|&Reverse(next)| next);
        let take_queued = match (queued.peek(), next) {
            (Some(&(_, stamp, first)), Some((ord, _))) => first || stamp < ord,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let ring = next.filter(|_| !take_queued).and_then(|(_, h)| Some((h, heads.get_mut(h)?)));
        match ring {
            Some((h, head)) if head.gap.is_some() => {
                head.gap = None;
                let Some(report) = reports.get(h).and_then(Option::as_ref) else { break };
                *slice = IoSlice::new(report);
                *piece = Piece::Report { head: h, len: report.len() };
            }
            Some((h, head)) => {
                let Some(k) = channels.get(head.channel).and_then(|e| e.ring.get(head.idx)) else { break };
                let frame = wire.ring(k);
                *slice = IoSlice::new(frame);
                *piece =
                    Piece::Ring { head: h, idx: head.idx, seq: k.seq, len: frame.len(), plain: k.frame.plain().len() };
                head.idx += 1;
            }
            None => {
                let Some((bytes, _, _)) = queued.next() else { break };
                *slice = IoSlice::new(bytes);
                *piece = Piece::Queued(bytes.len());
            }
        }
        if let Some((_, h)) = next.filter(|_| !take_queued) {
            order.pop();
            if let Some(ord) = heads.get(h).and_then(|head| next_ord(channels, head)) {
                order.push(Reverse((ord, h)));
            }
        }
        total += slice.len();
        n += 1;
    }
    drop(queued);
    if n == 0 {
        return Ok((0, false));
    }
    let written = loop {
        match w.write_vectored(slices.get(..n).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => break written,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((0, false)),
            Err(e) => return Err(e),
        }
    };
    let heads = self::heads(client, channels);
    let mut left = written;
    let mut paid = 0;
    for piece in plan.iter().take(n) {
        let (len, took) = match *piece {
            Piece::Queued(len) => {
                let took = left.min(len);
                client.out.advance(took);
                (len, took)
            }
            Piece::Report { head, len } => {
                let took = left.min(len);
                let (Some(&h), true) = (heads.get(head), took > 0) else { break };
                report_gap(channels, counters, h, wire);
                if took < len {
                    if let Some(report) = reports.get(head).and_then(Option::clone) {
                        client.out.push_first(report, took);
                    }
                }
                (len, took)
            }
            Piece::Ring { head, idx, seq, len, plain } => {
                let took = left.min(len);
                let (Some(h), true) = (heads.get(head), took > 0) else { break };
                // The window owed this line at its plain size: its first
                // write pays what compression saved too.
                paid += plain.saturating_sub(len);
                let Some(entry) = channels.get_mut(h.channel) else { break };
                if let Some(cursor) = entry.cursors.get_mut(h.pos) {
                    *cursor = seq + 1;
                }
                if took < len {
                    if let Some(k) = entry.ring.get(idx) {
                        client.out.push_first(Rc::clone(wire.ring(k)), took);
                    }
                }
                (len, took)
            }
        };
        left -= took;
        paid += took;
        if took < len {
            break;
        }
    }
    // Everything waiting went out, or the socket may take more.
    Ok((paid, written < total || n == IOV_BATCH))
}

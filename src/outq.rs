//! One connection's outgoing queue: shared, already framed bytes waiting for
//! the socket, written with one `writev` per call (DESIGN.md rule 3).
//!
//! Live channel messages and alerts count toward the cap
//! (`limits.client_queue`); when it is reached, a new one is dropped for this
//! client only and remembered as a [`DropReport`] (PROTOCOL.md section 5,
//! "Drops"). Control replies never count and are never dropped. An idle
//! queue holds no allocation once [`OutQueue::release`] has run.
//!
//! Lines of `logs` channels are not queued here: a subscriber reads them
//! from the channel's history ring by position (`hub::lag`). Each item
//! carries the publish ordinal it was queued at, so that writer can put
//! ring frames and queued items on the wire in the order they were
//! published; a ring frame half written when the socket filled up, and a
//! ring's drop report, are queued here (first) to be finished.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// What dropped messages are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropKey {
    /// A channel, by the hub's channel index.
    Channel(usize),
    /// Alerts (one key for all).
    Alerts,
}

/// Messages dropped for one key since its last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropReport {
    /// Channel or alerts.
    pub key: DropKey,
    /// How many.
    pub dropped: u64,
    /// First dropped seq (channels).
    pub from_seq: u64,
    /// Last dropped seq (channels).
    pub to_seq: u64,
}

/// What an item is, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A reply (response, control reply, replayed copy): counted in
    /// `reply_bytes`, never dropped.
    Reply,
    /// A live message that counts toward the cap.
    Live,
    /// The rest of a logs channel's frame (or its drop report), taken from
    /// the ring: neither counted nor a reply.
    Ring,
}

#[derive(Debug)]
struct Item {
    bytes: Rc<[u8]>,
    /// The hub's publish ordinal when it was queued (see the module docs).
    stamp: u64,
    kind: Kind,
}

/// How many buffers one `writev` takes at most.
const IOV_BATCH: usize = 128;

/// The queue. See the module docs.
#[derive(Debug, Default)]
pub struct OutQueue {
    items: VecDeque<Item>,
    /// Bytes of the front item already written.
    offset: u32,
    /// Counted items queued.
    live: u32,
    /// Bytes waiting, all items.
    bytes: usize,
    /// Bytes of uncounted items (replies) waiting.
    reply_bytes: usize,
    /// Pending drop reports, in order of first drop (allocated only while
    /// messages are being dropped).
    #[allow(clippy::box_collection)] // 8 bytes per idle connection instead of 24
    drops: Option<Box<Vec<DropReport>>>,
}

impl OutQueue {
    /// Queues bytes that never count and are never dropped (HTTP responses,
    /// control replies, replayed copies), at publish ordinal `stamp`.
    pub fn push_control(&mut self, bytes: Rc<[u8]>, stamp: u64) {
        self.bytes += bytes.len();
        self.reply_bytes += bytes.len();
        self.items.push_back(Item { bytes, stamp, kind: Kind::Reply });
    }

    /// Queues a live message (publish ordinal `stamp`) unless `cap` counted
    /// messages are queued; then records the drop under `key` (with `seq`
    /// for channels) and returns false.
    pub fn push_live(&mut self, bytes: &Rc<[u8]>, cap: usize, key: DropKey, seq: u64, stamp: u64) -> bool {
        if (self.live as usize) < cap {
            self.bytes += bytes.len();
            self.items.push_back(Item { bytes: Rc::clone(bytes), stamp, kind: Kind::Live });
            self.live += 1;
            return true;
        }
        let drops = self.drops.get_or_insert_with(Box::default);
        match drops.iter_mut().find(|d| d.key == key) {
            Some(report) => {
                report.dropped += 1;
                report.to_seq = seq;
            }
            None => drops.push(DropReport { key, dropped: 1, from_seq: seq, to_seq: seq }),
        }
        false
    }

    /// Queues a ring frame (or a ring's drop report) of which the first
    /// `written` bytes went out: it goes before everything waiting.
    pub fn push_first(&mut self, bytes: Rc<[u8]>, written: usize) {
        let left = bytes.len().saturating_sub(written);
        self.bytes += left;
        // Only ever called when what was queued before it went out whole.
        debug_assert_eq!(self.offset, 0);
        self.items.push_front(Item { bytes, stamp: 0, kind: Kind::Ring });
        // Below the frame's length: fits in u32.
        self.offset = written as u32;
    }

    /// Queues ring frames (publish ordinal, frame) in ordinal order, merged
    /// with what waits by ordinal (a connection closing gracefully gets
    /// the lines it had not read yet before its Close frame).
    pub fn merge_ring(&mut self, frames: Vec<(u64, Rc<[u8]>)>) {
        if frames.is_empty() {
            return;
        }
        let mut old = std::mem::take(&mut self.items).into_iter().peekable();
        let mut items = VecDeque::with_capacity(old.len() + frames.len());
        if self.offset > 0 {
            items.extend(old.next());
        }
        for (ord, bytes) in frames {
            while let Some(item) = old.next_if(|i| i.stamp < ord) {
                items.push_back(item);
            }
            self.bytes += bytes.len();
            items.push_back(Item { bytes, stamp: ord, kind: Kind::Ring });
        }
        items.extend(old);
        self.items = items;
    }

    /// What waits, in order, for a writer that interleaves ring frames:
    /// each item's unwritten bytes, its stamp, and whether it must go
    /// first whatever its stamp (it is half written).
    pub fn waiting(&self) -> impl Iterator<Item = (&[u8], u64, bool)> {
        let offset = self.offset as usize;
        self.items.iter().enumerate().map(move |(n, item)| {
            let skip = if n == 0 { offset } else { 0 };
            (item.bytes.get(skip..).unwrap_or_default(), item.stamp, skip > 0)
        })
    }

    /// Drop reports to send now: all of them once the count is below `cap`.
    pub fn take_reports(&mut self, cap: usize) -> Vec<DropReport> {
        match self.drops.take() {
            Some(drops) if (self.live as usize) < cap => *drops,
            pending => {
                self.drops = pending;
                Vec::new()
            }
        }
    }

    /// Forgets a pending report (the channel was unsubscribed).
    pub fn discard_report(&mut self, key: DropKey) {
        if let Some(drops) = self.drops.as_mut() {
            drops.retain(|d| d.key != key);
            if drops.is_empty() {
                self.drops = None;
            }
        }
    }

    /// Forgets every pending report (the session ended).
    pub fn discard_reports(&mut self) {
        self.drops = None;
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes waiting.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of uncounted items (replies, replays) waiting.
    pub fn reply_bytes(&self) -> usize {
        self.reply_bytes
    }

    /// True when no frame is half written (a frame may be written directly).
    pub fn at_frame_start(&self) -> bool {
        self.offset == 0
    }

    /// Writes as much as the socket takes, one `writev` per batch, until
    /// the queue is empty or the socket would block. Returns the bytes
    /// written (0 when blocked at once).
    ///
    /// # Errors
    /// A socket error other than WouldBlock/Interrupted: the connection is
    /// gone.
    pub fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.items.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOV_BATCH];
            let mut n = 0;
            for (slot, item) in slices.iter_mut().zip(&self.items) {
                let skip = if n == 0 { self.offset as usize } else { 0 };
                *slot = IoSlice::new(item.bytes.get(skip..).unwrap_or_default());
                n += 1;
            }
            match w.write_vectored(slices.get(..n).unwrap_or_default()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Consumes `written` bytes from the front (they went out).
    pub fn advance(&mut self, mut written: usize) {
        while let Some(front) = self.items.front() {
            let left = front.bytes.len() - self.offset as usize;
            let took = written.min(left);
            self.bytes -= took;
            if front.kind == Kind::Reply {
                self.reply_bytes -= took;
            }
            if written < left {
                // Below `left`, which is a frame's length: fits in u32.
                self.offset += written as u32;
                return;
            }
            written -= left;
            self.offset = 0;
            if front.kind == Kind::Live {
                self.live -= 1;
            }
            self.items.pop_front();
        }
    }

    /// Frees the queue's buffer when it is empty (idle connections).
    pub fn release(&mut self) {
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A socket that takes at most `room` bytes (spread over the buffers
    /// of a `writev`), then blocks.
    pub(crate) struct Trickle {
        pub got: Vec<u8>,
        pub room: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        let a: Rc<[u8]> = Rc::from(&b"hello "[..]);
        let b: Rc<[u8]> = Rc::from(&b"world"[..]);
        assert!(q.push_live(&a, 2, DropKey::Alerts, 0, 1));
        q.push_control(b, 1);
        let mut pipe = Trickle { got: Vec::new(), room: 8 };
        assert_eq!(q.write_to(&mut pipe).unwrap(), 8);
        assert_eq!(q.live, 0);
        pipe.room = 100;
        q.write_to(&mut pipe).unwrap();
        assert_eq!(pipe.got, b"hello world");
        assert!(q.is_empty());
    }

    #[test]
    fn overflow_is_counted_per_key_with_the_seq_range() {
        let mut q = OutQueue::default();
        let m: Rc<[u8]> = Rc::from(&b"m"[..]);
        assert!(q.push_live(&m, 1, DropKey::Channel(3), 1, 1));
        assert!(!q.push_live(&m, 1, DropKey::Channel(3), 2, 2));
        assert!(!q.push_live(&m, 1, DropKey::Alerts, 0, 3));
        assert!(!q.push_live(&m, 1, DropKey::Channel(3), 3, 4));
        assert!(q.take_reports(1).is_empty(), "no report while still full");
        q.write_to(&mut Trickle { got: Vec::new(), room: 10 }).unwrap();
        let reports = q.take_reports(1);
        assert_eq!(reports[0], DropReport { key: DropKey::Channel(3), dropped: 2, from_seq: 2, to_seq: 3 });
        assert_eq!(reports[1].key, DropKey::Alerts);
        assert!(q.take_reports(1).is_empty());
    }
}

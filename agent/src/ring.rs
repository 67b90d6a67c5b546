//! What the agent keeps for subscribers: a bounded ring of items with strictly
//! increasing keys (log entries by offset, status changes by sequence number),
//! the floor (the newest key no longer held), and the live subscribers. The
//! ring is bounded twice: by items and by bytes ([`Keyed::weight`]); either
//! cap evicts the oldest items first and raises the floor past them.
//!
//! A subscriber is a [`Cursor`]: a `Stream` that reads the ring from a key
//! on, a batch at a time (at most [`CURSOR_BATCH`] items and about
//! [`CURSOR_BATCH_BYTES`]), and parks its waker when it has read everything.
//! The ring is the only buffer: a subscriber that does not read holds its
//! position and one batch, nothing more.
//!
//! When the ring is full, [`Ring::push`] waits until the subscribers it
//! *waits for* have read the oldest item (the log file holds the rest, so a
//! burst is not lost to a hub that reads). A subscriber is waited for once
//! it has shown it keeps up, by reading everything there was; a new one is
//! not. One push waits at most [`STALL`]; then every subscriber waited for
//! that has not read everything is no longer waited for (until it catches up
//! again), and for [`REARM_COOLDOWN`] the ring waits for no one and starts
//! waiting for no one. So streams that stop reading or read slowly, however
//! many and however often opened, hold the worker back by at most [`STALL`]
//! per [`REARM_COOLDOWN`]; a hub that reads keeps being waited for (during
//! the wait it reads what there is). A subscriber that falls behind the
//! floor skips ahead and its next item says `lost`, which becomes
//! `LogEntry.truncated` (DESIGN.md's floor rule).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::Stream;

/// An item with a key: offsets for log entries, sequence numbers for statuses.
pub trait Keyed {
    /// Strictly increasing within a ring; never 0.
    fn key(&self) -> u64;

    /// The memory the item holds while kept, counted against the ring's
    /// byte budget (its heap data, itself, and the ring's slot and `Arc`).
    fn weight(&self) -> usize {
        std::mem::size_of_val(self) + SLOT_OVERHEAD
    }
}

/// Bytes a kept item costs beside its own: its `Arc` header and ring slot.
pub const SLOT_OVERHEAD: usize = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Arc<()>>();

/// Items read by a cursor in one lock.
pub const CURSOR_BATCH: usize = 1024;
/// A cursor's batch stops growing past this many bytes ([`Keyed::weight`]):
/// what a subscriber that does not read can hold of items already dropped
/// from the ring.
pub const CURSOR_BATCH_BYTES: usize = 128 * 1024;
/// The longest one [`Ring::push`] waits; then the subscribers that have not
/// read everything are no longer waited for (they will see `lost` when the
/// floor passes them) until they have caught up with the newest item.
pub const STALL: Duration = Duration::from_secs(1);
/// After a push waited [`STALL`], the ring waits for no subscriber, and
/// starts waiting for none, for this long.
pub const REARM_COOLDOWN: Duration = Duration::from_secs(10);

/// A cursor as the ring sees it.
struct CursorState {
    id: u64,
    /// The key of the last item it took.
    after: u64,
    /// Set while it waits for new items.
    waker: Option<Waker>,
    /// Pushes do not wait for it: new, or behind when a push waited
    /// [`STALL`]; cleared when it has read everything (outside a cooldown).
    slow: bool,
}

struct Inner<T> {
    items: VecDeque<Arc<T>>,
    /// Items kept; pushing more drops the oldest and raises the floor.
    cap: usize,
    /// The sum of the kept items' weights.
    bytes: usize,
    /// The most `bytes` may be; pushing more drops the oldest (but the
    /// newest item is kept even when it alone is heavier).
    cap_bytes: usize,
    floor: u64,
    last: u64,
    readers: Vec<CursorState>,
    next_id: u64,
    /// Until then no reader is waited for, and none starts being waited for.
    calm_until: Instant,
}

impl<T> Inner<T> {
    fn wakers(&mut self) -> Vec<Waker> {
        self.readers.iter_mut().filter_map(|r| r.waker.take()).collect()
    }
}

/// The kept items and their subscribers. Cheap to share (`Arc<Ring<T>>`).
pub struct Ring<T> {
    inner: Mutex<Inner<T>>,
    /// Signalled when a reader takes items (a waiting push may go on).
    advanced: Condvar,
}

/// One item delivered to a subscriber.
#[derive(Debug)]
pub struct Delivered<T> {
    /// The item.
    pub item: Arc<T>,
    /// Items between the previous delivery (or the subscription's start) and
    /// this one were dropped before this subscriber read them.
    pub lost: bool,
}

impl<T: Keyed> Ring<T> {
    /// An empty ring keeping `cap` items (at least one) weighing at most
    /// `cap_bytes` together, whose floor is `floor`.
    pub fn new(cap: usize, cap_bytes: usize, floor: u64) -> Ring<T> {
        Ring {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                cap: cap.max(1),
                bytes: 0,
                cap_bytes,
                floor,
                last: floor,
                readers: Vec::new(),
                next_id: 1,
                calm_until: Instant::now(),
            }),
            advanced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends items and wakes the parked cursors. When the ring is full and
    /// a subscriber has not read the oldest item, waits for it (see the
    /// module doc). An item whose key is not above the last one is a caller's
    /// bug: it is dropped and logged.
    pub fn push(&self, items: impl IntoIterator<Item = T>) {
        let mut inner = self.lock();
        let mut pushed = false;
        let mut deadline = None;
        for item in items {
            let key = item.key();
            if key <= inner.last {
                log::error!("ring: key {key} is not above the last key {}; dropped", inner.last);
                continue;
            }
            // Make room, oldest first; the floor rises past what is dropped.
            let weight = item.weight();
            while !inner.items.is_empty()
                && (inner.items.len() >= inner.cap || inner.bytes.saturating_add(weight) > inner.cap_bytes)
            {
                inner = self.wait_for_readers(inner, &mut deadline);
                if let Some(old) = inner.items.pop_front() {
                    inner.bytes -= old.weight();
                    inner.floor = old.key();
                }
            }
            inner.last = key;
            inner.bytes += weight;
            inner.items.push_back(Arc::new(item));
            pushed = true;
        }
        if pushed {
            let wakers = inner.wakers();
            drop(inner);
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Waits until every reader waited for has read the oldest item, until
    /// `deadline` at most ([`STALL`] after this push first waited); then
    /// stops waiting for every reader that has not read everything and calms
    /// the ring for [`REARM_COOLDOWN`] (see the module docs).
    fn wait_for_readers<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner<T>>,
        deadline: &mut Option<Instant>,
    ) -> MutexGuard<'a, Inner<T>> {
        loop {
            let Some(front) = inner.items.front().map(|i| i.key()) else { return inner };
            let now = Instant::now();
            if now < inner.calm_until || !inner.readers.iter().any(|r| !r.slow && r.after < front) {
                return inner;
            }
            let deadline = *deadline.get_or_insert(now + STALL);
            if now >= deadline {
                let last = inner.last;
                let mut behind = 0;
                for r in inner.readers.iter_mut().filter(|r| !r.slow && r.after < last) {
                    r.slow = true;
                    behind += 1;
                }
                inner.calm_until = now + REARM_COOLDOWN;
                log::warn!(
                    "{behind} subscriber(s) kept the log waiting for {STALL:?}; waiting for none for {REARM_COOLDOWN:?}"
                );
                return inner;
            }
            // Readers parked before these items arrived must be told of them;
            // then look again (they may have read meanwhile) before waiting.
            let wakers = inner.wakers();
            if !wakers.is_empty() {
                drop(inner);
                wakers.into_iter().for_each(Waker::wake);
                inner = self.lock();
                continue;
            }
            inner = self.advanced.wait_timeout(inner, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Raises the floor (never lowers it) and drops the items at or below it.
    pub fn raise_floor(&self, floor: u64) {
        let mut inner = self.lock();
        if floor > inner.floor {
            inner.floor = floor;
            inner.last = inner.last.max(floor);
            while inner.items.front().is_some_and(|i| i.key() <= floor) {
                if let Some(old) = inner.items.pop_front() {
                    inner.bytes -= old.weight();
                }
            }
        }
    }

    /// The newest key no longer held.
    pub fn floor(&self) -> u64 {
        self.lock().floor
    }

    /// The newest key ever pushed (the floor when none).
    pub fn last_key(&self) -> u64 {
        self.lock().last
    }

    /// The newest item kept.
    pub fn latest(&self) -> Option<Arc<T>> {
        self.lock().items.back().cloned()
    }

    /// The sum of the kept items' weights.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Number of items kept.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Number of live cursors.
    pub fn subscribers(&self) -> usize {
        self.lock().readers.len()
    }

    /// Whether no item is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cursor over every kept item with key `> after`, then new ones.
    /// `after = 0` means everything kept, with no `lost` flag. An `after`
    /// above every key this ring issued comes from another history (a reset
    /// state file): the cursor starts at the floor and flags its first item
    /// `lost`. Otherwise the first item is `lost` when `after` is below the floor.
    pub fn subscribe(self: &Arc<Self>, after: u64) -> Cursor<T> {
        let mut inner = self.lock();
        let (after, lost) = match after {
            0 => (inner.floor, false),
            a if a > inner.last => (inner.floor, true),
            a => (a, false),
        };
        self.cursor(&mut inner, after, lost)
    }

    /// A cursor that first yields the newest kept item, then new ones.
    pub fn subscribe_latest(self: &Arc<Self>) -> Cursor<T> {
        let mut inner = self.lock();
        let after = inner.items.back().map_or(inner.last, |i| i.key().saturating_sub(1));
        self.cursor(&mut inner, after, false)
    }

    fn cursor(self: &Arc<Self>, inner: &mut Inner<T>, after: u64, lost: bool) -> Cursor<T> {
        let id = inner.next_id;
        inner.next_id += 1;
        inner.readers.push(CursorState { id, after, waker: None, slow: true });
        Cursor { ring: Arc::clone(self), id, lost, batch: VecDeque::new() }
    }
}

/// A subscriber's position in a [`Ring`]; a never-ending `Stream` of
/// [`Delivered`] items in key order.
pub struct Cursor<T: Keyed> {
    ring: Arc<Ring<T>>,
    id: u64,
    /// The next delivered item is flagged `lost`.
    lost: bool,
    batch: VecDeque<Arc<T>>,
}

impl<T: Keyed> Cursor<T> {
    /// Takes the next batch from the ring, or parks `waker` when there is none.
    fn refill(&mut self, waker: &Waker) {
        let mut guard = self.ring.lock();
        let inner = &mut *guard;
        let calm_until = inner.calm_until;
        let Some(reader) = inner.readers.iter_mut().find(|r| r.id == self.id) else { return };
        if reader.after < inner.floor {
            self.lost = true;
            reader.after = inner.floor;
        }
        let start = inner.items.partition_point(|i| i.key() <= reader.after);
        let mut bytes = 0;
        for item in inner.items.range(start..).take(CURSOR_BATCH) {
            if bytes >= CURSOR_BATCH_BYTES {
                break;
            }
            bytes += item.weight();
            self.batch.push_back(Arc::clone(item));
        }
        match self.batch.back() {
            Some(last) => {
                reader.after = last.key();
                drop(guard);
                self.ring.advanced.notify_all();
            }
            None => {
                if Instant::now() >= calm_until {
                    reader.slow = false;
                }
                match &mut reader.waker {
                    Some(parked) => parked.clone_from(waker),
                    None => reader.waker = Some(waker.clone()),
                }
            }
        }
    }
}

impl<T: Keyed> Stream for Cursor<T> {
    type Item = Delivered<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivered<T>>> {
        let this = self.get_mut();
        if this.batch.is_empty() {
            this.refill(cx.waker());
        }
        match this.batch.pop_front() {
            Some(item) => Poll::Ready(Some(Delivered { item, lost: std::mem::take(&mut this.lost) })),
            None => Poll::Pending,
        }
    }
}

impl<T: Keyed> Drop for Cursor<T> {
    fn drop(&mut self) {
        self.ring.lock().readers.retain(|r| r.id != self.id);
        self.ring.advanced.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::task::Waker;

    #[derive(Debug, PartialEq)]
    struct K(u64);
    impl Keyed for K {
        fn key(&self) -> u64 {
            self.0
        }
    }

    fn ready<T: Keyed>(cursor: &mut Cursor<T>) -> Vec<(u64, bool)> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        while let Poll::Ready(Some(d)) = cursor.poll_next_unpin(&mut cx) {
            out.push((d.item.key(), d.lost));
        }
        out
    }

    fn parked<T>(ring: &Ring<T>) -> usize {
        ring.inner.lock().unwrap().readers.iter().filter(|r| r.waker.is_some()).count()
    }

    #[test]
    fn keeps_cap_items_and_the_floor_is_the_last_dropped() {
        let ring = Arc::new(Ring::new(3, usize::MAX, 0));
        ring.push((1..=5).map(K));
        assert_eq!((ring.len(), ring.floor(), ring.last_key()), (3, 2, 5));
        assert_eq!(ready(&mut ring.subscribe(0)), vec![(3, false), (4, false), (5, false)]);
        // At the floor: nothing was lost.
        assert_eq!(ready(&mut ring.subscribe(2)), vec![(3, false), (4, false), (5, false)]);
        assert_eq!(ready(&mut ring.subscribe(4)), vec![(5, false)]);
        // Below the floor: the first item says so.
        assert_eq!(ready(&mut ring.subscribe(1)), vec![(3, true), (4, false), (5, false)]);
        // From another history: everything, flagged.
        assert_eq!(ready(&mut ring.subscribe(99)), vec![(3, true), (4, false), (5, false)]);
        assert!(ready(&mut ring.subscribe(5)).is_empty());
    }

    #[test]
    fn a_parked_cursor_is_woken_and_a_stalled_one_is_told_it_lost_items() {
        let ring = Arc::new(Ring::new(2, usize::MAX, 0));
        let mut cursor = ring.subscribe(0);
        assert!(ready(&mut cursor).is_empty());
        assert_eq!(parked(&ring), 1);
        ring.push([K(10)]);
        assert_eq!(parked(&ring), 0);
        assert_eq!(ready(&mut cursor), vec![(10, false)]);
        // The cursor reads nothing: the push waits STALL for it, then drops.
        let started = Instant::now();
        ring.push([K(11), K(12), K(13)]);
        assert!(started.elapsed() >= STALL);
        assert_eq!(ready(&mut cursor), vec![(12, true), (13, false)]);
        // Caught up, but in the cooldown: not waited for yet.
        assert!(ring.inner.lock().unwrap().readers[0].slow);
        ring.inner.lock().unwrap().calm_until = Instant::now();
        assert!(ready(&mut cursor).is_empty());
        assert!(!ring.inner.lock().unwrap().readers[0].slow);
        // Caught up after it: waited for again, and a reader that keeps up loses nothing.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.len() < 500 {
                got.extend(ready(&mut cursor));
                std::thread::yield_now();
            }
            got
        });
        let started = Instant::now();
        ring.push((14..514).map(K));
        let got = reader.join().unwrap();
        assert!(started.elapsed() < STALL, "{:?}", started.elapsed());
        assert_eq!(got, (14..514).map(|k| (k, false)).collect::<Vec<_>>());
        assert_eq!(ring.inner.lock().unwrap().readers.len(), 0, "a dropped cursor leaves");
    }

    /// An item of a given weight.
    #[derive(Debug)]
    struct W(u64, usize);
    impl Keyed for W {
        fn key(&self) -> u64 {
            self.0
        }
        fn weight(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_and_raises_the_floor_like_the_item_cap() {
        let ring = Arc::new(Ring::new(100, 1000, 0));
        ring.push([W(1, 300), W(2, 300), W(3, 300)]);
        assert_eq!((ring.len(), ring.bytes(), ring.floor()), (3, 900, 0));
        ring.push([W(4, 300)]);
        assert_eq!((ring.len(), ring.bytes(), ring.floor()), (3, 900, 1));
        // One heavy item drops as many as it needs.
        ring.push([W(5, 700)]);
        assert_eq!((ring.len(), ring.bytes(), ring.floor()), (2, 1000, 3));
        assert_eq!(ready(&mut ring.subscribe(2)), vec![(4, true), (5, false)]);
        assert_eq!(ready(&mut ring.subscribe(3)), vec![(4, false), (5, false)]);
        // An item heavier than the budget is still kept, alone.
        ring.push([W(6, 5000)]);
        assert_eq!((ring.len(), ring.bytes(), ring.floor()), (1, 5000, 5));
        ring.raise_floor(6);
        assert_eq!((ring.len(), ring.bytes()), (0, 0));
    }

    #[test]
    fn readers_that_stop_reading_hold_the_pushes_back_once_and_new_ones_not_at_all() {
        let ring = Arc::new(Ring::new(100, usize::MAX, 0));
        let (mut idle, mut slow, mut keeps_up) = (ring.subscribe(0), ring.subscribe(0), ring.subscribe(0));
        // Each has read everything there was (nothing): all waited for.
        for cursor in [&mut idle, &mut slow, &mut keeps_up] {
            assert!(ready(cursor).is_empty());
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slow_done = Arc::clone(&done);
        let trickler = std::thread::spawn(move || {
            let mut cx = Context::from_waker(Waker::noop());
            let mut got = 0;
            while !slow_done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Poll::Ready(Some(_)) = slow.poll_next_unpin(&mut cx) {
                    got += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            got
        });
        let keeps_up_id = keeps_up.id;
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while got.last().is_none_or(|&(k, _)| k < 2000) {
                got.extend(ready(&mut keeps_up));
                std::thread::yield_now();
            }
            (got, keeps_up)
        });
        // Lines come ten at a time, as a tailer pushes them.
        let started = Instant::now();
        for k in (1..=2000).step_by(10) {
            ring.push((k..k + 10).map(K));
            std::thread::sleep(Duration::from_micros(200));
        }
        // Held back once, by STALL, not paced by the trickler (10 s).
        let took = started.elapsed();
        assert!(took >= STALL && took < 2 * STALL, "{took:?}");
        // The reader that kept up read everything during the wait: it is
        // still waited for (after the cooldown).
        let (got, _keeps_up) = reader.join().unwrap();
        assert!(got.iter().take_while(|&&(k, _)| k <= 100).all(|&(_, lost)| !lost));
        let inner = ring.inner.lock().unwrap();
        assert!(!inner.readers.iter().find(|r| r.id == keeps_up_id).unwrap().slow);
        drop(inner);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(trickler.join().unwrap() < 2000);
        // The reader that read nothing resumes from the ring, told of the loss.
        assert_eq!(ready(&mut idle)[0], (1901, true));
        // New readers are not waited for: one that reads nothing, and one
        // that has read everything but in the cooldown.
        let _fresh = ring.subscribe(0);
        let mut at_head = ring.subscribe(ring.last_key());
        assert!(ready(&mut at_head).is_empty());
        let started = Instant::now();
        ring.push((2001..=2200).map(K));
        assert!(started.elapsed() < STALL / 2, "{:?}", started.elapsed());
    }

    #[test]
    fn a_reader_that_keeps_up_loses_nothing_to_a_faster_one() {
        let ring = Arc::new(Ring::new(10, usize::MAX, 0));
        let read = |mut cursor: Cursor<K>, nap: Duration| {
            assert!(ready(&mut cursor).is_empty());
            std::thread::spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let mut got = Vec::new();
                while got.len() < 300 && !got.last().is_some_and(|&(_, lost)| lost) {
                    match cursor.poll_next_unpin(&mut cx) {
                        Poll::Ready(Some(d)) => got.push((d.item.key(), d.lost)),
                        _ => std::thread::yield_now(),
                    }
                    std::thread::sleep(nap);
                }
                got
            })
        };
        let fast = read(ring.subscribe(0), Duration::ZERO);
        let steady = read(ring.subscribe(0), Duration::from_micros(500));
        ring.push((1..=300).map(K));
        let want: Vec<_> = (1..=300).map(|k| (k, false)).collect();
        assert_eq!(fast.join().unwrap(), want);
        assert_eq!(steady.join().unwrap(), want, "paced to the faster reader only");
    }

    #[test]
    fn a_batch_is_bounded_by_bytes() {
        let ring = Arc::new(Ring::new(100, usize::MAX, 0));
        ring.push((1..=10).map(|k| W(k, CURSOR_BATCH_BYTES / 2)));
        let mut cursor = ring.subscribe(0);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(cursor.poll_next_unpin(&mut cx), Poll::Ready(Some(_))));
        assert_eq!(cursor.batch.len(), 1, "two items make a full batch");
        assert_eq!(ready(&mut cursor).len(), 9);
    }

    #[test]
    fn keys_must_increase_and_the_floor_only_rises() {
        let ring = Arc::new(Ring::new(10, usize::MAX, 7));
        assert_eq!(ring.last_key(), 7);
        ring.push([K(7), K(8), K(8), K(9)]);
        assert_eq!(ready(&mut ring.subscribe(0)), vec![(8, false), (9, false)]);
        ring.raise_floor(8);
        ring.raise_floor(1);
        assert_eq!((ring.floor(), ring.len()), (8, 1));
    }

    #[test]
    fn subscribe_latest_starts_with_the_newest() {
        let ring = Arc::new(Ring::new(10, usize::MAX, 0));
        let mut empty = ring.subscribe_latest();
        assert!(ready(&mut empty).is_empty());
        ring.push([K(1), K(2)]);
        assert_eq!(ready(&mut empty), vec![(1, false), (2, false)]);
        assert_eq!(ready(&mut ring.subscribe_latest()), vec![(2, false)]);
    }
}

//! The connections still sending their request head, oldest first, for
//! `limits.max_pending` (PROTOCOL.md section 6, slowloris): past the cap,
//! the oldest one that has had [`GRACE`] to send its head makes room.
//! Entries are (key, serial, accepted at); ones that finished their head
//! or closed are dropped lazily, when the queue is over the cap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A connection may be evicted once it has been open this long: a storm of
/// connects accepted in one turn has not been read yet.
pub const GRACE: Duration = Duration::from_secs(1);

/// See the module docs.
#[derive(Debug, Default)]
pub struct PendingHeads {
    queue: VecDeque<(usize, u64, Instant)>,
}

impl PendingHeads {
    /// A connection was accepted.
    pub fn accepted(&mut self, key: usize, serial: u64, now: Instant) {
        self.queue.push_back((key, serial, now));
    }

    /// The keys to evict so that at most `max` remain: first forgets the
    /// entries `still(key, serial)` says no longer send a head, then takes
    /// the oldest past [`GRACE`].
    pub fn over(&mut self, max: usize, now: Instant, still: impl Fn(usize, u64) -> bool) -> Vec<usize> {
        if self.queue.len() <= max {
            return Vec::new();
        }
        self.queue.retain(|&(key, serial, _)| still(key, serial));
        let mut evict = Vec::new();
        while self.queue.len() > max && self.queue.front().is_some_and(|p| now.duration_since(p.2) >= GRACE) {
            evict.extend(self.queue.pop_front().map(|p| p.0));
        }
        evict
    }

    /// Gives back spare capacity once mostly empty.
    pub fn shrink(&mut self) {
        if self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oldest_past_the_grace_are_evicted_and_finished_ones_are_forgotten() {
        let t0 = Instant::now();
        let mut p = PendingHeads::default();
        for key in 0..5 {
            p.accepted(key, key as u64, t0);
        }
        assert!(p.over(5, t0, |_, _| true).is_empty());
        p.accepted(5, 5, t0 + GRACE);
        assert!(p.over(5, t0, |_, _| true).is_empty(), "none is past the grace yet");
        assert_eq!(p.over(3, t0 + GRACE, |key, _| key != 0), vec![1, 2], "0 finished its head");
    }
}
